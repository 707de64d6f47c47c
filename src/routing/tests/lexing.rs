//! Fingerprints, normalisation, hints, and a never-panic sweep of the lexer.

use super::super::lexer::{Lexer, TokenKind};
use super::super::{Classifier, Hint};
use super::classify;

fn fp(sql: &str) -> super::super::Fingerprint {
    Classifier::fingerprint(sql).0
}

#[test]
fn same_shape_same_fingerprint() {
    let same = [
        ("select * from t where a = 1", "SELECT *  FROM t\nWHERE a=2"),
        (
            "select * from t where a = 'x'",
            "select * from t where a = $1",
        ),
        (
            "select * from t where a = E'x\\'y'",
            "select * from t where a = $$z$$",
        ),
        ("select 1.5e10, 'a' 'b'", "select 7, 'c' 'd'"),
        ("select $tag$ ; $tag$", "select 'x'"),
        ("select 1;", "select 2"),
        ("select 1;;", "  select 3  "),
        ("SELECT A FROM T", "select a from t"),
        (
            "insert into t values (1, 'a', null)",
            "insert into t values (2,'b',null)",
        ),
    ];
    for (a, b) in same {
        assert_eq!(fp(a), fp(b), "{a:?} vs {b:?}");
    }
}

#[test]
fn different_shape_different_fingerprint() {
    let different = [
        ("select a from t", "select b from t"),
        ("select * from t where a = 1", "select * from t where a > 1"),
        ("select \"A\" from t", "select a from t"),
        ("select 1", "select 1; select 1"),
        ("select * from t", "delete from t"),
        ("select * from t for update", "select * from t"),
        ("copy t to stdout", "copy t to '/tmp/x'"),
        ("select x.y", "select xy"),
        ("deallocate p1", "deallocate p2"),
    ];
    for (a, b) in different {
        assert_ne!(fp(a), fp(b), "{a:?} vs {b:?}");
    }
}

#[test]
fn comments_and_hints_do_not_change_fingerprint() {
    let base = fp("select * from t where id = 1");
    for sql in [
        "/* pgsidecar:replica */ select * from t where id = 1",
        "/* pgsidecar:primary */select * from t where id = 2",
        "-- hello\nselect * from t /* mid */ where id = 3 -- tail",
        "select /* a /* nested */ b */ * from t where id = 4",
    ] {
        assert_eq!(fp(sql), base, "{sql:?}");
    }
}

#[test]
fn normalized_text() {
    let got = classify("SELECT a, count(*)  FROM \"T\" WHERE b IN (1, 'x', $3) -- c\n; ");
    assert_eq!(
        &*got.info.normalized,
        "select a, count(*) from \"T\" where b in ($1, $2, $3)"
    );
    let got = classify("with x AS (select 1) insert into t values (1) on conflict(a) do nothing");
    assert_eq!(
        &*got.info.normalized,
        "with x as (select $1) insert into t values ($2) on conflict(a) do nothing"
    );
    let got = classify("select t.a::int, arr[1] from s.t");
    assert_eq!(&*got.info.normalized, "select t.a::int, arr[$1] from s.t");
}

#[test]
fn hints() {
    let cases = [
        ("/* pgsidecar:primary */ select 1", Some(Hint::Primary)),
        ("/*pgsidecar:replica*/select 1", Some(Hint::Replica)),
        ("/*  PgSidecar : Replica  */ select 1", Some(Hint::Replica)),
        (
            "-- leading\n/* pgsidecar:primary */ select 1",
            Some(Hint::Primary),
        ),
        (
            "/* other */ /* pgsidecar:replica */ select 1",
            Some(Hint::Replica),
        ),
        (
            "/* pgsidecar:replica */ /* pgsidecar:primary */ select 1",
            Some(Hint::Primary),
        ),
        ("select 1 /* pgsidecar:primary */", None),
        ("select /* pgsidecar:replica */ 1", None),
        ("select '/* pgsidecar:replica */'", None),
        ("-- pgsidecar:replica\nselect 1", None),
        ("/* pgsidecar:secondary */ select 1", None),
        ("/* pgsidecar:replica", None),
        (
            "/* pgsidecar:min_lsn=0/16B3748 */ select 1",
            Some(Hint::MinLsn(crate::cluster::Lsn(0x16B3748))),
        ),
        (
            "/* PgSidecar : MIN_LSN = 16/b374d848 */ select 1",
            Some(Hint::MinLsn(crate::cluster::Lsn(0x16_B374_D848))),
        ),
        (
            "/* pgsidecar:replica */ /* pgsidecar:min_lsn=0/1 */ select 1",
            Some(Hint::MinLsn(crate::cluster::Lsn(1))),
        ),
        (
            "/* pgsidecar:min_lsn=0/1 */ /* pgsidecar:primary */ select 1",
            Some(Hint::Primary),
        ),
        ("/* pgsidecar:min_lsn=yesterday */ select 1", None),
        ("/* pgsidecar:min_lsn */ select 1", None),
    ];
    for (sql, want) in cases {
        assert_eq!(Classifier::fingerprint(sql).1, want, "{sql:?}");
        assert_eq!(classify(sql).hint, want, "{sql:?}");
    }
}

#[test]
fn lexer_token_kinds() {
    let sql = "select e'a\\'b', $1, 1.5, \"Q\"\"x\", $t$ x $t$, u&'z', x'1F', a->>'k' -- c\n;";
    let kinds: Vec<TokenKind> = Lexer::new(sql).map(|t| t.kind).collect();
    use TokenKind::*;
    assert_eq!(
        kinds,
        [
            Word,
            String,
            Punct,
            Param,
            Punct,
            Number,
            Punct,
            QuotedIdent,
            Punct,
            String,
            Punct,
            String,
            Punct,
            String,
            Punct,
            Word,
            Operator,
            String,
            LineComment,
            Semicolon
        ]
    );
}

