//! `pgsidecar demo`: a throwaway primary and streaming replica from the
//! installed PostgreSQL binaries, pgsidecar in front of them in-process, a
//! small demo table, a ready-to-paste `psql` line and a live summary, until
//! Ctrl-C — then everything is stopped and the temp dir removed.
//!
//! # Layout
//! - `setup`: cluster options, demo data, the proxy's config, ports.
//! - `summary`: what the periodic summary shows and where it comes from.
//! - `signals`: when to stop (SIGINT, SIGTERM, `--duration`).
//! - `error`: [`DemoError`].

mod error;
mod setup;
mod signals;
mod summary;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::DemoError;

use self::signals::{Stop, Why};
use crate::config::Config;
use crate::demo::{LocalCluster, PgBinaries};
use crate::proxy::{Proxy, StartError};

/// Where clients connect unless told otherwise (the contract's default).
pub const DEFAULT_PORT: u16 = 6432;
/// Where the HTTP endpoints go unless told otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 9930;

/// How long transactions in flight get to finish when the demo stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the command line asked of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Client port; `None` = 6432, or a free port if that is taken; 0 = any.
    pub port: Option<u16>,
    /// HTTP port; `None` = 9930, or a free port if that is taken; 0 = any.
    pub http_port: Option<u16>,
    /// Stop by itself after this long (for scripts and tests).
    pub duration: Option<Duration>,
    /// Time between summaries.
    pub interval: Duration,
    /// Use the binaries in this directory instead of searching.
    pub pg_bindir: Option<PathBuf>,
}

/// Runs the demo to completion on a runtime of its own. Output goes to
/// stdout; returns once the servers are stopped and their files removed.
pub fn run(options: DemoOptions) -> Result<(), DemoError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?;
    let result = runtime.block_on(demo(options));
    // Closes the proxy's remaining client and server connections.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn demo(options: DemoOptions) -> Result<(), DemoError> {
    // First, so that Ctrl-C during the slow setup still cleans up.
    let mut stop = Stop::install().map_err(DemoError::Signals)?;
    let binaries = match &options.pg_bindir {
        Some(dir) => PgBinaries::from_dir(dir)?,
        None => PgBinaries::locate()?,
    };
    println!(
        "pgsidecar demo: starting a PostgreSQL {} primary and a streaming replica ({})",
        binaries.version(),
        binaries.bindir().display()
    );
    let cluster_options = setup::cluster_options(binaries.clone());
    let mut starting = tokio::task::spawn_blocking(move || setup::start_cluster(cluster_options));
    let cluster = tokio::select! {
        started = &mut starting => started??,
        why = stop.wait() => {
            println!("{}: cleaning up once the setup step in progress ends", describe(why));
            match starting.await {
                Ok(Ok(cluster)) => teardown(cluster).await,
                // A tool killed by the same Ctrl-C fails the setup, which
                // stops and removes whatever it had started.
                _ => println!("setup interrupted; nothing was left running"),
            }
            return Ok(());
        }
    };
    let outcome = serve(&cluster, &binaries, &options, &mut stop).await;
    teardown(cluster).await;
    outcome
}

/// Runs the proxy in front of `cluster` and prints summaries until `stop`.
async fn serve(
    cluster: &LocalCluster,
    binaries: &PgBinaries,
    options: &DemoOptions,
    stop: &mut Stop,
) -> Result<(), DemoError> {
    let http =
        setup::http_addr(options.http_port, DEFAULT_HTTP_PORT).map_err(DemoError::HttpPort)?;
    let proxy = start_proxy(options.port, http, cluster).await?;
    let counter = summary::TransactionCounter::connect(cluster).await;

    print_banner(cluster, binaries, &proxy, http).await;
    if let Some(after) = options.duration {
        stop.stop_after(after);
    }
    let started = Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    ticker.tick().await; // the first tick is immediate
    let why = loop {
        tokio::select! {
            why = stop.wait() => break why,
            _ = ticker.tick() => {
                let counts = counter.since_start().await;
                let nodes = summary::gather(&proxy.shared.cluster(), &proxy.shared, &counts);
                let clients = proxy.shared.connected.load(std::sync::atomic::Ordering::Relaxed);
                print!("{}", summary::render(started.elapsed(), clients, &nodes));
            }
        }
    };
    println!("{}: stopping pgsidecar and the servers", describe(why));
    proxy.shutdown(SHUTDOWN_GRACE).await;
    Ok(())
}

/// Starts the proxy on `port` (see [`DemoOptions::port`]); the default port
/// falls back to a free one when taken, an explicit one does not.
async fn start_proxy(
    port: Option<u16>,
    http: SocketAddr,
    cluster: &LocalCluster,
) -> Result<Proxy, DemoError> {
    let config =
        |port: u16| setup::proxy_config(SocketAddr::from(([127, 0, 0, 1], port)), http, cluster);
    match Proxy::start(config(port.unwrap_or(DEFAULT_PORT))?).await {
        Ok(proxy) => Ok(proxy),
        Err(StartError::Listen { source, .. })
            if port.is_none() && source.kind() == ErrorKind::AddrInUse =>
        {
            println!("port {DEFAULT_PORT} is taken; pgsidecar listens on a free port instead");
            Proxy::start(config(0)?)
                .await
                .map_err(|source| DemoError::Proxy { source })
        }
        Err(source) => Err(DemoError::Proxy { source }),
    }
}

/// How to connect, printed once everything is up. Tests wait for the
/// `connect with:` line.
async fn print_banner(
    cluster: &LocalCluster,
    binaries: &PgBinaries,
    proxy: &Proxy,
    http: SocketAddr,
) {
    let config: Arc<Config> = proxy.shared.config.load_full();
    println!(
        "  primary  {} ({})",
        cluster.primary().addr(),
        cluster.primary().name()
    );
    for replica in cluster.replicas() {
        println!(
            "  replica  {} ({}, streaming)",
            replica.addr(),
            replica.name()
        );
    }
    println!("  data directory: {}", cluster.root_dir().display());
    println!(
        "pgsidecar listens on {} (pool mode {}, replicas {}); database \"{}\" has table {} with {} rows",
        proxy.addr,
        config.proxy.pool_mode,
        config.cluster.replicas.len(),
        setup::DATABASE,
        setup::TABLE,
        setup::row_count()
    );
    println!();
    println!(
        "connect with: {}",
        setup::psql_command(binaries, proxy.addr.port(), setup::DATABASE)
    );
    println!(
        "  then try:   SELECT * FROM {};   INSERT INTO {} VALUES (6, 'tea', 1.90);",
        setup::TABLE,
        setup::TABLE
    );
    println!(
        "admin console: {}",
        setup::psql_command(binaries, proxy.addr.port(), crate::admin::DATABASE)
    );
    println!("  then try:   SHOW POOLS;   SHOW NODES;   SHOW QUERIES;   SHOW HELP;");
    let served = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(http),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    let note = if served {
        ""
    } else {
        "   (nothing serves it in this build yet)"
    };
    println!("metrics:      http://{http}/metrics{note}");
    println!("Ctrl-C stops the demo and removes its servers and files.");
    println!();
}

/// Stops the servers and removes the temp dir, off the async threads (it
/// waits for the postmasters to exit).
async fn teardown(cluster: LocalCluster) {
    let root = cluster.root_dir().to_path_buf();
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    println!("stopped the servers and removed {}", root.display());
}

fn describe(why: Why) -> String {
    match why {
        Why::Signal(name) => format!("got {name}"),
        Why::TimeUp => "--duration is over".to_string(),
    }
}
