//! One multiplexed TCP connection to one broker.
//!
//! Many requests share a connection and may be answered in any order. A writer task owns the
//! socket's write half and sends frames handed to it over a bounded channel; a reader task owns
//! the read half and routes each response frame, by correlation id, to the oneshot channel of
//! the request that waits for it (the `pending` map). A semaphore bounds how many requests wait
//! for an answer at once, so a slow broker makes callers wait instead of growing the map.
//!
//! When either task hits an error or the broker closes the socket, the connection is dead for
//! good: every pending request fails with [`ClientError::ConnectionLost`] and later sends fail
//! at once. The cluster layer notices [`Connection::is_closed`] and dials a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rafka_protocol::api::API_VERSION_V1;
use rafka_protocol::frame;
use rafka_protocol::messages::RequestHeader;
use rafka_protocol::{ErrorCode, Request};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use crate::error::{ClientError, Result};

/// Default bound on requests awaiting a response on one connection.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 64;

/// Frames queued for the writer task beyond those being written. Senders wait when it is full;
/// the in-flight semaphore usually binds first.
const WRITE_QUEUE_FRAMES_MAX: usize = 128;

/// How a connection is set up.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Sent in every request header, for the broker's logs.
    pub client_id: String,
    /// Requests awaiting a response at once; more wait for a slot.
    pub in_flight_max: usize,
    /// Time allowed for the TCP handshake.
    pub connect_timeout: Duration,
    /// Largest frame accepted or sent; must match the broker's limit.
    pub frame_bytes_max: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            client_id: "rafka-client".to_owned(),
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            connect_timeout: Duration::from_secs(10),
            frame_bytes_max: frame::FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

/// What the reader task delivers to a waiting request: the response body, or why none came.
type Reply = Result<Bytes>;

/// The pending map and the connection's fate, under one lock so that a request can never be
/// registered after the map was failed (it would wait forever).
struct Pending {
    waiting: HashMap<u32, oneshot::Sender<Reply>>,
    /// Set once the connection died; every later request fails with this error.
    dead: Option<ClientError>,
}

struct Shared {
    addr: String,
    pending: Mutex<Pending>,
}

impl Shared {
    /// Marks the connection dead and fails every request waiting on it.
    fn fail_all(&self, error: ClientError) {
        let waiting = {
            let mut p = lock(&self.pending);
            if p.dead.is_none() {
                p.dead = Some(error.clone());
            }
            std::mem::take(&mut p.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(error.clone()));
        }
    }

    fn lost(&self, reason: impl Into<String>) -> ClientError {
        ClientError::ConnectionLost {
            addr: self.addr.clone(),
            reason: reason.into(),
        }
    }
}

/// Locks a std mutex, recovering from poisoning: the guarded maps stay consistent because no
/// code panics while holding them.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Inner {
    shared: Arc<Shared>,
    client_id: String,
    next_correlation_id: AtomicU32,
    write_tx: mpsc::Sender<Bytes>,
    in_flight: Arc<Semaphore>,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer task ends when `write_tx` drops; the reader would wait on the socket
        // forever, so stop it explicitly.
        self.reader.abort();
    }
}

/// A handle to a multiplexed connection; clones share it.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.inner.shared.addr)
            .finish()
    }
}

