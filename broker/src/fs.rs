//! The broker's file layer: every file the log writes goes through [`Fs`].
//!
//! In production [`Fs::real`] is a thin wrapper over `std::fs`. [`Fs::crash_simulating`] also
//! remembers, for every file, how many bytes have been written and how many were made durable
//! by `fdatasync`, and which newly created files have not had their directory entry fsynced.
//! [`Fs::simulate_power_loss`] then does what a power cut may do: every file falls back to a
//! length between its synced length and its written length (the bytes in between survive,
//! turn to zeros, or turn to garbage), and files whose creation was never made durable may
//! vanish. A process kill alone cannot test this, because the page cache survives it (the lesson
//! of Kafka's KIP-966 and of Jepsen's NATS 2.12 analysis).
//!
//! Not modelled: a deleted file coming back after a crash (the log tolerates it: segments below
//! the log start are removed again on open), and reordering of writes within the synced prefix.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the crash simulator knows about one file.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// Bytes written (the file's length as the process sees it).
    written_bytes: u64,
    /// Bytes known to be on stable storage.
    synced_bytes: u64,
}

#[derive(Debug, Default)]
struct Tracker {
    files: HashMap<PathBuf, Tracked>,
    /// Files created since their directory was last fsynced.
    unsynced_creations: HashSet<PathBuf>,
}

/// How the bytes between a file's synced and written length look after a simulated power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornTail {
    /// Each unsynced byte is kept as written.
    Kept,
    /// The surviving unsynced bytes read back as zeros (a block allocated but never written).
    Zeroed,
    /// The surviving unsynced bytes read back as garbage.
    Garbage,
}

/// What a simulated power loss does to one file, decided by the caller (tests drive this from
/// a seeded random generator so a failing case replays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFate {
    /// Length after the crash, clamped to `synced..=written`.
    pub surviving_bytes: u64,
    pub tail: TornTail,
    /// For a file whose creation was not yet durable: whether it disappears.
    pub vanishes: bool,
}

/// The handle through which the log touches the disk. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Fs {
    tracker: Option<Arc<Mutex<Tracker>>>,
}

impl Fs {
    /// Plain files, no bookkeeping.
    pub fn real() -> Fs {
        Fs { tracker: None }
    }

    /// Files whose unsynced state is tracked so that [`Fs::simulate_power_loss`] can drop it.
    pub fn crash_simulating() -> Fs {
        Fs {
            tracker: Some(Arc::default()),
        }
    }

    fn tracker(&self) -> Option<MutexGuard<'_, Tracker>> {
        // A poisoned tracker only means a test thread panicked; its data is still usable.
        self.tracker
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Creates a new, empty file (failing if it exists), for reading and appending.
    pub fn create_new(&self, path: &Path) -> io::Result<FsFile> {
        let mut tracker = self.tracker();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        if let Some(t) = tracker.as_mut() {
            t.files.insert(
                path.to_path_buf(),
                Tracked {
                    written_bytes: 0,
                    synced_bytes: 0,
                },
            );
            t.unsynced_creations.insert(path.to_path_buf());
        }
        Ok(FsFile {
            file,
            path: path.to_path_buf(),
            fs: self.clone(),
        })
    }

