//! pgsidecar command line: `run`, `check` and `demo`. Everything else lives
//! in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgsidecar::config::{Config, ConfigError, LogFormat};
use pgsidecar::demo::command::DemoOptions;
use pgsidecar::proxy::Proxy;

#[derive(Parser)]
#[command(
    name = "pgsidecar",
    version,
    about = "Postgres connection proxy for application sidecars"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file.
        #[arg(short, long, env = "PGSIDECAR_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective settings.
    Check {
        /// Config file.
        #[arg(short, long, env = "PGSIDECAR_CONFIG")]
        config: PathBuf,
    },
    /// Start a throwaway primary + streaming replica with pgsidecar in
    /// front, until Ctrl-C (needs the PostgreSQL server binaries).
    Demo {
        /// Client port [default: 6432, or a free one if taken; 0 = any free].
        #[arg(long)]
        port: Option<u16>,
        /// HTTP (metrics) port [default: 9930, or a free one if taken; 0 = any free].
        #[arg(long)]
        http_port: Option<u16>,
        /// Stop by itself after SECS seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// Seconds between status summaries.
        #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
        /// Directory of the PostgreSQL binaries (initdb, pg_ctl, postgres,
        /// pg_basebackup) [default: searched on PATH, via pg_config, in
        /// /usr/lib/postgresql/*/bin].
        #[arg(long, value_name = "DIR")]
        pg_bindir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    fix_malloc_threshold();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Demo {
            port,
            http_port,
            duration,
            interval,
            pg_bindir,
        } => demo(DemoOptions {
            port,
            http_port,
            duration: duration.map(Duration::from_secs),
            interval: Duration::from_secs(interval),
            pg_bindir,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: many errors already put
/// their cause in their own message (`cannot read config file X: No such
/// file or directory`), and anyhow's `{:#}` would repeat it.
fn render(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Reads the certificate, key and CA files the config names, the way the
/// proxy does when it starts, so that a file that cannot be used is
/// reported against the config file and key that name it.
fn check_tls_files(path: &std::path::Path, config: &Config) -> Result<(), ConfigError> {
    let in_file =
        |e: pgsidecar::tls::TlsError| ConfigError::invalid_key(path, e.key(), e.problem());
    pgsidecar::tls::build_client_tls(&config.proxy).map_err(in_file)?;
    pgsidecar::tls::build_server_tls(&config.cluster).map_err(in_file)?;
    Ok(())
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let (config, sources) = Config::load_with_sources(path)?;
    check_tls_files(path, &config)?;
    let rendered = toml::to_string(&config).context("printing the config")?;
    print!("{}", sources.annotate(&rendered));
    match &config.fleet {
        None => println!(
            "\n# computed pool size per (database, user, node): {}",
            config.pool.effective_size()
        ),
        Some(fleet) => {
            let replicas = if config.cluster.replicas.is_empty() {
                String::new()
            } else {
                format!(", each replica {}", config.pool.replica_budget())
            };
            println!(
                "\n# fleet \"{}\": budget per node for the whole fleet: primary {}{replicas}; \
                 largest pool: {}",
                fleet.name,
                config.pool.primary_budget(),
                config.pool.pool_max(true)
            )
        }
    }
    Ok(())
}

/// Colour in log lines only for a person watching a terminal: not in a
/// file, a pipe or journald, and never with `NO_COLOR` set
/// (<https://no-color.org>).
fn colour(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Keeps every allocation of 1 MiB or more in a mapping of its own, given
/// back to the system when freed. Why: the only such allocations are large
/// messages (up to `max_message_size`), and glibc's default threshold
/// moves up to the size of the first large block freed, so later ones come
/// from the heap, which keeps their memory (up to twice the largest
/// message) after they are gone: with one thread every session allocates
/// from that heap. A threshold set explicitly stays where it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; nothing else runs
    // yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_threshold() {}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGSIDECAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(std::io::stdout().is_terminal()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `[proxy] worker_threads`: 1 (the default) every session on this thread
/// (no cross-thread wake-ups when a server connection passes between
/// sessions), 0 one worker per core, N exactly N workers.
fn runtime_builder(worker_threads: u32) -> tokio::runtime::Builder {
    match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n as usize);
            builder
        }
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    check_tls_files(path, &config)?;
    init_logging(config.observability.log_format);
    let worker_threads = config.proxy.worker_threads;
    let runtime = runtime_builder(worker_threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let proxy = Proxy::start(config).await?;
        // The console's RELOAD re-reads this file.
        let _ = proxy.shared.config_path.set(path.to_path_buf());
        // Where it listens is on the "pgsidecar listening" line (with
        // `listen = ""` there is no TCP address to show here).
        tracing::info!(worker_threads, "ready");
        let signal = loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", path.display());
                    // Success and failure are logged by the reload itself.
                    let result = proxy.shared.reload_from_file();
                    proxy.shared.observer.metrics().config_reload(result.is_ok());
                }
                _ = terminate.recv() => break "SIGTERM",
                _ = interrupt.recv() => break "SIGINT",
            }
        };
        let timeout = proxy.shared.config.load().proxy.shutdown_timeout;
        tracing::info!(
            signal,
            shutdown_timeout = %humantime::format_duration(timeout),
            "shutting down: no new clients, transactions in flight may finish"
        );
        proxy.shutdown(timeout).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

fn demo(options: DemoOptions) -> anyhow::Result<()> {
    // The demo talks on stdout; only warnings are logged, to stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGSIDECAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .init();
    pgsidecar::demo::command::run(options)?;
    Ok(())
}
