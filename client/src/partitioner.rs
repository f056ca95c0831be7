//! Which partition a record goes to when the caller did not say.
//!
//! Keyed records: Kafka's default partitioner, `toPositive(murmur2(key)) % partitions`, so that
//! a key lands on the same partition as it would with a Kafka client. Unkeyed records: sticky
//! partitioning (KIP-480): all go to one partition until the batch being filled there is
//! closed, then another partition is picked. That fills batches quickly instead of spreading
//! single-record batches over every partition.
//!
//! [`Partitioner`] is plain state with no I/O; the producer owns it under its accumulator lock.

use std::collections::HashMap;

/// Kafka's murmur2 seed (`Utils.murmur2`).
const MURMUR2_SEED: u32 = 0x9747_b28c;

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with Kafka's seed, as a signed Java int.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = MURMUR2_SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in chunks.by_ref() {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // Java's switch falls through from the longest tail to the shortest.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on MIN).
pub fn to_positive(n: i32) -> u32 {
    (n & 0x7fff_ffff) as u32
}

/// The partition Kafka's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    to_positive(murmur2(key)) % partitions.max(1)
}

/// Picks partitions for records: by key hash, or sticky for unkeyed records.
#[derive(Debug)]
pub struct Partitioner {
    /// The partition unkeyed records of each topic currently go to.
    sticky: HashMap<String, u32>,
    /// xorshift64 state: picking a partition needs spread, not cryptographic randomness.
    rng: u64,
}

impl Default for Partitioner {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x2545_f491_4f6c_dd1d);
        Partitioner::with_seed(seed)
    }
}

impl Partitioner {
    /// A partitioner whose unkeyed choices are reproducible from `seed`.
    pub fn with_seed(seed: u64) -> Partitioner {
        Partitioner {
            sticky: HashMap::new(),
            rng: seed | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The partition for a record of `topic` with `key`, among `partitions` (at least 1).
    pub fn partition(&mut self, topic: &str, key: Option<&[u8]>, partitions: u32) -> u32 {
        let partitions = partitions.max(1);
        if let Some(key) = key {
            return partition_for_key(key, partitions);
        }
        if let Some(&p) = self.sticky.get(topic) {
            if p < partitions {
                return p;
            }
        }
        let p = (self.next_random() % u64::from(partitions)) as u32;
        self.sticky.insert(topic.to_owned(), p);
        p
    }

    /// Tells the partitioner that the batch being filled for `topic`/`partition` was closed
    /// (full or handed to the sender): unkeyed records move to another partition.
    pub fn on_batch_closed(&mut self, topic: &str, partition: u32, partitions: u32) {
        if self.sticky.get(topic) != Some(&partition) || partitions <= 1 {
            return;
        }
        // Any partition but the current one, uniformly.
        let offset = 1 + (self.next_random() % u64::from(partitions - 1)) as u32;
        self.sticky
            .insert(topic.to_owned(), (partition + offset) % partitions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn to_positive_clears_the_sign_bit() {
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(5), 5);
        // -973932308 & 0x7fffffff = 1173551340; % 3 picks partition 0.
        assert_eq!(partition_for_key(b"21", 3), 1173551340 % 3);
    }

    #[test]
    fn keyed_records_ignore_stickiness() {
        let mut p = Partitioner::with_seed(7);
        let first = p.partition("t", Some(b"foobar"), 10);
        p.on_batch_closed("t", first, 10);
        assert_eq!(p.partition("t", Some(b"foobar"), 10), first);
    }

    #[test]
    fn unkeyed_records_stick_until_the_batch_closes() {
        let mut p = Partitioner::with_seed(42);
        let a = p.partition("t", None, 8);
        for _ in 0..100 {
            assert_eq!(p.partition("t", None, 8), a);
        }
        // Closing a batch of another partition changes nothing.
        p.on_batch_closed("t", (a + 1) % 8, 8);
        assert_eq!(p.partition("t", None, 8), a);
        p.on_batch_closed("t", a, 8);
        let b = p.partition("t", None, 8);
        assert_ne!(a, b);
        assert!(b < 8);
        // Topics are independent.
        let _ = p.partition("u", None, 8);
        assert_eq!(p.partition("t", None, 8), b);
    }

    #[test]
    fn single_partition_topics_stay_put() {
        let mut p = Partitioner::with_seed(1);
        assert_eq!(p.partition("t", None, 1), 0);
        p.on_batch_closed("t", 0, 1);
        assert_eq!(p.partition("t", None, 1), 0);
    }
}
