//! What the proxy remembers about one client between servers: its prepared
//! statements, session parameters, routing state, pins and a BEGIN it has
//! acknowledged but not yet sent anywhere.

use bytes::Bytes;

use super::carried::Carried;
use super::effects::Pins;
use super::params::{ClientParams, ParamValue};
use super::prepared::ClientStatements;
use super::readback::Readback;
use super::shapes::{self, Shape};
use super::strings::{self, StringMode};
use crate::routing::policy::ClientRouting;
use std::borrow::Cow;
use std::ops::Range;

use crate::protocol::frame;
use crate::protocol::{ClientEncoding, ProtocolError};
use crate::routing::{Classified, Classifier, Quoting, template};

/// Per-client state that outlives any one server.
#[derive(Default)]
pub struct ClientState {
    pub statements: ClientStatements,
    pub params: ClientParams,
    pub routing: ClientRouting,
    pub pins: Pins,
    /// A lone `BEGIN` answered by the proxy: the transaction is routed by
    /// its first real statement (so `SET TRANSACTION READ ONLY` can still
    /// send it to a replica), and the BEGIN is sent ahead of it.
    pub deferred_begin: Option<Bytes>,
    /// A request ending in Flush failed before reaching a server: its
    /// remaining messages are skipped up to Sync, as a server would.
    pub skip_to_sync: bool,
    /// The last statement text classified and its classification, reused
    /// when the client sends the same text again, or the same statement
    /// with other numbers (each request is classified once, where it
    /// arrives, and the result carried: `client/carried.rs`).
    pub memo: ClassMemo,
    /// Reading back the held server's session after opaque code ran.
    pub readback: Readback,
    /// The classifications routing made of the request that took the held
    /// server, taken by the relay as it sends its statements.
    pub carried: Carried,
    /// Texts of the statements being observed (`effects::SqlText`).
    pub texts: super::effects::Texts,
    /// The timer of `client_idle_timeout` / `idle_transaction_timeout`
    /// between requests, made the first time a limit is in force and
    /// reset for each request after (`session::next_unit`): a new boxed
    /// timer per request was an allocation per transaction. Kept here,
    /// not in the client's task: the task's state is what every idle
    /// client pays for, and this box (`Session`, 800 bytes) takes the
    /// same malloc chunk with it as without.
    pub idle_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// Texts longer than this are not remembered (every idle client keeps one).
const MEMO_MAX: usize = shapes::MAX_TEXT;

/// Remembers the last classification of this client, and reads each text
/// the way this client's server reads it: in the client's encoding, with
/// strings lexed in the session's string mode ([`StringMode`]).
#[derive(Default)]
pub struct ClassMemo {
    /// The session's `standard_conforming_strings` as far as known.
    pub strings: StringMode,
    /// The text last classified, how it was read, its literals and its
    /// classification (what `query_bytes` and `text_of` find again).
    cur: Shape,
    /// `cur.text` is the text `cur.class` is for (false after a text too
    /// long to keep, or one that could not be read exactly).
    keyed: bool,
    /// A spare list of literal positions (a match's, swapped in).
    spare: Vec<Range<usize>>,
    /// Classifications asked for, so tests can check each statement is
    /// classified once on its way to the server.
    #[cfg(test)]
    pub asked: u32,
}

impl ClassMemo {
    /// Classifies the statement text `raw`, which the client sent in
    /// `encoding`, reusing the last result when it is the same text read
    /// in the same string mode.
    pub fn classify(
        &mut self,
        classifier: &Classifier,
        encoding: ClientEncoding,
        raw: &[u8],
    ) -> Classified {
        self.classify_ref(classifier, encoding, raw).clone()
    }

