//! One LoRA adapter on a frozen linear layer: y += scale · dropout(x) Aᵀ Bᵀ, with A (r, in)
//! and B (out, r) as PEFT stores them.
//!
//! n rows, i in features, o out features, r rank.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct LoraAdapter {
    /// (r, i)
    pub a: Var,
    /// (o, r)
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    /// Training: gradients flow to A and B, and dropout applies. Otherwise A and B are used
    /// detached, so inference builds no autograd graph (which would keep every intermediate
    /// of the forward alive: 13 GiB on a 4096-token scoring batch of SmolLM2).
    pub training: bool,
    /// Which stream of dropout masks this adapter draws: its module's place in the model
    /// (set when it is attached), so every adapter's mask differs and none depends on the
    /// order in which a pass happens to run the projections.
    pub stream: u64,
    /// The seed of the current pass's mask (`seed_pass`): the differentiable forward takes
    /// no seed argument, so the pass sets it here first.
    pass_seed: AtomicU64,
}

impl Clone for LoraAdapter {
    fn clone(&self) -> Self {
        Self {
            a: self.a.clone(),
            b: self.b.clone(),
            scale: self.scale,
            dropout: self.dropout,
            training: self.training,
            stream: self.stream,
            pass_seed: AtomicU64::new(self.pass_seed.load(Ordering::Relaxed)),
        }
    }
}

/// The seed of one adapter's dropout mask in the pass seeded `pass_seed` (splitmix64 of the
/// two, so nearby seeds and streams give unrelated masks).
pub fn mask_seed(pass_seed: u64, stream: u64) -> u64 {
    let mut z = pass_seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A dropout mask of `n` entries: 1/(1 − p) kept, 0 dropped, drawn from `seed`. Both training
/// passes draw it here, so for one seed they drop the same inputs.
pub fn dropout_mask(n: usize, p: f64, seed: u64) -> Vec<f32> {
    let keep = 1.0 - p;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect()
}

impl LoraAdapter {
    /// PEFT's default init: A Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(i), 1/sqrt(i));
    /// B zero, so a new adapter leaves the model unchanged.
    pub fn init(
        in_features: usize,
        out_features: usize,
        r: usize,
        scale: f64,
        dropout: f64,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f32).sqrt();
        let a: Vec<f32> = (0..r * in_features)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_vec(a, (r, in_features), device)?;
        let b = Tensor::zeros((out_features, r), DType::F32, device)?;
        Self::from_tensors(&a, &b, scale, dropout)
    }

    pub fn from_tensors(a: &Tensor, b: &Tensor, scale: f64, dropout: f64) -> Result<Self> {
        Ok(Self {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale,
            dropout,
            training: false,
            stream: 0,
            pass_seed: AtomicU64::new(0),
        })
    }

    /// Seeds the dropout mask of the differentiable forward for one pass (one micro-batch).
    pub fn seed_pass(&self, pass_seed: u64) {
        self.pass_seed.store(pass_seed, Ordering::Relaxed);
    }

    /// This adapter's mask seed in the pass seeded `pass_seed`.
    pub fn mask_seed(&self, pass_seed: u64) -> u64 {
        mask_seed(pass_seed, self.stream)
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The adapter branch: x (.., i) -> (.., o), in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let i = *dims.last().expect("x has a last dimension");
        let rows = x.elem_count() / i;
        let mut h = x.reshape((rows, i))?.to_dtype(DType::F32)?;
        if self.training && self.dropout > 0.0 {
            let seed = self.mask_seed(self.pass_seed.load(Ordering::Relaxed));
            let mask = dropout_mask(rows * i, self.dropout, seed);
            h = (h * Tensor::from_vec(mask, (rows, i), x.device())?)?;
        }
        let (a, b) = if self.training {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        } else {
            (self.a.as_tensor().detach(), self.b.as_tensor().detach())
        };
        // (n, i) @ (i, r) -> (n, r) @ (r, o) -> (n, o)
        let y = (h.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?;
        let mut out = dims;
        *out.last_mut().expect("x has a last dimension") = self.b.dims()[0];
        y.reshape(out)?.to_dtype(x.dtype())
    }
}
