//! Replays the fuzzing corpora (`fuzz/corpus/<target>/`, found by
//! cargo-fuzz runs) through the same decoders on stable Rust, so CI keeps
//! every input the fuzzers found interesting from regressing into a panic.

use std::path::Path;

use pgsidecar::client::prepared;
use pgsidecar::protocol::frame::{self, fe};
use pgsidecar::protocol::startup;
use pgsidecar::routing::Classifier;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

#[test]
fn startup_corpus() {
    for input in corpus("startup") {
        let mut rest = &input[..];
        while let Ok(Some((_, used))) = startup::parse(rest) {
            assert!(used >= 8 && used <= rest.len());
            rest = &rest[used..];
        }
    }
}

#[test]
fn frontend_corpus() {
    for input in corpus("frontend") {
        let mut rest = &input[..];
        while let Ok(Some((tag, total))) = frame::header(rest) {
            if rest.len() < total {
                break;
            }
            let msg = &rest[..total];
            match tag {
                fe::QUERY => drop(frame::query_bytes(msg)),
                fe::PARSE => drop(prepared::parse_parse(msg)),
                fe::BIND => drop(prepared::bind_statement(msg)),
                fe::DESCRIBE | fe::CLOSE => drop(prepared::target(msg)),
                _ => {}
            }
            rest = &rest[total..];
        }
    }
}

#[test]
fn classify_corpus() {
    let classifier = Classifier::new(&[], 64 * 1024, 64);
    for input in corpus("classify") {
        if let Ok(sql) = std::str::from_utf8(&input) {
            let a = classifier.classify(sql);
            let b = Classifier::new(&[], 64 * 1024, 0).classify(sql);
            assert_eq!(a.info.route, b.info.route, "{sql:?}");
        }
    }
}
