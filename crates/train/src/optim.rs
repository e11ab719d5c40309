//! AdamW with decoupled weight decay (Loshchilov & Hutter), PyTorch's update order, and
//! gradient clipping by global norm. The moments are plain tensors so a checkpoint holds them
//! and a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    pub params: AdamWParams,
    /// Updates applied so far.
    pub step: usize,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> candle_core::Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<_>>()?;
        let v = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            step: 0,
            vars,
            m,
            v,
        })
    }

    /// One update with `grads` (aligned with the vars) at rate `lr`.
    pub fn update(&mut self, grads: &[Tensor], lr: f64) -> candle_core::Result<()> {
        self.step += 1;
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let bias1 = 1.0 - beta1.powi(self.step as i32);
        let bias2 = 1.0 - beta2.powi(self.step as i32);
        for (i, g) in grads.iter().enumerate().take(self.vars.len()) {
            let m = ((&self.m[i] * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let var = &self.vars[i];
            // PyTorch: θ ← θ(1 − lr·λ); θ ← θ − lr · m̂ / (sqrt(v̂) + ε)
            let decayed = (var.as_tensor() * (1.0 - lr * weight_decay))?;
            let step = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + eps)?)?;
            var.set(&(decayed - (step * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments under stable names, for the checkpoint.
    pub fn state(&self, names: &[String]) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            out.insert(format!("{name}.exp_avg"), self.m[i].clone());
            out.insert(format!("{name}.exp_avg_sq"), self.v[i].clone());
        }
        out
    }

    pub fn load_state(
        &mut self,
        names: &[String],
        state: &HashMap<String, Tensor>,
        step: usize,
    ) -> Result<(), String> {
        for (i, name) in names.iter().enumerate() {
            for (suffix, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let key = format!("{name}.{suffix}");
                let t = state
                    .get(&key)
                    .ok_or_else(|| format!("optimizer state `{key}` is missing"))?;
                if t.dims() != slot.dims() {
                    return Err(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        slot.dims()
                    ));
                }
                *slot = t.to_device(slot.device()).map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: Option<f64>) -> candle_core::Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if let Some(max) = max_norm {
        if norm > max && norm.is_finite() {
            let factor = max / (norm + 1e-6);
            for g in grads.iter_mut() {
                *g = (&*g * factor)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_pytorch_adamw_by_hand() {
        // One parameter 1.0, gradient 0.5, lr 0.1, weight decay 0.01, step 1:
        // θ = 1 - 0.1*0.01 = 0.999; m̂ = 0.5, v̂ = 0.25; θ -= 0.1 * 0.5 / (0.5 + 1e-8)
        let var = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![var.clone()],
            AdamWParams {
                weight_decay: 0.01,
                ..Default::default()
            },
        )
        .unwrap();
        opt.update(&[Tensor::new(&[0.5f32], &Device::Cpu).unwrap()], 0.1)
            .unwrap();
        let got = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!(
            (got - (0.999 - 0.1 * 0.5 / (0.5 + 1e-8)) as f32).abs() < 1e-6,
            "{got}"
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        assert_eq!(clip_grad_norm(&mut g, Some(1.0)).unwrap(), 5.0);
        let v = g[0].to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
