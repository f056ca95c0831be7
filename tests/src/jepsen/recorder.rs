//! Records the history while a run goes on: workers and the nemesis call in, the recorder
//! stamps each line with its index and time. Appends are cheap (one short mutex hold), so
//! recording does not distort the latencies it records.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::history::{NemesisPhase, NemesisValue, Op, OpType, Payload, NEMESIS_PROCESS};

/// The history of one run, shared by every worker.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    ops: Mutex<Vec<Op>>,
    next_process: AtomicI64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            ops: Mutex::new(Vec::new()),
            next_process: AtomicI64::new(0),
        }
    }

    /// A process id never used before in this run.
    pub fn new_process(&self) -> i64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Seconds since the run started.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Nanoseconds since the run started, on the clock of the history's `time_ns`: for a time
    /// a workload records inside an operation's value (an instant between its invocation and
    /// its completion, such as when a transaction's commit was asked for).
    pub fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn push(&self, process: i64, kind: OpType, payload: Payload, error: Option<String>) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        // Stamp the time under the lock so that index order and time order agree.
        let time_ns = self.started.elapsed().as_nanos() as u64;
        let index = ops.len() as u64;
        ops.push(Op {
            index,
            time_ns,
            process,
            kind,
            payload,
            error,
        });
    }

    pub fn invoke(&self, process: i64, payload: Payload) {
        self.push(process, OpType::Invoke, payload, None);
    }

    pub fn ok(&self, process: i64, payload: Payload) {
        self.push(process, OpType::Ok, payload, None);
    }

    /// The operation certainly had no effect.
    pub fn fail(&self, process: i64, payload: Payload, error: impl ToString) {
        self.push(process, OpType::Fail, payload, Some(error.to_string()));
    }

    /// The operation's outcome is unknown. The caller must continue under a new process id.
    pub fn info(&self, process: i64, payload: Payload, error: impl ToString) {
        self.push(process, OpType::Info, payload, Some(error.to_string()));
    }

    /// A nemesis action (recorded as `info`, as Jepsen does).
    pub fn nemesis(&self, fault: &str, phase: NemesisPhase, nodes: Vec<i32>, detail: String) {
        self.push(
            NEMESIS_PROCESS,
            OpType::Info,
            Payload::Nemesis(NemesisValue {
                fault: fault.to_owned(),
                phase,
                nodes,
                detail,
            }),
            None,
        );
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
