//! Broker-to-broker transport: every Raft group's RPCs (and the broker's own peer calls, such
//! as forwarding a controller command) over a few multiplexed TCP connections per peer.
//!
//! Wire format, both directions, inside length-delimited frames (4-byte big-endian length):
//! - request:  `request_id u64 | kind u8 | group u64 | target node u64 | payload`
//! - response: `request_id u64 | status u8 | payload` where status 0 = ok, 1 = the peer does
//!   not host the group, 2 = error (payload is a UTF-8 reason).
//!
//! A call picks its lane (connection) from the group id, so one group's large append does not
//! sit in front of every other group's heartbeats, while all groups still share
//! [`LANES_PER_PEER`] connections per peer. Requests carry ids and answers may come back in
//! any order. The target node id guards against a misconfigured peer list: a broker answers
//! only requests meant for it (a leader that reached itself under another id would otherwise
//! see its own heartbeats as a rival leader's). Bounds: [`IN_FLIGHT_PER_LANE`] calls wait for answers per lane (callers beyond
//! that wait for a slot), the server handles at most [`SERVER_IN_FLIGHT_PER_CONNECTION`]
//! requests per connection at once, and frames are limited to [`FRAME_BYTES_MAX`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::error::{Error, Result};
use crate::types::{GroupId, NodeId, Raft, TypeConfig};

/// Connections per peer.
pub const LANES_PER_PEER: u64 = 4;
/// Calls awaiting an answer per connection.
pub const IN_FLIGHT_PER_LANE: usize = 256;
/// Requests one server connection handles concurrently.
pub const SERVER_IN_FLIGHT_PER_CONNECTION: usize = 256;
/// Largest frame either side accepts.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// How long dialing a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Request kinds. Raft RPCs are routed to the group's Raft; the broker's own kinds start at 16.
pub mod kind {
    pub const APPEND_ENTRIES: u8 = 1;
    pub const VOTE: u8 = 2;
    pub const INSTALL_SNAPSHOT: u8 = 3;
    /// First kind free for the broker's own calls.
    pub const BROKER_BASE: u8 = 16;
}

const STATUS_OK: u8 = 0;
const STATUS_UNKNOWN_GROUP: u8 = 1;
const STATUS_ERROR: u8 = 2;

/// What a server-side handler answers.
#[derive(Debug)]
pub enum Reply {
    Ok(Bytes),
    UnknownGroup,
    Error(String),
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Serves requests arriving from peers.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, kind: u8, group: GroupId, payload: Bytes) -> BoxFuture<Reply>;
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Bytes>>>>>;

/// One live connection to a peer.
struct Lane {
    tx: mpsc::Sender<Bytes>,
    pending: Pending,
    slots: Arc<Semaphore>,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

/// The client side: dials peers on demand and multiplexes calls over their lanes.
pub struct Transport {
    self_id: NodeId,
    peers: HashMap<NodeId, String>,
    lanes: Mutex<HashMap<(NodeId, u64), Arc<Lane>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("self_id", &self.self_id)
            .field("peers", &self.peers)
            .finish()
    }
}

