//! Environment overrides and value sources, with an explicit environment
//! (never the process's).

use std::path::Path;
use std::time::Duration;

use super::env::OVERRIDES;
use super::*;

const FILE: &str = r#"[proxy]
listen = "127.0.0.1:7432"

[cluster]
primary = "db:5432"

[[users]]
name = "app"
password = "secret"
"#;

fn load(text: &str, vars: &[(&str, &str)]) -> Result<(Config, Sources), ConfigError> {
    let env = Environment::from_pairs(vars.iter().copied());
    Config::from_toml_with_env(text, Path::new("test.toml"), &env)
}

#[test]
fn every_listed_key_is_overridden_on_top_of_the_file() {
    let vars = [
        ("PGSIDECAR_PROXY_LISTEN", "0.0.0.0:6432"),
        ("PGSIDECAR_PROXY_POOL_MODE", "session"),
        ("PGSIDECAR_PROXY_MAX_CLIENT_CONN", "50"),
        ("PGSIDECAR_PROXY_WORKER_THREADS", "1"),
        ("PGSIDECAR_HTTP_LISTEN", "0.0.0.0:9930"),
        ("PGSIDECAR_CLUSTER_PRIMARY", "primary.internal:5432"),
        ("PGSIDECAR_CLUSTER_REPLICAS", "r1:5432, r2:5433"),
        ("PGSIDECAR_CLUSTER_STATE_FILE", "/data/pgsidecar.state"),
        ("PGSIDECAR_AUTH_CLIENT_AUTH", "md5"),
        ("PGSIDECAR_POOL_SIZE", "12"),
        ("PGSIDECAR_POOL_DB_CORES", "16"),
        ("PGSIDECAR_POOL_REPLICA_DB_CORES", "6"),
        ("PGSIDECAR_POOL_SIDECARS", "4"),
        ("PGSIDECAR_POOL_CHECKOUT_TIMEOUT", "750ms"),
        ("PGSIDECAR_ROUTING_READ_WRITE_SPLIT", "false"),
        ("PGSIDECAR_ROUTING_READ_YOUR_WRITES", "window"),
        ("PGSIDECAR_ROUTING_MAX_REPLICA_LAG", "3s"),
        ("PGSIDECAR_OBSERVABILITY_LOG_FORMAT", "json"),
        ("PGSIDECAR_OBSERVABILITY_SLOW_QUERY_THRESHOLD", "1s"),
        ("PGSIDECAR_POOL_BUDGET", "40"),
        ("PGSIDECAR_FLEET_NAME", "checkout-api"),
        ("PGSIDECAR_FLEET_INSTANCE", "web-7f9c"),
    ];
    assert_eq!(vars.len(), OVERRIDES.len(), "test every override");
    let (c, sources) = load(FILE, &vars).unwrap();
    assert_eq!(c.proxy.listen, Some("0.0.0.0:6432".parse().unwrap()));
    assert_eq!(c.proxy.pool_mode, PoolMode::Session);
    assert_eq!(c.proxy.max_client_conn, 50);
    assert_eq!(c.proxy.worker_threads, 1);
    assert_eq!(c.http.listen.to_string(), "0.0.0.0:9930");
    assert_eq!(c.cluster.primary.to_string(), "primary.internal:5432");
    let replicas: Vec<String> = c.cluster.replicas.iter().map(|r| r.to_string()).collect();
    assert_eq!(replicas, ["r1:5432", "r2:5433"]);
    assert_eq!(
        c.cluster.state_file(),
        StateFile::Set(Path::new("/data/pgsidecar.state"))
    );
    assert_eq!(c.auth.client_auth, ClientAuth::Md5);
    assert_eq!(c.pool.size, PoolSize::Fixed(12));
    assert_eq!((c.pool.db_cores, c.pool.sidecars), (16, 4));
    assert_eq!(c.pool.replica_db_cores, Some(6));
    assert_eq!(c.pool.checkout_timeout, Duration::from_millis(750));
    assert!(!c.routing.read_write_split);
    assert_eq!(c.routing.read_your_writes, ReadYourWrites::Window);
    assert_eq!(c.routing.max_replica_lag, Duration::from_secs(3));
    assert_eq!(c.observability.log_format, LogFormat::Json);
    assert_eq!(c.observability.slow_query_threshold, Duration::from_secs(1));
    assert_eq!(c.pool.budget, Budget::Fixed(40));
    let fleet = c.fleet.as_ref().expect("[fleet] from the environment");
    assert_eq!(
        (fleet.name.as_str(), fleet.instance.as_deref()),
        ("checkout-api", Some("web-7f9c"))
    );
    for over in &OVERRIDES {
        assert_eq!(
            sources.of(over.section, None, over.key),
            Source::Env(over.var())
        );
    }
}

