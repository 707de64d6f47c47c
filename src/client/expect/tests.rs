use super::*;

fn client(e: &mut Expectations, tag: u8) {
    let req = Request::of_frontend(tag, b'S');
    e.sent(tag, req, Audience::Client, Token::None);
}

fn recv(e: &mut Expectations, tags: &[u8]) -> Vec<Disposition> {
    tags.iter()
        .map(|t| e.received(*t, TxStatus::Idle).disposition.unwrap())
        .collect()
}

use Disposition::{Drop as D, Forward as F};

#[test]
fn simple_query_is_quiet_after_ready() {
    let mut e = Expectations::default();
    client(&mut e, fe::QUERY);
    assert!(!e.is_quiet());
    assert_eq!(recv(&mut e, b"TDCZ"), vec![F, F, F, F]);
    assert!(e.is_reusable());
}

#[test]
fn pipelined_queries_need_every_ready() {
    let mut e = Expectations::default();
    client(&mut e, fe::QUERY);
    client(&mut e, fe::QUERY);
    recv(&mut e, b"CZ");
    assert!(!e.is_quiet());
    recv(&mut e, b"CZ");
    assert!(e.is_quiet());
}

#[test]
fn extended_batch_without_sync_holds_the_server() {
    let mut e = Expectations::default();
    client(&mut e, fe::PARSE);
    client(&mut e, fe::FLUSH);
    recv(&mut e, b"1");
    assert!(!e.is_quiet());
    client(&mut e, fe::SYNC);
    recv(&mut e, b"Z");
    assert!(e.is_reusable());
}

#[test]
fn injected_parse_is_dropped_and_client_bind_forwarded() {
    let mut e = Expectations::default();
    e.sent(
        fe::PARSE,
        Some(Request::Parse),
        Audience::Proxy,
        Token::Statement(7),
    );
    client(&mut e, fe::BIND);
    client(&mut e, fe::EXECUTE);
    client(&mut e, fe::SYNC);
    let m = e.received(b'1', TxStatus::Idle);
    assert_eq!(m.disposition, Some(D));
    assert_eq!(
        m.events,
        vec![Event::Done {
            request: Request::Parse,
            token: Token::Statement(7)
        }]
    );
    assert_eq!(recv(&mut e, b"2DCZ"), vec![F, F, F, F]);
    assert!(e.is_reusable());
}

#[test]
fn made_up_reply_comes_after_earlier_responses() {
    let mut e = Expectations::default();
    client(&mut e, fe::BIND);
    assert!(!e.reply(Synthetic::ParseComplete));
    let m = e.received(be::BIND_COMPLETE, TxStatus::Idle);
    assert_eq!(m.replies, vec![Synthetic::ParseComplete]);
    let mut idle = Expectations::default();
    assert!(idle.reply(Synthetic::CloseComplete));
}

#[test]
fn error_skips_to_sync_including_made_up_replies() {
    let mut e = Expectations::default();
    client(&mut e, fe::BIND);
    e.reply(Synthetic::ParseComplete);
    client(&mut e, fe::EXECUTE);
    client(&mut e, fe::SYNC);
    let m = e.received(be::ERROR_RESPONSE, TxStatus::Idle);
    assert_eq!(m.disposition, Some(F));
    assert!(m.replies.is_empty());
    recv(&mut e, b"Z");
    assert!(e.is_reusable());
}

#[test]
fn failed_injected_parse_is_reported_and_its_error_forwarded() {
    let mut e = Expectations::default();
    e.sent(
        fe::PARSE,
        Some(Request::Parse),
        Audience::Proxy,
        Token::Statement(3),
    );
    client(&mut e, fe::BIND);
    client(&mut e, fe::SYNC);
    let m = e.received(be::ERROR_RESPONSE, TxStatus::Idle);
    assert_eq!(m.disposition, Some(F));
    assert_eq!(
        m.events,
        vec![Event::Failed {
            request: Request::Parse,
            token: Token::Statement(3)
        }]
    );
    recv(&mut e, b"Z");
    assert!(e.is_quiet());
}

