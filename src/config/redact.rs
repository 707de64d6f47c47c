//! What a config error may show of the file: the line with the mistake,
//! unless that line may hold a secret. A syntax error on a password line
//! (an unclosed quote, a bare word) would otherwise print the password to
//! the terminal and, on reload, to the log.

/// Words in a key that mark its value as a secret.
const SECRET_WORDS: [&str; 5] = ["pass", "secret", "pwd", "token", "credential"];

/// Keys of a `[[users]]` entry that hold no secret. Any other key there
/// (`password`, a misspelling of it) may.
const PLAIN_USER_KEYS: [&str; 3] = ["name", "password_env", "password_file"];

/// The text of the line at byte `offset` of `text`, as a config error may
/// show it: replaced when that line may hold a secret.
pub(super) fn line(text: &str, offset: usize, line_text: String) -> String {
    match secret_line(text, offset, &line_text) {
        None => line_text,
        Some(Secret { key: Some(key), .. }) => {
            format!("{key} = … (not shown: it may hold a password)")
        }
        Some(_) => "… (line not shown: it may hold a password)".to_string(),
    }
}

/// A parser's message about the byte at `offset`, without its quotations
/// of the value when the line may hold a secret.
pub(super) fn message(text: &str, offset: usize, message: &str) -> String {
    let line_text = line_at(text, offset);
    match secret_line(text, offset, line_text) {
        None => message.to_string(),
        Some(_) => {
            let value = line_text.split_once('=').map_or(line_text, |(_, v)| v);
            without_quotes_of(message, value)
        }
    }
}

/// A line that may hold a secret, and its key if it shows one.
struct Secret {
    key: Option<String>,
}

fn secret_line(text: &str, offset: usize, line_text: &str) -> Option<Secret> {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    // Inside a multi-line string the line is string content: whose, the
    // parser's position does not say. Counting the quotes is enough to
    // err on the side of hiding.
    let in_multiline =
        before.matches("\"\"\"").count() % 2 == 1 || before.matches("'''").count() % 2 == 1;
    let key = key_of(line_text);
    if in_multiline {
        return Some(Secret { key: None });
    }
    is_secret(before, key.as_deref(), line_text).then_some(Secret { key })
}

/// The whole line that byte `offset` of `text` is on.
fn line_at(text: &str, offset: usize) -> &str {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let start = text[..offset].rfind('\n').map_or(0, |p| p + 1);
    text[start..].lines().next().unwrap_or("")
}

/// The key of a `key = value` line, if it is one.
fn key_of(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

/// The line may hold a secret: its text names one, or it is in a
/// `[[users]]` entry and is not one of that entry's plain keys.
fn is_secret(before: &str, key: Option<&str>, line: &str) -> bool {
    // `password_env` and `password_file` name where a password is, not it.
    let lower = line
        .to_ascii_lowercase()
        .replace("password_env", "")
        .replace("password_file", "");
    if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
        return true;
    }
    let earlier = &before[..before.rfind('\n').map_or(0, |p| p + 1)];
    let table = earlier
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .unwrap_or("");
    let in_users = table.replace(' ', "").starts_with("[[users]]");
    let bare = key.map(|k| k.trim_matches(['"', '\'']).to_ascii_lowercase());
    in_users && bare.is_none_or(|k| !PLAIN_USER_KEYS.contains(&k.as_str()))
}

/// `message` with every `` `quoted` `` fragment of letters or digits that
/// occurs in `value` replaced: serde quotes the offending value
/// (`` invalid type: integer `1234` ``).
fn without_quotes_of(message: &str, value: &str) -> String {
    let mut out = String::new();
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut quoted = true;
    for part in parts {
        if quoted {
            out.push('`');
            // Punctuation (an expected quote) gives nothing away.
            let telling = part.chars().any(char::is_alphanumeric);
            if telling && value.contains(part) {
                out.push('…');
            } else {
                out.push_str(part);
            }
            out.push('`');
        } else {
            out.push_str(part);
        }
        quoted = !quoted;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(text: &str, at: &str, msg: &str) -> (String, String) {
        let offset = text.find(at).unwrap();
        (
            line(text, offset, line_at(text, offset).to_string()),
            message(text, offset, msg),
        )
    }

    #[test]
    fn secret_lines_are_hidden_and_others_shown() {
        let text = "[proxy]\nlisten = \"x\n[[users]]\nname = \"a\"\npasword = \"pw\"\n";
        assert_eq!(show(text, "listen = \"x", "m").0, "listen = \"x");
        assert_eq!(show(text, "name = \"a\"", "m").0, "name = \"a\"");
        let env = "[[users]]\npassword_env = \"APP_PW\"\n";
        assert_eq!(
            show(env, "password_env", "m").0,
            "password_env = \"APP_PW\""
        );
        let (line, _) = show(text, "pasword = \"pw\"", "unknown field `pasword`");
        assert!(line.starts_with("pasword = … (not shown"), "{line}");
        let text = "[[users]]\npassword = 12345\n";
        let (line, message) = show(text, "password = 12345", "invalid type: integer `12345`");
        assert!(
            !line.contains("12345") && !message.contains("12345"),
            "{line} {message}"
        );
        assert!(
            message.starts_with("invalid type: integer `…`"),
            "{message}"
        );
        let text = "[[users]]\npassword = \"\"\"\nhunter2\n";
        let (line, _) = show(text, "hunter2", "m");
        assert!(!line.contains("hunter2"), "{line}");
    }
}
