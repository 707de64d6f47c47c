//! The Unix-domain socket libpq clients reach with `host=<dir>`: binding
//! `<dir>/.s.PGSQL.<port>` (creating the directory, replacing a stale file
//! left by a crashed run, refusing to take over one that another process
//! serves), its permission bits, and removing the file when the proxy
//! stops listening.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;

use crate::config::FileMode;

/// Mode of a socket directory pgsidecar creates: anyone may reach the
/// socket inside; its own mode (`unix_socket_mode`) decides who connects.
const CREATED_DIR_MODE: u32 = 0o755;

/// How long probing an existing socket file may take. A listener that does
/// not answer a connect within this long is busy, not gone.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the Unix socket could not be set up. Each names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("proxy.unix_socket_dir: cannot create {}: {source}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot listen on {}: another process is listening on it (a pgsidecar still \
         running?); stop that one first, or set another proxy.unix_socket_dir or port",
        .path.display()
    )]
    InUse { path: PathBuf },
    #[error(
        "cannot listen on {}: the file exists and is not a socket; remove it or set \
         another proxy.unix_socket_dir",
        .path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {}: cannot tell whether the existing socket is in use: {source}", .path.display())]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {}: cannot lock {}: {source}", .path.display(), .lock.display())]
    Lock {
        path: PathBuf,
        lock: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {}: {source}", .path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("proxy.unix_socket_mode: cannot set mode {mode} on {}: {source}", .path.display())]
    Mode {
        path: PathBuf,
        mode: FileMode,
        #[source]
        source: io::Error,
    },
}

/// A bound, listening Unix socket and the file that names it.
pub struct UnixSocket {
    pub listener: UnixListener,
    pub file: SocketFile,
    /// The `<port>` in `.s.PGSQL.<port>`, shown for its clients.
    pub port: u16,
}

/// The socket file this proxy created. Removed when dropped (the accept
/// loop ends: shutdown, or the proxy dropped), unless the path now holds
/// another file: a second instance's socket is not ours to delete.
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file bind created.
    id: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours && let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the Unix socket");
        }
    }
}

/// Binds `path` (`<dir>/.s.PGSQL.<port>`) with permission bits `mode`.
pub async fn bind(path: &Path, port: u16, mode: FileMode) -> Result<UnixSocket, UnixSocketError> {
    if let Some(dir) = path.parent() {
        create_dir(dir)?;
    }
    // Held until the socket listens: two processes started together could
    // otherwise both find a stale file, and the second remove the first's
    // fresh socket and bind over it.
    let _locked = lock(path).await?;
    remove_stale(path).await?;
    let bind_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            UnixSocketError::InUse {
                path: path.to_path_buf(),
            }
        } else {
            UnixSocketError::Bind {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(bind_error)?;
    socket
        .bind(&SockAddr::unix(path).map_err(bind_error)?)
        .map_err(bind_error)?;
    // The file exists from bind on: from here, dropping `file` removes it.
    let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    };
    // The mode is set before listen(), so nobody connects while the file
    // still has the umask's mode.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0)).map_err(|source| {
        UnixSocketError::Mode {
            path: path.to_path_buf(),
            mode,
            source,
        }
    })?;
    socket.listen(1024).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(socket),
    ))
    .map_err(bind_error)?;
    Ok(UnixSocket {
        listener,
        file,
        port,
    })
}

/// Takes an exclusive lock on `<path>.pgsidecar-lock` (created if missing,
/// left in place: removing it would race with the next process's open),
/// released when the returned file is closed, or by the kernel if the
/// process dies. Not Postgres's `.s.PGSQL.<port>.lock`, whose contents
/// Postgres reads at its start.
async fn lock(path: &Path) -> Result<std::fs::File, UnixSocketError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.as_os_str().to_owned();
    name.push(".pgsidecar-lock");
    let lock_path = PathBuf::from(name);
    let error = |source: io::Error| UnixSocketError::Lock {
        path: path.to_path_buf(),
        lock: lock_path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(error)?;
    // Blocking: another process holds it only while it binds.
    let locked = tokio::task::spawn_blocking(move || {
        // SAFETY: flock on a descriptor this closure owns (through `file`).
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            Ok(file)
        } else {
            Err(io::Error::last_os_error())
        }
    })
    .await
    .map_err(|join| error(io::Error::other(join)))?;
    locked.map_err(error)
}

/// Creates the socket directory (and its parents) if it is missing.
fn create_dir(dir: &Path) -> Result<(), UnixSocketError> {
    if dir.is_dir() {
        return Ok(());
    }
    let created = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(CREATED_DIR_MODE)
        .create(dir)
        // The umask may have taken bits away (systemd's UMask=0077).
        .and_then(|()| {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(CREATED_DIR_MODE))
        });
    created.map_err(|source| UnixSocketError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    tracing::info!(dir = %dir.display(), "created the Unix socket directory");
    Ok(())
}

/// Removes a socket file nobody listens on (left by a crashed run).
/// Refuses a file that is not a socket, and a socket that accepts.
async fn remove_stale(path: &Path) -> Result<(), UnixSocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(UnixSocketError::Probe {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(UnixSocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let probe = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path)).await;
    match probe {
        // Accepted, or so busy that its backlog is full: alive either way.
        Ok(Ok(_)) | Err(_) => Err(UnixSocketError::InUse {
            path: path.to_path_buf(),
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(UnixSocketError::InUse {
            path: path.to_path_buf(),
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|source| UnixSocketError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
            tracing::info!(path = %path.display(), "replaced a stale Unix socket (nobody listened on it)");
            Ok(())
        }
        Ok(Err(source)) => Err(UnixSocketError::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes started together over a stale socket file: exactly one
    /// gets the socket, the others are told it is in use, and the file
    /// is the winner's (none removed another's fresh socket and bound
    /// over it, leaving the first listening on a file nobody can reach).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_binds_over_a_stale_file_leave_one_reachable_winner() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..1000u32 {
            let path = dir.path().join(format!(".s.PGSQL.{}", 5000 + round));
            drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
            let binds = (0..4).map(|_| {
                let path = path.clone();
                tokio::spawn(async move { bind(&path, 5000, FileMode(0o700)).await })
            });
            let results = futures_util::future::join_all(binds).await;
            let winners: Vec<UnixSocket> = results
                .into_iter()
                .map(Result::unwrap)
                .filter_map(|r| match r {
                    Ok(socket) => Some(socket),
                    Err(UnixSocketError::InUse { .. }) => None,
                    Err(e) => panic!("round {round}: {e}"),
                })
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: one winner");
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                (meta.dev(), meta.ino()),
                winners[0].file.id,
                "round {round}: the file is the winner's"
            );
        }
    }
}
