//! The proxy's own session settings `pgsidecar.route` and
//! `pgsidecar.min_lsn`: which statements change them, the error for a
//! value it refuses, and the stand-in a server prepares in its place when
//! the change comes by the extended protocol.

use bytes::{BufMut, Bytes, BytesMut};

use crate::cluster::Lsn;
use crate::protocol::frame::{self, fe};
use crate::protocol::{ProtocolError, SqlState, WireError};
use crate::routing::policy::ProxyChange;
use crate::routing::{Classified, Reason, RouteSetting, SessionChange};

const HINT: &str = "use 'primary', 'replica' or 'auto'";

/// The 22023 a client gets for `SET pgsidecar.min_lsn = 'yesterday'`.
fn invalid_lsn(value: &str) -> WireError {
    WireError::error(
        SqlState::INVALID_PARAMETER_VALUE,
        format!(
            "invalid value for parameter \"pgsidecar.min_lsn\": {}",
            capped(value)
        ),
    )
    .with_hint("give a WAL position as Postgres prints it, e.g. '0/16B3748' (what SHOW pgsidecar.last_write_lsn answered after a write)")
}

/// The 22023 a client gets for `SET pgsidecar.route = 'sideways'`.
pub fn invalid_route(value: &str) -> WireError {
    WireError::error(
        SqlState::INVALID_PARAMETER_VALUE,
        format!("invalid value for parameter \"pgsidecar.route\": \"{value}\""),
    )
    .with_hint(HINT)
}

