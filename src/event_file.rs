//! TensorBoard event files written synchronously, so that a write error (a full disk) comes
//! back to the caller as an error instead of panicking a background thread.
//!
//! An event file is a TFRecord stream of `Event` protobufs, the first one holding only the
//! file version. Each record is: the data length (u64, little-endian), the masked CRC-32C of
//! those 8 bytes (u32 LE), the data, the masked CRC-32C of the data (u32 LE).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use protobuf::Message;
use tensorboard_proto::event::Event;
use tensorboard_proto::summary::Summary;
use tensorboard_rs::masked_crc32c::masked_crc32c;

/// An open event file in a run directory.
pub struct EventFile {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventFile {
    /// Creates a new event file in `dir`, named as TensorBoard expects
    /// (`events.out.tfevents.<seconds>.<host>.<pid>`), and writes its version record.
    pub fn create_in(dir: &Path) -> Result<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let name = format!(
            "events.out.tfevents.{}.{host}.{}",
            now().floor() as u64,
            std::process::id()
        );
        Self::create(&dir.join(name))
    }

    /// Creates the event file `path` and writes its version record.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut events = Self {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
        };
        let mut version = Event::new();
        version.set_wall_time(now());
        version.set_file_version("brain.Event:2".into());
        events.write_event(&version)?;
        Ok(events)
    }

    /// Appends `summary` at `step`.
    pub fn write(&mut self, summary: Summary, step: u64) -> Result<()> {
        let mut event = Event::new();
        event.set_wall_time(now());
        event.set_step(step as i64);
        event.set_summary(summary);
        self.write_event(&event)
    }

    /// Pushes buffered records to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }

    fn write_event(&mut self, event: &Event) -> Result<()> {
        let data = event
            .write_to_bytes()
            .context("encoding a TensorBoard event")?;
        self.out
            .write_all(&record(&data))
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensorboard_rs::summary::scalar;

    #[test]
    fn records_are_framed_and_parse_back() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("events");
        let mut events = EventFile::create(&path)?;
        events.write(scalar("train/loss", 1.5), 7)?;
        events.flush()?;
        let bytes = std::fs::read(&path)?;
        let mut rest = &bytes[..];
        let mut parsed = Vec::new();
        while !rest.is_empty() {
            let len = u64::from_le_bytes(rest[..8].try_into()?) as usize;
            let len_crc = u32::from_le_bytes(rest[8..12].try_into()?);
            assert_eq!(len_crc, masked_crc32c(&rest[..8]));
            let data = &rest[12..12 + len];
            let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into()?);
            assert_eq!(data_crc, masked_crc32c(data));
            parsed.push(Event::parse_from_bytes(data)?);
            rest = &rest[16 + len..];
        }
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].get_file_version(), "brain.Event:2");
        assert_eq!(parsed[1].get_step(), 7);
        assert_eq!(
            parsed[1].get_summary().get_value()[0].get_tag(),
            "train/loss"
        );
        Ok(())
    }

    #[test]
    fn a_full_disk_is_an_error_naming_the_file() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let mut events = match EventFile::create(Path::new("/dev/full")) {
            Ok(events) => events,
            Err(err) => panic!("opening /dev/full: {err:#}"),
        };
        let mut result = Ok(());
        for step in 0..10_000 {
            result = events
                .write(scalar("x", 0.0), step)
                .and_then(|()| events.flush());
            if result.is_err() {
                break;
            }
        }
        let err = format!("{:#}", result.unwrap_err());
        assert!(
            err.contains("/dev/full") && err.contains("No space left"),
            "{err}"
        );
    }
}
