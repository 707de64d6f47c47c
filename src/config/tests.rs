use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[cluster]
primary = "127.0.0.1:5432"

[[users]]
name = "app"
password = "secret"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.proxy.listen, Some("127.0.0.1:6432".parse().unwrap()));
    assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
    assert_eq!(c.proxy.worker_threads, 1);
    assert_eq!(c.auth.client_auth, ClientAuth::ScramSha256);
    assert_eq!(c.pool.checkout_timeout, Duration::from_secs(5));
    assert_eq!(c.pool.effective_size(), 9);
    assert_eq!(c.routing.lag_check_interval, Duration::from_millis(100));
}

#[test]
fn auto_pool_size_follows_formula_and_sidecars() {
    let text =
        format!("{MINIMAL}\n[pool]\ndb_cores = 8\neffective_spindle_count = 2\nsidecars = 3\n");
    assert_eq!(parse(&text).unwrap().pool.effective_size(), 6);
    let text =
        format!("{MINIMAL}\n[pool]\ndb_cores = 1\neffective_spindle_count = 0\nsidecars = 10\n");
    assert_eq!(parse(&text).unwrap().pool.effective_size(), 1);
    let text = format!("{MINIMAL}\n[pool]\nsize = 5\n");
    assert_eq!(parse(&text).unwrap().pool.effective_size(), 5);
}

#[test]
fn misspelled_key_is_named_with_its_line() {
    let text = "[proxy]\nlisen = \"127.0.0.1:1\"\n[cluster]\nprimary = \"h:1\"\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("lisen"), "{err}");
    assert!(err.contains("test.toml:2:"), "{err}");
}

#[test]
fn bad_values_are_refused_with_the_key() {
    let cases = [
        ("[pool]\nsize = \"big\"\n", "pool size"),
        (
            "[pool]\ncheckout_timeout = \"5 parsecs\"\n",
            "checkout_timeout",
        ),
        ("[proxy]\npool_mode = \"statement\"\n", "statement"),
        ("[auth]\nclient_auth = \"kerberos\"\n", "kerberos"),
        (
            "[observability]\nexplain_sample_rate = 2.0\n",
            "explain_sample_rate",
        ),
        ("[admin]\nusers = [\"root\"]\n", "admin.users[0]"),
        ("[proxy]\nmax_client_conn = 0\n", "proxy.max_client_conn"),
        ("[proxy]\nworker_threads = 5000\n", "proxy.worker_threads"),
        ("[proxy]\nworker_threads = -1\n", "worker_threads"),
    ];
    for (extra, needle) in cases {
        let text = format!("{MINIMAL}\n{extra}");
        let err = parse(&text).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(needle), "{extra:?} gave {err}");
    }
}

#[test]
fn bad_cluster_addresses_are_refused() {
    let err = parse("[cluster]\nprimary = \"localhost\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("host:port"), "{err}");
    let err = parse("[cluster]\nprimary = \"h:1\"\nreplicas = [\"h:1\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster.replicas[0]"), "{err}");
}

