//! Reading a session back from its server after the client ran code the
//! proxy cannot see into (a DO block, CALL, a user function: statements
//! classified `opaque`), before the server may go to another client.
//!
//! Such code may change settings (`set_config(…, false)`, `SET ROLE` by
//! dynamic SQL) or leave state tied to the connection (a temporary table,
//! a session advisory lock, a LISTEN, a held cursor). One query, sent right
//! after the unit's ReadyForQuery went to the client (so the client does
//! not wait for it), reads the session-level settings (`pg_settings` where
//! `source = 'session'`, and the client's own settings by name, since
//! custom settings and the role are not listed there) and looks for such
//! state. The client adopts the settings read: it keeps them on its next
//! server. The server's settings then count as unknown, so whoever uses it
//! next first resets them all (the role too) and sets their own. State
//! tied to the connection pins the client to it, as the same statement run
//! in plain SQL would.
//!
//! What cannot be read back: a custom setting the client never set itself
//! (Postgres lists no placeholders): the next user's reset clears it, and
//! this client does not carry it to another server.

use std::collections::BTreeMap;

use super::params::{ClientParams, ParamValue};
use crate::routing::PinReason;

/// Row kinds of the readback query's first column.
const SETTING: &str = "s";
const BY_NAME: &str = "n";
const PIN: &str = "p";

/// Connection-bound state, as the readback names it.
const PINS: &[(&str, PinReason, &str)] = &[
    (
        "temp",
        PinReason::TempObject,
        "SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()",
    ),
    (
        "advisory",
        PinReason::AdvisoryLock,
        "SELECT FROM pg_catalog.pg_locks WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'advisory'",
    ),
    (
        "listen",
        PinReason::Listen,
        "SELECT FROM pg_catalog.pg_listening_channels()",
    ),
    (
        "cursor",
        PinReason::HoldCursor,
        "SELECT FROM pg_catalog.pg_cursors WHERE is_holdable",
    ),
];

/// The readback query for `client`.
pub fn query(client: &ClientParams) -> String {
    let mut sql = String::with_capacity(1024);
    // transaction_* are per transaction (and listed as 'session').
    // Values as hex of their UTF-8 form: the server sends text in the
    // session's client_encoding, which need not be UTF-8.
    sql.push_str(
        "SELECT 's', name, pg_catalog.encode(pg_catalog.convert_to(setting, 'UTF8'), 'hex') \
         FROM pg_catalog.pg_settings \
         WHERE source = 'session' AND name NOT LIKE 'transaction\\_%' \
         UNION ALL SELECT 'n', n, pg_catalog.encode(pg_catalog.convert_to(\
         pg_catalog.current_setting(n, true), 'UTF8'), 'hex') FROM (VALUES \
         ('role'), ('session_authorization')",
    );
    // A name that is not ASCII would have to be written in the client's
    // encoding: such settings are kept as the client has them.
    for name in client.current().keys().filter(|n| n.is_ascii()) {
        sql.push_str(", (");
        push_literal(&mut sql, name);
        sql.push(')');
    }
    sql.push_str(") v(n)");
    for (name, _, probe) in PINS {
        sql.push_str(" UNION ALL SELECT 'p', '");
        sql.push_str(name);
        sql.push_str("', NULL WHERE EXISTS (");
        sql.push_str(probe);
        sql.push(')');
    }
    sql
}

fn push_literal(sql: &mut String, text: &str) {
    sql.push('\'');
    sql.push_str(&text.replace('\'', "''"));
    sql.push('\'');
}

/// Where reading back the session of a client's held server stands. Kept
/// with the client, not the hold: the hold's state is copied with every
/// server a client takes, and this is rarely anything but `Clean`.
#[derive(Default)]
pub enum Readback {
    /// Nothing opaque ran since the last readback.
    #[default]
    Clean,
    /// Something opaque ran: read back before the server is released.
    Due,
    /// The readback query runs; its rows so far.
    Running(Box<Rows>),
}