#[test]
fn injected_query_is_dropped_entirely() {
    let mut e = Expectations::default();
    e.sent(
        fe::QUERY,
        Some(Request::Query),
        Audience::Proxy,
        Token::None,
    );
    client(&mut e, fe::QUERY);
    assert_eq!(recv(&mut e, b"CSZ"), vec![D, D, D]);
    assert!(!e.is_quiet());
    assert_eq!(recv(&mut e, b"TDCZ"), vec![F, F, F, F]);
    assert!(e.is_quiet());
}

#[test]
fn extended_copy_in_ignores_syncs_sent_during_copy() {
    // libpq: Parse Bind Execute Sync, CopyData…, CopyDone, Sync
    let mut e = Expectations::default();
    for tag in [fe::PARSE, fe::BIND, fe::EXECUTE, fe::SYNC] {
        client(&mut e, tag);
    }
    recv(&mut e, b"12G");
    client(&mut e, fe::COPY_DATA);
    client(&mut e, fe::SYNC); // ignored by the server
    client(&mut e, fe::COPY_DONE);
    client(&mut e, fe::SYNC);
    recv(&mut e, b"CZ");
    assert!(e.is_reusable());
}

#[test]
fn simple_copy_in_and_failure() {
    let mut e = Expectations::default();
    client(&mut e, fe::QUERY);
    recv(&mut e, b"G");
    client(&mut e, fe::COPY_DATA);
    client(&mut e, fe::COPY_FAIL);
    recv(&mut e, b"EZ");
    assert!(e.is_reusable());
}

#[test]
fn describe_statement_ends_at_row_description() {
    let mut e = Expectations::default();
    for tag in [fe::PARSE, fe::DESCRIBE, fe::SYNC] {
        client(&mut e, tag);
    }
    recv(&mut e, b"1tT");
    assert!(!e.is_quiet());
    recv(&mut e, b"Z");
    assert!(e.is_quiet());
}

#[test]
fn transaction_block_is_not_reusable() {
    let mut e = Expectations::default();
    client(&mut e, fe::QUERY);
    e.received(be::COMMAND_COMPLETE, TxStatus::Idle);
    e.received(be::READY_FOR_QUERY, TxStatus::InTransaction);
    assert!(e.is_quiet() && !e.is_reusable());
}

fn sent(e: &mut Expectations, tag: u8, audience: Audience, token: Token) {
    e.sent(tag, Request::of_frontend(tag, b'S'), audience, token);
}

#[test]
fn a_failed_batch_is_taken_over_for_a_retry() {
    let mut e = Expectations::default();
    sent(&mut e, fe::BIND, Audience::Client, Token::Effect(7));
    assert!(!e.reply(Synthetic::CloseComplete));
    sent(&mut e, fe::EXECUTE, Audience::Client, Token::Effect(3));
    sent(&mut e, fe::SYNC, Audience::Client, Token::None);
    assert!(!e.settled_but(Token::Effect(99)), "a Sync is owed");
    assert_eq!(
        e.take_over_batch(Token::Effect(8)),
        None,
        "another request's token"
    );
    let failed = |request, token| Event::Failed { request, token };
    assert_eq!(
        e.take_over_batch(Token::Effect(7)),
        Some(vec![
            failed(Request::Bind, Token::Effect(7)),
            failed(Request::Execute, Token::Effect(3))
        ])
    );
    // The batch's ReadyForQuery is now the proxy's.
    assert_eq!(recv(&mut e, b"Z"), vec![D]);
    assert!(e.is_reusable());
}

#[test]
fn no_take_over_when_more_was_sent_after_the_sync() {
    let mut e = Expectations::default();
    sent(&mut e, fe::BIND, Audience::Client, Token::Effect(7));
    sent(&mut e, fe::SYNC, Audience::Client, Token::None);
    sent(&mut e, fe::BIND, Audience::Client, Token::None);
    assert_eq!(
        e.take_over_batch(Token::Effect(7)),
        None,
        "a Bind after the Sync"
    );
    sent(&mut e, fe::SYNC, Audience::Client, Token::None);
    assert_eq!(e.take_over_batch(Token::Effect(7)), None, "a second batch");

    let mut e = Expectations::default();
    sent(&mut e, fe::BIND, Audience::Client, Token::Effect(7));
    assert_eq!(e.take_over_batch(Token::Effect(7)), None, "no Sync yet");
}