    /// Like [`classify`](Self::classify), borrowed: a clone bumps the
    /// reference count of the cached entry, which every client running
    /// the same statement shares (from every worker thread). Also reuses
    /// the last result for the same statement with other integers in it
    /// (see [`template`]), unless its values matter (a `SET`).
    ///
    /// A UTF-8 client repeating its last statement in the same string
    /// mode costs one comparison and no validation.
    /// Text the proxy cannot read exactly is classified as
    /// [`Classified::unreadable`] (still lexed in the session's string
    /// mode, so that what it shows is what the server would read).
    pub fn classify_ref(
        &mut self,
        classifier: &Classifier,
        encoding: ClientEncoding,
        raw: &[u8],
    ) -> &Classified {
        #[cfg(test)]
        {
            self.asked += 1;
        }
        let reading = self.strings.reading();
        // `keyed` implies `text` was read exactly; UTF-8 bytes equal to it
        // are the same text. An unsure reading is as repeatable as a sure
        // one: the same text gets the same (cautious) classification.
        // The shape is tried first: a text with numbers nearly always
        // comes back with other numbers (the same text matches its shape
        // too), and an equal length made the comparison a `memcmp` that
        // found nothing; a text without numbers (or a `SET`) is turned
        // down by the shape check before it reads a byte.
        if self.repeated(encoding, reading, raw) {
            return self.noted(classifier);
        }
        // Another statement this thread classified lately, matched on the
        // bytes too (another encoding's, after decoding, in `classify_text`).
        let utf8 = encoding.is_utf8();
        if utf8 && self.recall(classifier, reading, raw) {
            return self.noted(classifier);
        }
        let view = encoding.decode(raw);
        if !view.exact {
            self.keyed = false;
            self.cur.text.clear();
            self.cur.numbers.clear();
            self.cur.read_as = reading;
            let class = strings::classify(classifier, &view.text, reading).unreadable(encoding);
            self.cur.class = Some(class);
            return self.noted(classifier);
        }
        self.classify_text(classifier, &view.text, reading, !utf8)
    }

    /// [`classify_ref`](Self::classify_ref)'s short way: a UTF-8 client's
    /// text equal to the remembered one, or its shape with other integers
    /// (then taken as the remembered text).
    #[inline]
    fn repeated(&mut self, encoding: ClientEncoding, reading: Option<Quoting>, raw: &[u8]) -> bool {
        encoding.is_utf8()
            && self.keyed
            && self.cur.read_as == reading
            && self.cur.class.is_some()
            && (self.took_shape_of(raw) || self.cur.text.as_bytes() == raw)
    }

    /// [`classify_ref`](Self::classify_ref) of a whole Query frame's text.
    ///
    /// Why: finding where the text ends (`frame::query_bytes`, a search
    /// for its NUL) cost ~70 instructions per Query, twice per simple
    /// query (here and in the relay). A well-formed Query ends with its
    /// text's NUL; when the bytes before it are the remembered text or its
    /// shape, they hold no NUL (neither has one, nor do other digits), so
    /// they are the text `query_bytes` would find. Anything else is found
    /// as before.
    #[inline]
    pub fn classify_query(
        &mut self,
        classifier: &Classifier,
        encoding: ClientEncoding,
        frame: &[u8],
    ) -> Result<&Classified, ProtocolError> {
        let reading = self.strings.reading();
        if let Some((&0, text)) = frame::body(frame).split_last()
            && (self.repeated(encoding, reading, text)
                || (encoding.is_utf8() && self.recall(classifier, reading, text)))
        {
            #[cfg(test)]
            {
                self.asked += 1;
            }
            return Ok(self.noted(classifier));
        }
        Ok(self.classify_ref(classifier, encoding, frame::query_bytes(frame)?))
    }

