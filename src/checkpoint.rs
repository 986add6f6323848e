//! Checkpoints: one file holding the weights, the optimiser state and a JSON record of the
//! run's position and configuration, written atomically so that a crash never leaves a
//! half-written `last.pt`.
//!
//! Layout (libtorch's tensor archive, read with `tch::Tensor::load_multi`): `model.<var-store name>` for every
//! variable (weights and batch-norm running statistics), `optim.<i>.<name>` for the
//! optimiser's buffers, `meta`, the UTF-8 bytes of [`Meta`] as JSON, and `checksum`, the
//! CRC-32 of every other entry's name and bytes, verified on load so that a corrupt file is
//! reported instead of resumed from. [`load_latest`] falls back to the newest periodic copy
//! that verifies.
use crate::config::Config;
use crate::model::SimClr;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where a run stands: enough, with the tensors, to continue it exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Format version of this file.
    pub version: u32,
    /// Optimiser updates made so far (the learning-rate schedule's position).
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Optimiser's own update counter (AdamW bias correction).
    pub optimizer_steps: u64,
    pub config: Config,
}

impl Meta {
    /// The record of a run at `step` after `epoch` completed epochs.
    pub fn new(step: u64, epoch: u64, optimizer_steps: u64, config: Config) -> Meta {
        Meta {
            version: VERSION,
            step,
            epoch,
            optimizer_steps,
            config,
        }
    }
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub meta: Meta,
    /// Variables by var-store name.
    pub model: HashMap<String, Tensor>,
    /// Optimiser buffers by name.
    pub optimizer: HashMap<String, Tensor>,
}

const VERSION: u32 = 1;
const MODEL: &str = "model.";
const OPTIM: &str = "optim.";
const META: &str = "meta";
const CHECKSUM: &str = "checksum";

/// CRC-32 over the entries' names and raw bytes, in name order.
fn checksum(named: &[(String, Tensor)]) -> Result<u32> {
    let mut order: Vec<&(String, Tensor)> = named.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = crc32fast::Hasher::new();
    for (name, tensor) in order {
        hasher.update(name.as_bytes());
        let bytes = tensor
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1])
            .view_dtype(Kind::Uint8);
        hasher.update(&Vec::<u8>::try_from(bytes)?);
    }
    Ok(hasher.finalize())
}

/// The checkpoint file a run directory resumes from.
pub fn last_path(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints").join("last.pt")
}

/// Writes `path` atomically: a temporary file beside it, synced, then renamed over it.
pub fn save(
    path: &Path,
    model: &HashMap<String, Tensor>,
    optimizer: &[(String, Tensor)],
    meta: &Meta,
) -> Result<()> {
    let json = serde_json::to_vec(meta)?;
    let mut named: Vec<(String, Tensor)> = model
        .iter()
        .map(|(k, t)| (format!("{MODEL}{k}"), t.to_device(Device::Cpu)))
        .collect();
    named.extend(
        optimizer
            .iter()
            .map(|(k, t)| (format!("{OPTIM}{k}"), t.to_device(Device::Cpu))),
    );
    named.push((META.to_string(), Tensor::from_slice(&json)));
    named.push((
        CHECKSUM.to_string(),
        Tensor::from_slice(&[i64::from(checksum(&named)?)]),
    ));
    write_tensors_atomically(&named, path)
}

