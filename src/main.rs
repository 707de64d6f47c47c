//! pgsidecar command line: `run`, `check` and `demo`. Everything else lives
//! in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgsidecar::config::{Config, LogFormat};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let (config, sources) = Config::load_with_sources(path)?;
    let rendered = toml::to_string(&config).context("printing the config")?;
    print!("{}", sources.annotate(&rendered));
    println!(
        "\n# computed pool size per (database, user, node): {}",
        config.pool.effective_size()
    );
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGSIDECAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_logging(config.observability.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let proxy = Proxy::start(config).await?;
        tracing::info!(addr = %proxy.addr, "ready");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for a signal")?;
        tracing::info!("shutting down");
        anyhow::Ok(())
    })
}
