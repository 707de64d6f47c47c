//! What a server owes the client, in order. Every message sent to a server
//! (the client's, or one the proxy injected) adds the response it will get;
//! every response frame from the server is matched against the head of this
//! queue. That is how the proxy drops the answers to its own messages, puts
//! made-up answers (ParseComplete for a statement it did not need to send)
//! at the right place, and knows when a server can change hands.

use super::tx_status::TxStatus;
use crate::protocol::frame::{be, fe};

/// The request a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    /// A simple Query (possibly several statements): ends with ReadyForQuery.
    Query,
    FunctionCall,
}

impl Request {
    /// Requests that end with ReadyForQuery.
    fn ends_with_ready(self) -> bool {
        matches!(self, Request::Sync | Request::Query | Request::FunctionCall)
    }

    /// The request a client message makes, if it gets any response.
    pub fn of_frontend(tag: u8, describe_kind: u8) -> Option<Request> {
        Some(match tag {
            fe::PARSE => Request::Parse,
            fe::BIND => Request::Bind,
            fe::DESCRIBE if describe_kind == b'S' => Request::DescribeStatement,
            fe::DESCRIBE => Request::DescribePortal,
            fe::EXECUTE => Request::Execute,
            fe::CLOSE => Request::Close,
            fe::SYNC => Request::Sync,
            fe::QUERY => Request::Query,
            fe::FUNCTION_CALL => Request::FunctionCall,
            _ => return None,
        })
    }
}

/// Who the response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The client asked: forward the response.
    Client,
    /// The proxy asked: drop the response (errors of injected Parse/Close
    /// are still forwarded, because they are the client's errors too).
    Proxy,
}

/// Why the session wants to hear of a request's end: the token it carries
/// through the queue to the [`Event`] it completes or fails with. Small
/// and `Copy`: one goes with every message sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// No events wanted.
    #[default]
    None,
    /// A Parse or Close of the proxy-wide statement with this id (whether
    /// it is prepared on this server).
    Statement(u64),
    /// A client statement whose effects wait under this number in the
    /// hold's `Pending`.
    Effect(u64),
    /// The proxy's parameter sync at the start of a hold.
    ParamSync,
    /// The Bind or Describe a recorded batch may be retried from after a
    /// stale plan.
    RetryFrom,
    /// The query reading the session back after opaque code ran.
    Readback,
}

impl Token {
    pub fn is_some(self) -> bool {
        self != Token::None
    }
}

/// A made-up reply the proxy owes the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthetic {
    ParseComplete,
    CloseComplete,
    /// A simple Query the proxy answered itself: CommandComplete with this
    /// tag, then ReadyForQuery with the transaction status of the moment.
    Command(CommandTag),
}

/// The command tags of the simple queries the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandTag {
    Set,
    Deallocate,
    Begin,
    Commit,
    Rollback,
}

impl CommandTag {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandTag::Set => "SET",
            CommandTag::Deallocate => "DEALLOCATE",
            CommandTag::Begin => "BEGIN",
            CommandTag::Commit => "COMMIT",
            CommandTag::Rollback => "ROLLBACK",
        }
    }
}

impl Synthetic {
    pub fn bytes(self, status: TxStatus) -> bytes::Bytes {
        match self {
            Synthetic::ParseComplete => bytes::Bytes::from_static(b"1\0\0\0\x04"),
            Synthetic::CloseComplete => bytes::Bytes::from_static(b"3\0\0\0\x04"),
            Synthetic::Command(tag) => {
                let mut out = bytes::BytesMut::with_capacity(16 + tag.as_str().len());
                tag.put(&mut out, status);
                out.freeze()
            }
        }
    }
}

impl CommandTag {
    /// Appends CommandComplete with this tag, then ReadyForQuery.
    pub fn put(self, out: &mut bytes::BytesMut, status: TxStatus) {
        crate::protocol::backend::command_complete(out, self.as_str());
        status.put_ready(out);
    }
}

/// One queue entry. `token` lets the session recognise its own entries when
/// they complete or fail (e.g. which statement a failed Parse was for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Response {
        request: Request,
        audience: Audience,
        token: Token,
    },
    Reply(Synthetic),
    /// A request with a token sent while the server skips to Sync: it gets
    /// no answer, and fails when the next server frame arrives.
    Skipped {
        request: Request,
        token: Token,
    },
}

/// What to do with one server frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Forward,
    Drop,
}

/// Something the session may need to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request carrying this token failed with an ErrorResponse.
    Failed { request: Request, token: Token },
    /// A request carrying this token completed successfully.
    Done { request: Request, token: Token },
}

/// The result of matching one server frame.
#[derive(Debug, Default)]
pub struct Matched {
    pub disposition: Option<Disposition>,
    /// Made-up replies to send right after this frame.
    pub replies: Vec<Synthetic>,
    pub events: Events,
    /// This frame was a ReadyForQuery.
    pub ready: bool,
}

