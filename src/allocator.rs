//! The process's memory allocator settings, tuned for training.
//!
//! libtorch allocates CPU tensors with the C library's `malloc`. glibc serves every block above
//! its mmap threshold (at most 32 MiB even after its dynamic adjustment) with a fresh `mmap`
//! and returns it with `munmap` on free, so the activations of a training step (a `[256, 64,
//! 32, 32]` f32 tensor is 64 MiB) are page-faulted in and zeroed by the kernel again on every
//! step: measured at about 30% of a ResNet-18 CPU step. Raising the threshold keeps such
//! blocks in the heap, where freed memory is reused by the next step. The cost is that the
//! process keeps its peak heap instead of returning it between steps, which is what a training
//! process wants anyway. (PyTorch users get the same effect with `MALLOC_MMAP_THRESHOLD_` or by
//! preloading jemalloc/tcmalloc; README's Performance section compares the steps both ways.)

/// Largest block the heap serves; larger ones are still mapped directly (1 GiB).
const MMAP_THRESHOLD: i32 = 1 << 30;

/// Keeps large freed blocks in the heap for reuse (see the module docs). Call once, first thing
/// in `main`, before libtorch allocates. A user's own `MALLOC_MMAP_THRESHOLD_` wins.
pub fn keep_freed_tensor_memory() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // exist. A refusal (return 0) leaves glibc's defaults, which are still correct.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
