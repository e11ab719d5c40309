//! Device and dtype choice: CPU unless the binary was built for a GPU and one is present.

use candle_core::{DType, Device};

use crate::error::{ModelError, Result};

/// `cpu`, `cuda`, `cuda:N`, `metal` or `auto` (the GPU the binary was built for, when
/// present, else the CPU).
pub fn parse_device(spec: &str) -> Result<Device> {
    let err = |reason: &str| ModelError::Device {
        device: spec.into(),
        reason: reason.into(),
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto_device().0),
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(err("this binary was built without the `metal` feature"));
            }
            Device::new_metal(0).map_err(|e| err(&e.to_string()))
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            if !candle_core::utils::cuda_is_available() {
                return Err(err("this binary was built without the `cuda` feature"));
            }
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| err("expected cuda:N with N a GPU index"))?,
                None => 0,
            };
            Device::new_cuda(ordinal).map_err(|e| err(&e.to_string()))
        }
        _ => Err(err("expected cpu, cuda, cuda:N, metal or auto")),
    }
}

/// `auto`: the GPU the binary was built for when one answers, else the CPU, with the reason
/// when a GPU build found none (being built for a GPU says nothing of one being there).
pub fn auto_device() -> (Device, Option<String>) {
    let gpu = if candle_core::utils::cuda_is_available() {
        Some(("CUDA", Device::new_cuda(0)))
    } else if candle_core::utils::metal_is_available() {
        Some(("Metal", Device::new_metal(0)))
    } else {
        None
    };
    match gpu {
        None => (Device::Cpu, None),
        Some((_, Ok(device))) => (device, None),
        Some((kind, Err(e))) => (
            Device::Cpu,
            Some(format!(
                "--device auto: no {kind} GPU answered ({e}); using the CPU"
            )),
        ),
    }
}

/// f32 on the CPU (candle's CPU matmul is fastest and exact there); bf16 on a GPU.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}
