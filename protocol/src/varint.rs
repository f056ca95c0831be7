//! Zigzag varints as used by Kafka's record format (protobuf's `sint32`/`sint64` encoding).
//!
//! Decoders take a slice and return the value with the number of bytes consumed; they reject
//! over-long encodings instead of panicking or wrapping silently.

use crate::BatchError;

/// Encodes `v` as a zigzag varint (at most 5 bytes).
pub fn put_varint(buf: &mut Vec<u8>, v: i32) {
    put_uvarint(buf, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

/// Encodes `v` as a zigzag varlong (at most 10 bytes).
pub fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// The encoded size of `v` as a zigzag varint.
pub fn varint_len(v: i32) -> usize {
    uvarint_len(((v << 1) ^ (v >> 31)) as u32 as u64)
}

fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn get_uvarint(buf: &[u8], max_bytes: usize) -> Result<(u64, usize), BatchError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(max_bytes) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(BatchError::MalformedVarint)
}

/// Decodes a zigzag varint, returning the value and the bytes consumed.
pub fn get_varint(buf: &[u8]) -> Result<(i32, usize), BatchError> {
    let (raw, n) = get_uvarint(buf, 5)?;
    if raw > u64::from(u32::MAX) {
        return Err(BatchError::MalformedVarint);
    }
    let raw = raw as u32;
    Ok((((raw >> 1) as i32) ^ -((raw & 1) as i32), n))
}

/// Decodes a zigzag varlong, returning the value and the bytes consumed.
pub fn get_varlong(buf: &[u8]) -> Result<(i64, usize), BatchError> {
    let (raw, n) = get_uvarint(buf, 10)?;
    Ok((((raw >> 1) as i64) ^ -((raw & 1) as i64), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges() {
        for v in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(get_varint(&b).unwrap(), (v, b.len()));
        }
        for v in [0i64, -1, i64::MAX, i64::MIN, 1 << 40] {
            let mut b = Vec::new();
            put_varlong(&mut b, v);
            assert_eq!(get_varlong(&b).unwrap(), (v, b.len()));
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        assert_eq!(get_varint(&[0x80; 6]), Err(BatchError::MalformedVarint));
        assert_eq!(get_varint(&[0x80]), Err(BatchError::MalformedVarint));
        assert_eq!(get_varint(&[]), Err(BatchError::MalformedVarint));
        assert_eq!(get_varlong(&[0xff; 11]), Err(BatchError::MalformedVarint));
    }
}
