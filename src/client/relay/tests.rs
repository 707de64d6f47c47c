//! The retry rule at the relay's edge, against a scripted peer on a real
//! socket: a backend that dies before the client saw any of its answer
//! gives the client's bytes back for another server, even when it first
//! answered the proxy's own preamble; once the client saw something, never.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::client::buffer_budget::BufferBudget;
use crate::client::limits::Limits;
use crate::protocol::backend;
use crate::protocol::error::SqlState;

/// The tests' client end: always read (never surely unreadable).
impl crate::tls::WaitReadable for tokio::io::DuplexStream {
    fn can_wait_unbuffered(&self) -> bool {
        false
    }
}

/// Sends the proxy's own BEGIN before the client's first frame, and
/// swallows the first `own_replies` server frames (its answer).
struct Preamble {
    sent: bool,
    own_replies: usize,
}

impl Flow for Preamble {
    fn client_frame(
        &mut self,
        _tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        _to_client: &mut Outbox,
    ) -> Result<ClientStep, WireError> {
        if !std::mem::replace(&mut self.sent, true) {
            to_server.extend_from_slice(&query("BEGIN"));
        }
        to_server.extend_from_slice(frame);
        Ok(ClientStep::Continue)
    }
    fn inspects(&self, _tag: u8) -> bool {
        true
    }
    fn server_frame(&mut self, _: u8, _: &[u8], _: &mut BytesMut, _: &mut Outbox) -> ServerStep {
        if self.own_replies > 0 {
            self.own_replies -= 1;
            ServerStep::Drop
        } else {
            ServerStep::Forward
        }
    }
    fn quiet_status(&self) -> Option<crate::client::tx_status::TxStatus> {
        None
    }
    fn query_timed_out(&mut self, _: std::time::Duration) {}
}

fn query(sql: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'Q');
    b.put_u32((4 + sql.len() + 1) as u32);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b.freeze()
}

/// What a backend terminated right after answering BEGIN sends.
fn begin_then_fatal() -> BytesMut {
    let mut out = BytesMut::new();
    backend::command_complete(&mut out, "BEGIN");
    backend::ready_for_query(&mut out, b'T');
    let fatal = WireError::fatal(
        SqlState::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    );
    out.extend_from_slice(&fatal.to_bytes());
    out
}

/// Relays `request` through `flow` to a peer that answers with `script`
/// and closes; returns how the relay ended and what the client received.
async fn run(flow: &mut Preamble, request: &[u8], script: BytesMut) -> (RelayEnd, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = [0u8; 256];
        let _ = s.read(&mut got).await.unwrap();
        s.write_all(&script).await.unwrap();
    });
    let mut stream = crate::tls::ServerStream::Plain(TcpStream::connect(addr).await.unwrap());
    let (mut client, mut app) = tokio::io::duplex(4096);
    let mut cbuf = BytesMut::from(request);
    let (mut rbuf, mut wbuf) = (BytesMut::new(), BytesMut::new());
    let io = ServerIo {
        stream: &mut stream,
        rbuf: &mut rbuf,
        wbuf: &mut wbuf,
    };
    let limits = Limits {
        client_idle: None,
        idle_transaction: None,
        query: None,
    };
    let mut timers = RelayTimers::new(limits, None);
    let mut scratch = BytesMut::new();
    let end = relay(
        &mut client,
        &mut cbuf,
        io,
        flow,
        &MessageLimits::new(1 << 20, BufferBudget::new(u64::MAX)),
        &mut timers,
        Some(&mut scratch),
    )
    .await;
    peer.await.unwrap();
    drop(client);
    let mut seen = Vec::new();
    app.read_to_end(&mut seen).await.unwrap();
    (end, seen)
}

#[tokio::test]
async fn a_fatal_after_only_the_proxys_own_replies_is_retried() {
    let request = query("INSERT INTO t VALUES (1)");
    let mut flow = Preamble {
        sent: false,
        own_replies: 2,
    };
    let (end, seen) = run(&mut flow, &request, begin_then_fatal()).await;
    match end {
        RelayEnd::Unanswered(replay) => assert_eq!(&replay[..], &request[..]),
        other => panic!("not retried: {other:?}"),
    }
    assert!(seen.is_empty(), "the client saw {seen:?}");
}

#[tokio::test]
async fn a_fatal_after_the_client_saw_a_reply_reaches_the_client() {
    let request = query("INSERT INTO t VALUES (1)");
    let mut flow = Preamble {
        sent: false,
        own_replies: 0,
    };
    let (end, seen) = run(&mut flow, &request, begin_then_fatal()).await;
    // The client has the server's one FATAL: the session ends without a
    // second error of the proxy's.
    assert!(matches!(end, RelayEnd::ServerEnded), "{end:?}");
    assert!(
        String::from_utf8_lossy(&seen).contains("administrator command"),
        "the client did not get the FATAL: {seen:?}"
    );
}
