//! Messages the proxy writes to clients in the server's role: authentication
//! requests, ParameterStatus, BackendKeyData, ReadyForQuery and the small
//! result sets of the admin console. Encoded with pgwire's message types.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::response::{
    CommandComplete, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey,
};

// Encoding into a growable BytesMut only fails when a message is larger than
// its type's limit; everything encoded here is small, so results are ignored.

pub fn authentication(out: &mut BytesMut, auth: Authentication) {
    let _ = auth.encode(out);
}

pub fn auth_ok(out: &mut BytesMut) {
    authentication(out, Authentication::Ok);
}

pub fn auth_sasl_continue(out: &mut BytesMut, data: Vec<u8>) {
    authentication(out, Authentication::SASLContinue(Bytes::from(data)));
}

pub fn auth_sasl_final(out: &mut BytesMut, data: Vec<u8>) {
    authentication(out, Authentication::SASLFinal(Bytes::from(data)));
}

/// Written by hand: every login writes one per server parameter (about
/// fifteen), and pgwire's `ParameterStatus` would first copy both strings
/// (`parameter_status_is_encoded_as_pgwire_does` checks the bytes).
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let len = 4 + name.len() + 1 + value.len() + 1;
    out.reserve(1 + len);
    out.put_u8(b'S');
    out.put_i32(len as i32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(value.as_bytes());
    out.put_u8(0);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let _ = BackendKeyData::new(pid, SecretKey::I32(secret)).encode(out);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    let _ = ReadyForQuery::new(status).encode(out);
}

pub fn negotiate_protocol_version(out: &mut BytesMut, newest_minor: i32, unsupported: Vec<String>) {
    let _ = NegotiateProtocolVersion::new(newest_minor, unsupported).encode(out);
}

/// A NoticeResponse of severity WARNING (SQLSTATE 01000).
pub fn warning(out: &mut BytesMut, message: &str) {
    let fields = vec![
        (b'S', "WARNING".to_string()),
        (b'V', "WARNING".to_string()),
        (b'C', "01000".to_string()),
        (b'M', message.to_string()),
    ];
    let _ = NoticeResponse::new(fields).encode(out);
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let _ = CommandComplete::new(tag.to_string()).encode(out);
}

/// A RowDescription of text columns (type `text`, OID 25).
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    let len = 4 + 2 + columns.iter().map(|c| c.len() + 1 + 18).sum::<usize>();
    out.reserve(len + 1);
    out.put_u8(b'T');
    out.put_u32(len as u32);
    out.put_u16(columns.len() as u16);
    for c in columns {
        out.put_slice(c.as_bytes());
        out.put_u8(0);
        out.put_u32(0); // table OID
        out.put_u16(0); // column number
        out.put_u32(25); // text
        out.put_i16(-1); // variable size
        out.put_i32(-1); // no modifier
        out.put_u16(0); // text format
    }
}

/// A DataRow of text values (`None` is SQL NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    let len = 4
        + 2
        + values
            .iter()
            .map(|v| 4 + v.map_or(0, str::len))
            .sum::<usize>();
    out.reserve(len + 1);
    out.put_u8(b'D');
    out.put_u32(len as u32);
    out.put_u16(values.len() as u16);
    for v in values {
        match v {
            Some(s) => {
                out.put_u32(s.len() as u32);
                out.put_slice(s.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::messages::startup::ParameterStatus;

    #[test]
    fn parameter_status_is_encoded_as_pgwire_does() {
        for (name, value) in [
            ("DateStyle", "ISO, MDY"),
            ("application_name", ""),
            ("", ""),
        ] {
            let mut ours = BytesMut::new();
            parameter_status(&mut ours, name, value);
            let mut theirs = BytesMut::new();
            ParameterStatus::new(name.into(), value.into())
                .encode(&mut theirs)
                .unwrap();
            assert_eq!(ours, theirs, "{name}={value}");
        }
    }
}