/// The events of one frame: nearly always none or one (a Query's or an
/// Execute's end), kept inline so that matching a frame allocates nothing;
/// more (a failed batch) spill into a list.
#[derive(Debug, Default)]
pub struct Events {
    first: Option<Event>,
    more: Vec<Event>,
}

impl Events {
    #[inline]
    fn push(&mut self, event: Event) {
        if self.first.is_none() {
            self.first = Some(event);
        } else {
            self.more.push(event);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.first.iter().chain(&self.more)
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::iter::Chain<std::option::Iter<'a, Event>, std::slice::Iter<'a, Event>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.iter().chain(&self.more)
    }
}

impl PartialEq<Vec<Event>> for Events {
    fn eq(&self, other: &Vec<Event>) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<const N: usize> PartialEq<[Event; N]> for Events {
    fn eq(&self, other: &[Event; N]) -> bool {
        self.iter().eq(other.iter())
    }
}

/// The response queue of one server connection plus the protocol position
/// that decides when it may be released.
#[derive(Debug)]
pub struct Expectations {
    queue: Queue,
    /// Extended-query messages sent since the last Sync.
    batch_open: bool,
    /// Between the server's CopyInResponse and the client's CopyDone/Fail.
    copy_in: bool,
    /// An extended-query request failed before its batch's Sync was sent:
    /// the server ignores every message until that Sync, including ones
    /// sent after the error arrived, so they are owed nothing.
    skipping: bool,
    /// A made-up reply may be queued: set when one is, cleared when the
    /// queue is emptied. Without one, [`client_head`](Self::client_head)
    /// need not look past the head (a second look per response,
    /// five per extended-query transaction, saved).
    replies_queued: bool,
    status: TxStatus,
}

impl Default for Expectations {
    fn default() -> Self {
        Expectations {
            queue: Queue::default(),
            batch_open: false,
            copy_in: false,
            skipping: false,
            replies_queued: false,
            status: TxStatus::Idle,
        }
    }
}

impl Expectations {
    /// Back to a fresh state, keeping the queue's capacity for the next
    /// hold.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.batch_open = false;
        self.copy_in = false;
        self.skipping = false;
        self.replies_queued = false;
        self.status = TxStatus::Idle;
    }

    /// Notes a message sent to the server. `token` is [`Token::None`]
    /// unless the caller wants events for it.
    #[inline]
    pub fn sent(&mut self, tag: u8, request: Option<Request>, audience: Audience, token: Token) {
        match tag {
            fe::SYNC => self.batch_open = false,
            fe::QUERY | fe::FUNCTION_CALL => {}
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE | fe::FLUSH => {
                self.batch_open = true
            }
            fe::COPY_DONE | fe::COPY_FAIL => self.copy_in = false,
            _ => {}
        }
        if tag == fe::SYNC && self.copy_in {
            // The server ignores Sync during COPY IN: nothing to expect.
            return;
        }
        if self.skipping {
            if tag != fe::SYNC {
                if let Some(request) = request
                    && token.is_some()
                {
                    self.queue.push_back(Expect::Skipped { request, token });
                }
                return;
            }
            self.skipping = false;
        }
        if let Some(request) = request {
            self.queue.push_back(Expect::Response {
                request,
                audience,
                token,
            });
        }
    }

    /// A made-up reply for a client message the proxy answered itself.
    /// Returns true if it is due right away (nothing owed before it).
    pub fn reply(&mut self, reply: Synthetic) -> bool {
        if self.skipping {
            // The server would have skipped the message: no answer.
            return false;
        }
        if self.queue.is_empty() {
            true
        } else {
            self.queue.push_back(Expect::Reply(reply));
            self.replies_queued = true;
            false
        }
    }