#[test]
fn user_password_sources() {
    let err = parse("[cluster]\nprimary = \"h:1\"\n[[users]]\nname = \"a\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("users[0].password"), "{err}");
    let trust = parse(
        "[cluster]\nprimary = \"h:1\"\n[auth]\nclient_auth = \"trust\"\n[[users]]\nname = \"a\"\n",
    );
    assert!(trust.is_ok());
    let err = parse("[cluster]\nprimary = \"h:1\"\n[[users]]\nname = \"a\"\npassword_env = \"PGSIDECAR_TEST_UNSET_VAR\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("PGSIDECAR_TEST_UNSET_VAR"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-file\n").unwrap();
    let text = format!(
        "[cluster]\nprimary = \"h:1\"\n[[users]]\nname = \"a\"\npassword_file = \"{}\"\n",
        file.display()
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.users[0].password.as_ref().unwrap().expose(), "from-file");
}

#[test]
fn serialised_config_masks_passwords() {
    let c = parse(MINIMAL).unwrap();
    let out = toml::to_string(&c).unwrap();
    assert!(!out.contains("secret"), "{out}");
    assert!(out.contains("********"), "{out}");
}

#[test]
fn state_file_defaults_to_var_lib_and_empty_turns_it_off() {
    let c = parse(MINIMAL).unwrap();
    let default = std::path::Path::new("/var/lib/pgsidecar/cluster.state");
    assert_eq!(c.cluster.state_file(), StateFile::Default(default));
    for (value, want) in [
        ("\"\"", StateFile::Off),
        (
            "\"/data/s\"",
            StateFile::Set(std::path::Path::new("/data/s")),
        ),
    ] {
        let text = MINIMAL.replace(
            "primary = \"127.0.0.1:5432\"",
            &format!("primary = \"127.0.0.1:5432\"\nstate_file = {value}"),
        );
        assert_eq!(parse(&text).unwrap().cluster.state_file(), want, "{value}");
    }
}

#[test]
fn monitor_keys_default_and_are_checked_against_users() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.cluster.monitor_user, None);
    assert_eq!(c.cluster.monitor_database, "postgres");
    let text = MINIMAL.replace(
        "primary = \"127.0.0.1:5432\"",
        "primary = \"127.0.0.1:5432\"\nmonitor_user = \"app\"\nmonitor_database = \"ops\"",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.cluster.monitor_user.as_deref(), Some("app"));
    assert_eq!(c.cluster.monitor_database, "ops");
    for (key, needle) in [
        ("monitor_user = \"nobody\"", "cluster.monitor_user"),
        ("monitor_database = \"\"", "cluster.monitor_database"),
    ] {
        let text = MINIMAL.replace(
            "primary = \"127.0.0.1:5432\"",
            &format!("primary = \"127.0.0.1:5432\"\n{key}"),
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(needle), "{key}: {err}");
    }
}

#[test]
fn observability_and_budget_keys_default_and_are_checked() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.observability.enabled);
    assert_eq!(c.observability.max_fingerprints, 5000);
    assert_eq!(c.observability.slow_query_log_rate, 10);
    assert_eq!(c.observability.explain_timeout, Duration::from_secs(2));
    assert_eq!(c.budgets.p95_query_time, None);
    assert_eq!(c.budgets.pool_usage, None);
    assert_eq!(c.budgets.window, Duration::from_secs(30));

    let text = format!(
        "{MINIMAL}\n[observability]\nenabled = false\nmax_fingerprints = 10\nslow_query_log_rate = 0\n\
         explain_timeout = \"500ms\"\n[budgets]\np95_query_time = \"100ms\"\npool_usage = 0.8\n\
         window = \"5s\"\n"
    );
    let c = parse(&text).unwrap();
    assert!(!c.observability.enabled);
    assert_eq!(c.observability.max_fingerprints, 10);
    assert_eq!(c.observability.slow_query_log_rate, 0);
    assert_eq!(c.observability.explain_timeout, Duration::from_millis(500));
    assert_eq!(c.budgets.p95_query_time, Some(Duration::from_millis(100)));
    assert_eq!(c.budgets.pool_usage, Some(0.8));
    assert_eq!(c.budgets.window, Duration::from_secs(5));
    // Set budgets survive `check`'s round trip through TOML.
    let printed: toml::Table = toml::to_string(&c).unwrap().parse().unwrap();
    assert_eq!(printed["budgets"]["p95_query_time"].as_str(), Some("100ms"));

    for (extra, needle) in [
        (
            "[observability]\nmax_fingerprints = 0\n",
            "observability.max_fingerprints",
        ),
        (
            "[observability]\nexplain_timeout = \"0s\"\n",
            "observability.explain_timeout",
        ),
        ("[budgets]\npool_usage = 1.5\n", "budgets.pool_usage"),
        ("[budgets]\npool_usage = 0.0\n", "budgets.pool_usage"),
        (
            "[budgets]\np95_query_time = \"0s\"\n",
            "budgets.p95_query_time",
        ),
        ("[budgets]\np95 = \"1s\"\n", "p95"),
        ("[budgets]\nwindow = \"500ms\"\n", "budgets.window"),
        ("[budgets]\nwindow = \"1500ms\"\n", "budgets.window"),
    ] {
        let err = parse(&format!("{MINIMAL}\n{extra}"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{extra:?} gave {err}");
    }
}

#[test]
fn unix_socket_keys() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.proxy.unix_socket_dir, None);
    assert_eq!(c.proxy.unix_socket_mode, FileMode(0o777));
    assert_eq!(c.proxy.unix_socket_path(Some(6432)), None);

    let text = format!(
        "{MINIMAL}\n[proxy]\nlisten = \"127.0.0.1:6432\"\nunix_socket_dir = \"/run/pgsidecar\"\n\
         unix_socket_mode = \"0770\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.proxy.unix_socket_mode, FileMode(0o770));
    assert_eq!(
        c.proxy.unix_socket_path(Some(6432)),
        Some("/run/pgsidecar/.s.PGSQL.6432".into())
    );
    // An explicit port names the socket whatever TCP uses.
    let c = parse(&format!("{text}unix_socket_port = 5432\n")).unwrap();
    assert_eq!(
        c.proxy.unix_socket_path(Some(6432)),
        Some("/run/pgsidecar/.s.PGSQL.5432".into())
    );
    // Socket only.
    let c = parse(&format!(
        "{MINIMAL}\n[proxy]\nlisten = \"\"\nunix_socket_dir = \"/run/p\"\nunix_socket_port = 5432\n"
    ))
    .unwrap();
    assert_eq!(c.proxy.listen, None);
    // "" is no socket, as in Postgres.
    let c = parse(&format!("{MINIMAL}\n[proxy]\nunix_socket_dir = \"\"\n")).unwrap();
    assert_eq!(c.proxy.unix_socket_dir, None);
}

