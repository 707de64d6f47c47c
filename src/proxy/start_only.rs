//! Keys a running proxy reads only at start: the listen addresses and the
//! Unix socket (the sockets are bound), `worker_threads` (the runtime is
//! built),
//! `log_format` (the logger is installed) and `read_only_functions` (the
//! classifier is built). A reload keeps their running values in the
//! config it stores, so that SHOW CONFIG shows what is in force, and says
//! which ones the file changed.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Config, FileMode, LogFormat};

/// The start-only values: as the file gave them at start, and in force.
#[derive(Clone, Debug)]
pub struct StartOnly {
    /// `proxy.listen` and `http.listen` as configured (port 0 possibly).
    listen: Option<SocketAddr>,
    http_listen: SocketAddr,
    /// Where the proxy really listens.
    bound: Option<SocketAddr>,
    http_bound: SocketAddr,
    unix_socket_dir: Option<PathBuf>,
    unix_socket_port: Option<u16>,
    unix_socket_mode: FileMode,
    worker_threads: u32,
    log_format: LogFormat,
    read_only_functions: Vec<String>,
}

impl StartOnly {
    /// The values of `config` (the one the proxy started with) and the
    /// addresses it bound.
    pub fn new(config: &Config, bound: Option<SocketAddr>, http_bound: SocketAddr) -> Self {
        StartOnly {
            listen: config.proxy.listen,
            http_listen: config.http.listen,
            bound,
            http_bound,
            unix_socket_dir: config.proxy.unix_socket_dir.clone(),
            unix_socket_port: config.proxy.unix_socket_port,
            unix_socket_mode: config.proxy.unix_socket_mode,
            worker_threads: config.proxy.worker_threads,
            log_format: config.observability.log_format,
            read_only_functions: config.routing.read_only_functions.clone(),
        }
    }

    /// Puts the values in force into `config`: the bound addresses, and
    /// the start-time values of the other keys.
    pub fn in_force(&self, config: &mut Config) {
        config.proxy.listen = self.bound;
        config.http.listen = self.http_bound;
        config
            .proxy
            .unix_socket_dir
            .clone_from(&self.unix_socket_dir);
        config.proxy.unix_socket_port = self.unix_socket_port;
        config.proxy.unix_socket_mode = self.unix_socket_mode;
        config.proxy.worker_threads = self.worker_threads;
        config.observability.log_format = self.log_format;
        config
            .routing
            .read_only_functions
            .clone_from(&self.read_only_functions);
    }

    /// What `new` (a reloaded file) changed of these keys, one sentence per
    /// key, then [`in_force`](Self::in_force) on it.
    pub fn keep(&self, new: &mut Config) -> Vec<String> {
        let mut kept = Vec::new();
        let mut note = |key: &str, running: String, asked: String| {
            kept.push(format!(
                "{key} changes only on restart: still {running} (the file now says {asked})"
            ));
        };
        let addr = |a: Option<SocketAddr>| a.map_or_else(|| "none".into(), |a| a.to_string());
        if new.proxy.listen != self.listen {
            note("proxy.listen", addr(self.bound), addr(new.proxy.listen));
        }
        let dir = |d: &Option<PathBuf>| {
            d.as_ref()
                .map_or_else(|| "none".into(), |d| d.display().to_string())
        };
        if new.proxy.unix_socket_dir != self.unix_socket_dir {
            note(
                "proxy.unix_socket_dir",
                dir(&self.unix_socket_dir),
                dir(&new.proxy.unix_socket_dir),
            );
        }
        if new.proxy.unix_socket_port != self.unix_socket_port {
            let port = |p: Option<u16>| p.map_or_else(|| "unset".into(), |p| p.to_string());
            note(
                "proxy.unix_socket_port",
                port(self.unix_socket_port),
                port(new.proxy.unix_socket_port),
            );
        }
        if new.proxy.unix_socket_mode != self.unix_socket_mode {
            note(
                "proxy.unix_socket_mode",
                self.unix_socket_mode.to_string(),
                new.proxy.unix_socket_mode.to_string(),
            );
        }
        if new.http.listen != self.http_listen {
            note(
                "http.listen",
                self.http_bound.to_string(),
                new.http.listen.to_string(),
            );
        }
        if new.proxy.worker_threads != self.worker_threads {
            note(
                "proxy.worker_threads",
                self.worker_threads.to_string(),
                new.proxy.worker_threads.to_string(),
            );
        }
        if new.observability.log_format != self.log_format {
            note(
                "observability.log_format",
                self.log_format.to_string(),
                new.observability.log_format.to_string(),
            );
        }
        if new.routing.read_only_functions != self.read_only_functions {
            note(
                "routing.read_only_functions",
                format!("{:?}", self.read_only_functions),
                format!("{:?}", new.routing.read_only_functions),
            );
        }
        self.in_force(new);
        kept
    }
}
