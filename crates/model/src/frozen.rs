//! A linear layer whose weight is frozen: y = x Wᵀ with a backward to x only.
//!
//! candle's matmul backward computes the gradient of both operands, frozen or not
//! (candle-core 0.11 backprop.rs, Op::Matmul), and keeps a weight-sized zero-initialized
//! accumulator for each: a full extra matmul and buffer per projection per step. Training
//! only needs dL/dx = dL/dy · W.
//!
//! r rows, i in features, o out features.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};

pub struct FrozenLinear {
    /// (o, i), f32, on the CPU.
    pub weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    /// x (.., i) -> (.., o)
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("frozen-linear: expected f32 input")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-linear: input must be contiguous")
        };
        let dims = layout.shape().dims();
        let (o, i) = self.weight.dims2()?;
        let rows = (end - start) / i;
        // (r, i) @ (i, o) -> (r, o)
        let x = Tensor::from_slice(&x[start..end], (rows, i), &Device::Cpu)?;
        let y = x
            .matmul(&self.weight.t()?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut out = dims.to_vec();
        *out.last_mut().expect("x has a last dimension") = o;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    /// dL/dx (.., i) = dL/dy (.., o) · W (o, i)
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (o, _i) = self.weight.dims2()?;
        let rows = grad_res.elem_count() / o;
        let g = grad_res
            .contiguous()?
            .reshape((rows, o))?
            .matmul(&self.weight)?;
        Ok(Some(g.reshape(arg.dims())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn forward_and_input_gradient_match_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, 3), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 4, 5), &dev).unwrap();
        let ours = x
            .as_tensor()
            .apply_op1(FrozenLinear { weight: w.clone() })
            .unwrap();
        let theirs = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff(&ours, &theirs) < 1e-5);
        let g1 = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (theirs * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(
            diff(
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap()
            ) < 1e-5
        );
    }
}