    /// Matches one server frame (tag and, for ReadyForQuery, its status).
    pub fn received(&mut self, tag: u8, status: TxStatus) -> Matched {
        let mut m = Matched::default();
        self.drain_skipped(&mut m);
        let Some(Expect::Response {
            request, audience, ..
        }) = self.queue.front().copied()
        else {
            // Nothing expected: asynchronous messages (NOTICE, NOTIFY,
            // ParameterStatus) or a confused server; pass them on.
            m.disposition = Some(Disposition::Forward);
            if tag == be::READY_FOR_QUERY {
                self.status = status;
                m.ready = true;
            }
            return m;
        };
        let keep_for_client = match tag {
            be::ERROR_RESPONSE => {
                audience == Audience::Client || matches!(request, Request::Parse | Request::Close)
            }
            b'A' => true, // notifications are always the client's
            _ => audience == Audience::Client,
        };
        m.disposition = Some(if keep_for_client {
            Disposition::Forward
        } else {
            Disposition::Drop
        });
        let completes = match tag {
            be::ERROR_RESPONSE => {
                self.fail_head(&mut m);
                false
            }
            be::READY_FOR_QUERY => {
                self.status = status;
                self.copy_in = false;
                m.ready = true;
                request.ends_with_ready()
            }
            be::PARSE_COMPLETE => request == Request::Parse,
            be::BIND_COMPLETE => request == Request::Bind,
            be::CLOSE_COMPLETE => request == Request::Close,
            b'T' | b'n' => {
                matches!(
                    request,
                    Request::DescribeStatement | Request::DescribePortal
                )
            }
            be::COMMAND_COMPLETE | b'I' | b's' => request == Request::Execute,
            be::COPY_IN_RESPONSE => {
                self.start_copy_in();
                false
            }
            _ => false,
        };
        if completes
            && let Some(Expect::Response { request, token, .. }) = self.queue.pop_front()
            && token.is_some()
        {
            m.events.push(Event::Done { request, token });
        }
        self.drain_replies(&mut m);
        m
    }

    /// [`received`](Self::received) for the common answer, in short: one
    /// that completes the client's request at the head of the queue (a
    /// ParseComplete, BindComplete, CloseComplete, a Describe's
    /// RowDescription or NoData, an Execute's CommandComplete) with no
    /// made-up reply due right after it. Pops the request and returns the
    /// event it completes with, if it carries a token; `None` (changing
    /// nothing) for any other frame.
    #[inline]
    pub fn completes_plain(&mut self, tag: u8) -> Option<Option<Event>> {
        let (request, token) = self.client_head()?;
        let completes = match tag {
            be::PARSE_COMPLETE => request == Request::Parse,
            be::BIND_COMPLETE => request == Request::Bind,
            be::CLOSE_COMPLETE => request == Request::Close,
            b'T' | b'n' => matches!(
                request,
                Request::DescribeStatement | Request::DescribePortal
            ),
            be::COMMAND_COMPLETE => request == Request::Execute,
            _ => false,
        };
        if !completes {
            return None;
        }
        self.queue.pop_front();
        Some(token.is_some().then_some(Event::Done { request, token }))
    }

    /// The request at the head of the queue, with its token, when it is the
    /// client's and no made-up reply is due right after it: the case the
    /// short paths settle.
    #[inline]
    fn client_head(&self) -> Option<(Request, Token)> {
        let Some(&Expect::Response {
            request,
            audience: Audience::Client,
            token,
        }) = self.queue.front()
        else {
            return None;
        };
        if self.replies_queued && matches!(self.queue.get(1), Some(Expect::Reply(_))) {
            return None;
        }
        Some((request, token))
    }

    /// [`received`](Self::received) for a ReadyForQuery (with `status`)
    /// that ends the client's request at the head of the queue (its Query,
    /// Sync or FunctionCall) with no made-up reply due right after it: the
    /// end of nearly every transaction. Pops the request and returns the
    /// event it completes with, if it carries a token; `None` (changing
    /// nothing) when the queue is otherwise.
    #[inline]
    pub fn completes_ready(&mut self, status: TxStatus) -> Option<Option<Event>> {
        let (request, token) = self.client_head()?;
        if !request.ends_with_ready() {
            return None;
        }
        self.status = status;
        self.copy_in = false;
        self.queue.pop_front();
        Some(token.is_some().then_some(Event::Done { request, token }))
    }

    /// After an ErrorResponse: a simple Query or FunctionCall still ends
    /// with ReadyForQuery; an extended-query request fails and the server
    /// skips everything up to the next Sync, so those entries (and replies
    /// made up for them) are dropped, as the server would have. Each
    /// dropped request with a token fails too: a Parse the server skipped
    /// did not prepare its statement.
    fn fail_head(&mut self, m: &mut Matched) {
        let Some(Expect::Response { request, token, .. }) = self.queue.front().copied() else {
            return;
        };
        if request.ends_with_ready() {
            if token.is_some() {
                m.events.push(Event::Failed { request, token });
            }
            return;
        }
        while let Some(e) = self.queue.front() {
            match *e {
                Expect::Response {
                    request: Request::Sync,
                    ..
                } => return,
                Expect::Response { request, token, .. } if token.is_some() => {
                    m.events.push(Event::Failed { request, token })
                }
                _ => {}
            }
            self.queue.pop_front();
        }
        // The batch's Sync is still to come: what is sent before it is
        // skipped too.
        self.skipping = true;
    }

    /// Syncs the client sent after the COPY command but before the server
    /// entered COPY IN are ignored by the server.
    fn start_copy_in(&mut self) {
        self.copy_in = true;
        let mut first = true;
        self.queue.retain(|e| {
            let is_sync = matches!(
                e,
                Expect::Response {
                    request: Request::Sync,
                    ..
                }
            );
            let keep = first || !is_sync;
            first = false;
            keep
        });
    }

