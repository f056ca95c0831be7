//! One client connection.
//!
//! The reading side decodes frames and starts one task per request; a semaphore of
//! `max_in_flight_per_connection` permits bounds them, and the reader stops reading while all
//! permits are out, so a client that pipelines faster than the broker answers is slowed by TCP
//! flow control rather than growing memory. Responses go through a bounded channel to a writer
//! task; a client that does not read its responses fills the socket, then the channel, then
//! holds the permits: backpressure all the way.
//!
//! Produce requests are still ordered: each hands its batches to Raft only after the previous
//! produce of the connection did (`ProduceTurn`), so pipelined batches of an idempotent
//! producer reach the partition's sequencer in the order they were sent.
//!
//! A frame over the size limit, an undecodable header, or a connection idle for
//! [`IDLE_TIMEOUT`] closes the connection with one log line; every other connection goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::cluster::ProduceTurn;
use rafka_protocol::api::ApiKey;

use super::dispatch::Segments;
use super::{dispatch, Context, SHUTDOWN_GRACE};

/// A connection with no complete request for this long is closed (it may be a half-sent frame
/// from a client that went away).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Serves one connection until the client closes it, it misbehaves, or the broker shuts down.
pub async fn serve(ctx: Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    metrics::gauge!("rafka_connections").increment(1.0);
    metrics::counter!("rafka_connections_accepted_total").increment(1);
    let max_frame = ctx.config.max_frame_bytes;
    let in_flight = ctx.config.max_in_flight_per_connection as usize;
    let (read_half, write_half) = stream.into_split();
    let mut reader = FramedRead::new(read_half, rafka_protocol::frame::codec(max_frame));
    let mut writer = write_half;
    let (tx, mut rx) = mpsc::channel::<Segments>(in_flight);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            // Handlers size responses under the limit; a bigger one would be refused by the
            // client's codec anyway, so close rather than send it.
            if let Err(e) = rafka_protocol::frame::write_frame(&mut writer, &frame, max_frame).await
            {
                tracing::debug!(%peer, error = %e, "writing a response failed; closing");
                return;
            }
        }
    });
    let permits = Arc::new(Semaphore::new(in_flight));
    // Produce requests hand their batches to Raft in the order they arrived (ProduceTurn).
    let mut last_produce: Option<CancellationToken> = None;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let next = tokio::select! {
            next = tokio::time::timeout(IDLE_TIMEOUT, reader.next()) => next,
            _ = shutdown.changed() => break,
        };
        let frame = match next {
            Err(_) => {
                tracing::info!(%peer, "closing idle connection");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                metrics::counter!("rafka_bad_frames_total").increment(1);
                tracing::warn!(%peer, error = %e, "closing connection: unreadable frame");
                break;
            }
            Ok(Some(Ok(frame))) => frame.freeze(),
        };
        let (header, body) = match rafka_protocol::frame::decode_request_header(frame) {
            Ok(hb) => hb,
            Err(e) => {
                metrics::counter!("rafka_bad_frames_total").increment(1);
                tracing::warn!(%peer, error = %e, "closing connection: undecodable request header");
                break;
            }
        };
        let turn = (header.api_key == ApiKey::Produce as u32).then(|| {
            let (turn, done) = ProduceTurn::next(last_produce.take());
            last_produce = Some(done);
            turn
        });
        let ctx = Arc::clone(&ctx);
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(response) = dispatch::handle(&ctx, header, body, peer, turn).await {
                // A closed channel means the connection is gone; the response has nowhere to go.
                let _ = tx.send(response).await;
            }
            drop(permit);
        });
    }
    // Let in-flight requests finish (bounded by the grace period), then close.
    let all = u32::try_from(in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await;
    drop(tx);
    let _ = writer_task.await;
    metrics::gauge!("rafka_connections").decrement(1.0);
}