#[test]
fn settled_but_ignores_only_the_named_proxy_query() {
    let mut e = Expectations::default();
    assert!(e.settled_but(Token::ParamSync));
    e.sent(
        fe::QUERY,
        Some(Request::Query),
        Audience::Proxy,
        Token::ParamSync,
    );
    sent(&mut e, fe::BIND, Audience::Client, Token::None);
    assert!(e.settled_but(Token::ParamSync));
    e.sent(
        fe::QUERY,
        Some(Request::Query),
        Audience::Proxy,
        Token::None,
    );
    assert!(
        !e.settled_but(Token::ParamSync),
        "a BEGIN of the proxy's changes the status"
    );
}

#[test]
fn requests_skipped_after_an_error_fail_with_it() {
    let mut e = Expectations::default();
    sent(&mut e, fe::BIND, Audience::Client, Token::None);
    sent(&mut e, fe::EXECUTE, Audience::Client, Token::None);
    // A statement first used after the failing one: its Parse is skipped.
    sent(&mut e, fe::PARSE, Audience::Client, Token::Statement(42));
    sent(&mut e, fe::PARSE, Audience::Proxy, Token::Statement(43));
    sent(&mut e, fe::EXECUTE, Audience::Client, Token::Effect(5));
    sent(&mut e, fe::SYNC, Audience::Client, Token::None);
    assert!(
        e.received(be::BIND_COMPLETE, TxStatus::Idle)
            .events
            .is_empty()
    );
    let m = e.received(be::ERROR_RESPONSE, TxStatus::Idle);
    assert_eq!(
        m.events,
        vec![
            Event::Failed {
                request: Request::Parse,
                token: Token::Statement(42)
            },
            Event::Failed {
                request: Request::Parse,
                token: Token::Statement(43)
            },
            Event::Failed {
                request: Request::Execute,
                token: Token::Effect(5)
            },
        ]
    );
    assert_eq!(recv(&mut e, b"Z"), vec![F]);
    assert!(e.is_reusable());
}

#[test]
fn an_error_before_the_sync_was_sent_skips_what_follows_until_it() {
    let mut e = Expectations::default();
    e.sent(
        fe::PARSE,
        Some(Request::Parse),
        Audience::Client,
        Token::Statement(7),
    );
    let m = e.received(be::ERROR_RESPONSE, TxStatus::InTransaction);
    assert_eq!(m.disposition, Some(F));
    assert_eq!(
        m.events,
        [Event::Failed {
            request: Request::Parse,
            token: Token::Statement(7)
        }]
    );
    // Sent after the error arrived: the server skips them, answering none.
    e.sent(
        fe::BIND,
        Some(Request::Bind),
        Audience::Client,
        Token::Effect(8),
    );
    e.sent(
        fe::EXECUTE,
        Some(Request::Execute),
        Audience::Client,
        Token::None,
    );
    assert!(!e.reply(Synthetic::ParseComplete));
    e.sent(fe::SYNC, Some(Request::Sync), Audience::Client, Token::None);
    let m = e.received(be::READY_FOR_QUERY, TxStatus::Failed);
    assert_eq!(m.disposition, Some(F));
    assert!(m.ready);
    assert_eq!(
        m.events,
        [Event::Failed {
            request: Request::Bind,
            token: Token::Effect(8)
        }]
    );
    assert!(e.is_quiet());
    // After the Sync, requests are answered again.
    client(&mut e, fe::QUERY);
    assert_eq!(recv(&mut e, b"CZ"), vec![F, F]);
    assert!(e.is_quiet());
}

#[test]
fn queue_entries_stay_small() {
    // One entry per message sent: a token is a tag and a number, and the
    // entry no larger than when tokens were bare u64s.
    assert!(std::mem::size_of::<Token>() <= 16);
    assert!(std::mem::size_of::<Expect>() <= 24);
}

