//! Output formats of the CLI: the JSON lines of `consume` and `produce`, and aligned tables.
//!
//! JSON field order is part of the contract, so records are serialized from structs (serde
//! keeps declaration order), never from maps. Bytes are UTF-8 strings when valid UTF-8, else
//! `{"base64":"..."}`.

use base64::Engine;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::consumer::ConsumerRecord;
use crate::protocol::Header;

/// Record bytes in JSON: a string when valid UTF-8, else `{"base64":"..."}`.
pub struct JsonBytes<'a>(pub &'a [u8]);

impl Serialize for JsonBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut map = s.serialize_map(Some(1))?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(self.0);
                map.serialize_entry("base64", &encoded)?;
                map.end()
            }
        }
    }
}

/// Record headers as a JSON object, in record order (a repeated key appears twice).
struct JsonHeaders<'a>(&'a [Header]);

impl Serialize for JsonHeaders<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for h in self.0 {
            // Header keys are strings in Kafka; a non-UTF-8 key is shown lossily.
            let key = String::from_utf8_lossy(&h.key);
            map.serialize_entry(&key, &h.value.as_deref().map(JsonBytes))?;
        }
        map.end()
    }
}

/// One consumed record, fields in contract order.
#[derive(Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    timestamp_ms: Option<i64>,
    key: Option<JsonBytes<'a>>,
    value: Option<JsonBytes<'a>>,
    headers: JsonHeaders<'a>,
}

/// The JSON line `consume --format json` prints for a record (without the newline).
pub fn record_json(r: &ConsumerRecord) -> String {
    let json = JsonRecord {
        topic: &r.topic,
        partition: r.partition,
        offset: r.offset.0,
        timestamp_ms: r.timestamp.map(|t| t.as_millis()),
        key: r.key.as_deref().map(JsonBytes),
        value: r.value.as_deref().map(JsonBytes),
        headers: JsonHeaders(&r.headers),
    };
    // Serializing strings, numbers and maps with string keys into a String cannot fail.
    serde_json::to_string(&json).unwrap_or_default()
}

/// One acknowledged record, fields in contract order.
#[derive(Serialize)]
struct JsonAck {
    line: u64,
    partition: u32,
    offset: Option<u64>,
}

/// The JSON line `produce --format json` prints for an acknowledged record; `offset` is null
/// with acks=0, where the broker never says.
pub fn ack_json(line: u64, partition: u32, offset: Option<u64>) -> String {
    serde_json::to_string(&JsonAck {
        line,
        partition,
        offset,
    })
    .unwrap_or_default()
}

/// Renders rows under headers, columns left-aligned and separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let width = widths.get(i).copied().unwrap_or(0);
            text.push_str(&format!("{cell:<width$}"));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A list of ids as `1,2,3`, or `-` when empty.
pub fn id_list<T: std::fmt::Display>(ids: &[T]) -> String {
    if ids.is_empty() {
        return "-".to_owned();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Ranges shown by [`line_ranges`] before it abbreviates, so the error stays one readable line.
const LINE_RANGES_SHOWN_MAX: usize = 20;

/// Line numbers as compact ranges: `1, 3-5, 9`; more than a screenful ends in `...`.
pub fn line_ranges(lines: &[u64]) -> String {
    let mut sorted = lines.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if parts.len() > LINE_RANGES_SHOWN_MAX {
        parts.truncate(LINE_RANGES_SHOWN_MAX);
        parts.push("...".to_owned());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Offset, Timestamp};
    use bytes::Bytes;

    fn record(key: Option<&'static [u8]>, value: Option<&'static [u8]>) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset: Offset(42),
            timestamp: Some(Timestamp(1_700_000_000_000)),
            key: key.map(Bytes::from_static),
            value: value.map(Bytes::from_static),
            headers: Vec::new(),
        }
    }

    #[test]
    fn json_record_matches_the_contract() {
        assert_eq!(
            record_json(&record(Some(b"k"), Some(b"v"))),
            r#"{"topic":"t","partition":0,"offset":42,"timestamp_ms":1700000000000,"key":"k","value":"v","headers":{}}"#
        );
        assert_eq!(
            record_json(&record(None, None)),
            r#"{"topic":"t","partition":0,"offset":42,"timestamp_ms":1700000000000,"key":null,"value":null,"headers":{}}"#
        );
    }

    #[test]
    fn invalid_utf8_is_base64() {
        let r = record(Some(b"\xff\x00"), Some(b"ok \"quoted\""));
        assert_eq!(
            record_json(&r),
            r#"{"topic":"t","partition":0,"offset":42,"timestamp_ms":1700000000000,"key":{"base64":"/wA="},"value":"ok \"quoted\"","headers":{}}"#
        );
    }

    #[test]
    fn headers_and_missing_timestamps() {
        let mut r = record(None, Some(b"v"));
        r.timestamp = None;
        r.headers = vec![
            Header {
                key: Bytes::from_static(b"a"),
                value: Some(Bytes::from_static(b"1")),
            },
            Header {
                key: Bytes::from_static(b"b"),
                value: None,
            },
            Header {
                key: Bytes::from_static(b"c"),
                value: Some(Bytes::from_static(b"\xfe")),
            },
        ];
        assert_eq!(
            record_json(&r),
            r#"{"topic":"t","partition":0,"offset":42,"timestamp_ms":null,"key":null,"value":"v","headers":{"a":"1","b":null,"c":{"base64":"/g=="}}}"#
        );
    }

    #[test]
    fn ack_lines() {
        assert_eq!(
            ack_json(3, 1, Some(7)),
            r#"{"line":3,"partition":1,"offset":7}"#
        );
        assert_eq!(
            ack_json(1, 0, None),
            r#"{"line":1,"partition":0,"offset":null}"#
        );
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "ADDRESS"],
            &[
                vec!["1".into(), "127.0.0.1:7092".into()],
                vec!["10".into(), "h:1".into()],
            ],
        );
        assert_eq!(t, "ID  ADDRESS\n1   127.0.0.1:7092\n10  h:1\n");
    }

    #[test]
    fn ranges() {
        assert_eq!(line_ranges(&[9, 1, 3, 4, 5]), "1, 3-5, 9");
        assert_eq!(line_ranges(&[]), "");
        let every_other: Vec<u64> = (0..100).map(|i| i * 2).collect();
        assert!(line_ranges(&every_other).ends_with("36, 38, ..."));
        assert_eq!(id_list::<u32>(&[]), "-");
        assert_eq!(id_list(&[1, 2]), "1,2");
    }
}
