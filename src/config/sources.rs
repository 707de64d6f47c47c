//! Where each effective config value came from — the file, an environment
//! override or the default — so `pgsidecar check` can say why a value is
//! what it is (with overrides, the file alone no longer tells).

use super::env::Applied;

/// The origin of one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Written in the config file.
    File,
    /// Set by this environment variable.
    Env(String),
    /// Neither: the built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File => f.write_str("file"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The parsed file (before overrides) and the overrides applied to it.
#[derive(Clone, Debug)]
pub struct Sources {
    file: toml::Table,
    applied: Vec<Applied>,
}

/// The value at a dotted header path (`observability.budgets`) in `file`.
fn lookup<'a>(file: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = file.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

impl Sources {
    pub(super) fn new(file: toml::Table, applied: Vec<Applied>) -> Self {
        Sources { file, applied }
    }

    /// Where `section.key` came from; `user` is the index for `[[users]]`.
    /// A user's resolved `password` is attributed to its `password_env`
    /// variable when it came from there.
    pub fn of(&self, section: &str, user: Option<usize>, key: &str) -> Source {
        if let Some(a) = self
            .applied
            .iter()
            .find(|a| a.section == section && a.key == key)
        {
            return Source::Env(a.var.clone());
        }
        let table = match (lookup(&self.file, section), user) {
            (Some(toml::Value::Table(t)), None) => Some(t),
            (Some(toml::Value::Array(items)), Some(i)) => items.get(i).and_then(|v| v.as_table()),
            _ => None,
        };
        let Some(table) = table else {
            return Source::Default;
        };
        if table.contains_key(key) {
            return Source::File;
        }
        if key == "password"
            && let Some(var) = table.get("password_env").and_then(|v| v.as_str())
        {
            return Source::Env(var.to_string());
        }
        if key == "password" && table.contains_key("password_file") {
            return Source::File;
        }
        Source::Default
    }

    /// The variable that set `key` (a validation error's key, such as
    /// `cluster.replicas[1]`), if an override did.
    pub(super) fn var_for(&self, key: &str) -> Option<&str> {
        self.applied.iter().find_map(|a| {
            let name = format!("{}.{}", a.section, a.key);
            let hit = key == name || key.starts_with(&format!("{name}["));
            hit.then_some(a.var.as_str())
        })
    }

    /// `rendered` (the effective config as `toml::to_string` writes it) with
    /// each `key = value` line followed by `# file`, `# env VAR` or
    /// `# default`. Still valid TOML: comments may end any line.
    pub fn annotate(&self, rendered: &str) -> String {
        let mut out = String::with_capacity(rendered.len() * 2);
        let mut section = String::new();
        let mut user: Option<usize> = None;
        let mut users_seen = 0;
        for line in rendered.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed
                .strip_prefix("[[")
                .and_then(|s| s.strip_suffix("]]"))
            {
                section = name.to_string();
                user = Some(users_seen);
                users_seen += 1;
            } else if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = name.to_string();
                user = None;
            } else if !line.starts_with([' ', '\t', '#'])
                && let Some((key, _)) = line.split_once(" = ")
            {
                let source = self.of(&section, user, key.trim());
                out.push_str(line);
                out.push_str("  # ");
                out.push_str(&source.to_string());
                out.push('\n');
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}
