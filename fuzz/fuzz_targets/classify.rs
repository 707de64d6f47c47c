//! The lexer and classifier on any text a client can send: no panic, a
//! fingerprint that depends only on the text, and the same answer from
//! the cache as from a fresh classification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsidecar::routing::Classifier;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let classifier = Classifier::new(&[], 64 * 1024, 16);
    let first = classifier.classify(sql);
    let again = classifier.classify(sql);
    assert_eq!(first.info.route, again.info.route);
    assert_eq!(first.info.fingerprint, again.info.fingerprint);
    let (fingerprint, _hint) = Classifier::fingerprint(sql);
    assert_eq!(fingerprint, Classifier::fingerprint(sql).0);
});
