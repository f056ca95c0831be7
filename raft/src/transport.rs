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
use tokio_util::codec::{Framed, FramedRead, LengthDelimitedCodec};

use crate::error::{Error, Result};
use crate::types::{Batch, GroupId, NodeId, Raft, TypeConfig};
use openraft::EntryPayload;

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
    /// AppendEntries with the entries' batches outside the serialised request (see
    /// [`super::encode_append_entries`]): what a leader sends. Kind 1 is still understood.
    pub const APPEND_ENTRIES_SEGMENTED: u8 = 4;
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
    /// Frames to write, each as its segments.
    tx: mpsc::Sender<Vec<Bytes>>,
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
        self.call_segments(peer, kind, group, vec![payload], timeout)
            .await
    }

    /// [`Transport::call`] with a payload in pieces, sent back to back without a copy.
    pub async fn call_segments(
        &self,
        peer: NodeId,
        kind: u8,
        group: GroupId,
        payload: Vec<Bytes>,
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
            let mut header = BytesMut::with_capacity(25);
            header.put_u64(id);
            header.put_u8(kind);
            header.put_u64(group.0);
            header.put_u64(peer);
            let mut frame = Vec::with_capacity(1 + payload.len());
            frame.push(header.freeze());
            frame.extend(payload);
            let guard = PendingGuard {
                pending: &lane.pending,
                id,
            };
            if lane.tx.send(frame).await.is_err() {
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
    let (read_half, mut write_half) = stream.into_split();
    let mut source = FramedRead::new(read_half, codec());
    let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(IN_FLIGHT_PER_LANE);
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
        while let Some(segments) = rx.recv().await {
            // Vectored: a request's record batches go from the log's buffers to the socket
            // without being copied into a frame first.
            let written =
                rafka_protocol::frame::write_frame(&mut write_half, &segments, FRAME_BYTES_MAX)
                    .await;
            if written.is_err() {
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

/// Encodes an AppendEntries request as segments: `meta_len u32 | meta | count u32 | count x
/// len u32`, then the batches of its normal entries back to back. `meta` is the bincode of the
/// request with those batches emptied, `len` each entry's batch length (0 for an entry with no
/// batch). The batches are the log's own buffers, sent without a copy: with bincode alone the
/// leader copied every byte twice per follower before the socket.
pub fn encode_append_entries(mut req: AppendEntriesRequest<TypeConfig>) -> Result<Vec<Bytes>> {
    let mut batches = Vec::with_capacity(req.entries.len());
    for e in &mut req.entries {
        match &mut e.payload {
            EntryPayload::Normal(Batch(b)) => batches.push(std::mem::take(b)),
            _ => batches.push(Bytes::new()),
        }
    }
    let meta = bincode::serialize(&req).map_err(|e| Error::Codec(e.to_string()))?;
    let mut head = BytesMut::with_capacity(8 + meta.len() + 4 * batches.len());
    head.put_u32(meta.len() as u32);
    head.extend_from_slice(&meta);
    head.put_u32(batches.len() as u32);
    for b in &batches {
        head.put_u32(b.len() as u32);
    }
    let mut out = Vec::with_capacity(1 + batches.len());
    out.push(head.freeze());
    out.extend(batches.into_iter().filter(|b| !b.is_empty()));
    Ok(out)
}

/// Decodes [`encode_append_entries`]' frame; the batches are slices of `payload`.
pub fn decode_append_entries(mut payload: Bytes) -> Result<AppendEntriesRequest<TypeConfig>> {
    let short = || Error::Codec("truncated AppendEntries".into());
    if payload.len() < 4 {
        return Err(short());
    }
    let meta_len = payload.get_u32() as usize;
    if payload.len() < meta_len + 4 {
        return Err(short());
    }
    let meta = payload.split_to(meta_len);
    let mut req: AppendEntriesRequest<TypeConfig> = decode(&meta)?;
    let count = payload.get_u32() as usize;
    if count != req.entries.len() || payload.len() < 4 * count {
        return Err(Error::Codec(format!(
            "AppendEntries lists {count} batches for {} entries",
            req.entries.len()
        )));
    }
    let lens: Vec<usize> = (0..count).map(|_| payload.get_u32() as usize).collect();
    for (e, len) in req.entries.iter_mut().zip(lens) {
        if len == 0 {
            continue;
        }
        let EntryPayload::Normal(Batch(b)) = &mut e.payload else {
            return Err(Error::Codec("a batch for an entry that has none".into()));
        };
        if payload.len() < len {
            return Err(short());
        }
        *b = payload.split_to(len);
    }
    if !payload.is_empty() {
        return Err(Error::Codec(format!(
            "{} bytes after the last batch of an AppendEntries",
            payload.len()
        )));
    }
    Ok(req)
}

/// Answers a Raft RPC of `kind` for `raft`.
pub async fn handle_raft_rpc(raft: &Raft, kind: u8, payload: Bytes) -> Reply {
    fn answer<T: Serialize>(v: &T) -> Reply {
        match encode(v) {
            Ok(b) => Reply::Ok(b),
            Err(e) => Reply::Error(e.to_string()),
        }
    }
    match kind {
        kind::APPEND_ENTRIES => match decode::<AppendEntriesRequest<TypeConfig>>(&payload) {
            Ok(req) => answer(&raft.append_entries(req).await),
            Err(e) => Reply::Error(e.to_string()),
        },
        kind::APPEND_ENTRIES_SEGMENTED => match decode_append_entries(payload) {
            Ok(req) => answer(&raft.append_entries(req).await),
            Err(e) => Reply::Error(e.to_string()),
        },
        kind::VOTE => match decode::<VoteRequest<NodeId>>(&payload) {
            Ok(req) => answer(&raft.vote(req).await),
            Err(e) => Reply::Error(e.to_string()),
        },
        kind::INSTALL_SNAPSHOT => match decode::<InstallSnapshotRequest<TypeConfig>>(&payload) {
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
        rpc_result(self.target, result)
    }
}

/// A call's outcome as openraft's RPC error (openraft's type, large as it is).
#[allow(clippy::result_large_err)]
fn rpc_result<Resp, E: std::error::Error>(
    target: NodeId,
    result: Result<Result<Resp, RaftError<NodeId, E>>>,
) -> Result<Resp, RpcErr<E>> {
    match result {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
        Err(Error::Unreachable { source, .. }) => {
            Err(RPCError::Unreachable(Unreachable::new(&source)))
        }
        Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
    }
}

impl RaftNetwork<TypeConfig> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let payload = match encode_append_entries(rpc) {
            Ok(p) => p,
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let result: Result<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> = async {
            let answer = self
                .transport
                .call_segments(
                    self.target,
                    kind::APPEND_ENTRIES_SEGMENTED,
                    self.group,
                    payload,
                    option.hard_ttl(),
                )
                .await?;
            decode(&answer)
        }
        .await;
        rpc_result(self.target, result)
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

    use crate::entry;
    use crate::types::{Entry, Vote};

    fn request(batches: &[&[u8]]) -> AppendEntriesRequest<TypeConfig> {
        let mut entries = vec![Entry {
            log_id: entry::log_id(3, 10),
            payload: EntryPayload::Blank,
        }];
        for (i, b) in batches.iter().enumerate() {
            entries.push(Entry {
                log_id: entry::log_id(3, 11 + i as u64),
                payload: EntryPayload::Normal(Batch(Bytes::copy_from_slice(b))),
            });
        }
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(entry::log_id(2, 9)),
            entries,
            leader_commit: Some(entry::log_id(2, 8)),
        }
    }

    fn joined(segments: Vec<Bytes>) -> Bytes {
        let mut all = BytesMut::new();
        for s in segments {
            all.extend_from_slice(&s);
        }
        all.freeze()
    }

    #[test]
    fn segmented_append_entries_round_trip_with_batches_as_slices() {
        let req = request(&[b"first batch", b"", b"third"]);
        let want = format!("{req:?}");
        let segments = encode_append_entries(req).unwrap();
        // The head, then each non-empty batch as its own segment (no copy).
        assert_eq!(segments.len(), 3);
        assert_eq!(&segments[1][..], b"first batch");
        let frame = joined(segments);
        let got = decode_append_entries(frame.clone()).unwrap();
        assert_eq!(format!("{got:?}"), want);
        // The decoded batches point into the frame.
        let EntryPayload::Normal(Batch(b)) = &got.entries[1].payload else {
            panic!("entry 1 is normal");
        };
        let range = frame.as_ptr_range();
        assert!(range.contains(&b.as_ptr()));
    }

    #[test]
    fn malformed_segmented_append_entries_are_errors_not_panics() {
        let frame = joined(encode_append_entries(request(&[b"abc", b"defg"])).unwrap());
        for cut in 0..frame.len() {
            assert!(
                decode_append_entries(frame.slice(..cut)).is_err(),
                "a frame cut at {cut} decoded"
            );
        }
        let mut longer = BytesMut::from(&frame[..]);
        longer.extend_from_slice(b"x");
        assert!(decode_append_entries(longer.freeze()).is_err());
        assert!(decode_append_entries(Bytes::from_static(&[0xff; 64])).is_err());
    }
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
