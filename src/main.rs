//! pgsidecar command line: `run`, `check` and `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgsidecar::config::Config;

#[derive(Parser)]
#[command(name = "pgsidecar", version, about = "Postgres connection proxy for application sidecars")]
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
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", toml::to_string(&c).unwrap_or_default());
                println!("\n# computed pool size per (database, user, node): {}", c.pool.effective_size());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { .. } => {
            eprintln!("not yet implemented");
            ExitCode::FAILURE
        }
    }
}
