//! Errors of the Raft glue.

use std::io;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stored entry could not be turned back into an openraft entry.
    #[error("stored Raft entry at index {index} is unreadable: {reason}")]
    BadEntry { index: u64, reason: String },
    /// The peer could not be reached, or the connection broke mid-call (retriable).
    #[error("peer {peer} unreachable: {source}")]
    Unreachable { peer: u64, source: io::Error },
    /// No answer within the call's deadline: the request may or may not have been processed.
    #[error("peer {peer} did not answer within {timeout_ms} ms")]
    Timeout { peer: u64, timeout_ms: u64 },
    /// The peer answered with an error of its own.
    #[error("peer {peer} refused: {reason}")]
    Remote { peer: u64, reason: String },
    /// The peer does not (yet) host the group: it may still be starting it (retriable).
    #[error("peer {peer} does not host group {group}")]
    UnknownGroup { peer: u64, group: u64 },
    /// A message could not be encoded or decoded.
    #[error("bad peer message: {0}")]
    Codec(String),
    /// No address is known for the peer.
    #[error("no address for node {0}")]
    UnknownPeer(u64),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again later can succeed.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, Error::BadEntry { .. } | Error::Codec(_))
    }
}
