//! What the proxy knows about each configured user's secret, derived once
//! per config load: the SCRAM verifier (PBKDF2 is far too slow to run per
//! connection), the MD5 hash, and the secret used to log into servers.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use subtle::ConstantTimeEq;

use crate::config::{ClientAuth, Config, Secret};
use crate::protocol::md5;
use crate::protocol::scram::{self, ScramVerifier};
use crate::server::ServerSecret;

/// A user's password as configured: plaintext, a stored MD5 hash, or a
/// stored SCRAM verifier (no plaintext needed for client auth).
#[derive(Clone)]
pub enum Stored {
    Plain(Secret),
    Md5(String),
    Scram(ScramVerifier),
}

impl Stored {
    fn parse(password: &Secret) -> Stored {
        let text = password.expose();
        if let Ok(v) = ScramVerifier::parse(text) {
            Stored::Scram(v)
        } else if md5::is_md5_hash(text) {
            Stored::Md5(text.to_string())
        } else {
            Stored::Plain(password.clone())
        }
    }
}

/// One user's derived authentication data.
pub struct UserAuth {
    pub name: String,
    pub stored: Option<Stored>,
    /// For SCRAM logins from clients.
    pub verifier: Option<ScramVerifier>,
    /// For MD5 logins from clients and MD5 logins into servers.
    pub md5: Option<String>,
    /// ClientKey learned from a client's SCRAM login, when only a verifier
    /// is configured: it lets the proxy log into a server that stores the
    /// same verifier (SCRAM pass-through).
    pub learned_client_key: OnceLock<[u8; 32]>,
}

impl UserAuth {
    fn new(name: &str, password: Option<&Secret>, method: ClientAuth) -> Self {
        let stored = password.map(Stored::parse);
        let verifier = match &stored {
            Some(Stored::Scram(v)) => Some(v.clone()),
            // Deriving costs a few milliseconds; only do it when used.
            Some(Stored::Plain(p)) if method == ClientAuth::ScramSha256 => {
                Some(ScramVerifier::from_password(p.expose()))
            }
            _ => None,
        };
        let md5 = match &stored {
            Some(Stored::Plain(p)) => Some(md5::md5_hash(name, p.expose())),
            Some(Stored::Md5(h)) => Some(h.clone()),
            _ => None,
        };
        UserAuth {
            name: name.to_string(),
            stored,
            verifier,
            md5,
            learned_client_key: OnceLock::new(),
        }
    }

    /// A stand-in for a user nobody configured: every method goes through
    /// its usual exchange (SCRAM with a stable salt) and fails like a wrong
    /// password, so a stranger cannot tell which names exist.
    pub fn stand_in(name: &str, method: ClientAuth) -> Self {
        static MOCK_KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let key = MOCK_KEY.get_or_init(rand::random);
        let md5 = (method == ClientAuth::Md5).then(|| {
            let random: [u8; 16] = rand::random();
            md5::md5_hash(name, &String::from_utf8_lossy(&random))
        });
        UserAuth {
            name: name.to_string(),
            stored: None,
            verifier: Some(ScramVerifier::mock(name, key)),
            md5,
            learned_client_key: OnceLock::new(),
        }
    }

    /// Checks a cleartext password from a client in constant time, against
    /// whatever form is stored.
    pub fn check_cleartext(&self, given: &[u8]) -> bool {
        match &self.stored {
            None => false,
            Some(Stored::Plain(p)) => bool::from(p.expose().as_bytes().ct_eq(given)),
            Some(Stored::Md5(h)) => bool::from(
                md5::md5_of(&self.name, given)
                    .as_bytes()
                    .ct_eq(h.as_bytes()),
            ),
            Some(Stored::Scram(v)) => ScramVerifier::with_salt(given, &v.salt, v.iterations)
                .is_ok_and(|derived| bool::from(derived.stored_key.ct_eq(&v.stored_key))),
        }
    }

    /// The secret for logging into a server as this user, if the proxy has one.
    pub fn server_secret(&self) -> ServerSecret {
        match &self.stored {
            None => ServerSecret::None,
            Some(Stored::Plain(p)) => ServerSecret::Password(p.clone()),
            Some(Stored::Md5(h)) => ServerSecret::Md5(h.clone()),
            Some(Stored::Scram(v)) => match self.learned_client_key.get() {
                Some(key) => ServerSecret::Scram(scram::Secret::pass_through(v, *key)),
                None => ServerSecret::None,
            },
        }
    }
}

/// All users, by name.
#[derive(Default)]
pub struct Credentials {
    users: HashMap<String, Arc<UserAuth>>,
}

impl Credentials {
    pub fn build(config: &Config) -> Self {
        let method = config.auth.client_auth;
        Credentials {
            users: config
                .users
                .iter()
                .map(|u| {
                    let auth = UserAuth::new(&u.name, u.password.as_ref(), method);
                    (u.name.clone(), Arc::new(auth))
                })
                .collect(),
        }
    }

    pub fn user(&self, name: &str) -> Option<&Arc<UserAuth>> {
        self.users.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleartext_password_is_checked_as_the_bytes_sent() {
        let stored = Secret::new(md5::md5_hash("u", "s3cret"));
        let user = UserAuth::new("u", Some(&stored), ClientAuth::Password);
        assert!(user.check_cleartext(b"s3cret"));
        assert!(!user.check_cleartext(b"wrong"));
        // The stored hash is not a password.
        assert!(!user.check_cleartext(stored.expose().as_bytes()));
        // Bytes that are not UTF-8 (a LATIN1 client's `é`): a plain mismatch.
        assert!(!user.check_cleartext(b"caf\xe9"));
        let latin1 = UserAuth::new("u", Some(&Secret::new("café")), ClientAuth::Password);
        assert!(latin1.check_cleartext("café".as_bytes()));
        assert!(!latin1.check_cleartext(b"caf\xe9"));
    }
}
