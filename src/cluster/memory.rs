//! The monitor's memory of the primary: the record loaded from
//! `cluster.state_file` (or, without one, what this process has seen), and
//! a newer record waiting to be written. A new primary is published only
//! once its record is on disk, so a pgsidecar that stops at any moment
//! remembers at least the newest timeline it ever sent writes to.

use std::path::{Path, PathBuf};

use super::record::{self, PrimaryRecord, StateFileError};
use crate::config::{Config, StateFile};

/// How the record is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `state_file = ""`: in memory only, and before the first checks the
    /// configured primary is trusted.
    #[default]
    Off,
    /// The default path is unusable: in memory only, and after a start no
    /// claimant takes writes before every node has answered.
    Volatile,
    /// In this file; without a record there, as `Volatile`.
    File(PathBuf),
}

impl Mode {
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Mode::File(path) => Some(path),
            Mode::Off | Mode::Volatile => None,
        }
    }
}

/// Whether the decided primary may take writes now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Publish {
    Now,
    /// Not until its record is written; why, in words for clients.
    Wait(String),
}

#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub mode: Mode,
    /// What the file holds (without a file: the newest primary seen).
    pub record: Option<PrimaryRecord>,
    /// A newer record to write before its primary is published.
    pending: Option<PrimaryRecord>,
    /// A monitor task is writing `pending`.
    writing: bool,
    /// The last write failed so.
    write_error: Option<String>,
}

impl Memory {
    /// The record in `cluster.state_file`. One that cannot be read is
    /// logged and treated as none, which is the cautious choice: with no
    /// record, writes wait until every node has answered. (An explicitly
    /// set file that is unusable already stopped the start.)
    pub(crate) fn from_config(config: &Config) -> Memory {
        let mode = match config.cluster.state_file() {
            StateFile::Off => Mode::Off,
            StateFile::Set(path) => Mode::File(path.to_path_buf()),
            StateFile::Default(path) => match record::check(path) {
                Ok(()) => Mode::File(path.to_path_buf()),
                Err(error) => {
                    tracing::warn!(%error, "cluster.state_file is not set and its default is unusable: \
                        keeping no record of the primary, so after each start writes wait until every \
                        configured node has answered; set it to a writable file (or \"\" to trust the \
                        configured primary at start)");
                    Mode::Volatile
                }
            },
        };
        let record = mode.path().and_then(|p| match record::load(p) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(%error, "ignoring the state file: no primary will take writes before every node has answered");
                None
            }
        });
        if let Some(r) = &record {
            tracing::info!(primary = %r.primary, timeline = r.timeline, "state file: primaries on older WAL timelines get no writes");
        }
        Memory {
            mode,
            record,
            ..Memory::default()
        }
    }

    /// Called with the record of the primary just decided.
    pub(crate) fn publish(&mut self, record: PrimaryRecord) -> Publish {
        if self.record.as_ref().is_some_and(|r| r.same_as(&record)) {
            self.pending = None;
            return Publish::Now;
        }
        let Some(path) = self.mode.path() else {
            self.record = Some(record);
            return Publish::Now;
        };
        let why = match &self.write_error {
            Some(error) => format!(
                "the new primary {} (WAL timeline {}) could not be recorded: {error}; writes \
                 wait until it is (or set [cluster] state_file = \"\")",
                record.primary, record.timeline
            ),
            None => format!(
                "the new primary {} (WAL timeline {}) is being recorded in {}",
                record.primary,
                record.timeline,
                path.display()
            ),
        };
        self.pending = Some(record);
        Publish::Wait(why)
    }

    /// The record to write, unless a write is already under way.
    pub(crate) fn take_pending(&mut self) -> Option<(PathBuf, PrimaryRecord)> {
        if self.writing {
            return None;
        }
        let path = self.mode.path()?.to_path_buf();
        let record = self.pending.clone()?;
        self.writing = true;
        Some((path, record))
    }

    /// The outcome of writing `record`.
    pub(crate) fn written(&mut self, record: PrimaryRecord, result: Result<(), StateFileError>) {
        self.writing = false;
        match result {
            Ok(()) => {
                tracing::info!(primary = %record.primary, timeline = record.timeline, "recorded the primary in the state file");
                if self.pending.as_ref() == Some(&record) {
                    self.pending = None;
                }
                self.record = Some(record);
                self.write_error = None;
            }
            Err(e) => {
                let text = e.to_string();
                if self.write_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, primary = %record.primary, "cannot record the new primary; writes wait until it is recorded");
                }
                self.write_error = Some(text);
            }
        }
    }
}