/// A client's text for an error message: escaped, and cut after 64
/// characters.
fn capped(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .collect();
    if value.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

/// The 0A000 a client gets for `SET LOCAL pgsidecar.route`: by the time a
/// transaction runs its statements the proxy has routed it as a whole.
fn local_refused() -> WireError {
    WireError::error(
        SqlState::FEATURE_NOT_SUPPORTED,
        "SET LOCAL pgsidecar.route is not supported: a transaction is routed as a whole when it starts",
    )
    .with_hint(
        "use SET pgsidecar.route for the session, or a /* pgsidecar:primary */ or /* pgsidecar:replica */ comment on the transaction's first statement",
    )
}

/// The same for `SET LOCAL pgsidecar.min_lsn`.
fn local_min_lsn_refused() -> WireError {
    WireError::error(
        SqlState::FEATURE_NOT_SUPPORTED,
        "SET LOCAL pgsidecar.min_lsn is not supported: a transaction is routed as a whole when it starts",
    )
    .with_hint(
        "use SET pgsidecar.min_lsn for the session, or a /* pgsidecar:min_lsn=... */ comment on the transaction's first statement",
    )
}

/// What the session keeps for a setting: `auto` is the same as none.
pub fn session_value(setting: RouteSetting) -> Option<RouteSetting> {
    (setting != RouteSetting::Auto).then_some(setting)
}

/// The change made by a statement that is nothing but a `SET`/`RESET` of
/// `pgsidecar.route` or `pgsidecar.min_lsn`: the new setting, or the error
/// refusing it. (A `SELECT set_config('pgsidecar.route', …)` returns a
/// row, so the server runs it and the setting changes when it completes.)
pub fn lone_change(class: &Classified) -> Option<Result<ProxyChange, WireError>> {
    if class.info.statement_count != 1 || class.info.reason != Reason::ProxySetting {
        return None;
    }
    match class.session.as_slice() {
        [SessionChange::Route { local: true, .. }] => Some(Err(local_refused())),
        [SessionChange::Route { setting, value, .. }] => Some(
            setting
                .map(|s| ProxyChange::Route(session_value(s)))
                .ok_or_else(|| invalid_route(value)),
        ),
        [SessionChange::MinLsn { local: true, .. }] => Some(Err(local_min_lsn_refused())),
        [SessionChange::MinLsn { lsn, value, .. }] => Some(
            lsn.map(ProxyChange::MinLsn)
                .ok_or_else(|| invalid_lsn(value)),
        ),
        _ => None,
    }
}

/// The setting a statement leaves once it has run (the last valid one of a
/// multi-statement string that also sets it; `RESET ALL` restores `auto`).
pub fn after(session: &[SessionChange]) -> Option<RouteSetting> {
    session.iter().rev().find_map(|c| match c {
        SessionChange::Route {
            setting,
            local: false,
            ..
        } => *setting,
        SessionChange::ResetAll => Some(RouteSetting::Auto),
        _ => None,
    })
}

/// The same for `pgsidecar.min_lsn` (`RESET ALL` restores 0/0).
pub fn min_lsn_after(session: &[SessionChange]) -> Option<Lsn> {
    session.iter().rev().find_map(|c| match c {
        SessionChange::MinLsn {
            lsn, local: false, ..
        } => *lsn,
        SessionChange::ResetAll => Some(Lsn::default()),
        _ => None,
    })
}

/// By the extended protocol a server must still answer every message in
/// order (ParseComplete, BindComplete, NoData, CommandComplete) and, after
/// an error, skip what follows up to Sync, even messages the client has
/// already pipelined behind it. So the proxy does not answer a lone
/// `SET pgsidecar.route` itself there: the server prepares this stand-in,
/// which gives the same answers: a SET of the placeholder to its empty
/// default for a valid value (the session's setting changes when its
/// Execute completes) and, for a change the proxy refuses, a DO block that
/// raises the proxy's own error.
pub fn stand_in(class: &Classified) -> Option<String> {
    Some(match lone_change(class)? {
        Ok(ProxyChange::Route(_)) => "SET pgsidecar.route TO DEFAULT".into(),
        Ok(ProxyChange::MinLsn(_)) => "SET pgsidecar.min_lsn TO DEFAULT".into(),
        Err(error) => {
            let quote = |s: &str| s.replace('\'', "''");
            let body = format!(
                "BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}', HINT = '{}'; END",
                error.code.0,
                quote(&error.message),
                quote(error.hint.as_deref().unwrap_or_default())
            );
            let mut tag = String::from("$pgsidecar$");
            while body.contains(&tag) {
                tag.insert(tag.len() - 1, '_');
            }
            format!("DO {tag}{body}{tag}")
        }
    })
}

/// A copy of the Parse `frame` with its query text replaced: same
/// statement name, same parameter types.
pub fn with_query(frame: &[u8], query: &str) -> Result<Bytes, ProtocolError> {
    let (name, after_name) = frame::cstr_bytes(frame::body(frame))?;
    let (old, _) = frame::cstr_bytes(after_name)?;
    let params = &after_name[old.len() + 1..];
    let len = 4 + name.len() + 1 + query.len() + 1 + params.len();
    let mut out = BytesMut::with_capacity(1 + len);
    out.put_u8(fe::PARSE);
    out.put_u32(len as u32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(query.as_bytes());
    out.put_u8(0);
    out.put_slice(params);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Classifier;

    fn parse_frame(name: &str, query: &str, params: &[u8]) -> Vec<u8> {
        let mut f = vec![fe::PARSE, 0, 0, 0, 0];
        f.extend_from_slice(name.as_bytes());
        f.push(0);
        f.extend_from_slice(query.as_bytes());
        f.push(0);
        f.extend_from_slice(params);
        let len = (f.len() - 1) as u32;
        f[1..5].copy_from_slice(&len.to_be_bytes());
        f
    }

    #[test]
    fn only_a_lone_change_of_the_setting_gets_a_stand_in() {
        let classifier = Classifier::new(&[], 10_000, 100);
        let stand_in = |sql: &str| stand_in(&classifier.classify(sql));
        assert_eq!(
            stand_in("set pgsidecar.route = 'primary'").as_deref(),
            Some("SET pgsidecar.route TO DEFAULT")
        );
        assert!(stand_in("RESET pgsidecar.route").is_some());
        assert_eq!(stand_in("set search_path = 'x'"), None);
        assert_eq!(stand_in("set pgsidecar.route = 'replica'; select 1"), None);
        assert_eq!(stand_in("select 1"), None);
        let call = "select set_config('pgsidecar.route', 'primary', false)";
        assert_eq!(stand_in(call), None);
        let class = classifier.classify(call);
        assert_eq!(after(&class.session), Some(RouteSetting::Primary));
    }

    #[test]
    fn a_refused_value_raises_the_proxys_error_whatever_it_contains() {
        let classifier = Classifier::new(&[], 10_000, 100);
        let sql = "set pgsidecar.route = 'it''s $pgsidecar$ odd'";
        let text = stand_in(&classifier.classify(sql)).unwrap();
        assert!(text.starts_with("DO $pgsidecar_$BEGIN"), "{text}");
        assert!(text.ends_with("END$pgsidecar_$"), "{text}");
        assert!(text.contains("ERRCODE = '22023'"), "{text}");
        // The value as written, its quotes doubled once more inside the
        // DO block's string.
        assert!(text.contains(r#""''it''''s $pgsidecar$ odd''""#), "{text}");
    }

    #[test]
    fn the_stand_in_keeps_name_and_parameter_types() {
        let frame = parse_frame("s1", "set pgsidecar.route = 'auto'", &[0, 1, 0, 0, 0, 25]);
        let out = with_query(&frame, "SET x TO DEFAULT").unwrap();
        assert_eq!(
            out.as_ref(),
            parse_frame("s1", "SET x TO DEFAULT", &[0, 1, 0, 0, 0, 25]).as_slice()
        );
        assert!(with_query(b"P\0\0\0\x05", "x").is_err());
    }

    #[test]
    fn the_last_valid_setting_of_a_string_is_the_one_left() {
        let classifier = Classifier::new(&[], 10_000, 100);
        let class =
            classifier.classify("set pgsidecar.route = 'replica'; set pgsidecar.route = 'primary'");
        assert_eq!(after(&class.session), Some(RouteSetting::Primary));
        assert_eq!(after(&classifier.classify("select 1").session), None);
        let class = classifier.classify("set pgsidecar.route = 'primary'; reset all");
        assert_eq!(after(&class.session), Some(RouteSetting::Auto));
    }

    #[test]
    fn min_lsn_is_answered_by_the_proxy_and_refused_by_name() {
        let classifier = Classifier::new(&[], 10_000, 100);
        let class = classifier.classify("set pgsidecar.min_lsn = '0/16B3748'");
        assert_eq!(
            lone_change(&class).unwrap().unwrap(),
            ProxyChange::MinLsn(Lsn(0x16B3748))
        );
        assert_eq!(
            stand_in(&class).as_deref(),
            Some("SET pgsidecar.min_lsn TO DEFAULT")
        );
        let class = classifier.classify("reset pgsidecar.min_lsn");
        assert_eq!(
            lone_change(&class).unwrap().unwrap(),
            ProxyChange::MinLsn(Lsn(0))
        );
        let class = classifier.classify("set pgsidecar.min_lsn = 'x\ny'");
        let refusal = lone_change(&class).unwrap().unwrap_err();
        assert_eq!(refusal.code, SqlState::INVALID_PARAMETER_VALUE);
        assert!(
            refusal.message.contains("pgsidecar.min_lsn"),
            "{}",
            refusal.message
        );
        assert!(
            !refusal.message.contains('\n'),
            "escaped: {}",
            refusal.message
        );
        let class = classifier.classify("set local pgsidecar.min_lsn = '0/1'");
        let refusal = lone_change(&class).unwrap().unwrap_err();
        assert_eq!(refusal.code, SqlState::FEATURE_NOT_SUPPORTED);
        let class = classifier.classify("set pgsidecar.min_lsn = '0/5'; reset all");
        assert_eq!(min_lsn_after(&class.session), Some(Lsn(0)));
        let class = classifier.classify("select set_config('pgsidecar.min_lsn', '0/9', false)");
        assert_eq!(min_lsn_after(&class.session), Some(Lsn(9)));
    }

    #[test]
    fn set_local_is_refused_by_either_protocol() {
        let classifier = Classifier::new(&[], 10_000, 100);
        let class = classifier.classify("set local pgsidecar.route = 'replica'");
        let refusal = lone_change(&class).unwrap().unwrap_err();
        assert_eq!(refusal.code, SqlState::FEATURE_NOT_SUPPORTED);
        let text = stand_in(&class).unwrap();
        assert!(text.contains("ERRCODE = '0A000'"), "{text}");
        assert_eq!(after(&class.session), None);
    }
}
