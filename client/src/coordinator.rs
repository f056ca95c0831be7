//! Finding and talking to a coordinator: a consumer group's, or a transactional id's.
//!
//! A group's coordinator is the broker leading one partition of the internal offsets topic, a
//! transactional id's the leader of one partition of `__transaction_state`; any broker answers
//! FindCoordinator (key type 0 or 1) with its address. [`Coordinator`] caches that address per
//! key and forgets it whenever the answer or the connection says it moved
//! (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, a broken connection), so the next attempt asks
//! again. The consumer's heartbeat task, its commits, the admin client's group calls and the
//! transactional producer share this one type.
//!
//! Two ways to send: [`Coordinator::send_once`] makes one attempt (the heartbeat task has its
//! own loop and must not stall in retries) and [`Coordinator::send`] retries retriable errors
//! with the client's backoff until a deadline. Neither is for writes whose outcome matters:
//! offset commits track ambiguity themselves (see `consumer::group::commit_offsets`).

use std::sync::Mutex;
use std::time::Duration;

use rafka_protocol::api::coordinator_type;
use rafka_protocol::messages::{
    AddOffsetsToTxnResponse, AddPartitionsToTxnResponse, ConsumerGroupHeartbeatResponse,
    DescribeGroupResponse, EndTxnResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    InitProducerIdResponse, ListGroupsResponse, OffsetCommitResponse, OffsetFetchResponse,
    TxnOffsetCommitResponse,
};
use rafka_protocol::{ErrorCode, Request};
use tokio::time::Instant;

use crate::cluster::{BrokerId, BrokerInfo, Cluster};
use crate::connection::{lock, Connection};
use crate::error::{ClientError, Result};

/// A coordinator API's response: one error code for the whole request.
pub trait CoordinatorResponse {
    fn error_code(&self) -> i32;
    fn error_message(&self) -> &str;
}

macro_rules! group_responses {
    ($($t:ty),* $(,)?) => {
        $(impl CoordinatorResponse for $t {
            fn error_code(&self) -> i32 {
                self.error_code
            }
            fn error_message(&self) -> &str {
                &self.error_message
            }
        })*
    };
}

group_responses!(
    FindCoordinatorResponse,
    ConsumerGroupHeartbeatResponse,
    OffsetCommitResponse,
    OffsetFetchResponse,
    ListGroupsResponse,
    DescribeGroupResponse,
    InitProducerIdResponse,
    AddPartitionsToTxnResponse,
    AddOffsetsToTxnResponse,
    TxnOffsetCommitResponse,
    EndTxnResponse,
);

/// What a coordinator coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorKind {
    /// A consumer group (the key is the group id).
    Group,
    /// A transactional producer (the key is the transactional id).
    Transaction,
}

impl CoordinatorKind {
    fn key_type(self) -> i32 {
        match self {
            CoordinatorKind::Group => coordinator_type::GROUP,
            CoordinatorKind::Transaction => coordinator_type::TRANSACTION,
        }
    }
}

/// Where a group's coordinator is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorInfo {
    pub node_id: BrokerId,
    pub host: String,
    pub port: u16,
}

impl CoordinatorInfo {
    /// `host:port` (brackets around an IPv6 host).
    pub fn addr(&self) -> String {
        BrokerInfo {
            id: self.node_id,
            host: self.host.clone(),
            port: self.port,
        }
        .addr()
    }
}

/// The codes that mean "ask FindCoordinator again".
fn coordinator_moved(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable
    )
}

/// One group's (or transactional id's) coordinator: its cached address and the requests sent
/// to it.
pub struct Coordinator {
    cluster: Cluster,
    kind: CoordinatorKind,
    /// The group id or the transactional id.
    key: String,
    /// The coordinator's address from the last FindCoordinator, until something says it moved.
    addr: Mutex<Option<String>>,
}

impl Coordinator {
    /// A consumer group's coordinator.
    pub fn new(cluster: Cluster, group_id: impl Into<String>) -> Coordinator {
        Coordinator {
            cluster,
            kind: CoordinatorKind::Group,
            key: group_id.into(),
            addr: Mutex::new(None),
        }
    }

    /// A transactional id's coordinator.
    pub fn transaction(cluster: Cluster, transactional_id: impl Into<String>) -> Coordinator {
        Coordinator {
            cluster,
            kind: CoordinatorKind::Transaction,
            key: transactional_id.into(),
            addr: Mutex::new(None),
        }
    }

    /// The group id (for a transaction coordinator: the transactional id).
    pub fn group_id(&self) -> &str {
        &self.key
    }