#[test]
fn sources_tell_file_env_and_default_apart() {
    let (_, sources) = load(FILE, &[("PGSIDECAR_POOL_SIZE", "auto")]).unwrap();
    assert_eq!(sources.of("proxy", None, "listen"), Source::File);
    assert_eq!(sources.of("proxy", None, "pool_mode"), Source::Default);
    assert_eq!(
        sources.of("routing", None, "max_replica_lag"),
        Source::Default
    );
    assert_eq!(
        sources.of("pool", None, "size"),
        Source::Env("PGSIDECAR_POOL_SIZE".into())
    );
    assert_eq!(sources.of("users", Some(0), "name"), Source::File);
    assert_eq!(sources.of("users", Some(0), "password"), Source::File);
}

#[test]
fn the_cluster_may_come_entirely_from_the_environment() {
    let text = "[[users]]\nname = \"app\"\npassword = \"x\"\n";
    let (c, _) = load(text, &[("PGSIDECAR_CLUSTER_PRIMARY", "db:5432")]).unwrap();
    assert_eq!(c.cluster.primary.to_string(), "db:5432");
    assert!(c.cluster.replicas.is_empty());
    let (c, _) = load(
        FILE,
        &[("PGSIDECAR_CLUSTER_REPLICAS", "")], // empty: no replicas
    )
    .unwrap();
    assert!(c.cluster.replicas.is_empty());
}

#[test]
fn bad_values_name_the_variable() {
    let cases = [
        ("PGSIDECAR_PROXY_LISTEN", "localhost", "IP:port"),
        ("PGSIDECAR_PROXY_POOL_MODE", "statement", "transaction"),
        ("PGSIDECAR_PROXY_MAX_CLIENT_CONN", "0", "greater than zero"),
        ("PGSIDECAR_CLUSTER_PRIMARY", "db", "host:port"),
        (
            "PGSIDECAR_CLUSTER_REPLICAS",
            "r1:5432,r2",
            "`r2` is not host:port",
        ),
        ("PGSIDECAR_POOL_SIZE", "lots", "auto"),
        ("PGSIDECAR_POOL_CHECKOUT_TIMEOUT", "5 parsecs", "duration"),
        (
            "PGSIDECAR_ROUTING_READ_WRITE_SPLIT",
            "maybe",
            "true or false",
        ),
        ("PGSIDECAR_OBSERVABILITY_LOG_FORMAT", "xml", "json"),
    ];
    for (var, value, needle) in cases {
        let err = load(FILE, &[(var, value)]).unwrap_err().to_string();
        assert!(err.contains(var), "{var}: {err}");
        assert!(err.contains(needle), "{var}={value}: {err}");
    }
}

