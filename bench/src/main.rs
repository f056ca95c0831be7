//! `rafka-bench`: Rafka's load generator and storage benchmarks.
//!
//! - `rafka-bench log` ([`log`]): the broker's segmented log against raw file I/O on the same
//!   disk, without a broker.
//! - `rafka-bench produce` ([`produce`]): producer throughput and send→ack latency against a
//!   running broker.
//! - `rafka-bench consume` ([`consume`]): consumer throughput against a running broker.
//! - `rafka-bench e2e` ([`e2e`]): produce→consume latency against a running broker.
//!
//! `produce`, `consume` and `e2e` also measure, in the same run, the raw limit their figure
//! should be compared with (disk write / fdatasync, loopback TCP; see [`raw`]) and print the
//! ratio; `--no-raw` skips that. Figures are printed, never asserted: the exit status only says
//! whether the benchmark could run (and, for the network commands, whether every record was
//! acknowledged or received). MB means 10^6 bytes. Progress goes to stderr, results to stdout;
//! with `--json` the network commands print exactly one JSON object (see [`stats::Report`]).

mod common;
mod consume;
mod e2e;
mod log;
mod produce;
mod raw;
mod stats;

use std::fmt::{self, Display};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rafka-bench",
    version,
    about = "Rafka's load generator and storage benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measures the segmented log against raw file I/O on the same disk.
    Log(log::LogArgs),
    /// Produces N records to a topic and reports throughput and send→ack latency.
    Produce(produce::ProduceArgs),
    /// Consumes N records of a topic from the earliest offset and reports throughput.
    Consume(consume::ConsumeArgs),
    /// Produces at a fixed rate while consuming, and reports produce→consume latency.
    E2e(e2e::E2eArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Log(args) => log::run(&args),
        Command::Produce(args) => produce::run(&args),
        Command::Consume(args) => consume::run(&args),
        Command::E2e(args) => e2e::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafka-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A failure, described in one line.
#[derive(Debug)]
pub struct Failure(pub String);

impl Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// Adds what was being done to an error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Failure(format!("{}: {e}", what())))
    }
}

/// Parses a byte count: plain digits, or digits followed by B, KiB, MiB, GiB (K, M, G are
/// read as binary too), or KB, MB, GB (decimal). Case-insensitive.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{s:?} is not a byte count (examples: 16384, 16KiB, 1MiB)"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|e| format!("{s:?} is not a byte count: {e}"))?;
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// [`parse_size`], refusing zero.
pub fn parse_positive_size(s: &str) -> std::result::Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("{s:?} must be positive")),
        n => Ok(n),
    }
}

/// `16384` as "16 KiB", `15571` as "15571 B".
pub fn human_bytes(n: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1kb"), Ok(1000));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert!(parse_size("x").is_err());
        assert!(parse_positive_size("0").is_err());
        assert_eq!(human_bytes(16384), "16 KiB");
        assert_eq!(human_bytes(15571), "15571 B");
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "rafka-bench",
            "produce",
            "--topic",
            "t",
            "--messages",
            "10",
            "--size",
            "1KiB",
            "--acks",
            "1",
            "--no-raw",
        ])
        .unwrap();
        match cli.command {
            Command::Produce(a) => {
                assert_eq!(a.size, 1024);
                assert!(!a.raw.enabled());
            }
            _ => panic!("not produce"),
        }
    }
}