    pub fn kind(&self) -> CoordinatorKind {
        self.kind
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Forgets the cached address: the next request asks FindCoordinator first.
    pub fn invalidate(&self) {
        *lock(&self.addr) = None;
    }

    /// The error for a request-level code in a response: a [`ClientError::Group`] for a
    /// group, a [`ClientError::Broker`] naming the transactional id for a transaction (the
    /// producer decides what a final one means for its transaction).
    pub fn error(&self, code: ErrorCode, message: impl Into<String>) -> ClientError {
        let message = message.into();
        match self.kind {
            CoordinatorKind::Group => ClientError::Group {
                code,
                group: self.key.clone(),
                message,
            },
            CoordinatorKind::Transaction => ClientError::Broker {
                code,
                message: if message.is_empty() {
                    format!("transactional id '{}'", self.key)
                } else {
                    format!("transactional id '{}': {message}", self.key)
                },
                topic: None,
                partition: None,
            },
        }
    }

    /// Asks any broker where the coordinator is (one attempt). No coordinator yet is a
    /// retriable COORDINATOR_NOT_AVAILABLE.
    pub async fn find_once(&self) -> Result<CoordinatorInfo> {
        let resp = self
            .cluster
            .send_any(FindCoordinatorRequest {
                key: self.key.clone(),
                key_type: self.kind.key_type(),
            })
            .await?;
        let code = ErrorCode::from_code(resp.error_code);
        if !code.is_ok() {
            return Err(self.error(code, resp.error_message));
        }
        let node_id = BrokerId::from_wire(resp.node_id);
        let port = u16::try_from(resp.port).ok().filter(|p| *p != 0);
        match (node_id, port) {
            (Some(node_id), Some(port)) if !resp.host.is_empty() => {
                let info = CoordinatorInfo {
                    node_id,
                    host: resp.host,
                    port,
                };
                *lock(&self.addr) = Some(info.addr());
                Ok(info)
            }
            _ => Err(self.error(
                ErrorCode::CoordinatorNotAvailable,
                "FindCoordinator named no broker",
            )),
        }
    }

    /// A connection to the coordinator, finding it first when its address is not cached.
    async fn connection(&self) -> Result<Connection> {
        let cached = lock(&self.addr).clone();
        let addr = match cached {
            Some(addr) => addr,
            None => self.find_once().await?.addr(),
        };
        match self.cluster.connection_to_addr(&addr).await {
            Ok(conn) => Ok(conn),
            Err(e) => {
                self.invalidate();
                Err(e)
            }
        }
    }

    /// One attempt: find the coordinator if needed, send, and turn the response's error code
    /// into an error (see [`Coordinator::error`]). Errors that mean the coordinator moved or
    /// the connection broke forget its address.
    pub async fn send_once<R>(&self, request: R, timeout: Duration) -> Result<R::Response>
    where
        R: Request,
        R::Response: CoordinatorResponse,
    {
        let conn = self.connection().await?;
        let resp = match conn.send(request, timeout).await {
            Ok(resp) => resp,
            Err(e) => {
                if matches!(
                    e,
                    ClientError::ConnectionLost { .. } | ClientError::Connect { .. }
                ) {
                    self.invalidate();
                }
                return Err(e);
            }
        };
        let code = ErrorCode::from_code(resp.error_code());
        if code.is_ok() {
            return Ok(resp);
        }
        if coordinator_moved(code) {
            self.invalidate();
        }
        Err(self.error(code, resp.error_message()))
    }

    /// Sends `request` until it succeeds, fails for good, or `deadline` passes; retriable
    /// errors (the coordinator moved, is loading, or is not reachable) wait the client's retry
    /// backoff and find the coordinator again. Only for requests safe to repeat.
    pub async fn send<R>(&self, request: R, deadline: Instant) -> Result<R::Response>
    where
        R: Request + Clone,
        R::Response: CoordinatorResponse,
    {
        let backoff = self.cluster.config().retry_backoff;
        let timeout = self.cluster.config().request_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = self
                .send_once(request.clone(), timeout.min(remaining.max(backoff)))
                .await;
            match attempt {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_retriable() && Instant::now() + backoff < deadline => {
                    tracing::debug!(key = %self.key, error = %e, "coordinator request failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Finds the coordinator, retrying until `deadline` (the first FindCoordinator of a cluster
    /// may wait seconds while the broker creates the offsets topic).
    pub async fn find(&self, deadline: Instant) -> Result<CoordinatorInfo> {
        let backoff = self.cluster.config().retry_backoff;
        loop {
            match self.find_once().await {
                Ok(info) => return Ok(info),
                Err(e) if e.is_retriable() && Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
