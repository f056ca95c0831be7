//! A fault-injecting TCP proxy for client tests: it forwards connections to an upstream
//! broker and cuts each one after a random number of response bytes, so that requests the
//! broker has already applied lose their answers (the ambiguous case clients must handle).
//!
//! Cut points come from a seeded generator: a failing test replays with the same seed.

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