impl Transport {
    /// `peers` maps every other broker to the address this broker dials.
    pub fn new(self_id: NodeId, peers: HashMap<NodeId, String>) -> Arc<Transport> {
        Arc::new(Transport {
            self_id,
            peers,
            lanes: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    /// Every other broker this one knows.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    async fn lane(&self, peer: NodeId, lane: u64) -> Result<Arc<Lane>> {
        {
            let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = lanes.get(&(peer, lane)) {
                if !l.dead.load(Ordering::Acquire) {
                    return Ok(Arc::clone(l));
                }
            }
        }
        let addr = self.peers.get(&peer).ok_or(Error::UnknownPeer(peer))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Unreachable {
                peer,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| Error::Unreachable { peer, source })?;
        let _ = stream.set_nodelay(true);
        let new = Arc::new(spawn_lane(stream));
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        // Another caller may have connected meanwhile; keep the first live one.
        if let Some(l) = lanes.get(&(peer, lane)) {
            if !l.dead.load(Ordering::Acquire) {
                return Ok(Arc::clone(l));
            }
        }
        lanes.insert((peer, lane), Arc::clone(&new));
        Ok(new)
    }

    /// Sends one request and waits for its answer at most `timeout`.
    pub async fn call(
        &self,
        peer: NodeId,
        kind: u8,
        group: GroupId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes> {
        let work = async {
            let lane = self.lane(peer, group.0 % LANES_PER_PEER).await?;
            let _slot = lane
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| closed(peer))?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lane.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, tx);
            let mut frame = BytesMut::with_capacity(25 + payload.len());
            frame.put_u64(id);
            frame.put_u8(kind);
            frame.put_u64(group.0);
            frame.put_u64(peer);
            frame.extend_from_slice(&payload);
            let guard = PendingGuard {
                pending: &lane.pending,
                id,
            };
            if lane.tx.send(frame.freeze()).await.is_err() {
                return Err(closed(peer));
            }
            let answer = rx.await.map_err(|_| closed(peer))?;
            drop(guard);
            let mut answer = answer?;
            if answer.is_empty() {
                return Err(Error::Codec("empty response".into()));
            }
            match answer.get_u8() {
                STATUS_OK => Ok(answer),
                STATUS_UNKNOWN_GROUP => Err(Error::UnknownGroup {
                    peer,
                    group: group.0,
                }),
                _ => Err(Error::Remote {
                    peer,
                    reason: String::from_utf8_lossy(&answer).into_owned(),
                }),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                peer,
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// [`Transport::call`] with serde-encoded request and response.
    pub async fn call_typed<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: NodeId,
        kind: u8,
        group: GroupId,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp> {
        let payload = encode(request)?;
        let answer = self.call(peer, kind, group, payload, timeout).await?;
        decode(&answer)
    }
}

/// Removes a call's pending entry however the call ends (answer, timeout, cancellation).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

fn closed(peer: NodeId) -> Error {
    Error::Unreachable {
        peer,
        source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection closed"),
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}

fn spawn_lane(stream: TcpStream) -> Lane {
    let (mut sink, mut source) = Framed::new(stream, codec()).split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(IN_FLIGHT_PER_LANE);
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fail_all = {
        let pending = Arc::clone(&pending);
        let dead = Arc::clone(&dead);
        move || {
            dead.store(true, Ordering::Release);
            // Dropping the senders wakes every waiting call with "connection closed".
            pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    };
    let writer_fail = fail_all.clone();
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        writer_fail();
    });
    let reader_pending = Arc::clone(&pending);
    tokio::spawn(async move {
        while let Some(Ok(mut frame)) = source.next().await {
            if frame.len() < 9 {
                break;
            }
            let id = frame.get_u64();
            let waiter = reader_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Some(w) = waiter {
                let _ = w.send(Ok(frame.freeze()));
            }
        }
        fail_all();
    });
    Lane {
        tx,
        pending,
        slots: Arc::new(Semaphore::new(IN_FLIGHT_PER_LANE)),
        dead,
    }
}

/// Accepts peer connections on `listener` and answers their requests (those addressed to node
/// `self_id`) with `handler` until the listener task is dropped.
pub async fn serve(listener: TcpListener, self_id: NodeId, handler: Arc<dyn Handler>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            serve_connection(stream, self_id, handler).await;
            tracing::debug!(%addr, "peer connection closed");
        });
    }
}

async fn serve_connection(stream: TcpStream, self_id: NodeId, handler: Arc<dyn Handler>) {
    let (mut sink, mut source) = Framed::new(stream, codec()).split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(SERVER_IN_FLIGHT_PER_CONNECTION);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(SERVER_IN_FLIGHT_PER_CONNECTION));
    while let Some(Ok(mut frame)) = source.next().await {
        if frame.len() < 25 {
            tracing::warn!("malformed peer frame: {} bytes", frame.len());
            break;
        }
        let id = frame.get_u64();
        let kind = frame.get_u8();
        let group = GroupId(frame.get_u64());
        let target = frame.get_u64();
        let payload = frame.freeze();
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let handler = Arc::clone(&handler);
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = if target == self_id {
                handler.handle(kind, group, payload).await
            } else {
                Reply::Error(format!(
                    "this is node {self_id}, not node {target}: check --peers"
                ))
            };
            let mut out = BytesMut::new();
            out.put_u64(id);
            match reply {
                Reply::Ok(b) => {
                    out.put_u8(STATUS_OK);
                    out.extend_from_slice(&b);
                }
                Reply::UnknownGroup => out.put_u8(STATUS_UNKNOWN_GROUP),
                Reply::Error(reason) => {
                    out.put_u8(STATUS_ERROR);
                    out.extend_from_slice(reason.as_bytes());
                }
            }
            let _ = tx.send(out.freeze()).await;
            drop(slot);
        });
    }
    drop(tx);
    let _ = writer.await;
}

