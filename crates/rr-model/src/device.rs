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

/// Whether this CPU multiplies bf16 natively (AVX-512 BF16, which every AMX CPU also has) and
/// the kernels may use it. Without it, oneDNN emulates bf16 matmuls and they run several times
/// slower than fp32 (a 576×1536×576 matmul: 100 ms in bf16 against 14 ms in fp32 on an
/// AVX2-only Zen 3).
///
/// The kernels can be capped below the hardware with `ONEDNN_MAX_CPU_ISA` and
/// `ATEN_CPU_CAPABILITY` (the way to reproduce an AVX2-only machine on a newer one: bf16 then
/// runs ~18× slower than fp32 here); the choice follows the cap, since those are the kernels
/// that will run.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && !isa_capped_below_bf16(
                std::env::var("ONEDNN_MAX_CPU_ISA").ok().as_deref(),
                std::env::var("ATEN_CPU_CAPABILITY").ok().as_deref(),
            )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a oneDNN ISA cap (`ONEDNN_MAX_CPU_ISA`) or an ATen capability cap
/// (`ATEN_CPU_CAPABILITY`) excludes native bf16 dot products. oneDNN's ISAs with them are
/// `AVX512_CORE_BF16` and everything above it (`AVX10_*`, `*_FP16`, `*_AMX*`); `ALL`/`DEFAULT`
/// and unset mean no cap. ATen's `default` and `avx2` exclude AVX-512.
pub fn isa_capped_below_bf16(onednn_max_isa: Option<&str>, aten_capability: Option<&str>) -> bool {
    let onednn_capped = onednn_max_isa.is_some_and(|isa| {
        let isa = isa.trim().to_ascii_uppercase();
        let unlimited = isa.is_empty() || isa == "ALL" || isa == "DEFAULT";
        let has_bf16 = isa == "AVX512_CORE_BF16"
            || isa.starts_with("AVX10")
            || isa.contains("FP16")
            || isa.contains("AMX");
        !unlimited && !has_bf16
    });
    let aten_capped = aten_capability
        .is_some_and(|cap| matches!(cap.trim().to_ascii_lowercase().as_str(), "default" | "avx2"));
    onednn_capped || aten_capped
}

/// Whether bf16 compute is fast on `device`: always on CUDA, on the CPU only with native bf16.
pub fn bf16_is_fast(device: Device) -> bool {
    device.is_cuda() || cpu_has_native_bf16()
}

/// One line on what this CPU offers the tensor kernels, for logs and benchmark results.
pub fn cpu_capability() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let aten = std::env::var("ATEN_CPU_CAPABILITY").unwrap_or_default();
        let isa = if has!("avx512f") && !matches!(aten.as_str(), "default" | "avx2") {
            "AVX-512"
        } else if has!("avx2") {
            "AVX2"
        } else {
            "SSE"
        };
        let bf16 = if cpu_has_native_bf16() {
            "native bf16 (avx512_bf16)"
        } else {
            "no native bf16 (bf16 paths run in fp32)"
        };
        let caps: Vec<String> = ["ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"]
            .into_iter()
            .filter_map(|var| {
                std::env::var(var)
                    .ok()
                    .map(|value| format!("{var}={value}"))
            })
            .collect();
        let capped = if caps.is_empty() {
            String::new()
        } else {
            format!(", kernels capped by {}", caps.join(" "))
        };
        format!(
            "x86_64 {isa}, {bf16}, {} threads{capped}",
            tch::get_num_threads()
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        format!(
            "{}, no native bf16 (bf16 paths run in fp32), {} threads",
            std::env::consts::ARCH,
            tch::get_num_threads()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::isa_capped_below_bf16 as capped;

    #[test]
    fn isa_caps_that_exclude_native_bf16() {
        // oneDNN's ISA names (dnnl_cpu_isa_t, as ONEDNN_MAX_CPU_ISA spells them).
        for isa in [
            "SSE41",
            "AVX",
            "AVX2",
            "avx2",
            "AVX2_VNNI",
            "AVX2_VNNI_2",
            "AVX512_CORE",
        ] {
            assert!(capped(Some(isa), None), "{isa}");
        }
        assert!(capped(Some("AVX512_CORE_VNNI"), None));
        for isa in [
            "AVX512_CORE_BF16",
            "AVX512_CORE_FP16",
            "AVX512_CORE_AMX",
            "AVX10_1_512_AMX_FP16",
            "ALL",
            "DEFAULT",
            "",
        ] {
            assert!(!capped(Some(isa), None), "{isa}");
        }
        // ATen's capabilities (ATEN_CPU_CAPABILITY).
        assert!(capped(None, Some("avx2")));
        assert!(capped(None, Some("default")));
        assert!(!capped(None, Some("avx512")));
        assert!(!capped(None, None));
    }
}
