//! The HTTP endpoint: `GET /metrics` (Prometheus text format), `GET /health` (200 while the
//! process serves), `GET /ready` (200 once storage is open and the client port accepts, 503
//! before that and during shutdown).
//!
//! A deliberately tiny HTTP/1.1 server: one request per connection, request heads up to
//! [`HEAD_BYTES_MAX`], a read timeout, `Connection: close`. Scrapers and health checks need no
//! more, and it keeps an HTTP framework out of the broker.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::Context;

/// Largest request head accepted.
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most HTTP connections served at once; more wait in the accept queue.
const CONNECTIONS_MAX: usize = 64;

/// Serves HTTP on `listener` until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, metrics: PrometheusHandle) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &ctx, &metrics)).await;
            drop(slot);
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    ctx: &Context,
    metrics: &PrometheusHandle,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > HEAD_BYTES_MAX {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
            )
            .await;
        }
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = metrics.render();
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4",
                body.as_bytes(),
            )
            .await
        }
        ("GET", "/health") => {
            if ctx.is_shutting_down() {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    b"shutting down\n",
                )
                .await
            } else {
                respond(&mut stream, "200 OK", "text/plain", b"ok\n").await
            }
        }
        ("GET", "/ready") => {
            if ctx.is_ready() {
                respond(&mut stream, "200 OK", "text/plain", b"ready\n").await
            } else {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    b"not ready\n",
                )
                .await
            }
        }
        ("GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"try /metrics, /health or /ready\n",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                b"only GET\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
