//! The transactional and idempotent options of the `rafka` CLI, run as the real binary against
//! a three-broker cluster:
//!
//! - `rafka produce T --transactional-id ID --format json` commits all of stdin as one
//!   transaction and prints the contract's ack lines only then; `--abort` aborts it and prints
//!   nothing;
//! - `rafka consume T --isolation read_committed` sees the committed transaction and not the
//!   aborted one; `--isolation read_uncommitted` sees both;
//! - `rafka produce` is idempotent by default; `--idempotent true` with `--acks 1` is a usage
//!   error (exit 2).

use rafka_tests::cluster::{exclusive, Cluster};
use rafka_tests::harness::{rafka, seed};

/// Runs `rafka` and insists on exit 0 and an empty stderr; returns stdout.
fn ok(bootstrap: &str, args: &[&str], stdin: &str) -> String {
    let (code, out, err) = rafka(bootstrap, args, stdin);
    assert_eq!(code, 0, "rafka {args:?} failed: {err}");
    assert_eq!(err, "", "rafka {args:?} wrote to stderr");
    out
}

fn consume(bootstrap: &str, isolation: &str) -> Vec<String> {
    let out = ok(
        bootstrap,
        &[
            "consume",
            "tcli",
            "--partition",
            "0",
            "--from",
            "earliest",
            "--isolation",
            isolation,
            "--idle-timeout-ms",
            "1500",
        ],
        "",
    );
    out.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_produce_commits_or_aborts_stdin_as_one_transaction() {
    let _lock = exclusive().await;
    let _ = seed("txn_cli");
    let cluster = Cluster::start(3).await;
    cluster.create_topic("tcli", 1).await;
    let b = cluster.bootstrap();

    let out = ok(
        &b,
        &[
            "produce",
            "tcli",
            "--transactional-id",
            "cli-app",
            "--format",
            "json",
        ],
        "a\nb\nc\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json ack");
        assert_eq!(v["line"], i as u64 + 1, "{line}");
        assert_eq!(v["partition"], 0, "{line}");
        assert!(v["offset"].is_u64(), "{line}");
    }
    let aborted = ok(
        &b,
        &[
            "produce",
            "tcli",
            "--transactional-id",
            "cli-app",
            "--abort",
        ],
        "x\ny\n",
    );
    assert_eq!(aborted, "", "an aborted transaction prints nothing");
    ok(&b, &["produce", "tcli"], "d\n");

    assert_eq!(consume(&b, "read_committed"), ["a", "b", "c", "d"]);
    assert_eq!(
        consume(&b, "read_uncommitted"),
        ["a", "b", "c", "x", "y", "d"]
    );

    let (code, out, err) = rafka(
        &b,
        &["produce", "tcli", "--acks", "1", "--idempotent", "true"],
        "z\n",
    );
    assert_eq!(code, 2, "stdout {out:?} stderr {err:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // acks=1 without idempotence still works.
    ok(&b, &["produce", "tcli", "--acks", "1"], "e\n");
    assert_eq!(consume(&b, "read_committed"), ["a", "b", "c", "d", "e"]);
}