    /// Opens an existing file for reading and appending, positioned at its end. Its current
    /// contents count as durable (they were there before this process looked).
    pub fn open_existing(&self, path: &Path) -> io::Result<FsFile> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        if let Some(mut t) = self.tracker() {
            t.files.entry(path.to_path_buf()).or_insert(Tracked {
                written_bytes: len,
                synced_bytes: len,
            });
        }
        Ok(FsFile {
            file,
            path: path.to_path_buf(),
            fs: self.clone(),
        })
    }

    /// Removes a file. The removal is durable only after [`Fs::sync_dir`] on its directory.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        let mut tracker = self.tracker();
        std::fs::remove_file(path)?;
        if let Some(t) = tracker.as_mut() {
            t.files.remove(path);
            t.unsynced_creations.remove(path);
        }
        Ok(())
    }

    /// Fsyncs a directory, making creations and removals in it durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // Only creations made before the sync started are durable after it.
        let created_before: Vec<PathBuf> = match self.tracker() {
            Some(t) => t
                .unsynced_creations
                .iter()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        File::open(dir)?.sync_all()?;
        if let Some(mut t) = self.tracker() {
            for p in &created_before {
                t.unsynced_creations.remove(p);
            }
        }
        Ok(())
    }

    /// Replaces `path` with `contents` atomically and durably: write a temporary file, fsync it,
    /// rename it over `path`, fsync the directory. A crash leaves the old or the new contents.
    pub fn write_atomically(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = path.with_extension("tmp");
        let mut tracker = self.tracker();
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        if let Some(t) = tracker.as_mut() {
            let len = contents.len() as u64;
            t.files.insert(
                path.to_path_buf(),
                Tracked {
                    written_bytes: len,
                    synced_bytes: len,
                },
            );
        }
        Ok(())
    }

    /// Applies a power loss to every tracked file, asking `fate` what happens to each (given
    /// its path, synced length and written length). Every [`FsFile`] of this `Fs` must have been
    /// dropped first (the log closed), as after a real crash. Does nothing on [`Fs::real`].
    pub fn simulate_power_loss(
        &self,
        fate: impl FnMut(&Path, u64, u64) -> FileFate,
    ) -> io::Result<()> {
        match self.tracker() {
            Some(mut t) => power_loss(&mut t, fate).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The worst case a power loss allows: every file back to its synced length, every
    /// non-durable creation gone. For the fault suite's `lose-unsynced` hook.
    pub fn lose_unsynced(&self) -> io::Result<()> {
        self.simulate_power_loss(worst_fate)
    }

    /// The fault suite's power-loss hook: applies [`Fs::lose_unsynced`] and exits the process
    /// with `exit_code` while still holding the tracker, so that no thread of this process can
    /// write, truncate or sync another byte in between (every tracked operation takes the
    /// tracker before touching the disk). On [`Fs::real`] it only exits.
    pub fn lose_unsynced_and_exit(&self, exit_code: i32) -> ! {
        let mut guard = self.tracker();
        if let Some(t) = guard.as_mut() {
            match power_loss(t, worst_fate) {
                Ok((bytes, files)) => eprintln!(
                    "simulated power loss: dropped {bytes} unsynced bytes, {files} files vanished"
                ),
                Err(e) => eprintln!("simulated power loss failed: {e}"),
            }
        }
        // Exit without running destructors or flushing anything: a power cut does neither.
        // `guard` stays held until the process is gone.
        std::process::exit(exit_code)
    }
}

fn worst_fate(_: &Path, synced: u64, _: u64) -> FileFate {
    FileFate {
        surviving_bytes: synced,
        tail: TornTail::Kept,
        vanishes: true,
    }
}

/// Applies a power loss; returns how many unsynced bytes were dropped and how many files
/// vanished.
fn power_loss(
    t: &mut Tracker,
    mut fate: impl FnMut(&Path, u64, u64) -> FileFate,
) -> io::Result<(u64, usize)> {
    let (mut dropped_bytes, mut vanished) = (0u64, 0usize);
    let mut paths: Vec<PathBuf> = t.files.keys().cloned().collect();
    paths.sort();
    for path in paths {
        let tracked = t.files[&path];
        let f = fate(&path, tracked.synced_bytes, tracked.written_bytes);
        if t.unsynced_creations.contains(&path) && f.vanishes {
            std::fs::remove_file(&path)?;
            t.files.remove(&path);
            vanished += 1;
            continue;
        }
        let keep = f.surviving_bytes.clamp(
            tracked.synced_bytes,
            tracked.written_bytes.max(tracked.synced_bytes),
        );
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(keep)?;
        dropped_bytes += tracked.written_bytes.saturating_sub(keep);
        if keep > tracked.synced_bytes && f.tail != TornTail::Kept {
            let n = (keep - tracked.synced_bytes) as usize;
            let mut junk = vec![0u8; n];
            if f.tail == TornTail::Garbage {
                let mut x = keep ^ 0x9e37_79b9_7f4a_7c15;
                for b in &mut junk {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            file.write_all_at(&junk, tracked.synced_bytes)?;
        }
        t.files.insert(
            path,
            Tracked {
                written_bytes: keep,
                synced_bytes: keep,
            },
        );
    }
    t.unsynced_creations.clear();
    Ok((dropped_bytes, vanished))
}

/// An open file of the log. Reads are positional (`pread`) and may run concurrently with one
/// appender; appends and truncations are serialised by the owner (the log's write lock).
#[derive(Debug)]
pub struct FsFile {
    file: File,
    path: PathBuf,
    fs: Fs,
}

impl FsFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends all of `bufs` at the end of the file (one `writev` per call when it can).
    pub fn append_vectored(&self, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut tracker = self.fs.tracker();
        let mut file = &self.file;
        let mut bufs = &mut bufs[..];
        // Skip leading empty slices so that a zero-length write means "no progress".
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            match file.write_vectored(bufs) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(t) = tracker.as_mut() {
            if let Some(f) = t.files.get_mut(&self.path) {
                f.written_bytes += total as u64;
            }
        }
        Ok(())
    }

    /// Appends `buf` at the end of the file.
    pub fn append(&self, buf: &[u8]) -> io::Result<()> {
        self.append_vectored(&mut [IoSlice::new(buf)])
    }

    /// Reads exactly `buf.len()` bytes at `position`.
    pub fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, position)
    }

    /// Reads exactly `len` bytes at `position` into a fresh buffer without zeroing it first:
    /// fetches read up to megabytes at a time, and clearing the buffer before `pread` fills it
    /// cost about an eighth of read throughput (measured with `rafka-bench consume`).
    pub fn read_exact_at_uninit(&self, len: usize, position: u64) -> io::Result<bytes::BytesMut> {
        use std::os::fd::AsRawFd;
        let mut buf = bytes::BytesMut::with_capacity(len);
        let fd = self.file.as_raw_fd();
        while buf.len() < len {
            let filled = buf.len();
            let spare = buf.spare_capacity_mut();
            let want = (len - filled).min(spare.len());
            let offset = libc::off_t::try_from(position + filled as u64)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "position too large"))?;
            // SAFETY: `spare` is memory owned by `buf` with room for at least `want` bytes;
            // pread writes at most `want` bytes into it and reports how many it wrote.
            let n = unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), want, offset) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than expected",
                ));
            }
            // SAFETY: pread initialised the `n` bytes after `filled`, and n <= want <= spare.
            unsafe { buf.set_len(filled + n as usize) };
        }
        Ok(buf)
    }

    /// `fdatasync`: everything written so far is durable when this returns.
    pub fn sync_data(&self) -> io::Result<()> {
        // Only what was written before the sync started is known durable after it; appends
        // may run concurrently. The tracker is not held across the sync itself (it would
        // serialise every partition's fsync in tests), which only means a simulated power loss
        // during a sync loses that sync's bytes, as a real one may.
        let written_before = self
            .fs
            .tracker()
            .and_then(|t| t.files.get(&self.path).map(|f| f.written_bytes));
        self.file.sync_data()?;
        if let (Some(mut t), Some(written)) = (self.fs.tracker(), written_before) {
            if let Some(f) = t.files.get_mut(&self.path) {
                f.synced_bytes = f.synced_bytes.max(written.min(f.written_bytes));
            }
        }
        Ok(())
    }

    /// Asks the kernel to drop the file's cached pages in `offset..offset + len`. Only for
    /// data already synced: dropping clean pages loses nothing, it only makes a later read go
    /// to the disk. Advice, so a failure is not an error for the caller to act on.
    pub fn drop_cached(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return;
        };
        // SAFETY: plain syscall on a file descriptor this struct owns; no memory is passed.
        let rc = unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc != 0 {
            tracing::debug!(path = %self.path.display(), rc, "posix_fadvise(DONTNEED) failed");
        }
    }

    /// Cuts the file to `len` bytes and moves the append position there. Not durable until
    /// [`FsFile::sync_data`].
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        let mut tracker = self.fs.tracker();
        self.file.set_len(len)?;
        (&self.file).seek(SeekFrom::Start(len))?;
        if let Some(t) = tracker.as_mut() {
            if let Some(f) = t.files.get_mut(&self.path) {
                f.written_bytes = len;
                // Until the truncation is synced a crash may bring either length back; the
                // simulator keeps the shorter, which the log must handle anyway.
                f.synced_bytes = f.synced_bytes.min(len);
            }
        }
        Ok(())
    }

    /// The file's length on disk.
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Last modification time, used as a segment's age when no record carries a timestamp.
    pub fn modified_ms(&self) -> io::Result<i64> {
        let m = self.file.metadata()?.modified()?;
        Ok(m.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0))
    }
}
