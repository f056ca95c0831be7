//! Raw limits: what the disk and the loopback network can do without Rafka in the way.
//!
//! - [`raw_write`]: sequential `write_all` of one buffer, one `fdatasync` at the end (disk
//!   write bandwidth through the page cache).
//! - [`raw_write_fsync`]: `write_all` + `fdatasync` per buffer, each timed (sync latency, and
//!   the throughput of a writer that syncs every write).
//! - [`raw_read`]: the `.log` files of a directory, 1 MiB per `read` call.
//! - [`loopback_throughput`]: a Tokio sender/receiver pair on 127.0.0.1 moving a byte count in
//!   1 MiB writes.
//! - [`loopback_rtt`]: ping-pong round trips of a small message over 127.0.0.1 (TCP_NODELAY).
//!
//! Also the pseudo-random payloads every command writes ([`XorShift`], [`build_batch`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rafka_protocol::{BatchBuilder, BatchOptions, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::{mb_per_s, Figure, LatencyRecorder};
use crate::{Context, Failure, Result};

/// Chunk size of the raw reads and of the loopback throughput writes.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A 64-bit xorshift generator: cheap, incompressible-looking bytes.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes (never all zero for `len >= 8`).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    XorShift(seed | 1).fill(&mut buf);
    buf
}

/// One batch of as many `record_bytes`-sized records (pseudo-random values) as fit into about
/// `target_bytes`; at least one record. Returns the batch and its record count.
pub fn build_batch(target_bytes: u64, record_bytes: u64) -> Result<(Bytes, usize)> {
    let record_len = usize::try_from(record_bytes)
        .map_err(|_| Failure(format!("record size {record_bytes} is too large")))?;
    let target = usize::try_from(target_bytes)
        .map_err(|_| Failure(format!("batch size {target_bytes} is too large")))?;
    if target > rafka_protocol::batch::BATCH_BYTES_MAX {
        return Err(Failure(format!(
            "batch size {target_bytes} exceeds the batch format's limit of {} bytes",
            rafka_protocol::batch::BATCH_BYTES_MAX
        )));
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ target_bytes);
    let mut value = vec![0u8; record_len];
    let per_record = BatchBuilder::estimated_record_bytes(None, Some(&value), &[]);
    let mut builder = BatchBuilder::with_capacity(BatchOptions::default(), target);
    loop {
        let full = builder.size_bytes() + per_record > target;
        if full && builder.record_count() > 0 {
            break;
        }
        rng.fill(&mut value);
        builder.append(Some(Timestamp::now()), None, Some(&value), &[]);
        if full {
            break;
        }
    }
    let records = builder.record_count();
    Ok((builder.build(), records))
}

/// A fresh, empty subdirectory of the benchmark directory.
pub fn subdir(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir(&dir).context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn remove_dir(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).context(|| format!("removing {}", dir.display()))
}

fn create_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .context(|| format!("creating {}", path.display()))
}

/// A fresh temporary directory under `parent` (removed when dropped).
pub fn bench_dir(parent: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("rafka-bench-")
        .tempdir_in(parent)
        .context(|| format!("creating a benchmark directory in {}", parent.display()))
}

/// `count` sequential writes of `buf`, then one `fdatasync`, timed as a whole.
pub fn raw_write(dir: &Path, buf: &[u8], count: u64) -> Result<Figure> {
    let path = dir.join("raw-write.dat");
    let mut file = create_file(&path)?;
    let started = Instant::now();
    for _ in 0..count {
        file.write_all(buf)
            .context(|| format!("writing {}", path.display()))?;
    }
    file.sync_data()
        .context(|| format!("fdatasync of {}", path.display()))?;
    let elapsed = started.elapsed();
    std::fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
    Ok(Figure {
        mb_per_s: mb_per_s(buf.len() as u64 * count, elapsed),
        latency: None,
    })
}

/// Up to `count` sequential writes of `buf`, each followed by `fdatasync` and timed; stops
/// early once `time_limit` has passed (after at least one write).
pub fn raw_write_fsync(
    dir: &Path,
    buf: &[u8],
    count: u64,
    time_limit: Option<Duration>,
) -> Result<Figure> {
    let path = dir.join("raw-fsync.dat");
    let mut file = create_file(&path)?;
    let mut latency = LatencyRecorder::new()?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < count {
        let op = Instant::now();
        file.write_all(buf)
            .context(|| format!("writing {}", path.display()))?;
        file.sync_data()
            .context(|| format!("fdatasync of {}", path.display()))?;
        latency.record(op.elapsed());
        done += 1;
        if time_limit.is_some_and(|limit| started.elapsed() >= limit) {
            break;
        }
    }
    let elapsed = started.elapsed();
    std::fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
    Ok(Figure {
        mb_per_s: mb_per_s(buf.len() as u64 * done, elapsed),
        latency: Some(latency.summary()),
    })
}

