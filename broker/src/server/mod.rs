//! The client protocol server: binds the listener, accepts connections, and shuts down
//! gracefully.
//!
//! - [`connection`]: one task per connection reading frames, bounded in-flight requests,
//!   a writer task for responses.
//! - [`dispatch`]: decodes a request by API key and calls its handler.
//! - one module per API family: [`metadata`], [`admin`], [`produce`], [`fetch`],
//!   [`list_offsets`], [`group`].
//!
//! State shared by all connections is the [`Context`]; handlers never hold a lock across an
//! await, and run blocking file I/O on tokio's blocking pool.

pub mod admin;
pub mod connection;
pub mod dispatch;
pub mod fetch;
pub mod group;
pub mod list_offsets;
pub mod metadata;
pub mod produce;
pub mod producer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::cluster::Cluster;
use crate::config::BrokerConfig;

/// How long a shutdown waits for in-flight requests before closing connections anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every connection and handler shares.
#[derive(Debug)]
pub struct Context {
    pub config: BrokerConfig,
    pub cluster: Arc<Cluster>,
    /// Turns true when the broker starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// True once the listener is bound and storage is open (for `/ready`).
    pub ready: AtomicBool,
    pub cluster_id: String,
    /// The consumer-group coordinator.
    pub groups: Arc<crate::group::Coordinator>,
    /// The transaction coordinator.
    pub txns: Arc<crate::txn::Coordinator>,
}

impl Context {
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_shutting_down()
    }
}

/// The bound client listener.
pub struct Server {
    listener: TcpListener,
    ctx: Arc<Context>,
}

impl Server {
    /// Binds the client port. Fails (before anything is served) if the address is in use.
    pub async fn bind(ctx: Arc<Context>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(&ctx.config.listen).await?;
        Ok(Server { listener, ctx })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until shutdown, then waits (up to [`SHUTDOWN_GRACE`]) for every
    /// connection to finish its in-flight requests.
    pub async fn run(self) {
        let Server { listener, ctx } = self;
        let slots = Arc::new(Semaphore::new(ctx.config.max_connections as usize));
        let mut shutdown = ctx.shutdown.clone();
        let mut connections = tokio::task::JoinSet::new();
        ctx.ready.store(true, Ordering::Release);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        metrics::counter!("rafka_connections_refused_total").increment(1);
                        tracing::warn!(%peer, limit = ctx.config.max_connections, "connection refused: too many connections");
                        drop(stream);
                        continue;
                    };
                    let ctx = Arc::clone(&ctx);
                    connections.spawn(async move {
                        connection::serve(ctx, stream, peer).await;
                        drop(slot);
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            tracing::warn!("connections did not finish within the shutdown grace period");
        }
    }
}

/// Runs blocking file work. On the multi-threaded runtime it runs in place
/// (`block_in_place`: the worker hands its other tasks to a new thread), which saves a thread
/// hand-off per request compared with the blocking pool and measurably cuts produce and
/// end-to-end latency; elsewhere it uses the blocking pool. A panic in it becomes an internal
/// error for this request only.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let in_place =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    let outcome = if in_place {
        tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
            .map_err(|p| panic_message(&p))
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())
    };
    match outcome {
        Ok(r) => r,
        Err(message) => {
            tracing::error!(error = %message, "blocking task failed");
            Err(crate::Error::Internal(message))
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
