//! Keys a running proxy reads only at start: the listen addresses and the
//! Unix socket (the sockets are bound), `worker_threads` (the runtime is
//! built),
//! `log_format` (the logger is installed), `read_only_functions` (the
//! classifier is built) and fleet membership, `[fleet]` itself with its
//! `name` and `instance` (the coordinators are started). A reload keeps their running values in the
//! config it stores, so that SHOW CONFIG shows what is in force, and says
//! which ones the file changed.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Config, FileMode, FleetConfig, LogFormat};

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
    /// `[fleet]` as at start (its `interval` and `floor` reload; without
    /// a `[fleet]` in the file the start values stay in force).
    fleet: Option<FleetConfig>,
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
            fleet: config.fleet.clone(),
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
        match (&self.fleet, &mut config.fleet) {
            (Some(start), Some(fleet)) => {
                fleet.name.clone_from(&start.name);
                fleet.instance.clone_from(&start.instance);
            }
            (start, fleet) => fleet.clone_from(start),
        }
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
        let member = |f: &Option<FleetConfig>| {
            f.as_ref()
                .map_or_else(|| "none".into(), |f| format!("{:?}", f.name))
        };
        if self.fleet.is_some() != new.fleet.is_some() {
            note("[fleet]", member(&self.fleet), member(&new.fleet));
        } else if let (Some(start), Some(asked)) = (&self.fleet, &new.fleet) {
            if asked.name != start.name {
                note("fleet.name", member(&self.fleet), member(&new.fleet));
            }
            if asked.instance != start.instance {
                let instance = |i: &Option<String>| {
                    i.as_ref()
                        .map_or_else(|| "the default".into(), |i| format!("{i:?}"))
                };
                note(
                    "fleet.instance",
                    instance(&start.instance),
                    instance(&asked.instance),
                );
            }
        }
        self.in_force(new);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[cluster]\nprimary = \"127.0.0.1:5432\"\n[[users]]\nname = \"app\"\n\
             password = \"secret\"\n[pool]\nbudget = 8\n{extra}"
        );
        Config::from_toml(&text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn fleet_membership_keeps_its_running_value_and_the_rest_reloads() {
        let start = config("[fleet]\nname = \"api\"\ninstance = \"a\"\n");
        let running = StartOnly::new(&start, None, start.http.listen);
        // Renamed, another instance, a new interval: only the interval.
        let mut new = config("[fleet]\nname = \"web\"\ninstance = \"b\"\ninterval = \"2s\"\n");
        let kept = running.keep(&mut new);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept[0].starts_with("fleet.name changes only on restart"));
        assert!(kept[1].starts_with("fleet.instance changes only on restart"));
        let fleet = new.fleet.as_ref().unwrap();
        assert_eq!(
            (fleet.name.as_str(), fleet.instance.as_deref()),
            ("api", Some("a"))
        );
        assert_eq!(fleet.interval, std::time::Duration::from_secs(2));
        // Leaving: still a member, with the section in force.
        let mut new = config("");
        let kept = running.keep(&mut new);
        assert!(
            kept[0].starts_with("[fleet] changes only on restart"),
            "{kept:?}"
        );
        assert_eq!(new.fleet.as_ref().map(|f| f.name.as_str()), Some("api"));
        // Joining: still alone.
        let start = config("");
        let running = StartOnly::new(&start, None, start.http.listen);
        let mut new = config("[fleet]\nname = \"api\"\n");
        let kept = running.keep(&mut new);
        assert!(kept[0].contains("still none"), "{kept:?}");
        assert!(new.fleet.is_none());
        // Nothing changed: nothing said.
        let mut same = config("");
        assert!(running.keep(&mut same).is_empty());
    }
}