    /// Requests the server skipped fail (they lead the queue, up to the
    /// Sync that ends the skipping).
    fn drain_skipped(&mut self, m: &mut Matched) {
        while let Some(&Expect::Skipped { request, token }) = self.queue.front() {
            m.events.push(Event::Failed { request, token });
            self.queue.pop_front();
        }
    }

    fn drain_replies(&mut self, m: &mut Matched) {
        while let Some(Expect::Reply(r)) = self.queue.front() {
            m.replies.push(*r);
            self.queue.pop_front();
        }
        if self.queue.is_empty() {
            self.replies_queued = false;
        }
    }

    /// The token of the statement (Query or Execute) the next response
    /// belongs to, 0 if the head is anything else.
    pub fn head_statement_token(&self) -> Token {
        match self.queue.front() {
            Some(Expect::Response {
                request: Request::Query | Request::Execute,
                token,
                ..
            }) => *token,
            _ => Token::None,
        }
    }

    /// Nothing owed ends with ReadyForQuery, except the proxy's own
    /// requests carrying `token` (its parameter sync, which leaves the
    /// transaction status alone): the next message runs in [`status`].
    ///
    /// [`status`]: Self::status
    pub fn settled_but(&self, token: Token) -> bool {
        self.queue.as_slice().iter().all(|e| match e {
            Expect::Response {
                request,
                audience,
                token: t,
            } => !request.ends_with_ready() || (*audience == Audience::Proxy && *t == token),
            Expect::Reply(_) | Expect::Skipped { .. } => true,
        })
    }

    /// For a retry of the batch whose request carrying `token` failed: that
    /// request is at the head and the queue ends with the Sync of its batch,
    /// with nothing sent after it. Drops the entries before that Sync (the
    /// server skips their messages after the error) and makes the Sync's
    /// ReadyForQuery the proxy's, so that the replayed batch answers the
    /// client instead. Returns a failure for each dropped request with a
    /// token, or `None` (changing nothing) when the queue is not like that.
    pub fn take_over_batch(&mut self, token: Token) -> Option<Vec<Event>> {
        let head_matches = matches!(
            self.queue.front(),
            Some(Expect::Response { audience: Audience::Client, token: t, .. }) if *t == token
        );
        let last = self.queue.len().checked_sub(1)?;
        let ends_with_sync = matches!(
            self.queue.as_slice()[last],
            Expect::Response {
                request: Request::Sync,
                ..
            }
        );
        let one_batch = self.queue.as_slice()[..last]
            .iter()
            .all(|e| !matches!(e, Expect::Response { request, .. } if request.ends_with_ready()));
        if !head_matches || !ends_with_sync || !one_batch || self.batch_open || self.copy_in {
            return None;
        }
        let dropped = self
            .queue
            .drain_front(last)
            .filter_map(|e| match e {
                Expect::Response { request, token, .. } if token.is_some() => {
                    Some(Event::Failed { request, token })
                }
                _ => None,
            })
            .collect();
        if let Some(Expect::Response { audience, .. }) = self.queue.front_mut() {
            *audience = Audience::Proxy;
        }
        Some(dropped)
    }

    /// The token of the request the next response answers.
    pub fn head_token(&self) -> Option<Token> {
        match self.queue.front() {
            Some(Expect::Response { token, .. }) => Some(*token),
            _ => None,
        }
    }

    /// The next response answers a request of the client's that a
    /// RowDescription does not complete (anything but a Describe): such a
    /// frame is passed on with nothing to note.
    #[inline]
    pub fn head_takes_rows(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect::Response {
                audience: Audience::Client,
                request,
                ..
            }) if !matches!(request, Request::DescribeStatement | Request::DescribePortal)
        )
    }

    /// The next response answers the client's simple Query: a
    /// CommandComplete does not complete it (its ReadyForQuery does) and
    /// is the client's.
    #[inline]
    pub fn head_is_client_query(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect::Response {
                audience: Audience::Client,
                request: Request::Query,
                ..
            })
        )
    }

    /// The next response answers a message of the proxy's own.
    pub fn head_is_proxy(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect::Response {
                audience: Audience::Proxy,
                ..
            })
        )
    }

    /// Nothing owed and no batch open: the server is at a message boundary.
    pub fn is_quiet(&self) -> bool {
        self.queue.is_empty() && !self.batch_open
    }

    /// Quiet and outside a transaction block: safe for another client.
    pub fn is_reusable(&self) -> bool {
        self.is_quiet() && self.status.is_idle()
    }

    /// Last transaction status from ReadyForQuery.
    pub fn status(&self) -> TxStatus {
        self.status
    }
}

mod queue;

use queue::Queue;

#[cfg(test)]
mod tests;
