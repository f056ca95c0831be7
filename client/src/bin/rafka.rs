//! The `rafka` command-line client. Every failure ends with exit code 1 (runtime) or 2 (usage,
//! or a feature not implemented yet) and exactly one line on stderr.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use rafka_client::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                // clap's message spans several lines (tips, usage); keep the first.
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                eprintln!("rafka: {first} (see 'rafka --help')");
                return ExitCode::from(cli::EXIT_USAGE);
            }
        },
    };
    // Library logs are for debugging only (RAFKA_LOG=debug); by default stderr carries only
    // progress and the final error line.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RAFKA_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rafka: cannot start the runtime: {e}");
            return ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // Background tasks (a stuck connection, the stdin reader) must not delay the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafka: {}", e.message);
            ExitCode::from(e.exit_code)
        }
    }
}