pub fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    bincode::serialize(value)
        .map(Bytes::from)
        .map_err(|e| Error::Codec(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T> {
    bincode::deserialize(raw).map_err(|e| Error::Codec(e.to_string()))
}

/// Answers a Raft RPC of `kind` for `raft`.
pub async fn handle_raft_rpc(raft: &Raft, kind: u8, payload: &[u8]) -> Reply {
    fn answer<T: Serialize>(v: &T) -> Reply {
        match encode(v) {
            Ok(b) => Reply::Ok(b),
            Err(e) => Reply::Error(e.to_string()),
        }
    }
    match kind {
        kind::APPEND_ENTRIES => match decode::<AppendEntriesRequest<TypeConfig>>(payload) {
            Ok(req) => answer(&raft.append_entries(req).await),
            Err(e) => Reply::Error(e.to_string()),
        },
        kind::VOTE => match decode::<VoteRequest<NodeId>>(payload) {
            Ok(req) => answer(&raft.vote(req).await),
            Err(e) => Reply::Error(e.to_string()),
        },
        kind::INSTALL_SNAPSHOT => match decode::<InstallSnapshotRequest<TypeConfig>>(payload) {
            Ok(req) => answer(&raft.install_snapshot(req).await),
            Err(e) => Reply::Error(e.to_string()),
        },
        other => Reply::Error(format!("unknown Raft request kind {other}")),
    }
}

/// openraft's network factory for one group.
#[derive(Clone)]
pub struct GroupNetwork {
    pub transport: Arc<Transport>,
    pub group: GroupId,
}

/// openraft's client for one (group, target) pair.
pub struct GroupClient {
    transport: Arc<Transport>,
    group: GroupId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> GroupClient {
        GroupClient {
            transport: Arc::clone(&self.transport),
            group: self.group,
            target,
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl GroupClient {
    async fn rpc<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    >(
        &self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>> {
        let result: Result<Result<Resp, RaftError<NodeId, E>>> = self
            .transport
            .call_typed(self.target, kind, self.group, req, option.hard_ttl())
            .await;
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(Error::Unreachable { source, .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&source)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.rpc(kind::APPEND_ENTRIES, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.rpc(kind::INSTALL_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.rpc(kind::VOTE, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, kind: u8, group: GroupId, payload: Bytes) -> BoxFuture<Reply> {
            Box::pin(async move {
                match kind {
                    1 => Reply::Ok(payload),
                    2 => Reply::UnknownGroup,
                    3 => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Reply::Ok(Bytes::new())
                    }
                    _ => Reply::Error(format!("group {group}")),
                }
            })
        }
    }

    #[tokio::test]
    async fn calls_are_multiplexed_and_answered_in_any_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve(listener, 2, Arc::new(Echo)));
        let t = Transport::new(1, HashMap::from([(2, addr)]));
        let slow = {
            let t = Arc::clone(&t);
            tokio::spawn(async move {
                t.call(2, 3, GroupId(0), Bytes::new(), Duration::from_millis(200))
                    .await
            })
        };
        let mut calls = Vec::new();
        for i in 0..100u64 {
            let t = Arc::clone(&t);
            calls.push(tokio::spawn(async move {
                let got = t
                    .call(
                        2,
                        1,
                        GroupId(i),
                        Bytes::from(i.to_be_bytes().to_vec()),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
                assert_eq!(&got[..], &i.to_be_bytes());
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        assert!(matches!(slow.await.unwrap(), Err(Error::Timeout { .. })));
        assert!(matches!(
            t.call(2, 2, GroupId(9), Bytes::new(), Duration::from_secs(1))
                .await,
            Err(Error::UnknownGroup { group: 9, .. })
        ));
        assert!(matches!(
            t.call(2, 7, GroupId(0), Bytes::new(), Duration::from_secs(1))
                .await,
            Err(Error::Remote { .. })
        ));
        // A peer list that points at the wrong broker is refused, not served.
        let wrong = Transport::new(1, HashMap::from([(3, t.peers[&2].clone())]));
        let err = wrong
            .call(3, 1, GroupId(0), Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not node 3"), "{err}");
        server.abort();
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_an_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Transport::new(1, HashMap::from([(2, format!("127.0.0.1:{port}"))]));
        let err = t
            .call(2, 1, GroupId(0), Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert!(matches!(
            t.call(5, 1, GroupId(0), Bytes::new(), Duration::from_secs(1))
                .await,
            Err(Error::UnknownPeer(5))
        ));
    }
}
