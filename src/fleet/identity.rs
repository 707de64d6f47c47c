//! Who a member is on a node: its fleet's advisory-lock key, its
//! `application_name` (`pgsidecar/<fleet>/<instance>#<open>`), and the
//! default instance name.

use crate::config::FleetConfig;

/// Postgres cuts `application_name` at NAMEDATALEN - 1 bytes.
const MAX_APPLICATION_NAME: usize = 63;
/// Room kept for `#<open connections>`.
const OPEN_SUFFIX: usize = 7;
const PREFIX: &str = "pgsidecar/";

/// Second key of the shared lock every member holds on each node while it
/// is connected: its presence.
pub const PRESENCE: i32 = -1;
/// Second key of the shared lock a member holds while it wants more slots.
pub const WANT: i32 = -2;

/// A member's identity, the same on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub fleet: String,
    /// Cut so that the application name fits.
    pub instance: String,
    /// First key of every advisory lock of the fleet (positive, so that
    /// `pg_locks.classid` shows it unchanged).
    pub key: i32,
}

impl Identity {
    pub fn new(config: &FleetConfig) -> Identity {
        let instance = config.instance.clone().unwrap_or_else(default_instance);
        let room = MAX_APPLICATION_NAME - PREFIX.len() - config.name.len() - 1 - OPEN_SUFFIX;
        let instance: String = instance.chars().take(room).collect();
        Identity {
            key: key_of(&config.name),
            fleet: config.name.clone(),
            instance,
        }
    }

    /// `pgsidecar/<fleet>/<instance>`.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}/", self.fleet)
    }

    /// The coordinator session's `application_name`, publishing how many
    /// server connections this member has open to the node.
    pub fn application_name(&self, open: u32) -> String {
        format!("{}{}#{open}", self.prefix(), self.instance)
    }

    /// The `application_name` of the member's listening connection on the
    /// primary (`pgsidecar/<fleet>/<instance>#listen`: no count, so
    /// nothing reads it as one).
    pub fn listener_name(&self) -> String {
        format!("{}{}#listen", self.prefix(), self.instance)
    }

    /// (instance, open connections) from another member's
    /// `application_name`, if it is one of this fleet's.
    pub fn parse<'a>(&self, application_name: &'a str) -> Option<(&'a str, Option<u32>)> {
        let rest = application_name.strip_prefix(&self.prefix())?;
        Some(match rest.rsplit_once('#') {
            Some((instance, open)) => (instance, open.parse().ok()),
            None => (rest, None),
        })
    }
}

/// The fleet's lock key: FNV-1a of the name, top bit cleared. Another
/// application's advisory locks would have to use the same 32-bit key
/// *and* second keys in the slot range to collide.
fn key_of(name: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in PREFIX.bytes().chain(name.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

/// `<hostname>-<pid>`: the pod name in Kubernetes, unique on a host.
fn default_instance() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let host: String = if ok {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    } else {
        "host".into()
    };
    // The pid last, so that cutting keeps what tells pods apart best:
    // the end of a pod name is its random suffix.
    let pid = std::process::id();
    let keep = 40usize.saturating_sub(pid.to_string().len() + 1);
    let start = host.len().saturating_sub(keep);
    format!("{}-{pid}", &host[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, instance: Option<&str>) -> FleetConfig {
        let mut text = format!("name = \"{name}\"\n");
        if let Some(i) = instance {
            text.push_str(&format!("instance = \"{i}\"\n"));
        }
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn application_name_fits_and_parses_back() {
        let long = "x".repeat(63);
        let id = Identity::new(&config(&"f".repeat(24), Some(&long)));
        let name = id.application_name(12345);
        assert!(name.len() <= MAX_APPLICATION_NAME, "{name}");
        assert_eq!(id.parse(&name), Some((id.instance.as_str(), Some(12345))));
        let other = Identity::new(&config("other", Some("a")));
        assert_eq!(other.parse(&name), None);
        assert_eq!(id.parse("pgsidecar-monitor"), None);
    }

    #[test]
    fn the_key_depends_on_the_fleet_only_and_is_positive() {
        let a = Identity::new(&config("checkout", Some("a")));
        let b = Identity::new(&config("checkout", Some("b")));
        let c = Identity::new(&config("billing", Some("a")));
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert!(a.key >= 0 && c.key >= 0);
    }

    #[test]
    fn the_default_instance_ends_with_the_pid() {
        let id = Identity::new(&config("f", None));
        assert!(
            id.instance.ends_with(&format!("-{}", std::process::id())),
            "{}",
            id.instance
        );
        assert!(id.instance.len() <= 40);
    }
}
