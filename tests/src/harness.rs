//! Starting, stopping and killing real `rafka-broker` processes for tests.
//!
//! Binaries are found next to the test executable's `deps/` directory (the workspace's
//! `target/<profile>/`), where `cargo nextest run --workspace` and `cargo test --workspace`
//! build them. Every broker gets its own data directory and free ports, so tests can run side
//! by side.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a broker may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a workspace binary (`rafka-broker`, `rafka`, ...): beside the running executable
/// (`rafka-jepsen` lives in `target/<profile>/`) or one level up (test executables live in
/// `target/<profile>/deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("an executable lives in a directory");
    let candidates = [Some(dir), dir.parent()];
    for candidate in candidates.into_iter().flatten() {
        let path = candidate.join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{name} not found beside {}: build the workspace binaries first (cargo build --workspace --bins)",
        exe.display()
    )
}

/// Makes `cmd`'s process receive SIGKILL when the thread that spawns it exits, so that brokers
/// (and `rafka-jepsen` runs) never outlive a test process or a suite run that was killed.
/// Spawn from a long-lived thread (a test's main thread, a runtime worker), not from a
/// short-lived blocking-pool thread.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own attributes.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A port free at the time of asking, chosen below the kernel's ephemeral range: a port the
/// OS hands out for `bind(0)` is one it also uses for outgoing connections, so between this
/// check and the broker's own bind another process's connection could take it (a CI run
/// failed on exactly that). Below the range only another listener can, which a random choice
/// makes unlikely. Falls back to an OS-chosen port when the range leaves no room below.
pub fn free_port() -> u16 {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral_low > LOWEST + 1000 {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let port = rng.gen_range(LOWEST..ephemeral_low);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A running broker process.
pub struct Broker {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub metrics_port: u16,
    log_path: PathBuf,
}

impl Broker {
    /// Starts a single-node broker on fresh ports with `data_dir`, and waits until `/ready`.
    pub fn start(data_dir: &Path) -> Broker {
        Self::start_with(data_dir, free_port(), free_port(), &[])
    }

    /// Starts a broker with given ports and extra flags, and waits until it is ready.
    pub fn start_with(
        data_dir: &Path,
        client_port: u16,
        metrics_port: u16,
        extra: &[&str],
    ) -> Broker {
        let log_path = data_dir.with_extension("broker.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("broker log file");
        let mut cmd = Command::new(binary("rafka-broker"));
        die_with_parent(&mut cmd);
        let child = cmd
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{client_port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--peer-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn rafka-broker");
        let mut broker = Broker {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            client_port,
            metrics_port,
            log_path,
        };
        broker.wait_ready();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The broker's stderr so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "broker exited during start-up with {status}:\n{}",
                    self.log()
                );
            }
            if http_get(self.metrics_port, "/ready").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker not ready within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("broker is running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("broker ignored SIGTERM for 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same data directory and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        let again = Broker::start_with(&self.data_dir, self.client_port, self.metrics_port, &[]);
        *self = again;
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP GET against the broker's metrics port: `(status, body)`.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Runs the `rafka` CLI against `bootstrap` with `stdin`, returning (exit code, stdout, stderr).
pub fn rafka(bootstrap: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(binary("rafka"))
        .arg("--bootstrap")
        .arg(bootstrap)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rafka");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let out = child.wait_with_output().expect("rafka output");
    let _ = writer.join();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A seed from the environment (`RAFKA_TEST_SEED`) or fresh, printed so a failure replays.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("RAFKA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with RAFKA_TEST_SEED={seed})");
    seed
}
