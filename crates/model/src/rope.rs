//! Rotary position embeddings in Hugging Face's half-split pairing: dimension i rotates with
//! i + hd/2 (`rotate_half` in transformers' modeling_llama.py). GGUF files store q/k rows
//! permuted for the interleaved pairing; `weights` undoes that at load, so one pairing holds
//! everywhere in tuna.
//!
//! t tokens, hd head dim, f = hd/2 frequencies.

use candle_core::{DType, Device, Tensor, D};

use crate::config::{LlamaConfig, RopeScaling};
use crate::ops::Kernels;

#[derive(Debug, Clone)]
pub struct Rope {
    /// (f,) inverse frequencies after any scaling.
    inv_freq: Vec<f32>,
    device: Device,
}

impl Rope {
    pub fn new(config: &LlamaConfig, device: &Device) -> Self {
        let hd = config.head_dim;
        let base: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / hd as f64))
            .collect();
        let inv_freq = match &config.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Factors { factors }) => base
                .iter()
                .zip(factors)
                .map(|(f, s)| f / *s as f64)
                .collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                // transformers' _compute_llama3_parameters (modeling_rope_utils.py).
                let old_len = *original_max_position_embeddings as f64;
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_len / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        Self {
            inv_freq: inv_freq.into_iter().map(|f| f as f32).collect(),
            device: device.clone(),
        }
    }

    /// The inverse frequencies after any scaling, (f).
    pub fn inverse_frequencies(&self) -> &[f32] {
        &self.inv_freq
    }

    /// cos and sin tables, each (t, f), for positions `start..start + t`.
    pub fn tables(
        &self,
        start: usize,
        t: usize,
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let f = self.inv_freq.len();
        let mut angles = Vec::with_capacity(t * f);
        for pos in start..start + t {
            angles.extend(self.inv_freq.iter().map(|inv| pos as f32 * inv));
        }
        let angles = Tensor::from_vec(angles, (t, f), &self.device)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    /// cos and sin tables, each (n, f), for arbitrary positions.
    pub fn tables_at(
        &self,
        positions: &[u32],
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let f = self.inv_freq.len();
        let mut angles = Vec::with_capacity(positions.len() * f);
        for &pos in positions {
            angles.extend(self.inv_freq.iter().map(|inv| pos as f32 * inv));
        }
        let angles = Tensor::from_vec(angles, (positions.len(), f), &self.device)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    /// Rotates x (b, h, t, hd) with tables that broadcast against (b, h, t, f).
    pub fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let out1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let out2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        Tensor::cat(&[out1, out2], D::Minus1)
    }

    /// Rotates x (b, h, t, hd) whose first token sits at position `start`.
    pub fn apply(&self, x: &Tensor, start: usize, kernels: Kernels) -> candle_core::Result<Tensor> {
        let (_b, _h, t, _hd) = x.dims4()?;
        let (cos, sin) = self.tables(start, t, x.dtype())?;
        match kernels {
            Kernels::Fused => candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin),
            // (t, f) broadcasts over (b, h, t, f)
            Kernels::Differentiable => Self::rotate(x, &cos, &sin),
        }
    }
}
