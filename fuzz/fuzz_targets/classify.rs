//! The lexer and classifier on any text a client can send: no panic, a
//! fingerprint that depends only on the text, and the same answer from
//! the cache as from a fresh classification; in both string modes
//! (`standard_conforming_strings`), which read text without a backslash
//! alike, and when the mode is not known for sure.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsidecar::routing::{Classifier, Quoting};

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
    let backslash = classifier.classify_in(sql, Quoting::Backslash);
    let again = classifier.classify_in(sql, Quoting::Backslash);
    assert_eq!(backslash.info.fingerprint, again.info.fingerprint);
    assert_eq!(backslash.info.route, again.info.route);
    if !sql.contains('\\') {
        assert_eq!(backslash.info.fingerprint, first.info.fingerprint);
    }
    let _ = classifier.classify_unsure(sql);
});
