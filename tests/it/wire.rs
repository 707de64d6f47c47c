//! A raw protocol client for tests that must send what no driver would
//! (protocol 2, garbage, oversized lengths, cancel keys of their choosing)
//! and read exactly what the proxy answers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long a read may wait for the proxy before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub const PROTOCOL_3_0: u32 = 0x0003_0000;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// The fields of an ErrorResponse that tests look at.
#[derive(Debug, Clone)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// What a client read from the connection.
#[derive(Debug)]
pub enum Msg {
    /// A complete message: tag and body (without the length).
    Frame(u8, Vec<u8>),
    /// The peer closed the connection (EOF or reset).
    Closed,
}

/// One TCP connection to the proxy, with its read buffer.
pub struct Raw {
    reader: OwnedReadHalf,
    writer: Option<OwnedWriteHalf>,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let (reader, writer) = stream.into_split();
        Raw {
            reader,
            writer: Some(writer),
            buf: BytesMut::new(),
        }
    }

    /// Writes all of `bytes`; panics if the proxy has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer()
            .write_all(bytes)
            .await
            .expect("write to proxy");
    }

    /// The write half, for writes that may fail or never finish.
    pub fn writer(&mut self) -> &mut OwnedWriteHalf {
        self.writer.as_mut().expect("the write half was taken")
    }

    /// Takes the write half (to write from another task); dropping it
    /// half-closes the connection.
    pub fn take_writer(&mut self) -> OwnedWriteHalf {
        self.writer.take().expect("the write half was taken")
    }

    /// Reads `n` raw bytes (for the one-byte answer to an SSLRequest).
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let read = tokio::time::timeout(READ_TIMEOUT, self.reader.read_buf(&mut self.buf))
                .await
                .expect("the proxy answered in time")
                .expect("read from proxy");
            assert!(read > 0, "the proxy closed the connection");
        }
        self.buf.split_to(n).to_vec()
    }

    /// The next message, or `Closed`. Panics if nothing arrives in time.
    pub async fn next(&mut self) -> Msg {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Msg::Frame(tag, body);
                }
            }
            self.buf.reserve(4096);
            let read = tokio::time::timeout(READ_TIMEOUT, self.reader.read_buf(&mut self.buf))
                .await
                .expect("the proxy answered or closed in time");
            match read {
                Ok(0) | Err(_) => return Msg::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Reads until an ErrorResponse and returns it. Panics on close first.
    pub async fn error(&mut self) -> ErrorFields {
        loop {
            match self.next().await {
                Msg::Frame(b'E', body) => return parse_error(&body),
                Msg::Frame(..) => {}
                Msg::Closed => panic!("the connection closed without an ErrorResponse"),
            }
        }
    }

    /// Reads an ErrorResponse, then expects the connection to be closed.
    pub async fn fatal(&mut self) -> ErrorFields {
        let e = self.error().await;
        self.expect_closed().await;
        e
    }

    /// Panics unless the proxy closes the connection (after any messages).
    pub async fn expect_closed(&mut self) {
        loop {
            if let Msg::Closed = self.next().await {
                return;
            }
        }
    }

    /// Reads until ReadyForQuery; returns its status and the messages before.
    pub async fn until_ready(&mut self) -> (u8, Vec<(u8, Vec<u8>)>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Msg::Frame(b'Z', body) => return (body[0], seen),
                Msg::Frame(tag, body) => seen.push((tag, body)),
                Msg::Closed => panic!("closed before ReadyForQuery; got {seen:?}"),
            }
        }
    }

    /// Logs in as `user` on `db` against a proxy with `client_auth =
    /// "trust"`. Returns the connection and its BackendKeyData.
    pub async fn login_trust(addr: SocketAddr, user: &str, db: &str) -> (Raw, i32, i32) {
        let mut raw = Raw::connect(addr).await;
        raw.send(&startup(PROTOCOL_3_0, &[("user", user), ("database", db)]))
            .await;
        let (status, seen) = raw.until_ready().await;
        assert_eq!(status, b'I');
        assert!(
            seen.iter()
                .any(|(t, b)| *t == b'R' && b[..4] == [0, 0, 0, 0]),
            "AuthenticationOk expected, got {seen:?}"
        );
        let key = seen
            .iter()
            .find(|(t, _)| *t == b'K')
            .map(|(_, b)| b.clone())
            .expect("BackendKeyData");
        let pid = i32::from_be_bytes(key[0..4].try_into().unwrap());
        let secret = i32::from_be_bytes(key[4..8].try_into().unwrap());
        (raw, pid, secret)
    }
}

/// An untagged startup-phase packet: length, version code, parameters.
pub fn startup(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u32(version);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    if !params.is_empty() {
        body.put_u8(0);
    }
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A CancelRequest for the key a client was given.
pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&16u32.to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

/// A tagged message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple-protocol Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

pub fn parse_error(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
    };
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'S' => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
    }
    fields
}