#[test]
fn a_plain_completion_is_matched_as_received_would() {
    // Queues of requests (with a token, a reply made up behind, the
    // proxy's own) and every answer: where the short way takes a frame,
    // it pops and reports what `received` would; elsewhere it changes
    // nothing.
    type Setup = fn(&mut Expectations);
    let setups: [Setup; 5] = [
        |e| {
            for tag in [fe::PARSE, fe::BIND, fe::DESCRIBE, fe::EXECUTE, fe::SYNC] {
                client(e, tag);
            }
        },
        |e| {
            e.sent(
                fe::BIND,
                Some(Request::Bind),
                Audience::Client,
                Token::RetryFrom,
            );
            e.sent(
                fe::EXECUTE,
                Some(Request::Execute),
                Audience::Client,
                Token::Effect(3),
            );
            client(e, fe::SYNC);
        },
        |e| {
            client(e, fe::PARSE);
            e.sent(fe::PARSE, None, Audience::Client, Token::None);
            assert!(!e.reply(Synthetic::ParseComplete));
            client(e, fe::SYNC);
        },
        |e| {
            e.sent(
                fe::PARSE,
                Some(Request::Parse),
                Audience::Proxy,
                Token::Statement(1),
            );
            client(e, fe::EXECUTE);
        },
        |e| {
            client(e, fe::QUERY);
            client(e, fe::CLOSE);
        },
    ];
    for setup in setups {
        for &tag in b"123TnCIsZED" {
            let (mut short, mut long) = (Expectations::default(), Expectations::default());
            setup(&mut short);
            setup(&mut long);
            let before = short.queue.clone();
            match short.completes_plain(tag) {
                Some(event) => {
                    let m = long.received(tag, TxStatus::Idle);
                    assert_eq!(m.disposition, Some(Disposition::Forward));
                    assert!(m.replies.is_empty() && !m.ready);
                    assert_eq!(m.events, event.into_iter().collect::<Vec<_>>());
                    assert_eq!(short.queue, long.queue, "{}", char::from(tag));
                }
                None => assert_eq!(short.queue, before, "{}", char::from(tag)),
            }
        }
    }
    // Taken: the ones that complete the head, and nothing else.
    let mut e = Expectations::default();
    setups[0](&mut e);
    assert_eq!(e.completes_plain(b'2'), None);
    assert_eq!(e.completes_plain(b'1'), Some(None));
    assert_eq!(e.completes_plain(b'2'), Some(None));
    assert_eq!(e.completes_plain(b'T'), Some(None));
    assert_eq!(e.completes_plain(b'C'), Some(None));
    assert_eq!(e.completes_plain(b'Z'), None);
    let mut e = Expectations::default();
    setups[1](&mut e);
    e.completes_plain(b'2');
    assert_eq!(
        e.completes_plain(b'C'),
        Some(Some(Event::Done {
            request: Request::Execute,
            token: Token::Effect(3)
        }))
    );
    // A made-up ParseComplete due after it: the long way.
    let mut e = Expectations::default();
    setups[2](&mut e);
    assert_eq!(e.completes_plain(b'1'), None);
}

#[test]
fn the_short_ready_path_matches_only_what_the_long_one_would_end_alike() {
    // The client's Query, with a token: popped, done, status taken.
    let mut e = Expectations::default();
    e.sent(
        fe::QUERY,
        Some(Request::Query),
        Audience::Client,
        Token::Effect(3),
    );
    assert_eq!(
        e.completes_ready(TxStatus::InTransaction),
        Some(Some(Event::Done {
            request: Request::Query,
            token: Token::Effect(3)
        }))
    );
    assert!(e.is_quiet());
    assert_eq!(e.status(), TxStatus::InTransaction);

    // A Sync without a token: popped, no event.
    client(&mut e, fe::SYNC);
    assert_eq!(e.completes_ready(TxStatus::Idle), Some(None));
    assert!(e.is_reusable());

    // Left to `received`: a made-up reply due after it, the proxy's own
    // request, a request a ReadyForQuery does not end.
    client(&mut e, fe::QUERY);
    assert!(!e.reply(Synthetic::ParseComplete));
    assert_eq!(e.completes_ready(TxStatus::Idle), None);
    let m = e.received(be::READY_FOR_QUERY, TxStatus::Idle);
    assert_eq!(m.replies, vec![Synthetic::ParseComplete]);
    e.sent(
        fe::QUERY,
        Some(Request::Query),
        Audience::Proxy,
        Token::None,
    );
    assert_eq!(e.completes_ready(TxStatus::Idle), None);
    e.reset();
    client(&mut e, fe::EXECUTE);
    assert_eq!(e.completes_ready(TxStatus::Idle), None);
    assert!(!e.is_quiet());
}
