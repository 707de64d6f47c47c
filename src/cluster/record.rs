//! The monitor's memory across restarts: the primary it last let take
//! writes, that primary's WAL timeline and the cluster's system identifier,
//! kept in `cluster.state_file`. A promotion always starts a new timeline,
//! so after a restart a node claiming the primary role on an older
//! timeline than the one recorded is a primary from before a failover, and
//! gets no writes however the config names it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::NodeAddr;

/// What is remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrimaryRecord {
    /// `pg_control_system().system_identifier`: shared by a primary and
    /// every node cloned from it, different for any other cluster. `None`
    /// when the monitor could not read it.
    pub system: Option<u64>,
    pub timeline: u32,
    pub primary: NodeAddr,
}

impl PrimaryRecord {
    /// Whether `other` says the same (an unknown system identifier on
    /// either side matches any).
    pub(crate) fn same_as(&self, other: &PrimaryRecord) -> bool {
        self.timeline == other.timeline
            && self.primary == other.primary
            && (self.system.is_none() || other.system.is_none() || self.system == other.system)
    }
}

/// The file's layout. The system identifier is written as a decimal
/// string: it is a u64, and TOML integers are signed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    system_identifier: Option<String>,
    timeline: u32,
    primary: NodeAddr,
}

const HEADER: &str = "\
# pgsidecar's record of the primary it sends writes to ([cluster] state_file).
# After a restart, a node claiming the primary role on a WAL timeline older
# than this one gets no writes. Delete this file only if that older history
# is meant to be kept (then pgsidecar waits for every configured node to
# answer before it picks a primary again).
";

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error(
        "{path} is not a pgsidecar state file ({message}); fix or delete it \
         (pgsidecar then waits for every configured node to answer before it picks a primary)"
    )]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
}

/// Reads the record; `None` if the file does not exist or holds nothing
/// but comments.
pub(crate) fn load(path: &Path) -> Result<Option<PrimaryRecord>, StateFileError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StateFileError::Read {
                path: path.into(),
                error,
            });
        }
    };
    parse(&text).map_err(|message| StateFileError::Invalid {
        path: path.into(),
        message,
    })
}

fn parse(text: &str) -> Result<Option<PrimaryRecord>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    if table.is_empty() {
        return Ok(None);
    }
    let file: FileLayout = table
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    let system = match file.system_identifier {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| format!("system_identifier `{s}` is not a number"))?,
        ),
        None => None,
    };
    if file.timeline == 0 {
        return Err("timeline 0 does not exist".into());
    }
    Ok(Some(PrimaryRecord {
        system,
        timeline: file.timeline,
        primary: file.primary,
    }))
}

fn render(record: &PrimaryRecord) -> String {
    let file = FileLayout {
        system_identifier: record.system.map(|s| s.to_string()),
        timeline: record.timeline,
        primary: record.primary.clone(),
    };
    let body = toml::to_string(&file).unwrap_or_default();
    format!("{HEADER}{body}")
}

/// A temporary file next to `path`, private to this process.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Replaces the record: written to a temporary file, flushed to disk and
/// renamed over the old one, so a crash leaves either record, whole.
pub(crate) fn store(path: &Path, record: &PrimaryRecord) -> Result<(), StateFileError> {
    let failed = |error| StateFileError::Write {
        path: path.into(),
        error,
    };
    let temp = temp_path(path);
    let written = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(render(record).as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(failed(e));
    }
    // The rename itself is durable once the directory is flushed.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// At startup: the file must be readable if it exists, and writable (a
/// temporary file is created and removed in its directory), so that a
/// misplaced path is a startup error rather than a surprise at failover.
pub fn check(path: &Path) -> Result<(), StateFileError> {
    load(path)?;
    let temp = temp_path(path);
    fs::File::create(&temp)
        .and_then(|_| fs::remove_file(&temp))
        .map_err(|error| StateFileError::Write {
            path: path.into(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PrimaryRecord {
        PrimaryRecord {
            system: Some(u64::MAX - 1),
            timeline: 3,
            primary: "db2:5432".parse().unwrap(),
        }
    }

    #[test]
    fn a_record_survives_the_round_trip_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.state");
        assert_eq!(load(&path).unwrap(), None);
        check(&path).unwrap();
        assert!(!path.exists(), "check leaves no file behind");
        store(&path, &record()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(record()));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# pgsidecar's record"), "{text}");
        assert!(text.contains("timeline = 3"), "{text}");
        let newer = PrimaryRecord {
            timeline: 4,
            ..record()
        };
        store(&path, &newer).unwrap();
        assert_eq!(load(&path).unwrap(), Some(newer));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn comments_only_is_no_record_and_garbage_is_named() {
        assert_eq!(parse("# nothing yet\n").unwrap(), None);
        for (bad, why) in [
            ("timeline = 0\nprimary = \"a:1\"", "timeline 0"),
            ("timeline = 2", "primary"),
            (
                "timeline = 2\nprimary = \"a:1\"\nsystem_identifier = \"x\"",
                "not a number",
            ),
            ("timeline = 2\nprimary = \"a:1\"\nother = 1", "other"),
            ("not toml", ""),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        fs::write(&path, "timeline = 0\nprimary = \"a:1\"").unwrap();
        let err = check(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("delete"),
            "{err}"
        );
    }

    #[test]
    fn an_unwritable_place_fails_the_check() {
        let err = check(Path::new("/nonexistent-dir/cluster.state")).unwrap_err();
        assert!(matches!(err, StateFileError::Write { .. }), "{err}");
    }

    #[test]
    fn an_unknown_system_identifier_matches_any() {
        let unknown = PrimaryRecord {
            system: None,
            ..record()
        };
        assert!(unknown.same_as(&record()) && record().same_as(&unknown));
        let other = PrimaryRecord {
            system: Some(7),
            ..record()
        };
        assert!(!other.same_as(&record()));
    }
}
