//! Finding the installed PostgreSQL server binaries and their major version.
//!
//! Distributions put them in different places: Debian keeps them in
//! `/usr/lib/postgresql/<major>/bin` (only client wrappers are on PATH), source
//! builds and Homebrew put them on PATH. So the search goes PATH, then
//! `pg_config --bindir`, then the highest Debian-style version directory.

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{ClusterError, Lookup, Result};

/// The server-side tools a cluster needs, all from one directory so that
/// their versions match.
const SERVER_TOOLS: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];

/// The oldest major version whose replica setup (`standby.signal`,
/// `pg_basebackup -R`, `wal_keep_size` or its predecessor) is supported.
const MIN_MAJOR: u32 = 12;

/// A directory of matching PostgreSQL binaries, plus a `psql` client.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    bindir: PathBuf,
    psql: PathBuf,
    version: String,
    major: u32,
}

impl PgBinaries {
    /// Searches PATH, `pg_config --bindir` and `/usr/lib/postgresql/*/bin`
    /// (highest version first) for a directory holding all server tools.
    pub fn locate() -> Result<Self> {
        let mut looked_in = Vec::new();
        let mut tried: Vec<PathBuf> = Vec::new();
        for (place, dir) in candidates(&mut looked_in) {
            if tried.contains(&dir) {
                continue;
            }
            tried.push(dir.clone());
            match missing_tools(&dir) {
                None => return Self::from_dir(dir),
                Some(problem) => looked_in.push(Lookup { place, problem }),
            }
        }
        Err(ClusterError::BinariesNotFound { looked_in })
    }

    /// Uses the binaries in `bindir`, which must hold all server tools.
    pub fn from_dir(bindir: impl Into<PathBuf>) -> Result<Self> {
        let bindir = bindir.into();
        if let Some(problem) = missing_tools(&bindir) {
            let place = bindir.display().to_string();
            return Err(ClusterError::BinariesNotFound {
                looked_in: vec![Lookup { place, problem }],
            });
        }
        let version = server_version(&bindir)?;
        let major = major_of(&version);
        if major < MIN_MAJOR {
            return Err(ClusterError::UnsupportedVersion { version, bindir });
        }
        let psql = Some(bindir.join("psql"))
            .filter(|p| is_executable(p))
            .or_else(|| find_on_path("psql"))
            .ok_or_else(|| ClusterError::PsqlNotFound {
                bindir: bindir.clone(),
            })?;
        Ok(PgBinaries {
            bindir,
            psql,
            version,
            major,
        })
    }

    /// The directory holding the server tools.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Path of a tool in [`bindir`](Self::bindir), e.g. `tool("pgbench")`.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// The `psql` client (from the bin directory when present, else PATH).
    pub fn psql(&self) -> &Path {
        &self.psql
    }

    /// Full version, e.g. `15.14`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Major version, e.g. `15`.
    pub fn major(&self) -> u32 {
        self.major
    }
}

/// Candidate bin directories in search order, each with a description of
/// where it came from. Places that yield nothing are recorded in `looked_in`.
fn candidates(looked_in: &mut Vec<Lookup>) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    match find_on_path("initdb") {
        // Follow symlinks: /usr/local/bin/initdb may point into the real bindir,
        // which is where pg_basebackup and friends live.
        Some(initdb) => {
            let real = fs::canonicalize(&initdb).unwrap_or(initdb);
            let dir = real.parent().map(Path::to_path_buf).unwrap_or_default();
            out.push((format!("PATH: {}", dir.display()), dir));
        }
        None => looked_in.push(lookup("PATH", "no initdb")),
    }
    match find_on_path("pg_config") {
        Some(pg_config) => match Command::new(&pg_config).arg("--bindir").output() {
            Ok(o) if o.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                out.push((format!("pg_config --bindir: {}", dir.display()), dir));
            }
            _ => looked_in.push(lookup("pg_config --bindir", "pg_config failed")),
        },
        None => looked_in.push(lookup("pg_config --bindir", "no pg_config on PATH")),
    }
    let debian = versioned_dirs(Path::new("/usr/lib/postgresql"));
    if debian.is_empty() {
        looked_in.push(lookup("/usr/lib/postgresql/*/bin", "no versions installed"));
    }
    out.extend(debian.into_iter().map(|d| (d.display().to_string(), d)));
    out
}

fn lookup(place: &str, problem: &str) -> Lookup {
    Lookup {
        place: place.to_string(),
        problem: problem.to_string(),
    }
}

/// `<root>/<version>/bin` directories, highest version first.
fn versioned_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            Some((key?, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.is_dir())
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, bin)| bin).collect()
}

/// Describes which server tools `dir` lacks, or `None` when it has them all.
fn missing_tools(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = SERVER_TOOLS
        .into_iter()
        .filter(|t| !is_executable(&dir.join(t)))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("missing {}", missing.join(", ")))
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Asks `postgres --version` (allowed as root) for e.g. `15.14`.
fn server_version(bindir: &Path) -> Result<String> {
    let postgres = bindir.join("postgres");
    let command = format!("{} --version", postgres.display());
    let out = Command::new(&postgres)
        .arg("--version")
        .output()
        .map_err(|source| ClusterError::Spawn {
            command: command.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    let version = text
        .split(')')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    match version {
        Some(v) if out.status.success() && v.starts_with(|c: char| c.is_ascii_digit()) => {
            Ok(v.to_string())
        }
        _ => Err(ClusterError::CommandFailed {
            command,
            status: out.status,
            output: text.trim().to_string(),
        }),
    }
}

/// `15.14` → 15, `16beta1` → 16.
fn major_of(version: &str) -> u32 {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_versions_parse() {
        assert_eq!(major_of("15.14"), 15);
        assert_eq!(major_of("16beta1"), 16);
        assert_eq!(major_of("9.6.24"), 9);
        assert_eq!(major_of("devel"), 0);
    }

    #[test]
    fn a_dir_without_binaries_says_what_to_install() {
        let err = PgBinaries::from_dir("/nonexistent/bin")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install -y postgresql"), "{err}");
        assert!(
            err.contains("/nonexistent/bin (missing initdb, pg_ctl, postgres, pg_basebackup)"),
            "{err}"
        );
    }

    #[test]
    fn versioned_dirs_sort_numerically() {
        let root = env::temp_dir().join(format!("pgsidecar-bintest-{}", std::process::id()));
        for v in ["9.6", "15", "10", "notaversion"] {
            fs::create_dir_all(root.join(v).join("bin")).unwrap();
        }
        let dirs = versioned_dirs(&root);
        let names: Vec<_> = dirs
            .iter()
            .map(|d| d.parent().unwrap().file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["15", "10", "9.6"]);
        fs::remove_dir_all(&root).unwrap();
    }
}