/// Reads the `.log` files of `dir` sequentially, [`CHUNK_BYTES`] per `read` call. Returns the
/// figure and the bytes read.
pub fn raw_read(dir: &Path) -> Result<(Figure, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
        let entry = entry.context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            files.push(path);
        }
    }
    files.sort();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut bytes = 0u64;
    let started = Instant::now();
    for path in &files {
        let mut file = File::open(path).context(|| format!("opening {}", path.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    let elapsed = started.elapsed();
    Ok((
        Figure {
            mb_per_s: mb_per_s(bytes, elapsed),
            latency: None,
        },
        bytes,
    ))
}

/// A connected pair of loopback sockets (client side, server side), TCP_NODELAY on both.
async fn loopback_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context(|| "binding a loopback listener".into())?;
    let addr = listener
        .local_addr()
        .context(|| "reading the loopback listener's address".into())?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.context(|| format!("connecting to {addr}"))?;
    let (server, _) = accepted.context(|| format!("accepting on {addr}"))?;
    for s in [&client, &server] {
        s.set_nodelay(true)
            .context(|| "setting TCP_NODELAY".into())?;
    }
    Ok((client, server))
}

/// Moves `total_bytes` from a sender task to a receiver task over loopback TCP in
/// [`CHUNK_BYTES`] writes; timed from the first write to the receiver seeing end of stream.
pub async fn loopback_throughput(total_bytes: u64) -> Result<Figure> {
    let (mut tx, mut rx) = loopback_pair().await?;
    let buf = random_bytes(CHUNK_BYTES, 0x5eed);
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut left = total_bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            tx.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        tx.shutdown().await
    });
    let receiver = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut got = 0u64;
        loop {
            let n = rx.read(&mut buf).await?;
            if n == 0 {
                return Ok::<u64, std::io::Error>(got);
            }
            got += n as u64;
        }
    });
    let got = receiver
        .await
        .context(|| "loopback receiver task".into())?
        .context(|| "loopback receive".into())?;
    let elapsed = started.elapsed();
    sender
        .await
        .context(|| "loopback sender task".into())?
        .context(|| "loopback send".into())?;
    if got != total_bytes {
        return Err(Failure(format!(
            "loopback receiver got {got} of {total_bytes} bytes"
        )));
    }
    Ok(Figure {
        mb_per_s: mb_per_s(got, elapsed),
        latency: None,
    })
}

/// `count` round trips of a `request_bytes` message answered by an 8-byte reply over loopback
/// TCP between two Tokio tasks, each timed.
pub async fn loopback_rtt(request_bytes: usize, count: u64) -> Result<Figure> {
    let (mut client, mut server) = loopback_pair().await?;
    let request_bytes = request_bytes.max(1);
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; request_bytes];
        loop {
            match server.read_exact(&mut buf).await {
                Ok(_) => server.write_all(&buf[..8.min(request_bytes)]).await?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let request = random_bytes(request_bytes, 0x77);
    let mut reply = vec![0u8; 8.min(request_bytes)];
    let mut latency = LatencyRecorder::new()?;
    let started = Instant::now();
    for _ in 0..count {
        let op = Instant::now();
        client
            .write_all(&request)
            .await
            .context(|| "loopback ping".into())?;
        client
            .read_exact(&mut reply)
            .await
            .context(|| "loopback pong".into())?;
        latency.record(op.elapsed());
    }
    let elapsed = started.elapsed();
    drop(client);
    echo.await
        .context(|| "loopback echo task".into())?
        .context(|| "loopback echo".into())?;
    Ok(Figure {
        mb_per_s: mb_per_s(request_bytes as u64 * count, elapsed),
        latency: Some(latency.summary()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_not_all_zero() {
        assert!(random_bytes(100, 0).iter().any(|&b| b != 0));
    }

    #[test]
    fn batches_hold_at_least_one_record() {
        let (b, n) = build_batch(1, 100).unwrap();
        assert_eq!(n, 1);
        assert!(b.len() > 100);
        let (_, n) = build_batch(64 << 10, 1024).unwrap();
        assert!(n > 50);
    }

    #[tokio::test]
    async fn loopback_moves_every_byte() {
        let f = loopback_throughput(8 << 20).await.unwrap();
        assert!(f.mb_per_s > 0.0);
        let f = loopback_rtt(100, 10).await.unwrap();
        assert!(f.latency.unwrap().p50_ms > 0.0);
    }
}
