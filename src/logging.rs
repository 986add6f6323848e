//! Where a run reports: TensorBoard event files and `metrics.jsonl` in the run directory
//! (the same names as keys: `train/loss`, `eval/knn_top1`, ... plus `step` and `epoch`),
//! and a progress bar with a summary line per epoch on stderr.
use crate::event_file::EventFile;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use tensorboard_proto::summary::Summary;
use tensorboard_rs::summary::scalar;

/// Writes every logged point to TensorBoard and to `metrics.jsonl` (or, for the ranks of a
/// data-parallel run other than 0, nowhere: rank 0 reports for all); write errors (a full
/// disk) are returned, naming the file.
pub struct MetricsLogger {
    sinks: Option<Sinks>,
}

struct Sinks {
    tensorboard: EventFile,
    jsonl: BufWriter<File>,
}

impl MetricsLogger {
    /// A logger that writes nothing (ranks other than 0).
    pub fn silent() -> MetricsLogger {
        MetricsLogger { sinks: None }
    }

    /// Opens the sinks in `run_dir`, appending to `metrics.jsonl` (a resumed run continues it).
    pub fn new(run_dir: &Path) -> Result<MetricsLogger> {
        let path = run_dir.join("metrics.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLogger {
            sinks: Some(Sinks {
                tensorboard: EventFile::create_in(run_dir)?,
                jsonl: BufWriter::new(file),
            }),
        })
    }

    /// Records scalars at a global step.
    pub fn log(&mut self, step: u64, epoch: f64, scalars: &[(&str, f64)]) -> Result<()> {
        let Some(sinks) = &mut self.sinks else {
            return Ok(());
        };
        let mut record = serde_json::Map::new();
        record.insert("step".into(), step.into());
        record.insert("epoch".into(), epoch.into());
        for &(name, value) in scalars {
            sinks.tensorboard.write(scalar(name, value as f32), step)?;
            record.insert(name.into(), value.into());
        }
        writeln!(sinks.jsonl, "{}", serde_json::Value::Object(record))
            .context("writing metrics.jsonl")?;
        Ok(())
    }

    /// Records a ready-made TensorBoard summary (text, hparams; see [`crate::tensorboard`]).
    pub fn summary(&mut self, summary: Summary, step: u64) -> Result<()> {
        match &mut self.sinks {
            Some(sinks) => sinks.tensorboard.write(summary, step),
            None => Ok(()),
        }
    }

    /// Pushes everything logged so far to disk (at epoch ends and at exit).
    pub fn flush(&mut self) -> Result<()> {
        let Some(sinks) = &mut self.sinks else {
            return Ok(());
        };
        sinks.tensorboard.flush()?;
        sinks.jsonl.flush().context("writing metrics.jsonl")
    }
}

/// A progress bar over one epoch's steps (hidden automatically when stderr is not a terminal).
pub fn epoch_bar(epoch: u64, epochs: u64, steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("static progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_has_step_epoch_and_names() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut logger = MetricsLogger::new(dir.path())?;
        logger.log(5, 0.5, &[("train/loss", 1.25)])?;
        logger.flush()?;
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl"))?;
        let v: serde_json::Value = serde_json::from_str(text.trim())?;
        assert_eq!(v["step"], 5);
        assert_eq!(v["train/loss"], 1.25);
        let events = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("events.out.tfevents")
            });
        assert!(events, "a TensorBoard event file is written");
        Ok(())
    }
}
