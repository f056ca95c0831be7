//! `rafka-broker`: the broker process. See `rafka_broker::node` for what it runs.

use std::process::ExitCode;

use clap::Parser;
use rafka_broker::config::{BrokerArgs, BrokerConfig};

fn main() -> ExitCode {
    let args = match BrokerArgs::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One clear line, not clap's multi-line usage dump.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("bad arguments");
            eprintln!("rafka-broker: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let config = match BrokerConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rafka-broker: {e}");
            return ExitCode::from(2);
        }
    };
    match rafka_broker::node::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafka-broker: {e}");
            ExitCode::FAILURE
        }
    }
}