    /// The text of a Query frame, as `frame::query_bytes` finds it, without
    /// searching for its end when it is the remembered text (the relay's
    /// Query, classified on its way in): see
    /// [`classify_query`](Self::classify_query).
    #[inline]
    pub fn query_bytes<'f>(&self, frame: &'f [u8]) -> Result<&'f [u8], ProtocolError> {
        if let Some((&0, text)) = frame::body(frame).split_last()
            && self.keyed
            && text == self.cur.text.as_bytes()
        {
            return Ok(text);
        }
        frame::query_bytes(frame)
    }

    /// For a UTF-8 client: whether `raw` is the remembered text with other
    /// integers (what [`classify_text`](Self::classify_text) reuses), and if
    /// so takes it as the remembered text. Matched on the bytes, before
    /// any validation: up to the first literal they are the remembered
    /// text, so only the rest is validated (a few bytes, for most
    /// statements, instead of all).
    #[inline]
    fn took_shape_of(&mut self, raw: &[u8]) -> bool {
        let valueless = self
            .cur
            .class
            .as_ref()
            .is_some_and(|c| !c.info.has_session_changes);
        if !valueless
            || self.cur.numbers.is_empty()
            || raw.len() > MEMO_MAX
            || !template::same_shape_as(
                &self.cur.text,
                &self.cur.numbers,
                self.cur.digits_only,
                raw,
                &mut self.spare,
            )
        {
            return false;
        }
        // `same_shape` checked that the bytes before the first literal
        // are those of `text`.
        let from = self.cur.numbers[0].start;
        if !self.cur.text.is_char_boundary(from) {
            return false;
        }
        let tail = &raw[from..];
        if tail.len() <= SHORT_TAIL && tail.is_ascii() {
            // Most often a number and a `;`: copied in one go, which costs
            // less than validating them (~80 instructions) or pushing them
            // a char at a time (~150 for six bytes). Truncated as bytes:
            // `String::truncate` was a call (~14 instructions per `-S`
            // statement) that checked the boundary checked above again.
            // SAFETY: `from` is a char boundary of `text` (checked above),
            // so the truncated text is valid UTF-8, and every byte of
            // `tail` is ASCII (checked above), which is valid UTF-8 on its
            // own: their concatenation is valid UTF-8.
            let bytes = unsafe { self.cur.text.as_mut_vec() };
            bytes.truncate(from);
            bytes.extend_from_slice(tail);
        } else {
            let Ok(rest) = std::str::from_utf8(tail) else {
                return false;
            };
            self.cur.text.truncate(from);
            self.cur.text.push_str(rest);
        }
        std::mem::swap(&mut self.cur.numbers, &mut self.spare);
        true
    }

    /// The text of `raw`: the memo's copy when it is the text last
    /// classified (no second validation), else read again.
    #[inline]
    pub fn text_of<'a>(&'a self, encoding: ClientEncoding, raw: &'a [u8]) -> Cow<'a, str> {
        if self.keyed && encoding.is_utf8() && self.cur.text.as_bytes() == raw {
            Cow::Borrowed(&self.cur.text)
        } else {
            encoding.decode(raw).text
        }
    }

    /// Whether `raw` is a statement this thread classified lately
    /// ([`shapes::recall`]), which it then takes as the remembered text.
    /// Its bytes are matched before any validation (`raw` is a UTF-8
    /// client's, or text already decoded), as in
    /// [`took_shape_of`](Self::took_shape_of). A hit makes the text a
    /// frame's whole text (no NUL in it) as `repeated` does.
    #[inline]
    fn recall(&mut self, classifier: &Classifier, reading: Option<Quoting>, raw: &[u8]) -> bool {
        let found = shapes::recall(
            classifier.id(),
            reading,
            raw,
            &mut self.cur,
            &mut self.spare,
        );
        if found {
            self.keyed = true;
        }
        found
    }

    /// `recall`: look for the decoded text among the thread's shapes
    /// (a UTF-8 client's bytes were looked for before validation).
    fn classify_text(
        &mut self,
        classifier: &Classifier,
        text: &str,
        reading: Option<Quoting>,
        recall: bool,
    ) -> &Classified {
        let same_reading = self.cur.read_as == reading;
        if same_reading && self.keyed && self.cur.class.is_some() && self.cur.text == text {
            return self.noted(classifier);
        }
        let valueless = self
            .cur
            .class
            .as_ref()
            .is_some_and(|c| !c.info.has_session_changes);
        // Only a sure reading notes numbers (`numbers` is empty otherwise).
        if same_reading
            && self.keyed
            && valueless
            && !self.cur.numbers.is_empty()
            && text.len() <= MEMO_MAX
            && template::same_shape_as(
                &self.cur.text,
                &self.cur.numbers,
                self.cur.digits_only,
                text.as_bytes(),
                &mut self.spare,
            )
        {
            self.cur.text.clear();
            self.cur.text.push_str(text);
            std::mem::swap(&mut self.cur.numbers, &mut self.spare);
            return self.noted(classifier);
        }
        if recall && self.recall(classifier, reading, text.as_bytes()) {
            return self.noted(classifier);
        }
        self.cur.text.clear();
        self.keyed = text.len() <= MEMO_MAX;
        if self.keyed {
            self.cur.text.push_str(text);
        }
        self.cur.read_as = reading;
        let class = match reading {
            Some(quoting) => {
                classifier.classify_noting_numbers_in(text, quoting, &mut self.cur.numbers)
            }
            None => {
                self.cur.numbers.clear();
                classifier.classify_unsure(text)
            }
        };
        if self.cur.numbers.capacity() > MEMO_NUMBERS {
            self.cur.numbers = Vec::new();
        }
        self.cur.digits_only = template::all_digits(text, &self.cur.numbers);
        self.cur.class = Some(class);
        if self.keyed {
            shapes::remember(classifier.id(), &self.cur);
        }
        self.noted(classifier)
    }

    /// The remembered classification, after telling [`StringMode`] about
    /// it (a statement that may change the string mode makes the next
    /// ones unsure until the server answers). Always called with `class`
    /// set; the fallback only keeps this free of a panic path.
    #[inline]
    fn noted(&mut self, classifier: &Classifier) -> &Classified {
        let (read_as, text) = (self.cur.read_as, &self.cur.text);
        let class = self
            .cur
            .class
            .get_or_insert_with(|| strings::classify(classifier, text, read_as));
        self.strings.classified(class);
        class
    }

    /// The string mode for other classifications of this client (named
    /// prepared statements); `None` while not known for sure.
    pub fn reading(&self) -> Option<Quoting> {
        self.strings.reading()
    }

    /// A server frame the relay inspected ([`StringMode::server_frame`]).
    pub fn server_frame(&mut self, tag: u8, frame: &[u8], quiet: bool) {
        self.strings.server_frame(tag, frame, quiet);
    }
}

