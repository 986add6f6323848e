//! Multi-process data parallelism over libtorch's own c10d, reached through the C++ shim
//! (`src/csrc/dist.cpp`, `src/csrc/sync_batch_norm.cpp`): a TCPStore rendezvous, then
//! ProcessGroupGloo (CPU tensors) or ProcessGroupNCCL (CUDA tensors).
//!
//! - [`ProcessGroup`]: the safe handle: broadcast, all-reduce (sum, average, max), all-gather,
//!   barrier, each bounded by the group's timeout, each error naming this rank.
//! - [`ProcessGroup::all_gather_with_grad`]: the projections of every rank for global negatives;
//!   its backward sums the incoming gradient over the ranks and keeps this rank's slice.
//! - [`ProcessGroup::sync_batch_norm`]: batch norm with statistics over the global batch
//!   (SimCLR, Section 4: "we aggregate BN mean and variance over all devices during training").
//! - [`launcher`] starts and watches the worker processes, [`ddp`] keeps their parameters equal.
//!
//! Collectives inside autograd's backward pass cannot return an error through the engine:
//! they defer it to the group, and [`ProcessGroup::check`] reports it after `backward()`.
pub mod ddp;
pub mod launcher;

use crate::shim::{check, take_error};
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;
use std::time::Duration;
use tch::{Device, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn simclr_group_new(
        backend: *const c_char,
        host: *const c_char,
        port: c_int,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        device_index: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn simclr_group_free(group: *mut c_void);
    fn simclr_group_take_error(group: *mut c_void) -> *mut c_char;
    fn simclr_group_broadcast(
        group: *mut c_void,
        tensor: *mut C_tensor,
        root: c_int,
    ) -> *mut c_char;
    fn simclr_group_all_reduce(group: *mut c_void, tensor: *mut C_tensor, op: c_int)
        -> *mut c_char;
    fn simclr_group_all_gather(
        group: *mut c_void,
        input: *mut C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn simclr_group_barrier(group: *mut c_void) -> *mut c_char;
    fn simclr_all_gather_with_grad(
        group: *mut c_void,
        input: *mut C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn simclr_sync_batch_norm(
        group: *mut c_void,
        input: *mut C_tensor,
        weight: *mut C_tensor,
        bias: *mut C_tensor,
        running_mean: *mut C_tensor,
        running_var: *mut C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Where one process sits in the job and how it meets the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Host of rank 0, which serves the TCPStore.
    pub master_addr: String,
    pub master_port: u16,
    /// This process's global rank in `0..world_size`.
    pub rank: usize,
    pub world_size: usize,
    /// This process's index on its node (its GPU with NCCL).
    pub local_rank: usize,
}

/// How a reduction combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size (Gloo has no average of its own).
    Avg,
    Max,
}

/// A process group of this job: every collective must be called by every rank, in the same
/// order, with tensors of the same shape.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world_size: usize,
    device: Device,
    /// An error deferred by a layer that cannot return one (sync batch norm inside a module).
    deferred: Mutex<Option<String>>,
}

// SAFETY: the C++ group is reference counted with atomic counts and c10d backends accept
// collectives from any thread; the Rust side never hands out the raw pointer.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    /// Meets the other ranks at `rv.master_addr:master_port` (rank 0 serves the store) and
    /// creates the backend for `device`: Gloo on the CPU, NCCL on CUDA. Fails when the
    /// others do not arrive within `timeout`.
    pub fn new(rv: &Rendezvous, device: Device, timeout: Duration) -> Result<ProcessGroup> {
        let (backend, index) = match device {
            Device::Cpu => ("gloo", -1),
            Device::Cuda(i) => ("nccl", i as c_int),
            other => bail!("distributed training supports cpu and cuda devices, not {other:?}"),
        };
        let backend_c = CString::new(backend)?;
        let host = CString::new(rv.master_addr.as_str())
            .with_context(|| format!("master address {:?}", rv.master_addr))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; on success `raw` holds one reference we own.
        let error = unsafe {
            simclr_group_new(
                backend_c.as_ptr(),
                host.as_ptr(),
                c_int::from(rv.master_port),
                rv.rank as c_int,
                rv.world_size as c_int,
                timeout.as_millis() as i64,
                index,
                &mut raw,
            )
        };
        check(
            error,
            &format!(
                "rank {} of {}: {backend} rendezvous at {}:{}",
                rv.rank, rv.world_size, rv.master_addr, rv.master_port
            ),
        )?;
        Ok(ProcessGroup {
            raw,
            rank: rv.rank,
            world_size: rv.world_size,
            device,
            deferred: Mutex::new(None),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The device collectives expect tensors on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The error context of a collective: which rank, which operation.
    fn what(&self, op: &str) -> String {
        format!("rank {} of {}: {op}", self.rank, self.world_size)
    }

    /// Overwrites `tensor` on every rank with rank `root`'s.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        // SAFETY: the tensor outlives the call; the shim writes into its storage.
        let error = unsafe { simclr_group_broadcast(self.raw, tensor.as_mut_ptr(), root as c_int) };
        check(error, &self.what("broadcast"))
    }

    /// Replaces `tensor` on every rank with the reduction over the ranks.
    pub fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        let code = if op == ReduceOp::Max { 1 } else { 0 };
        // SAFETY: as in `broadcast`.
        let error = unsafe { simclr_group_all_reduce(self.raw, tensor.as_mut_ptr(), code) };
        check(error, &self.what("all-reduce"))?;
        if op == ReduceOp::Avg {
            let _ = tensor.divide_scalar_(self.world_size as f64);
        }
        Ok(())
    }

    /// Every rank's `input` concatenated along dim 0 in rank order, without gradient.
    ///
    /// # Shapes
    /// `[R, ...]` (the same on every rank) -> `[world_size * R, ...]`.
    pub fn all_gather(&self, input: &Tensor) -> Result<Tensor> {
        self.gather(input, false)
    }

    /// As [`ProcessGroup::all_gather`], differentiable: the gradient of this rank's input is its
    /// slice of the incoming gradient summed over the ranks, since every rank's loss depends on
    /// every rank's rows. With each rank's loss a mean over its own anchors and gradients then
    /// averaged over the ranks, the parameters get the gradient of the loss over the global
    /// batch. An error of the backward pass's all-reduce shows up in [`ProcessGroup::check`].
    ///
    /// # Shapes
    /// `[R, ...]` -> `[world_size * R, ...]`.
    pub fn all_gather_with_grad(&self, input: &Tensor) -> Result<Tensor> {
        self.gather(input, true)
    }

    fn gather(&self, input: &Tensor, with_grad: bool) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        // SAFETY: the input outlives the call; on success `out` is a new tensor we own.
        let error = unsafe {
            if with_grad {
                simclr_all_gather_with_grad(self.raw, input.as_ptr() as *mut _, &mut out)
            } else {
                simclr_group_all_gather(self.raw, input.as_ptr() as *mut _, &mut out)
            }
        };
        check(error, &self.what("all-gather"))?;
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the group is alive for `&self`.
        check(
            unsafe { simclr_group_barrier(self.raw) },
            &self.what("barrier"),
        )
    }

    /// Training-mode batch norm of `input` with statistics over every rank's batch; updates
    /// the running statistics in place (identically on every rank). `weight` and `bias` are
    /// optional (no scale / no shift). Differentiable in `input`, `weight` and `bias`; an error
    /// of its backward pass shows up in [`ProcessGroup::check`].
    ///
    /// # Shapes
    /// `input [N, C, ...]`, the others `[C]` -> `[N, C, ...]`.
    #[allow(clippy::too_many_arguments)]
    pub fn sync_batch_norm(
        &self,
        input: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        let optional =
            |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut _);
        let mut out = std::ptr::null_mut();
        // SAFETY: every tensor outlives the call; the running statistics are updated in place;
        // on success `out` is a new tensor we own.
        let error = unsafe {
            simclr_sync_batch_norm(
                self.raw,
                input.as_ptr() as *mut _,
                optional(weight),
                optional(bias),
                running_mean.as_ptr() as *mut _,
                running_var.as_ptr() as *mut _,
                momentum,
                eps,
                &mut out,
            )
        };
        check(error, &self.what("sync batch norm"))?;
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    /// Keeps `error` for [`ProcessGroup::check`]: for a layer whose interface cannot fail.
    pub fn defer(&self, error: anyhow::Error) {
        let mut slot = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| format!("{error:#}"));
    }

    /// Fails with the first error that a collective deferred (in a backward pass, or in a
    /// layer); call after each forward and backward pass.
    pub fn check(&self) -> Result<()> {
        let mut slot = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(error) = slot.take() {
            return Err(anyhow!(error));
        }
        // SAFETY: returns null or a heap string, which take_error frees.
        match take_error(unsafe { simclr_group_take_error(self.raw) }) {
            None => Ok(()),
            Some(message) => Err(anyhow!("{}: {message}", self.what("backward pass"))),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `new`; autograd graphs hold their own.
        unsafe { simclr_group_free(self.raw) }
    }
}