#[test]
fn bad_unix_socket_keys_are_refused_with_the_key() {
    let long = format!("/{}", "d".repeat(100));
    let cases = [
        (
            "unix_socket_dir = \"run/pgsidecar\"",
            "proxy.unix_socket_dir",
            "absolute",
        ),
        (
            &format!("unix_socket_dir = \"{long}\"")[..],
            "proxy.unix_socket_dir",
            "at most 107",
        ),
        (
            "unix_socket_dir = \"/run/p\"\nunix_socket_mode = 777",
            "unix_socket_mode",
            "octal",
        ),
        (
            "unix_socket_dir = \"/run/p\"\nunix_socket_mode = \"0999\"",
            "unix_socket_mode",
            "not a file mode",
        ),
        (
            "unix_socket_dir = \"/run/p\"\nunix_socket_mode = \"01777\"",
            "unix_socket_mode",
            "not a file mode",
        ),
        (
            "unix_socket_port = 0\nunix_socket_dir = \"/run/p\"",
            "proxy.unix_socket_port",
            "between 1",
        ),
        (
            "listen = \"\"\nunix_socket_dir = \"/run/p\"",
            "proxy.unix_socket_port",
            "listen = \"\"",
        ),
        ("listen = \"\"", "proxy.listen", "no client could connect"),
        ("listen = \"localhost:6432\"", "listen", "IP:port"),
    ];
    for (extra, key, needle) in cases {
        let text = format!("{MINIMAL}\n[proxy]\n{extra}\n");
        let err = parse(&text).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains(needle),
            "{extra:?} gave {err}"
        );
    }
}

#[test]
fn fleet_section_and_budget_parse_with_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.fleet.is_none());
    assert_eq!(c.pool.budget, Budget::Auto);
    assert_eq!(
        c.pool.primary_budget(),
        9,
        "db_cores * 2 + spindles, not divided"
    );
    assert_eq!(c.pool.replica_budget(), 9, "replicas default to db_cores");
    assert_eq!(c.pool.pool_max(false), c.pool.effective_size());
    let text = format!("{MINIMAL}\n[pool]\nsidecars = 3\nbudget = 8\n[fleet]\nname = \"api\"\n");
    let c = parse(&text).unwrap();
    let fleet = c.fleet.as_ref().unwrap();
    assert_eq!((fleet.name.as_str(), fleet.floor), ("api", 1));
    assert_eq!(fleet.interval, std::time::Duration::from_millis(500));
    assert_eq!(c.pool.primary_budget(), 8);
    assert_eq!(c.pool.replica_budget(), 8);
    assert_eq!(
        c.pool.pool_max(true),
        8,
        "a pool may use the member's whole share"
    );
    let text = format!("{MINIMAL}\n[pool]\nsize = 3\nbudget = 8\n[fleet]\nname = \"api\"\n");
    assert_eq!(parse(&text).unwrap().pool.pool_max(true), 3);
}