/// Literal positions kept between requests are at most this many.
const MEMO_NUMBERS: usize = 64;

/// An ASCII tail of a statement (from its first literal on) up to this
/// long is copied without calling the UTF-8 validator.
const SHORT_TAIL: usize = 32;

impl ClientState {
    pub fn new(params: ClientParams) -> Self {
        ClientState {
            params,
            ..ClientState::default()
        }
    }

    /// `default_transaction_read_only` is on for this session.
    pub fn read_only_by_default(&self) -> bool {
        let Some(v) = self.params.current().get("default_transaction_read_only") else {
            return false;
        };
        let text = match v {
            ParamValue::Sql(t) | ParamValue::Raw(t) => t,
        };
        matches!(
            text.trim_matches('\'').to_ascii_lowercase().as_str(),
            "on" | "true" | "yes" | "1" | "t"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Reason, Route};
    use std::sync::Arc;

    const UTF8: ClientEncoding = ClientEncoding::Utf8;

    fn query_frame(text: &[u8]) -> bytes::BytesMut {
        let mut body = text.to_vec();
        body.push(0);
        let mut f = bytes::BytesMut::new();
        crate::protocol::frame::put_frame(&mut f, b'Q', &body);
        f
    }

    #[test]
    fn a_query_frame_is_read_as_query_bytes_reads_it() {
        let classifier = Classifier::new(&[], 10_000, 0);
        let mut memo = ClassMemo::default();
        let first = query_frame(b"select * from t where id = 1");
        let c = memo.classify_query(&classifier, UTF8, &first).unwrap();
        let info = c.info.clone();
        assert_eq!(
            memo.query_bytes(&first).unwrap(),
            b"select * from t where id = 1"
        );
        // Its shape with another integer: the same classification, and
        // the text is the new one.
        let next = query_frame(b"select * from t where id = 22");
        let c = memo.classify_query(&classifier, UTF8, &next).unwrap();
        assert!(Arc::ptr_eq(&info, &c.info));
        assert_eq!(memo.cur.text, "select * from t where id = 22");
        assert_eq!(
            memo.query_bytes(&next).unwrap(),
            b"select * from t where id = 22"
        );
        // A NUL inside the frame: the text ends there, as for the server.
        let nul = query_frame(b"select * from t where id = 22\0; drop table t");
        let c = memo.classify_query(&classifier, UTF8, &nul).unwrap();
        assert!(Arc::ptr_eq(&info, &c.info));
        assert_eq!(
            memo.query_bytes(&nul).unwrap(),
            b"select * from t where id = 22"
        );
        let other = query_frame(b"select * from t where id = 3\0 or true");
        memo.classify_query(&classifier, UTF8, &other).unwrap();
        assert_eq!(memo.cur.text, "select * from t where id = 3");
        // No NUL at all: refused, as `frame::query_bytes` refuses it.
        let mut bad = bytes::BytesMut::new();
        crate::protocol::frame::put_frame(&mut bad, b'Q', b"select 1");
        assert!(memo.classify_query(&classifier, UTF8, &bad).is_err());
        assert!(memo.query_bytes(&bad).is_err());
    }

    #[test]
    fn the_memo_reuses_a_classification_for_other_integers_only() {
        // No cache: a classification that is not reused is a new Arc.
        let classifier = Classifier::new(&[], 10_000, 0);
        let mut memo = ClassMemo::default();
        let mut classify = |text: &str| memo.classify(&classifier, UTF8, text.as_bytes());
        let first = classify("select * from t where id = 1");
        let same = classify("select * from t where id = 22");
        assert!(Arc::ptr_eq(&first.info, &same.info));
        let again = classify("select * from t where id = 333");
        assert!(Arc::ptr_eq(&first.info, &again.info));
        let other = classify("select * from u where id = 333");
        assert!(!Arc::ptr_eq(&first.info, &other.info));

        // A SET's values are what it does: never taken from the last one.
        let set = classify("set statement_timeout = 5000");
        assert!(format!("{:?}", set.session).contains("5000"));
        let set = classify("set statement_timeout = 6000");
        assert!(
            format!("{:?}", set.session).contains("6000"),
            "{:?}",
            set.session
        );
    }

    #[test]
    fn statements_this_thread_classified_lately_are_recalled_by_shape() {
        // No cache: a classification that is not recalled is a new Arc.
        let classifier = Classifier::new(&[], 10_000, 0);
        let texts = [
            "UPDATE pgbench_accounts SET abalance = abalance + 17 WHERE aid = 4711;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
            "END;",
        ];
        let mut first = ClassMemo::default();
        let infos: Vec<_> = texts
            .iter()
            .map(|t| first.classify(&classifier, UTF8, t.as_bytes()).info)
            .collect();
        // The same client going round again, and another client of this
        // thread: each statement's classification, with its own text.
        let mut other = ClassMemo::default();
        for memo in [&mut first, &mut other] {
            for (text, info) in texts.iter().zip(&infos) {
                let text = text.replace("4711", "815");
                let frame = query_frame(text.as_bytes());
                let c = memo.classify_query(&classifier, UTF8, &frame).unwrap();
                assert!(Arc::ptr_eq(info, &c.info), "{text}");
                assert_eq!(memo.cur.text, text);
                assert_eq!(memo.query_bytes(&frame).unwrap(), text.as_bytes());
                assert_eq!(memo.text_of(UTF8, text.as_bytes()), text);
            }
        }
        // In another encoding, after decoding.
        let mut latin1 = ClassMemo::default();
        let c = latin1.classify(&classifier, ClientEncoding::Latin1, texts[1].as_bytes());
        assert!(Arc::ptr_eq(&infos[1], &c.info));
        // Another classifier decides for itself.
        let another = Classifier::new(&[], 10_000, 0);
        let c = ClassMemo::default().classify(&another, UTF8, texts[1].as_bytes());
        assert!(!Arc::ptr_eq(&infos[1], &c.info));
    }

    #[test]
    fn text_the_proxy_cannot_read_goes_to_the_primary() {
        let classifier = Classifier::new(&[], 10_000, 100);
        let mut memo = ClassMemo::default();
        // Not UTF-8: the server refuses it; the proxy routes it safely.
        let c = memo.classify(&classifier, UTF8, b"select 'caf\xe9'");
        assert_eq!(
            (c.info.route, c.info.reason),
            (Route::Write, Reason::Encoding)
        );
        // The same bytes from a LATIN1 client are `caf\u{e9}`: a read.
        let c = memo.classify(&classifier, ClientEncoding::Latin1, b"select 'caf\xe9'");
        assert_eq!(c.info.route, Route::Read);
        // The shared cache was not changed by the unreadable one.
        let c = memo.classify(&classifier, UTF8, "select 'café'".as_bytes());
        assert_eq!(c.info.route, Route::Read);
        // SJIS: the backslash-looking byte is inside a character, so the
        // INSERT after the literal is seen.
        let sjis = b"select E'\x83\x5c'; insert into t values (1); select 'x'";
        let c = memo.classify(&classifier, ClientEncoding::Sjis, sjis);
        assert_eq!(c.info.route, Route::Write);
        assert_eq!(c.info.statement_count, 3);
        // A lead byte with no trail: unreadable, and in an encoding whose
        // structure then cannot be trusted, taken to change the session.
        let c = memo.classify(&classifier, ClientEncoding::Sjis, b"select '\x83'");
        assert_eq!(c.info.reason, Reason::Encoding);
        assert!(!c.session.is_empty());
        // Invalid UTF-8 is refused by the server: nothing is decided on it
        // here (no BEGIN deferred, no setting answered by the proxy).
        let c = memo.classify(&classifier, UTF8, b"begin /* \xff */");
        assert_eq!(c.info.tx, crate::routing::TxEffect::None);
        let c = memo.classify(&classifier, UTF8, b"set pgsidecar.route = '\xff'");
        assert!(c.session.is_empty() && c.info.reason == Reason::Encoding);
    }

    #[test]
    fn text_is_decoded_in_the_encoding_and_lexed_in_the_string_mode() {
        use crate::protocol::backend;
        use crate::routing::UNSURE_TEXT;
        let classifier = Classifier::new(&[], 10_000, 100);
        let mut memo = ClassMemo {
            strings: StringMode::at_login(Some("off")),
            ..ClassMemo::default()
        };
        let latin1 = ClientEncoding::Latin1;
        // LATIN1 text with backslash escapes: one literal, then a DELETE.
        let hidden = b"select 'caf\xe9\\' , ''secret'' ; delete from t; --'; delete from t";
        let c = memo.classify(&classifier, latin1, hidden);
        assert_eq!((c.info.route, c.info.statement_count), (Route::Write, 2));
        assert!(
            !c.info.normalized.contains("secret"),
            "{}",
            c.info.normalized
        );
        // Unreadable (invalid UTF-8) text is still lexed in the session's
        // mode: what it shows is what the server would read.
        let bad = b"select '\xff\\' , ''secret'' as pw'";
        let c = memo.classify(&classifier, UTF8, bad);
        assert_eq!(c.info.reason, Reason::Encoding);
        assert!(
            !c.info.normalized.contains("secret"),
            "{}",
            c.info.normalized
        );
        // A UTF-8 statement repeated in the same mode: the same result.
        let text = br"select * from t where a = '\' , ''secret'''";
        let first = memo.classify(&classifier, UTF8, text);
        assert!(!first.info.normalized.contains("secret"));
        let again = memo.classify(&classifier, UTF8, text);
        assert!(Arc::ptr_eq(&first.info, &again.info));
        // A change of mode on its way: the same bytes are read unsure
        // (no text, primary), in UTF-8 and unreadable alike.
        memo.classify(&classifier, UTF8, b"set standard_conforming_strings = on");
        let c = memo.classify(&classifier, UTF8, text);
        assert_eq!(
            (&*c.info.normalized, c.info.route),
            (UNSURE_TEXT, Route::Write)
        );
        let c = memo.classify(&classifier, UTF8, bad);
        assert_eq!(
            (&*c.info.normalized, c.info.reason),
            (UNSURE_TEXT, Reason::Encoding)
        );
        // The server's answer settles it: standard strings from now on
        // (three literals and a word).
        let mut frame = bytes::BytesMut::new();
        backend::parameter_status(&mut frame, "standard_conforming_strings", "on");
        memo.server_frame(b'S', &frame, false);
        frame.clear();
        crate::client::tx_status::TxStatus::Idle.put_ready(&mut frame);
        memo.server_frame(b'Z', &frame, true);
        let c = memo.classify(&classifier, UTF8, text);
        assert!(
            c.info.normalized.contains("secret"),
            "{}",
            c.info.normalized
        );
    }

    #[test]
    fn a_statement_of_the_same_shape_is_matched_on_its_bytes_as_on_its_text() {
        // After `prev`, `raw` is classified as a memo that has not seen
        // `prev` classifies it, in every encoding, and the memo keeps
        // `raw`'s text (matched on bytes before validation for UTF-8).
        let classifier = Classifier::new(&[], 10_000, 100);
        let cases: &[(&[u8], &[u8])] = &[
            (b"select 1", b"select 22"),
            // A tail past the first literal longer than SHORT_TAIL.
            (
                b"select 1 from t where note = 'an ascii tail of some length'",
                b"select 22 from t where note = 'an ascii tail of some length'",
            ),
            (
                "select 'café', 1 -- é".as_bytes(),
                "select 'café', 22 -- é".as_bytes(),
            ),
            ("select 'é', 1".as_bytes(), b"select '\xc3', 1"),
            ("select 'é', 1".as_bytes(), b"select '\xc3\xa9', 7"),
            (b"select 1, '\xff'", b"select 2, '\xff'"),
            ("select 1, 'é'".as_bytes(), b"select 2, '\xe9'"),
            ("select 1, 'é'".as_bytes(), b"select 2, '\xc3'"),
            (b"select 1 /* x */", b"select 2 /* \xff */"),
            (
                "select 10 /* \u{1F600} */".as_bytes(),
                "select 9 /* \u{1F600} */".as_bytes(),
            ),
        ];
        let encodings = [
            UTF8,
            ClientEncoding::SqlAscii,
            ClientEncoding::Latin1,
            ClientEncoding::Sjis,
        ];
        for &(prev, raw) in cases {
            for encoding in encodings {
                let mut memo = ClassMemo::default();
                memo.classify(&classifier, encoding, prev);
                let reused = memo.classify(&classifier, encoding, raw);
                let fresh = ClassMemo::default().classify(&classifier, encoding, raw);
                let what = format!("{encoding:?}: {prev:?} then {raw:?}");
                assert_eq!(reused.info.route, fresh.info.route, "{what}");
                assert_eq!(reused.info.reason, fresh.info.reason, "{what}");
                assert_eq!(reused.info.normalized, fresh.info.normalized, "{what}");
                assert_eq!(
                    memo.text_of(encoding, raw),
                    encoding.decode(raw).text,
                    "{what}"
                );
            }
        }
    }
}
