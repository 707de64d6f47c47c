//! The one error type of the throwaway cluster, each variant carrying what a
//! person needs to fix the problem without reading the code.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Result alias for [`ClusterError`].
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// Why a local cluster could not be started or operated.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No directory holding all the server binaries was found.
    #[error(
        "PostgreSQL server binaries not found: install them with \
         `apt-get install -y postgresql postgresql-client` (or put the directory \
         holding initdb on PATH); looked in: {}",
        Places(.looked_in)
    )]
    BinariesNotFound {
        /// Each place looked in, with what was wrong there.
        looked_in: Vec<Lookup>,
    },

    /// The `psql` client is needed to create roles and run test SQL.
    #[error(
        "psql not found in {} nor on PATH: install it with \
         `apt-get install -y postgresql-client`",
        .bindir.display()
    )]
    PsqlNotFound {
        /// The server bin directory that was searched first.
        bindir: PathBuf,
    },

    /// The binaries are older than the streaming-replication setup supports.
    #[error(
        "PostgreSQL {version} in {} is too old: the local cluster needs 12 or newer",
        .bindir.display()
    )]
    UnsupportedVersion {
        /// Full version string reported by `postgres --version`.
        version: String,
        /// Where the binaries were found.
        bindir: PathBuf,
    },

    /// Running as root, but there is no `postgres` user to run servers as.
    #[error(
        "running as root, so the servers must run as user `postgres`, which does not \
         exist: create it with `useradd --system --user-group postgres` \
         (installing the postgresql package does) or run as a normal user"
    )]
    NoPostgresUser,

    /// Running as root, the temp dir must be reachable by user `postgres`.
    #[error(
        "{} is not traversable by user `postgres` (needs o+x), so servers running as \
         `postgres` cannot use a cluster under it: set TMPDIR to a directory like /tmp",
        .dir.display()
    )]
    NotTraversable {
        /// The first ancestor that blocks access.
        dir: PathBuf,
    },

    /// The caller's options cannot produce a working cluster.
    #[error("invalid cluster options: {reason} (got {value:?})")]
    InvalidOptions {
        /// What is wrong and what to do instead.
        reason: &'static str,
        /// The offending value (role name, setting name, …).
        value: String,
    },

    /// A program could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line, for copy-pasting.
        command: String,
        /// The OS error.
        source: io::Error,
    },

    /// A program ran and failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line, for copy-pasting.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (or stdout when stderr was empty), trimmed.
        output: String,
    },

    /// A server did not start; the tail of its log says why.
    #[error("{node} did not start (log {}):\n{tail}", .log.display())]
    StartFailed {
        /// Node name, e.g. `node1`.
        node: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A polled condition did not become true in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition, in words.
        what: String,
        /// How long was waited.
        waited: Duration,
    },

    /// A file-system operation failed.
    #[error("could not {action} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// A node handle was used for something only a standby can do.
    #[error("{node} is not a replica (it is not in recovery)")]
    NotAReplica {
        /// Node name.
        node: String,
    },

    /// A server answered something that was not expected.
    #[error("unexpected answer from {node} to `{sql}`: {answer:?}")]
    UnexpectedAnswer {
        /// Node name.
        node: String,
        /// The query.
        sql: String,
        /// What came back.
        answer: String,
    },
}

/// One place searched for server binaries and why it did not qualify.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Where: a directory or a description such as `PATH`.
    pub place: String,
    /// What was wrong there, e.g. "no initdb" or "pg_basebackup missing".
    pub problem: String,
}

/// Formats a list of lookups as `place (problem); place (problem)`.
struct Places<'a>(&'a [Lookup]);

impl fmt::Display for Places<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} ({})", l.place, l.problem)?;
        }
        Ok(())
    }
}

impl ClusterError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ClusterError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
