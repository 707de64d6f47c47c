//! The packaging files hold together: the Dockerfile's settings pass
//! `pgsidecar check`, the systemd unit verifies, the Debian metadata names
//! files that exist, and the Kubernetes example's ConfigMap is a valid
//! config with the environment its Deployment gives it.
//!
//! Building the image and the .deb is not done here (no Docker engine; the
//! release build is slow): see `packaging/check-deb.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod kubernetes;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `pgsidecar check --config <config>` with exactly `env` (plus PATH).
fn check_with(config: &Path, env: &BTreeMap<String, String>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["check", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .expect("running pgsidecar check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---- Dockerfile -------------------------------------------------------------

/// Instructions of a Dockerfile: (keyword, arguments), continuations joined.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_builds_a_small_non_root_image_whose_settings_check() {
    let all = instructions(&read("Dockerfile"));
    let runtime_start = all.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let froms: Vec<&str> = all
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].ends_with("AS build"),
        "{froms:?}"
    );
    assert!(
        froms[1].starts_with("debian:") && froms[1].contains("-slim"),
        "{froms:?}"
    );
    let runtime = &all[runtime_start..];
    let get = |k: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(kw, _)| kw == k)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let user = get("USER");
    assert_eq!(user.len(), 1);
    assert!(
        !user[0].starts_with("root") && !user[0].starts_with("0"),
        "{user:?}"
    );
    assert_eq!(get("EXPOSE"), ["6432 9930"]);
    // The state file's default directory exists and belongs to the user.
    assert!(
        get("RUN")
            .iter()
            .any(|r| r.contains("chown 10001:10001 /var/lib/pgsidecar")),
        "{:?}",
        get("RUN")
    );
    assert!(get("HEALTHCHECK")[0].contains("/healthz"));
    assert!(
        get("COPY")
            .iter()
            .any(|a| a.ends_with("/etc/pgsidecar/pgsidecar.toml"))
    );

    // Every COPY source of the build context is let through .dockerignore.
    let ignore = read(".dockerignore");
    for (_, args) in all
        .iter()
        .filter(|(k, a)| k == "COPY" && !a.starts_with("--from"))
    {
        let sources: Vec<&str> = args.split_whitespace().collect();
        for source in &sources[..sources.len() - 1] {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            let let_through = ignore
                .lines()
                .filter_map(|l| l.strip_prefix('!'))
                .any(|allowed| {
                    let allowed = allowed.trim_end_matches('/');
                    source == allowed || source.starts_with(&format!("{allowed}/"))
                });
            assert!(let_through, ".dockerignore must let {source} through");
        }
    }

    // The image's ENV applied to its config: valid, listening on all
    // interfaces, and the sources say so.
    let mut env = BTreeMap::new();
    for args in get("ENV") {
        for pair in args.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV key=value");
            env.insert(k.to_string(), v.to_string());
        }
    }
    assert_eq!(env["PGSIDECAR_CONFIG"], "/etc/pgsidecar/pgsidecar.toml");
    env.insert("PGSIDECAR_APP_PASSWORD".into(), "example".into());
    env.remove("PGSIDECAR_CONFIG");
    let out = check_with(&repo("conf/pgsidecar.toml"), &env);
    assert!(out.status.success(), "{out:?}");
    let printed = text(&out.stdout);
    for line in [
        "listen = \"0.0.0.0:6432\"  # env PGSIDECAR_PROXY_LISTEN",
        "listen = \"0.0.0.0:9930\"  # env PGSIDECAR_HTTP_LISTEN",
    ] {
        assert!(printed.contains(line), "{line} in\n{printed}");
    }
}

// ---- systemd and Debian -------------------------------------------------------

#[test]
fn systemd_unit_is_sandboxed_and_verifies() {
    let unit = read("packaging/systemd/pgsidecar.service");
    for setting in [
        "ExecStart=/usr/bin/pgsidecar run --config /etc/pgsidecar/pgsidecar.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=pgsidecar",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=pgsidecar",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "RuntimeDirectory=pgsidecar\n",
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting:?}");
    }
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    assert!(found.status.success());
    // Verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/pgsidecar", env!("CARGO_BIN_EXE_pgsidecar")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    // Unknown or misspelled keys are only warnings: refuse those too.
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
}

#[test]
fn debian_metadata_names_files_that_exist() {
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let targets: Vec<&str> = assets.iter().map(|a| a[1].as_str().unwrap()).collect();
    assert!(targets.contains(&"usr/bin/"), "{targets:?}");
    assert!(
        targets.contains(&"etc/pgsidecar/pgsidecar.toml"),
        "{targets:?}"
    );
    for asset in assets {
        let source = asset[0].as_str().unwrap();
        if source.starts_with("target/") {
            continue;
        }
        // cargo-deb expands `dir/*.ext`: it must match something.
        if let Some((dir, ext)) = source.split_once("/*") {
            let matched = std::fs::read_dir(repo(dir))
                .unwrap_or_else(|e| panic!("asset {source}: {e}"))
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(ext));
            assert!(matched, "asset {source} matches no file");
        } else {
            assert!(repo(source).is_file(), "asset {source} does not exist");
        }
    }
    // The documentation ships with the package: README.md and docs/.
    assert!(
        targets.contains(&"usr/share/doc/pgsidecar/docs/"),
        "{targets:?}"
    );
    let scripts = repo(deb["maintainer-scripts"].as_str().unwrap());
    let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
    assert!(
        postinst.contains("#DEBHELPER#"),
        "cargo-deb inserts the unit's scripts there"
    );
    assert!(postinst.contains("adduser --system"), "{postinst}");
    let units = repo(deb["systemd-units"]["unit-scripts"].as_str().unwrap());
    assert!(units.join("pgsidecar.service").is_file());
}
