//! A fault-injecting TCP proxy for client tests: it forwards connections to an upstream
//! broker and cuts each one after a random number of response bytes, so that requests the
//! broker has already applied lose their answers (the ambiguous case clients must handle).
//!
//! Cut points come from a seeded generator: a failing test replays with the same seed.
//!
//! [`LinkProxy`] cuts and heals broker-to-broker links; [`HoldProxy`] delays what a client
//! sends until the test releases it (a request delivered late).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy. Dropping it stops accepting; open connections end when either side closes.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// Connections cut so far.
    pub cuts: Arc<AtomicU64>,
    /// Once set, new connections are forwarded without cuts.
    healed: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listen` and forwards to `upstream`, cutting each connection after a number
    /// of upstream-to-client bytes drawn from `cut_after_bytes`.
    pub async fn start(
        listen: &str,
        upstream: String,
        seed: u64,
        cut_after_bytes: Range<u64>,
    ) -> FaultProxy {
        let listener = TcpListener::bind(listen).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cuts = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&cuts);
        let healed = Arc::new(AtomicBool::new(false));
        let is_healed = Arc::clone(&healed);
        let accept = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            while let Ok((client, _)) = listener.accept().await {
                let budget = if is_healed.load(Ordering::Acquire) {
                    u64::MAX
                } else {
                    rng.gen_range(cut_after_bytes.clone())
                };
                let upstream = upstream.clone();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    if pump(client, server, budget).await {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        FaultProxy {
            addr,
            cuts,
            healed,
            accept,
        }
    }

    /// Stops injecting faults: connections made from now on are forwarded whole.
    pub fn heal(&self) {
        self.healed.store(true, Ordering::Release);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Forwards both ways until either side closes or `budget` response bytes have passed.
/// Returns whether the connection was cut by the budget.
async fn pump(client: TcpStream, server: TcpStream, budget: u64) -> bool {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    let mut left = budget;
    let mut buf = vec![0u8; 64 * 1024];
    let cut = loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break false,
            Ok(n) => n,
        };
        let pass = (n as u64).min(left) as usize;
        if cw.write_all(&buf[..pass]).await.is_err() {
            break false;
        }
        left -= pass as u64;
        if left == 0 {
            break true;
        }
    };
    upstream.abort();
    cut
}

/// Counters of a [`LinkProxy`].
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Connections forwarded to the upstream.
    pub forwarded: AtomicU64,
    /// Connections closed at once because the link was cut.
    pub refused: AtomicU64,
    /// Connections open right now.
    pub live: AtomicU64,
}

/// A directed network link between two brokers that a test can cut and heal: a TCP proxy in
/// front of one broker's peer port, dialed by exactly one other broker (given the proxy's
/// address in its `--peers`). Cutting every link to and from a broker isolates it without
/// network namespaces.
///
/// While cut, every open connection is closed and new connections are accepted and closed at
/// once, so the dialing broker sees its connection attempts fail; after [`LinkProxy::heal`]
/// connections are forwarded again. The proxy runs on its own thread and runtime, so it keeps
/// forwarding whatever the test's runtime is doing.
pub struct LinkProxy {
    pub addr: SocketAddr,
    pub upstream: String,
    pub stats: Arc<LinkStats>,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkProxy {
    /// Listens on an ephemeral 127.0.0.1 port and forwards every connection to `upstream`.
    pub fn start(upstream: impl Into<String>) -> LinkProxy {
        let upstream = upstream.into();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind link proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("link proxy addr");
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stats = Arc::new(LinkStats::default());
        let thread = {
            let upstream = upstream.clone();
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name(format!("link-{addr}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("link proxy runtime");
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("tokio listener");
                        tokio::select! {
                            _ = link_accept(listener, upstream, cut_rx, stats) => {}
                            _ = stop_rx => {}
                        }
                    });
                    // Dropping the runtime drops every connection task, closing its sockets.
                })
                .expect("spawn link proxy thread")
        };
        LinkProxy {
            addr,
            upstream,
            stats,
            cut: Arc::new(cut_tx),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Cuts the link: closes every open connection (waiting until they are gone, up to 5 s)
    /// and closes new ones as soon as they are accepted, until [`LinkProxy::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.stats.live.load(Ordering::Acquire) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "link proxy {} -> {}: {} connections still open 5 s after the cut",
                self.addr,
                self.upstream,
                self.stats.live.load(Ordering::Acquire)
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn link_accept(
    listener: TcpListener,
    upstream: String,
    cut: tokio::sync::watch::Receiver<bool>,
    stats: Arc<LinkStats>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if *cut.borrow() {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        // Counted as live from here, so a cut waits for this connection too.
        stats.live.fetch_add(1, Ordering::AcqRel);
        let upstream = upstream.clone();
        let mut cut = cut.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let counters = Arc::clone(&stats);
            let forward = async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            };
            tokio::select! {
                _ = forward => {}
                // `wait_for` sees a cut made before this task started, too.
                _ = cut.wait_for(|c| *c) => {}
            }
            // Both sockets were moved into `forward`, which is dropped by now: closed.
            stats.live.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// A proxy that can hold back what clients send: while held, requests are read from the client
/// but not forwarded until [`HoldProxy::release`], so a test can deliver a request late (after
/// later requests went another way). Answers always flow.
pub struct HoldProxy {
    pub addr: SocketAddr,
    hold: Arc<tokio::sync::watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl HoldProxy {
    /// Listens on an ephemeral 127.0.0.1 port and forwards to `upstream`.
    pub async fn start(upstream: String) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hold proxy");
        let addr = listener.local_addr().expect("hold proxy addr");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut hold = rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if hold.wait_for(|h| !*h).await.is_err() {
                                break;
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        HoldProxy {
            addr,
            hold: Arc::new(tx),
            accept,
        }
    }

    /// From now on, what clients send waits in the proxy.
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Forwards everything held, and everything after it.
    pub fn release(&self) {
        self.hold.send_replace(false);
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
