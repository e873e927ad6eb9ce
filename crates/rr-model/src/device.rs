//! Device and dtype selection shared by every command.

use anyhow::{bail, Result};
use tch::{Cuda, Device, Kind};

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
pub fn parse_device(name: &str) -> Result<Device> {
    let cuda_missing = || {
        anyhow::anyhow!(
            "device `{name}` requested but CUDA is not available (no GPU visible, or libtorch_cuda not found)"
        )
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => {
            if Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(cuda_missing())
            }
        }
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => {
                if (index as i64) < Cuda::device_count() {
                    Ok(Device::Cuda(index))
                } else if Cuda::is_available() {
                    bail!(
                        "device `{other}`: only {} CUDA device(s) visible",
                        Cuda::device_count()
                    )
                } else {
                    Err(cuda_missing())
                }
            }
            _ => bail!("unknown device `{other}` (expected cpu, cuda, cuda:N or auto)"),
        },
    }
}

/// Parses a compute dtype: `f32`/`float32` or `bf16`/`bfloat16`.
pub fn parse_dtype(name: &str) -> Result<Kind> {
    match name {
        "f32" | "fp32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => bail!("unknown dtype `{other}` (expected f32 or bf16)"),
    }
}