#[test]
fn statement_count() {
    assert_eq!(classify("").info.statement_count, 0);
    assert_eq!(classify("-- nothing").info.statement_count, 0);
    assert_eq!(classify("select 1").info.statement_count, 1);
    assert_eq!(classify("select 1; select 2;").info.statement_count, 2);
    assert_eq!(classify("select ';'; select $$;$$").info.statement_count, 2);
}

/// Deterministic xorshift so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn never_panics_on_random_or_truncated_input() {
    const PIECES: &[&str] = &[
        "select",
        " ",
        "'",
        "''",
        "\"",
        "$$",
        "$a$",
        "$1",
        "$",
        "--",
        "/*",
        "*/",
        "\n",
        ";",
        "E'",
        "\\",
        "\\'",
        "(",
        ")",
        "::",
        ".",
        "1",
        "1.5e",
        "e",
        "U&'",
        "U&\"",
        "x'",
        "é",
        "日本",
        "𝄞",
        "\0",
        "pgsidecar:primary",
        "-",
        "+",
        "*",
        "/",
        "=",
        "<>",
        "?",
        "#",
        "`",
        "{",
    ];
    let seeds = [
        "/* pgsidecar:replica */ select $tag$ x $tag$, E'\\'', \"q\"\"\" from t -- c\n; insert",
        "select 'a'';b' /* /* */ */ from \"t\" where x = $1 and y = 1.5e-3;",
        "set search_path = 'a', public; select set_config('x', 'y', false)",
    ];
    let c = Classifier::new(&[], 256, 64);
    // Every prefix of realistic statements (cuts inside strings/comments).
    for seed in seeds {
        for end in (0..=seed.len()).filter(|&i| seed.is_char_boundary(i)) {
            let _ = c.classify(&seed[..end]);
        }
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let n = (rng.next() % 24) as usize;
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(PIECES[(rng.next() % PIECES.len() as u64) as usize]);
        }
        let classified = c.classify(&s);
        // Token ranges must cover valid slices in order.
        let mut last = 0;
        for t in Lexer::new(&s) {
            assert!(
                t.start >= last && t.end > t.start && s.get(t.start..t.end).is_some(),
                "{s:?}"
            );
            last = t.end;
        }
        let _ = classified.info.normalized.len();
    }
    // Arbitrary bytes (made valid UTF-8 the way a lossy decoder would).
    for _ in 0..3000 {
        let n = (rng.next() % 48) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let _ = c.classify(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let c = Classifier::new(&[], 1 << 20, 16);
    for depth in [60, 1_000, 20_000] {
        let sql = format!("select {}1{}", "(".repeat(depth), ")".repeat(depth));
        // sqlparser's own recursion limit refuses 60; the lexer, deeper.
        let expected = if depth > 64 {
            "too_deep"
        } else {
            "parse_error"
        };
        assert_eq!(
            c.classify(&sql).info.reason.as_str(),
            expected,
            "depth {depth}"
        );
        let sql = format!("select {}1", "-".repeat(depth));
        let _ = c.classify(&sql);
    }
}

#[test]
fn backslash_mode_reads_plain_strings_as_the_server_does() {
    use super::super::lexer::Quoting;
    let sql = r"select pg_sleep(0.25), 'x\' , ''TOPSECRET30'' as pw, ''y'";
    let strings = |q| {
        Lexer::with_quoting(sql, q)
            .filter(|t| t.kind == TokenKind::String)
            .count()
    };
    assert_eq!(strings(Quoting::Standard), 5);
    assert_eq!(strings(Quoting::Backslash), 1);
    let c = crate::routing::Classifier::new(&[], 10_000, 100);
    let standard = c.classify(sql);
    assert!(standard.info.normalized.contains("topsecret30"));
    let backslash = c.classify_in(sql, Quoting::Backslash);
    assert_eq!(&*backslash.info.normalized, "select pg_sleep($1), $2");
    // Unsure: the two readings differ, so no text and the primary.
    let unsure = c.classify_unsure(sql);
    assert_eq!(&*unsure.info.normalized, crate::routing::UNSURE_TEXT);
    assert_eq!(unsure.info.route, crate::routing::Route::Write);
    // Without a backslash both read alike: the usual classification.
    assert_eq!(
        c.classify_unsure("select 'a'").info.route,
        crate::routing::Route::Read
    );
}

#[test]
fn a_write_hidden_by_backslash_mode_is_found() {
    use super::super::lexer::Quoting;
    let c = crate::routing::Classifier::new(&[], 10_000, 100);
    let sql = r"SELECT '\' , ' ; DELETE FROM victim; --'";
    assert_eq!(c.classify(sql).info.route, crate::routing::Route::Read);
    let class = c.classify_in(sql, Quoting::Backslash);
    assert_eq!(class.info.route, crate::routing::Route::Write);
    assert_eq!(class.info.statement_count, 2);
    assert!(class.info.tables_written.iter().any(|t| &**t == "victim"));
    // SET values are kept in a form either mode reads the same way.
    let set = c.classify_in(r"set application_name = 'a\'b'", Quoting::Backslash);
    assert!(
        format!("{:?}", set.session).contains(r#"value: "E'a\\'b'""#),
        "{:?}",
        set.session
    );
    let set = c.classify(r"set application_name = 'a\b'");
    assert!(
        format!("{:?}", set.session).contains(r#"value: "E'a\\\\b'""#),
        "{:?}",
        set.session
    );
}
