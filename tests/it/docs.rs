//! README.md and docs/: every relative link (and its `#anchor`) leads
//! somewhere, every page is reachable from the README, the README still
//! opens with the two commands, and the metrics reference names every
//! metric `/metrics` exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pgsidecar::observe::{ERROR_KINDS, METRIC_NAMES};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The text outside fenced code blocks, line by line.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens,
/// punctuation other than `-` and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors a page defines: its headings (repeated ones numbered as
/// GitHub numbers them) and explicit `<a id="…">`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for line in prose(text) {
        if line.starts_with('#') {
            let base = slug(line.trim_start_matches('#'));
            let n = seen.entry(base.clone()).or_default();
            anchors.insert(if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            *n += 1;
        }
        let mut rest = line;
        while let Some(at) = rest.find("<a id=\"") {
            rest = &rest[at + 7..];
            if let Some(end) = rest.find('"') {
                anchors.insert(rest[..end].to_string());
            }
        }
    }
    anchors
}

/// Targets of inline links `[text](target)` outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                found.push(rest[..end].to_string());
            }
        }
    }
    found
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", page.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let target_text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{}: {link} (no such anchor)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|l| l.split('#').next().unwrap().to_string())
        .collect();
    for page in pages().iter().skip(1) {
        let name = format!("docs/{}", page.file_name().unwrap().to_string_lossy());
        assert!(linked.contains(&name), "README.md does not link {name}");
    }
}

#[test]
fn the_readme_opens_with_the_two_commands() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut lines = readme.lines().filter(|l| !l.trim().is_empty());
    assert!(lines.next().unwrap().starts_with("# pgsidecar"));
    assert_eq!(lines.next(), Some("```sh"));
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("cargo run --release -- demo")
    );
    assert!(lines.next().unwrap().starts_with("bash .ci/run"));
    assert_eq!(lines.next(), Some("```"));
}

#[test]
fn the_metrics_reference_names_every_metric_and_error_kind() {
    let reference = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    for name in METRIC_NAMES {
        let short = name.strip_prefix("pgsidecar_").unwrap();
        assert!(
            reference.contains(&format!("| `{short}` |")),
            "docs/metrics.md has no row for {name}"
        );
    }
    for kind in ERROR_KINDS {
        assert!(
            reference.contains(&format!("`{kind}`")),
            "docs/metrics.md does not explain errors_total kind {kind}"
        );
    }
}