impl Connection {
    /// Dials `addr` (`host:port`) and starts the reader and writer tasks.
    pub async fn connect(addr: &str, config: &ConnectionConfig) -> Result<Connection> {
        let connect_error = |reason: String| ClientError::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                connect_error(format!(
                    "timed out after {} ms",
                    config.connect_timeout.as_millis()
                ))
            })?
            .map_err(|e| connect_error(e.to_string()))?;
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let shared = Arc::new(Shared {
            addr: addr.to_owned(),
            pending: Mutex::new(Pending {
                waiting: HashMap::new(),
                dead: None,
            }),
        });
        let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
        let codec = frame::codec(config.frame_bytes_max);
        tokio::spawn(write_loop(
            FramedWrite::new(write_half, codec.clone()),
            write_rx,
            shared.clone(),
        ));
        let reader = tokio::spawn(read_loop(FramedRead::new(read_half, codec), shared.clone()));
        tracing::debug!(addr, "connected");
        Ok(Connection {
            inner: Arc::new(Inner {
                shared,
                client_id: config.client_id.clone(),
                next_correlation_id: AtomicU32::new(1),
                write_tx,
                in_flight: Arc::new(Semaphore::new(config.in_flight_max.max(1))),
                reader,
            }),
        })
    }

    /// The `host:port` this connection was dialed to.
    pub fn addr(&self) -> &str {
        &self.inner.shared.addr
    }

    /// Whether the connection died; a dead connection never recovers.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.shared.pending).dead.is_some() || self.inner.write_tx.is_closed()
    }

    fn header<R: Request>(&self) -> RequestHeader {
        RequestHeader {
            api_key: R::API_KEY as u32,
            api_version: API_VERSION_V1,
            correlation_id: self
                .inner
                .next_correlation_id
                .fetch_add(1, Ordering::Relaxed),
            client_id: self.inner.client_id.clone(),
        }
    }

    /// Sends `request` and waits for its response, at most `timeout` in total (waiting for an
    /// in-flight slot included). A timeout is [`ClientError::Timeout`]: for a write, the broker
    /// may still apply it.
    pub async fn send<R: Request>(&self, request: R, timeout: Duration) -> Result<R::Response> {
        self.exchange(request, timeout, None).await
    }

    /// [`Connection::send`], but the request goes on the socket only after the one whose
    /// [`SendOrder`] came before it (see [`SendOrder`]).
    pub async fn send_in_order<R: Request>(
        &self,
        request: R,
        timeout: Duration,
        order: SendOrder,
    ) -> Result<R::Response> {
        self.exchange(request, timeout, Some(order)).await
    }

    async fn exchange<R: Request>(
        &self,
        request: R,
        timeout: Duration,
        order: Option<SendOrder>,
    ) -> Result<R::Response> {
        let header = self.header::<R>();
        let correlation_id = header.correlation_id;
        let span = tracing::debug_span!(
            "request",
            api = R::API_KEY.name(),
            correlation_id,
            broker = %self.addr()
        );
        let shared = &self.inner.shared;
        let exchange = async {
            if let Some(after) = order.as_ref().and_then(|o| o.after.as_ref()) {
                after.cancelled().await;
            }
            let _permit = self
                .inner
                .in_flight
                .acquire()
                .await
                .map_err(|_| ClientError::Closed)?;
            let (tx, rx) = oneshot::channel();
            {
                let mut p = lock(&shared.pending);
                if let Some(dead) = &p.dead {
                    return Err(dead.clone());
                }
                p.waiting.insert(correlation_id, tx);
            }
            let frame = frame::encode_request(&header, &request);
            if self.inner.write_tx.send(frame).await.is_err() {
                return Err(shared.lost("writer stopped"));
            }
            // Queued for the socket: the next request in order may go.
            drop(order);
            tracing::trace!("sent");
            // The sender side is dropped without a reply only if the map was torn down.
            let body = rx.await.map_err(|_| shared.lost("connection closed"))??;
            frame::decode_body::<R::Response>(body).map_err(|e| ClientError::Protocol {
                addr: shared.addr.clone(),
                reason: format!("{} response: {e}", R::API_KEY.name()),
            })
        };
        match tokio::time::timeout(timeout, exchange.instrument(span)).await {
            Ok(result) => result,
            Err(_) => {
                // Forget the request: a late response is then dropped by the reader.
                lock(&shared.pending).waiting.remove(&correlation_id);
                Err(ClientError::Timeout {
                    api: R::API_KEY.name(),
                    addr: shared.addr.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Sends a request the broker never answers (a produce with acks=0). Returns once the frame
    /// is queued for the socket; waits when the write queue is full.
    pub async fn send_no_response<R: Request>(&self, request: R) -> Result<()> {
        let header = self.header::<R>();
        if let Some(dead) = &lock(&self.inner.shared.pending).dead {
            return Err(dead.clone());
        }
        let frame = frame::encode_request(&header, &request);
        self.inner
            .write_tx
            .send(frame)
            .await
            .map_err(|_| self.inner.shared.lost("writer stopped"))
    }
}

/// Keeps requests in the order their senders were created, up to the socket.
///
/// Requests that are sent from separate tasks reach the connection's write queue in whatever
/// order those tasks run. The idempotent producer needs a partition's batches to reach the
/// broker in sequence order (a later one first is refused as out of order, and retried after a
/// backoff), so it makes one `SendOrder` per request, in order, and each request waits for
/// its predecessor's frame to be queued before it queues its own. The order ends when the
/// request's frame is queued, or when the request gives up before that (it is dropped).
pub struct SendOrder {
    after: Option<CancellationToken>,
    _queued: DropGuard,
}

impl SendOrder {
    /// The order after `previous` (the token returned with the previous `SendOrder`, `None` for
    /// the first); returns it with the token the next one waits on.
    pub fn next(previous: Option<CancellationToken>) -> (SendOrder, CancellationToken) {
        let queued = CancellationToken::new();
        let order = SendOrder {
            after: previous,
            _queued: queued.clone().drop_guard(),
        };
        (order, queued)
    }
}

async fn write_loop(
    mut sink: FramedWrite<tokio::net::tcp::OwnedWriteHalf, tokio_util::codec::LengthDelimitedCodec>,
    mut frames: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    while let Some(frame) = frames.recv().await {
        // `feed` then flush only when the queue is empty: batches small frames into one write.
        let mut result = sink.feed(frame).await;
        while result.is_ok() {
            match frames.try_recv() {
                Ok(next) => result = sink.feed(next).await,
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = SinkExt::<Bytes>::flush(&mut sink).await;
        }
        if let Err(e) = result {
            tracing::debug!(addr = %shared.addr, error = %e, "write failed");
            shared.fail_all(shared.lost(format!("write failed: {e}")));
            return;
        }
    }
    // Every handle dropped: closing the write half tells the broker we are done.
    let _ = SinkExt::<Bytes>::close(&mut sink).await;
}

async fn read_loop(
    mut stream: FramedRead<tokio::net::tcp::OwnedReadHalf, tokio_util::codec::LengthDelimitedCodec>,
    shared: Arc<Shared>,
) {
    let reason = loop {
        let frame = match stream.next().await {
            None => break "closed by the broker".to_owned(),
            Some(Err(e)) => break format!("read failed: {e}"),
            Some(Ok(frame)) => frame.freeze(),
        };
        let (header, body) = match frame::decode_response_header(frame) {
            Ok(h) => h,
            // Without a correlation id the frame cannot be routed, and the stream may be out of
            // step: the connection cannot be trusted any more.
            Err(e) => break format!("undecodable response header: {e}"),
        };
        let waiter = lock(&shared.pending).waiting.remove(&header.correlation_id);
        let Some(tx) = waiter else {
            tracing::debug!(
                addr = %shared.addr,
                correlation_id = header.correlation_id,
                "response for a request no longer waiting (timed out)"
            );
            continue;
        };
        let reply = if header.error_code != 0 {
            Err(ClientError::Broker {
                code: ErrorCode::from_code(header.error_code),
                message: header.error_message,
                topic: None,
                partition: None,
            })
        } else {
            Ok(body)
        };
        let _ = tx.send(reply);
    };
    tracing::debug!(addr = %shared.addr, %reason, "connection closed");
    shared.fail_all(shared.lost(reason));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, ResponseHeader};
    use tokio::net::TcpListener;
    use tokio_util::codec::Framed;

    /// A fake broker that answers two requests in reverse order, then closes.
    async fn reversing_broker(listener: TcpListener) {
        let (sock, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(sock, frame::codec(1 << 20));
        let a = framed.next().await.unwrap().unwrap().freeze();
        let b = framed.next().await.unwrap().unwrap().freeze();
        for f in [b, a] {
            let (h, _) = frame::decode_request_header(f).unwrap();
            let resp = ApiVersionsResponse {
                apis: vec![rafka_protocol::messages::ApiVersionRange {
                    api_key: h.correlation_id,
                    min_version: 1,
                    max_version: 1,
                }],
            };
            let rh = ResponseHeader {
                correlation_id: h.correlation_id,
                error_code: 0,
                error_message: String::new(),
            };
            framed
                .send(frame::encode_response(&rh, Some(&resp)))
                .await
                .unwrap();
        }
        // A third request is read and never answered; then the socket closes.
        let _ = framed.next().await;
    }

    #[tokio::test]
    async fn out_of_order_responses_and_connection_loss() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(reversing_broker(listener));
        let conn = Connection::connect(&addr, &ConnectionConfig::default())
            .await
            .unwrap();
        let t = Duration::from_secs(5);
        let (a, b) = tokio::join!(
            conn.send(ApiVersionsRequest {}, t),
            conn.send(ApiVersionsRequest {}, t)
        );
        // Each caller got the response carrying its own correlation id.
        assert_eq!(a.unwrap().apis[0].api_key, 1);
        assert_eq!(b.unwrap().apis[0].api_key, 2);
        let c = conn.send(ApiVersionsRequest {}, t).await;
        assert!(
            matches!(c, Err(ClientError::ConnectionLost { .. })),
            "{c:?}"
        );
        assert!(conn.is_closed());
        let d = conn.send(ApiVersionsRequest {}, t).await;
        assert!(matches!(d, Err(ClientError::ConnectionLost { .. })));
    }

    #[tokio::test]
    async fn connect_refused_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = Connection::connect(&addr, &ConnectionConfig::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }));
        assert!(e.is_retriable());
    }
}
