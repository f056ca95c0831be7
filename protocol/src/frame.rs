//! Framing: how requests and responses are laid out in length-delimited frames.
//!
//! A frame is a 4-byte big-endian length and that many bytes (tokio-util's
//! `LengthDelimitedCodec`, with a maximum frame size that both sides configure). Inside, a
//! length-delimited header message comes first, then the body message. Decoding works on
//! `Bytes`, so `bytes` fields of the body (record batches) share the frame's buffer.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::LengthDelimitedCodec;

use crate::api::Request;
use crate::messages::{RequestHeader, ResponseHeader};
use crate::Error;

/// Default largest frame, request or response: large enough for a produce request of several
/// partitions' worth of 1 MiB batches, small enough that one connection cannot make the broker
/// allocate without bound.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 << 20;

/// A codec for Rafka frames of at most `max_frame_bytes`.
pub fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Writes one frame, the 4-byte big-endian length and then `segments` back to back, with
/// vectored writes: record batches go from their buffers to the socket without being copied
/// into a frame first. A frame over `max_frame_bytes` is an `InvalidData` error and nothing is
/// written (the peer's codec would refuse it anyway).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    segments: &[Bytes],
    max_frame_bytes: usize,
) -> std::io::Result<()> {
    let total: usize = segments.iter().map(Bytes::len).sum();
    if total > max_frame_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {total} bytes exceeds the limit of {max_frame_bytes}"),
        ));
    }
    let prefix = (total as u32).to_be_bytes();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(segments.len() + 1);
    slices.push(IoSlice::new(&prefix));
    slices.extend(
        segments
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| IoSlice::new(s)),
    );
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Encodes a request frame body (without the length prefix, which the codec adds).
pub fn encode_request<R: Request>(header: &RequestHeader, body: &R) -> Bytes {
    let mut buf = BytesMut::with_capacity(header.encoded_len() + 5 + body.encoded_len());
    // Encoding into a BytesMut that grows cannot fail.
    let _ = header.encode_length_delimited(&mut buf);
    let _ = body.encode(&mut buf);
    buf.freeze()
}

/// Splits a request frame into its header and the undecoded body.
pub fn decode_request_header(mut frame: Bytes) -> Result<(RequestHeader, Bytes), Error> {
    let header = RequestHeader::decode_length_delimited(&mut frame).map_err(Error::Decode)?;
    Ok((header, frame))
}

/// Encodes a response frame; `body` is `None` when the header carries a request-level error.
pub fn encode_response<M: Message>(header: &ResponseHeader, body: Option<&M>) -> Bytes {
    let body_len = body.map_or(0, Message::encoded_len);
    let mut buf = BytesMut::with_capacity(header.encoded_len() + 5 + body_len);
    let _ = header.encode_length_delimited(&mut buf);
    if let Some(b) = body {
        let _ = b.encode(&mut buf);
    }
    buf.freeze()
}

/// Splits a response frame into its header and the undecoded body.
pub fn decode_response_header(mut frame: Bytes) -> Result<(ResponseHeader, Bytes), Error> {
    let header = ResponseHeader::decode_length_delimited(&mut frame).map_err(Error::Decode)?;
    Ok((header, frame))
}

/// Decodes a message body from its bytes (zero-copy for `bytes` fields).
pub fn decode_body<M: Message + Default>(body: Bytes) -> Result<M, Error> {
    M::decode(body).map_err(Error::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    #[test]
    fn request_round_trip_shares_record_bytes() {
        let records = Bytes::from(vec![7u8; 1000]);
        let req = ProduceRequest {
            acks: -1,
            timeout_ms: 100,
            topics: vec![ProduceTopic {
                name: "t".into(),
                partitions: vec![ProducePartition {
                    partition: 0,
                    records: records.clone(),
                }],
            }],
        };
        let header = RequestHeader {
            api_key: 6,
            api_version: 1,
            correlation_id: 42,
            client_id: "c".into(),
        };
        let frame = encode_request(&header, &req);
        let (h, body) = decode_request_header(frame.clone()).unwrap();
        assert_eq!(h, header);
        let decoded: ProduceRequest = decode_body(body).unwrap();
        assert_eq!(decoded, req);
        let got = &decoded.topics[0].partitions[0].records;
        // Zero-copy: the decoded field points into the frame's buffer.
        let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert!(frame_range.contains(&(got.as_ptr() as usize)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [&b""[..], &b"\xff\xff\xff\xff\xff"[..], &b"\x05\x01"[..]] {
            let _ = decode_request_header(Bytes::copy_from_slice(junk));
        }
        assert!(decode_request_header(Bytes::from_static(b"\xff\xff\xff\xff\xff\xff")).is_err());
    }
}