#[test]
fn replicas_have_their_own_db_cores_in_the_auto_budget() {
    let fleet = "[fleet]\nname = \"api\"\n";
    let cluster = "[cluster]\nprimary = \"p:5432\"\nreplicas = [\"r1:5432\", \"r2:5432\"]\n";
    let text = format!(
        "{cluster}[[users]]\nname = \"app\"\npassword = \"pw\"\n\
         [pool]\ndb_cores = 4\nreplica_db_cores = 2\neffective_spindle_count = 0\n{fleet}"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.pool.replica_db_cores, Some(2));
    assert_eq!((c.pool.primary_budget(), c.pool.replica_budget()), (8, 4));
    let node = |s: &str| s.parse::<NodeAddr>().unwrap();
    assert_eq!(c.node_budget(&node("p:5432")), 8);
    assert_eq!(c.node_budget(&node("r1:5432")), 4);
    assert_eq!(c.node_budget(&node("r2:5432")), 4);
    assert_eq!(c.pool.pool_max(true), 8, "the larger node's budget");
    // A pool is sized by its own node's budget.
    assert_eq!(c.pool_max_on(&node("p:5432"), true), 8);
    assert_eq!(c.pool_max_on(&node("r1:5432"), true), 4);
    // Bigger replicas: a pool may use a replica's larger share.
    let text = text.replace("replica_db_cores = 2", "replica_db_cores = 16");
    let c = parse(&text).unwrap();
    assert_eq!(c.node_budget(&node("r1:5432")), 32);
    assert_eq!(c.pool.pool_max(true), 32);
    // A fixed budget is the same on every node.
    let text = text.replace("[pool]\n", "[pool]\nbudget = 6\n");
    let c = parse(&text).unwrap();
    assert_eq!(
        (
            c.node_budget(&node("p:5432")),
            c.node_budget(&node("r1:5432"))
        ),
        (6, 6)
    );
    // Not written back when absent (`pgsidecar check` prints the config).
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.pool.replica_db_cores, None);
    assert!(!toml::to_string(&c).unwrap().contains("replica_db_cores"));
}

#[test]
fn replica_db_cores_must_be_a_positive_integer() {
    for (value, needle) in [
        ("0", "must be greater than zero"),
        ("-2", "expected u32"),
        ("\"auto\"", "expected u32"),
    ] {
        let text = format!("{MINIMAL}\n[pool]\nreplica_db_cores = {value}\n");
        let err = parse(&text).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("test.toml:10")
                && err.contains("replica_db_cores")
                && err.contains(needle),
            "{value}: {err}"
        );
    }
}

#[test]
fn bad_fleet_keys_are_refused_by_name() {
    for (snippet, key) in [
        ("[fleet]\nname = \"\"\n", "fleet.name"),
        ("[fleet]\nname = \"a/b\"\n", "fleet.name"),
        (
            "[fleet]\nname = \"aaaaaaaaaaaaaaaaaaaaaaaaa\"\n",
            "fleet.name",
        ),
        (
            "[fleet]\nname = \"a\"\ninstance = \"x#1\"\n",
            "fleet.instance",
        ),
        (
            "[fleet]\nname = \"a\"\ninterval = \"1ms\"\n",
            "fleet.interval",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}\n{snippet}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{snippet}: {err}");
    }
    let err = parse(&format!("{MINIMAL}\n[pool]\nbudget = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("budget must be between 1 and 100000"), "{err}");
    let err = parse(&format!("{MINIMAL}\n[pool]\nbudget = \"lots\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("budget must be an integer or \"auto\""),
        "{err}"
    );
}