impl Readback {
    /// A statement classified opaque was sent to the held server.
    pub fn opaque_ran(&mut self) {
        match self {
            Readback::Clean => *self = Readback::Due,
            Readback::Due => {}
            // After the query: read back again once it completes.
            Readback::Running(rows) => rows.again = true,
        }
    }

    pub fn is_due(&self) -> bool {
        matches!(self, Readback::Due)
    }

    /// Not `Clean`: the server's session may hold what opaque code left.
    pub fn unread(&self) -> bool {
        !matches!(self, Readback::Clean)
    }

    /// The readback query was sent.
    pub fn start(&mut self) {
        *self = Readback::Running(Box::default());
    }

    /// A DataRow answering the readback query.
    pub fn row(&mut self, frame: &[u8]) {
        if let Readback::Running(rows) = self {
            rows.row(frame);
        }
    }

    pub fn fail(&mut self) {
        if let Readback::Running(rows) = self {
            rows.failed = true;
        }
    }

    /// The query completed: what it found (`None` if it failed).
    pub fn finish(&mut self, login_user: &str) -> Option<Found> {
        let Readback::Running(mut rows) = std::mem::take(self) else {
            return None;
        };
        if rows.again {
            *self = Readback::Due;
        }
        rows.finish(login_user)
    }

    /// A new server was taken: a readback of the last one (which went away
    /// before it completed) no longer applies.
    pub fn forget_running(&mut self) {
        if let Readback::Running(_) = self {
            *self = Readback::Clean;
        }
    }
}

/// Rows of the readback as they arrive.
#[derive(Default)]
pub struct Rows {
    rows: Vec<[Option<Box<str>>; 3]>,
    /// The query failed: the server's state is unknown.
    failed: bool,
    /// Something opaque ran again meanwhile.
    again: bool,
}

/// What the readback found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The session's settings as they must be re-applied.
    pub settings: BTreeMap<Box<str>, ParamValue>,
    pub pins: Vec<PinReason>,
}

impl Rows {
    /// A DataRow of the readback (three text columns).
    fn row(&mut self, frame: &[u8]) {
        if let Some(row) = data_row(frame) {
            self.rows.push(row);
        }
    }

    /// The result, once the query completed: `None` if it failed.
    /// `login_user` is the server connection's own user (its session
    /// authorization when nothing changed it).
    fn finish(&mut self, login_user: &str) -> Option<Found> {
        let rows = std::mem::take(&mut self.rows);
        if std::mem::take(&mut self.failed) {
            return None;
        }
        let mut found = Found::default();
        let mut by_name = Vec::new();
        for [kind, name, value] in rows {
            let (Some(kind), Some(name)) = (kind, name) else {
                continue;
            };
            match &*kind {
                SETTING => {
                    if let Some(value) = value {
                        let name: Box<str> = name.to_ascii_lowercase().into();
                        found.settings.insert(name, ParamValue::Raw(value));
                    }
                }
                BY_NAME => by_name.push((name, value)),
                PIN => found.pins.extend(
                    PINS.iter()
                        .filter(|(n, _, _)| **n == *name)
                        .map(|(_, pin, _)| *pin),
                ),
                _ => {}
            }
        }
        // By name: what pg_settings does not list (custom settings, the
        // role, the session user), in the form SHOW gives, which is also
        // what set_config takes.
        for (name, value) in by_name {
            let Some(value) = value else { continue };
            let unchanged = match &*name {
                "role" => &*value == "none",
                "session_authorization" => &*value == login_user,
                _ => false,
            };
            if !unchanged && !found.settings.contains_key(&name) {
                found.settings.insert(name, ParamValue::Raw(value));
            }
        }
        Some(found)
    }
}