#[test]
fn cross_field_errors_from_an_override_name_the_variable() {
    let err = load(FILE, &[("PGSIDECAR_CLUSTER_REPLICAS", "db:5432")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster.replicas[0]"), "{err}");
    assert!(err.contains("PGSIDECAR_CLUSTER_REPLICAS"), "{err}");
}

#[test]
fn file_errors_keep_their_line_with_overrides_set() {
    let text = FILE.replace("[cluster]", "[cluster]\nprimry = \"x:1\"");
    let err = load(&text, &[("PGSIDECAR_PROXY_LISTEN", "0.0.0.0:1")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("test.toml:5:"), "{err}");
    assert!(err.contains("primry"), "{err}");
}

#[test]
fn misspelled_overrides_are_refused_but_password_vars_pass() {
    let err = load(FILE, &[("PGSIDECAR_PROXY_LISTN", "0.0.0.0:1")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("PGSIDECAR_PROXY_LISTN"), "{err}");
    assert!(
        err.contains("PGSIDECAR_PROXY_LISTEN"),
        "lists the real ones: {err}"
    );

    // A [[users]] password_env under a reserved prefix is the file's own
    // variable, and PGSIDECAR_CONFIG / PGSIDECAR_LOG are not overrides.
    let text = FILE.replace(
        "password = \"secret\"",
        "password_env = \"PGSIDECAR_POOL_PW\"",
    );
    let mut table: toml::Table = text.parse().unwrap();
    let env = Environment::from_pairs([
        ("PGSIDECAR_POOL_PW", "from-env"),
        ("PGSIDECAR_CONFIG", "/etc/pgsidecar/pgsidecar.toml"),
        ("PGSIDECAR_LOG", "debug"),
        ("PGSIDECAR_APP_PASSWORD", "unrelated"),
    ]);
    assert_eq!(super::env::apply(&mut table, &env).unwrap(), []);
}

#[test]
fn a_password_from_password_env_is_attributed_to_it() {
    let text = FILE.replace("password = \"secret\"", "password_env = \"PATH\"");
    let (_, sources) = load(&text, &[]).unwrap();
    assert_eq!(
        sources.of("users", Some(0), "password"),
        Source::Env("PATH".into())
    );
}

#[test]
fn annotated_output_marks_each_key_and_stays_toml() {
    let (c, sources) = load(
        FILE,
        &[
            ("PGSIDECAR_PROXY_LISTEN", "0.0.0.0:6432"),
            ("PGSIDECAR_CLUSTER_REPLICAS", "r1:1,r2:2"),
        ],
    )
    .unwrap();
    let out = sources.annotate(&toml::to_string(&c).unwrap());
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{out}"))
            .to_string()
    };
    assert_eq!(
        line("listen").split("  # ").nth(1),
        Some("env PGSIDECAR_PROXY_LISTEN")
    );
    assert!(line("replicas").ends_with("# env PGSIDECAR_CLUSTER_REPLICAS"));
    assert!(line("primary").ends_with("# file"));
    assert!(line("pool_mode").ends_with("# default"));
    assert!(line("password").ends_with("# file"), "{out}");
    let parsed: toml::Table = out.parse().expect("annotated output is TOML");
    assert_eq!(parsed["proxy"]["listen"].as_str(), Some("0.0.0.0:6432"));
    assert_eq!(parsed["cluster"]["replicas"].as_array().unwrap().len(), 2);
}

#[test]
fn annotation_follows_dotted_section_headers() {
    let file: toml::Table = "[a.b]\nx = 1\n".parse().unwrap();
    let sources = Sources::new(file, Vec::new());
    let out = sources.annotate("[a.b]\nx = 1\ny = 2\n");
    assert_eq!(out, "[a.b]\nx = 1  # file\ny = 2  # default\n");
}

#[test]
fn an_empty_listen_variable_turns_tcp_off() {
    let text = format!("{FILE}\n").replace(
        "listen = \"127.0.0.1:7432\"",
        "listen = \"127.0.0.1:7432\"\nunix_socket_dir = \"/run/p\"\nunix_socket_port = 5432",
    );
    let (c, _) = load(&text, &[("PGSIDECAR_PROXY_LISTEN", "")]).unwrap();
    assert_eq!(c.proxy.listen, None);
    assert_eq!(
        c.proxy.unix_socket_path(None),
        Some("/run/p/.s.PGSQL.5432".into())
    );
}
