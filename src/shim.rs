//! Safe wrappers over the C++ shim (`src/csrc/*.cpp`): what tch does not expose (autocast
//! dtype, channels-last memory format, accelerator memory statistics, version queries, and the
//! concat similarity's memory-bounded autograd function).
//!
//! Every shim call that can fail returns a heap-allocated C string (null on success); this
//! module turns it into an `anyhow::Error` and frees it, so no C++ exception or raw pointer
//! ever reaches the rest of the program.
use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, CStr, CString};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn simclr_free_error(error: *mut c_char);
    fn simclr_torch_version() -> *const c_char;
    fn simclr_has_gloo() -> bool;
    fn simclr_has_nccl() -> bool;
    fn simclr_nccl_version() -> i64;
    fn simclr_cudnn_version(out: *mut i64) -> *mut c_char;
    fn simclr_set_autocast(device_type: *const c_char, enabled: bool, dtype: c_int) -> *mut c_char;
    fn simclr_clear_grad(t: *mut C_tensor) -> *mut c_char;
    fn simclr_channels_last(t: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn simclr_accelerator_peak_memory(index: i64, reset: bool, out: *mut i64) -> *mut c_char;
    fn simclr_additive_scores(
        a: *const C_tensor,
        b: *const C_tensor,
        w: *const C_tensor,
        budget: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Turns a shim error string into a Result, freeing the string.
pub(crate) fn check(error: *mut c_char, what: &str) -> Result<()> {
    match take_error(error) {
        None => Ok(()),
        Some(message) => bail!("{what}: {message}"),
    }
}

/// The message of a shim error string (None for null), freeing the string.
pub(crate) fn take_error(error: *mut c_char) -> Option<String> {
    if error.is_null() {
        return None;
    }
    // SAFETY: a non-null return is a NUL-terminated string from strdup, owned by us.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { simclr_free_error(error) };
    Some(message)
}

/// The libtorch version the shim was compiled against (e.g. "2.11.0").
pub fn torch_version() -> String {
    // SAFETY: returns a pointer to a static string literal.
    unsafe { CStr::from_ptr(simclr_torch_version()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether libtorch's Gloo process group (CPU collectives) was compiled into the shim.
pub fn has_gloo() -> bool {
    unsafe { simclr_has_gloo() }
}

/// Whether libtorch's NCCL process group (GPU collectives) was compiled into the shim.
pub fn has_nccl() -> bool {
    unsafe { simclr_has_nccl() }
}

/// The NCCL version code the shim was compiled against (e.g. 22809), if any.
pub fn nccl_version() -> Option<i64> {
    has_nccl().then(|| unsafe { simclr_nccl_version() })
}

/// cuDNN's run-time version, if CUDA and cuDNN are usable on this machine.
pub fn cudnn_version() -> Result<Option<i64>> {
    let mut version = 0i64;
    check(
        unsafe { simclr_cudnn_version(&mut version) },
        "querying cuDNN",
    )?;
    Ok((version > 0).then_some(version))
}

/// Turns autocast on or off for a device type with the given low-precision dtype; tch only
/// offers fp16 autocast, SimCLR is usually trained in bf16.
pub fn set_autocast(device: tch::Device, enabled: bool, dtype: tch::Kind) -> Result<()> {
    let device_type = CString::new(if device.is_cuda() { "cuda" } else { "cpu" })?;
    // c10::ScalarType codes (c10/core/ScalarType.h).
    let code = match dtype {
        tch::Kind::Half => 5,
        tch::Kind::Float => 6,
        tch::Kind::BFloat16 => 15,
        other => bail!("autocast dtype must be f16, f32 or bf16, not {other:?}"),
    };
    let error = unsafe { simclr_set_autocast(device_type.as_ptr(), enabled, code) };
    check(error, "setting autocast")
}

/// Runs `f` under autocast with `dtype` on `device`'s type (`None`: full precision), switching
/// autocast off again afterwards even when `f` fails.
pub fn with_autocast<T>(
    device: tch::Device,
    dtype: Option<tch::Kind>,
    f: impl FnOnce() -> T,
) -> Result<T> {
    let Some(dtype) = dtype else { return Ok(f()) };
    set_autocast(device, true, dtype)?;
    let out = f();
    set_autocast(device, false, dtype)?;
    Ok(out)
}

/// Drops the gradient of `t`, so that the next backward pass stores its gradient rather than
/// adding it to a zeroed one (PyTorch's `zero_grad(set_to_none=True)`, its default): a fill and
/// an addition over every parameter less per step, and the same values (0 + g = g).
pub fn clear_grad(t: &mut Tensor) -> Result<()> {
    // SAFETY: `t` is a live tensor, borrowed mutably for the call.
    check(
        unsafe { simclr_clear_grad(t.as_mut_ptr()) },
        "clearing a gradient",
    )
}

/// `t` in channels-last (NHWC) memory order: same shape and values, strides of an NHWC
/// layout, which cuDNN's convolutions (and their tensor-core kernels) read without transposing.
/// A tensor already in that layout is returned as is (shared storage).
///
/// # Shapes
/// `[B, C, H, W]` -> `[B, C, H, W]`; other ranks are refused.
pub fn channels_last(t: &Tensor) -> Result<Tensor> {
    if t.dim() != 4 {
        bail!("channels-last needs a 4-D tensor, got shape {:?}", t.size());
    }
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `t` outlives the call; on success `out` is a new tensor we own.
    check(
        unsafe { simclr_channels_last(t.as_ptr(), &mut out) },
        "channels-last copy",
    )?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The most bytes the caching allocator of accelerator `index` (a CUDA GPU) has held in
/// tensors since the last reset, then (with `reset`) starts a new peak from the current use:
/// the number `torch.cuda.max_memory_allocated` reports. Fails without an accelerator.
pub fn accelerator_peak_memory(index: usize, reset: bool) -> Result<i64> {
    let mut bytes = 0i64;
    check(
        unsafe { simclr_accelerator_peak_memory(index as i64, reset, &mut bytes) },
        "reading accelerator memory statistics",
    )?;
    Ok(bytes)
}

/// The pairwise scores of the concat/additive similarity, S_ij = Σ_h w_h tanh(a_ih + b_jh),
/// differentiable in `a`, `b` and `w` (`src/csrc/additive_similarity.cpp`). It works through
/// blocks of anchor rows holding at most `chunk_elements` pre-activations each, and its backward
/// recomputes them, so no `[M, K, H]` tensor ever exists, in the forward or the backward pass.
///
/// # Shapes
/// `a [M, H]`, `b [K, H]`, `w [H]`, one dtype and device -> `[M, K]`.
pub fn additive_scores(a: &Tensor, b: &Tensor, w: &Tensor, chunk_elements: i64) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the three tensors outlive the call; on success `out` is a new tensor we own.
    let error = unsafe {
        simclr_additive_scores(a.as_ptr(), b.as_ptr(), w.as_ptr(), chunk_elements, &mut out)
    };
    check(error, "additive similarity")?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn versions_match_the_linked_libtorch() {
        assert!(torch_version().starts_with("2.11"), "{}", torch_version());
    }

    #[test]
    fn channels_last_keeps_values_and_reorders_strides() -> Result<()> {
        let x = Tensor::rand([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let y = channels_last(&x)?;
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), [60, 1, 15, 3]); // NHWC: channels innermost
        assert!(y.equal(&x));
        assert!(channels_last(&x.flatten(0, 1)).is_err());
        Ok(())
    }

    #[test]
    fn cpu_autocast_runs_matmul_in_bf16() -> Result<()> {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let inside = with_autocast(Device::Cpu, Some(Kind::BFloat16), || a.matmul(&a).kind())?;
        assert_eq!(inside, Kind::BFloat16);
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        Ok(())
    }
}