/// Writes `named` tensors as a libtorch archive at `path` atomically: serialised in memory
/// (libtorch's file writer aborts the process when a write fails in its destructor, e.g. on
/// a full disk), written to a temporary file beside `path`, synced, renamed over `path`. On
/// failure the temporary file is removed and `path` is untouched.
pub fn write_tensors_atomically(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .context("checkpoint path has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let buffer = SharedBuffer::default();
    Tensor::save_multi_to_stream(named, buffer.clone())
        .with_context(|| format!("serialising {}", path.display()))?;
    let bytes = std::mem::take(&mut *buffer.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let tmp = path.with_extension("pt.tmp");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()
        })
        .with_context(|| format!("writing {}", tmp.display()));
    if let Err(err) = written {
        // A full disk: free the space the partial file holds; the previous file is untouched.
        let _ = std::fs::remove_file(&tmp);
        return Err(err.context(format!("{} is unchanged", path.display())));
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// An in-memory `Write` target that outlives the `'static` stream tch takes ownership of.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("checkpoint buffer poisoned"))?;
        buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes renames and removals in `dir` durable (best effort: some filesystems refuse).
fn sync_dir(dir: &Path) {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
}

/// The periodic copy of the checkpoints of `epoch` beside `last`.
fn periodic_path(last: &Path, epoch: u64) -> PathBuf {
    last.with_file_name(format!("epoch-{epoch:04}.pt"))
}

/// The epoch of a periodic copy's file name (`epoch-NNNN.pt`).
fn periodic_epoch(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("epoch-")?
        .strip_suffix(".pt")?
        .parse()
        .ok()
}

/// The periodic copies beside `last`, oldest first.
fn periodic_copies(last: &Path) -> Vec<(u64, PathBuf)> {
    let Some(dir) = last.parent() else {
        return Vec::new();
    };
    let mut copies: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_else(|_| Vec::new())
        .into_iter()
        .filter_map(|p: PathBuf| Some((periodic_epoch(&p)?, p)))
        .collect();
    copies.sort();
    copies
}

/// Keeps `last` (just written, after `epoch` epochs) as the periodic copy `epoch-NNNN.pt`, then
/// removes all but the newest `keep_last` copies (0: keep all); `epoch-0000.pt`, the random
/// initialisation every evaluation compares against, is always kept. The copy is a hard link
/// made under a temporary name and renamed (atomic, and no extra disk space); where links are
/// not supported it is a copy, also renamed into place. Links are safe because [`save`] never
/// writes into `last`: it renames a new file over it.
pub fn keep_periodic(last: &Path, epoch: u64, keep_last: usize) -> Result<()> {
    let periodic = periodic_path(last, epoch);
    let tmp = periodic.with_extension("pt.tmp");
    let _ = std::fs::remove_file(&tmp);
    let linked = std::fs::hard_link(last, &tmp).or_else(|_| std::fs::copy(last, &tmp).map(|_| ()));
    if let Err(err) = linked {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("writing {}", periodic.display()));
    }
    std::fs::rename(&tmp, &periodic)
        .with_context(|| format!("renaming {} to {}", tmp.display(), periodic.display()))?;
    if keep_last > 0 {
        let copies: Vec<PathBuf> = periodic_copies(last)
            .into_iter()
            .filter(|&(e, _)| e > 0)
            .map(|(_, p)| p)
            .collect();
        for old in &copies[..copies.len().saturating_sub(keep_last)] {
            std::fs::remove_file(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    if let Some(dir) = last.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Reads a checkpoint written by [`save`], tensors on `device`.
pub fn load(path: &Path, device: Device) -> Result<Checkpoint> {
    if !path.is_file() {
        bail!("checkpoint {} does not exist", path.display());
    }
    let mut named = Tensor::load_multi(path)
        .with_context(|| format!("reading checkpoint {}", path.display()))?;
    let stored = named
        .iter()
        .position(|(name, _)| name == CHECKSUM)
        .map(|i| named.remove(i).1.int64_value(&[]))
        .with_context(|| {
            format!(
                "{} is not a simclr checkpoint (no checksum record)",
                path.display()
            )
        })?;
    if stored != i64::from(checksum(&named)?) {
        bail!(
            "checkpoint {} is corrupt (checksum mismatch)",
            path.display()
        );
    }
    let (mut model, mut optimizer, mut meta) = (HashMap::new(), HashMap::new(), None);
    for (name, tensor) in named {
        let tensor = tensor.to_device(device);
        if let Some(key) = name.strip_prefix(MODEL) {
            model.insert(key.to_string(), tensor);
        } else if let Some(key) = name.strip_prefix(OPTIM) {
            optimizer.insert(key.to_string(), tensor);
        } else if name == META {
            let bytes = Vec::<u8>::try_from(tensor.to_device(Device::Cpu).to_kind(Kind::Uint8))?;
            meta = Some(serde_json::from_slice::<Meta>(&bytes).with_context(|| {
                format!(
                    "checkpoint {} has an unreadable meta record",
                    path.display()
                )
            })?);
        }
    }
    let meta = meta.with_context(|| {
        format!(
            "{} is not a simclr checkpoint (no meta record)",
            path.display()
        )
    })?;
    if meta.version != VERSION {
        bail!(
            "checkpoint {} has format version {}, this build reads {VERSION}",
            path.display(),
            meta.version
        );
    }
    Ok(Checkpoint {
        meta,
        model,
        optimizer,
    })
}

/// The newest checkpoint of a run that loads and verifies: `last.pt`, else the periodic copies
/// from the newest down, each failure reported on stderr.
pub fn load_latest(run_dir: &Path, device: Device) -> Result<Checkpoint> {
    let last = last_path(run_dir);
    let periodic: Vec<PathBuf> = periodic_copies(&last).into_iter().map(|(_, p)| p).collect();
    for path in std::iter::once(last.clone()).chain(periodic.into_iter().rev()) {
        match load(&path, device) {
            Ok(ckpt) => return Ok(ckpt),
            Err(err) if path == last && !path.exists() => return Err(err),
            Err(err) => eprintln!("warning: {err:#}; trying an older checkpoint"),
        }
    }
    bail!(
        "no readable checkpoint in {}",
        last.parent().unwrap_or(run_dir).display()
    )
}

/// Copies saved variables into the model's, requiring the same names and shapes.
pub fn restore_variables(
    vars: &HashMap<String, Tensor>,
    saved: &HashMap<String, Tensor>,
) -> Result<()> {
    for (name, var) in vars {
        let value = saved
            .get(name)
            .with_context(|| format!("checkpoint lacks variable '{name}'"))?;
        if value.size() != var.size() {
            bail!(
                "checkpoint variable '{name}' has shape {:?}, the model needs {:?}",
                value.size(),
                var.size()
            );
        }
        tch::no_grad(|| var.shallow_clone().copy_(value));
    }
    Ok(())
}

/// Rebuilds the network of a checkpoint on `device` with its weights: what every command that
/// starts from a trained model (export, evaluation) needs. Returns the var store too, which owns
/// the weights, and the checkpoint's record (configuration, step).
pub fn load_model(path: &Path, device: Device) -> Result<(tch::nn::VarStore, SimClr, Meta)> {
    let ckpt = load(path, device)?;
    let cfg = &ckpt.meta.config;
    let vs = tch::nn::VarStore::new(device);
    let model = SimClr::new(&vs.root(), &cfg.model, cfg.data.image_size);
    restore_variables(&vs.variables(), &ckpt.model)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((vs, model, ckpt.meta))
}

/// The run directory a checkpoint belongs to (`RUN/checkpoints/NAME.pt` -> `RUN`), if it is
/// laid out as `simclr train` writes it.
pub fn run_dir_of(checkpoint: &Path) -> Option<&Path> {
    let dir = checkpoint.parent()?;
    (dir.file_name()? == "checkpoints").then_some(dir.parent()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_copies_are_links_and_only_the_newest_k_are_kept() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let last = dir.path().join("last.pt");
        for epoch in 0..5u64 {
            // As `save` does: a new file renamed over `last`, so older links keep their state.
            std::fs::write(dir.path().join("new"), format!("state {epoch}"))?;
            std::fs::rename(dir.path().join("new"), &last)?;
            keep_periodic(&last, epoch, 2)?;
        }
        let names: Vec<u64> = periodic_copies(&last).iter().map(|(e, _)| *e).collect();
        assert_eq!(names, [0, 3, 4], "the initial weights and the newest two");
        assert_eq!(std::fs::read_to_string(periodic_path(&last, 3))?, "state 3");
        assert!(!dir.path().join("epoch-0004.pt.tmp").exists());
        keep_periodic(&last, 5, 0)?;
        assert_eq!(
            periodic_copies(&last).len(),
            4,
            "keep_last 0 keeps every copy"
        );
        Ok(())
    }

    #[test]
    fn save_then_load_round_trips() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("checkpoints").join("last.pt");
        let model = HashMap::from([(
            "encoder.conv1.weight".to_string(),
            Tensor::from_slice(&[1.0f32, 2.0]),
        )]);
        let optim = vec![(
            "0.encoder.conv1.weight".to_string(),
            Tensor::from_slice(&[3.0f32, 4.0]),
        )];
        let meta = Meta::new(12, 3, 12, Config::default());
        save(&path, &model, &optim, &meta)?;
        assert!(
            !path.with_extension("pt.tmp").exists(),
            "temporary file renamed away"
        );
        let back = load(&path, Device::Cpu)?;
        assert_eq!(back.meta.step, 12);
        assert_eq!(back.meta.config, Config::default());
        assert_eq!(
            Vec::<f32>::try_from(&back.model["encoder.conv1.weight"])?,
            [1.0, 2.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(&back.optimizer["0.encoder.conv1.weight"])?,
            [3.0, 4.0]
        );
        Ok(())
    }

    #[test]
    fn a_flipped_byte_is_detected() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("last.pt");
        let big = Tensor::arange(4096, (Kind::Float, Device::Cpu));
        let model = HashMap::from([("w".to_string(), big)]);
        save(&path, &model, &[], &Meta::new(1, 0, 1, Config::default()))?;
        let mut bytes = std::fs::read(&path)?;
        // Inside the tensor data (the archive stores it uncompressed): changes a weight's value.
        let at = bytes
            .windows(4)
            .position(|w| w == 1000.0f32.to_le_bytes())
            .expect("the value 1000.0 is stored");
        bytes[at] ^= 0x40;
        std::fs::write(&path, bytes)?;
        let err = load(&path, Device::Cpu)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            err.contains("corrupt") || err.contains("reading checkpoint"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn missing_and_foreign_files_are_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("nope.pt");
        assert!(load(&missing, Device::Cpu)
            .err()
            .map(|e| e.to_string().contains("does not exist"))
            .unwrap_or(false));
        let foreign = dir.path().join("foreign.pt");
        Tensor::save_multi(&[("x", Tensor::from_slice(&[1.0f32]))], &foreign)?;
        let err = load(&foreign, Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a simclr checkpoint"), "{err}");
        Ok(())
    }
}