/// The columns of a DataRow, `None` for NULL or text that is not UTF-8
/// (the proxy cannot re-apply a value it cannot read).
fn data_row(frame: &[u8]) -> Option<[Option<Box<str>>; 3]> {
    let body = crate::protocol::frame::body(frame);
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if count != 3 {
        return None;
    }
    let mut rest = &body[2..];
    let mut row: [Option<Box<str>>; 3] = Default::default();
    for (i, column) in row.iter_mut().enumerate() {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            continue;
        }
        let len = len as usize;
        let bytes = rest.get(..len)?;
        rest = &rest[len..];
        // The kind and name are ASCII; the value is hex of UTF-8.
        let text = if i == 2 {
            unhex(bytes)?
        } else {
            bytes.to_vec()
        };
        *column = String::from_utf8(text).ok().map(Box::from);
    }
    Some(row)
}

fn unhex(hex: &[u8]) -> Option<Vec<u8>> {
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn row(values: [Option<&str>; 3]) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_u16(3);
        for (i, v) in values.into_iter().enumerate() {
            match v {
                Some(v) => {
                    let v = if i == 2 {
                        v.bytes().map(|b| format!("{b:02x}")).collect()
                    } else {
                        v.to_string()
                    };
                    body.put_i32(v.len() as i32);
                    body.put_slice(v.as_bytes());
                }
                None => body.put_i32(-1),
            }
        }
        let mut frame = vec![b'D'];
        frame.put_u32(body.len() as u32 + 4);
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn settings_roles_and_pins_are_read() {
        let mut r = Readback::default();
        r.start();
        for values in [
            [Some("s"), Some("search_path"), Some("s1")],
            [Some("s"), Some("DateStyle"), Some("ISO, MDY")],
            [Some("s"), Some("application_name"), Some("café")],
            [Some("n"), Some("role"), Some("other")],
            [Some("n"), Some("session_authorization"), Some("app")],
            [Some("n"), Some("my.var"), Some("42")],
            [Some("n"), Some("search_path"), Some("ignored, SHOW form")],
            [Some("n"), Some("gone.var"), None],
            [Some("p"), Some("temp"), None],
        ] {
            r.row(&row(values));
        }
        let found = r.finish("app").unwrap();
        let raw = |v: &str| ParamValue::Raw(v.into());
        let want: BTreeMap<Box<str>, ParamValue> = [
            ("application_name", raw("café")),
            ("datestyle", raw("ISO, MDY")),
            ("my.var", raw("42")),
            ("role", raw("other")),
            ("search_path", raw("s1")),
        ]
        .into_iter()
        .map(|(k, v)| (Box::from(k), v))
        .collect();
        assert_eq!(found.settings, want);
        assert_eq!(found.pins, [PinReason::TempObject]);
    }

    #[test]
    fn unchanged_role_and_user_are_not_settings_and_a_failure_adopts_nothing() {
        let mut r = Readback::default();
        r.opaque_ran();
        assert!(r.is_due());
        r.start();
        r.row(&row([Some("n"), Some("role"), Some("none")]));
        r.row(&row([
            Some("n"),
            Some("session_authorization"),
            Some("app"),
        ]));
        assert_eq!(r.finish("app"), Some(Found::default()));
        assert!(!r.unread());
        r.start();
        r.row(&row([Some("s"), Some("search_path"), Some("s1")]));
        r.fail();
        // Something opaque ran again while the query ran.
        r.opaque_ran();
        assert_eq!(r.finish("app"), None);
        assert!(r.is_due(), "read back again");
    }

    #[test]
    fn the_query_names_the_clients_settings_quoted() {
        let mut p = ClientParams::default();
        p.apply(
            super::super::params::ParamChange::Set("it's.odd".into(), ParamValue::Raw("x".into())),
            false,
        );
        let sql = query(&p);
        assert!(
            sql.contains(
                "('role'), ('session_authorization'), ('application_name'), ('it''s.odd')"
            ),
            "{sql}"
        );
    }
}
