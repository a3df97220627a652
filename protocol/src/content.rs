//! Content headers (spec 4.2.6.1) kept as raw bytes, with a read-only view of the basic properties.
//!
//! The broker forwards the property bytes exactly as the publisher sent them (field order, type tags and
//! non-UTF-8 strings included) and only looks inside for the few properties it acts on.

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::FieldTable;
use bytes::Bytes;

/// Returns the raw properties with the header `key` set to the long string `value`: entries already
/// carrying that key are removed and the new one appended; every other byte stays as the publisher sent
/// it (the broker uses this to stamp the authenticated publisher into each message).
pub fn stamp_header(raw: &[u8], key: &str, value: &[u8]) -> Result<Bytes, ContentError> {
    edit_headers(raw, &[key], Some((key, value)))
}

/// Returns the raw properties with every header entry named in `remove` dropped and, if given, one
/// long-string entry appended (the headers table is created if absent). Every other byte stays as sent.
pub fn edit_headers(
    raw: &[u8],
    remove: &[&str],
    append: Option<(&str, &[u8])>,
) -> Result<Bytes, ContentError> {
    let mut entry = Vec::new();
    if let Some((key, value)) = append {
        entry.push(key.len() as u8);
        entry.extend_from_slice(key.as_bytes());
        entry.push(b'S');
        entry.extend_from_slice(&(value.len() as u32).to_be_bytes());
        entry.extend_from_slice(value);
    }
    splice_headers(raw, remove, &entry).map(Bytes::from)
}

/// The raw properties with the header entries named in `remove` dropped and `append` (encoded
/// entries, see [`encode_entries`]) added at the end of the headers table, which is created if absent.
fn splice_headers(raw: &[u8], remove: &[&str], append: &[u8]) -> Result<Vec<u8>, ContentError> {
    let (flags, mut r) = Reader::after_flags(raw)?;
    let has = |bit: u16| flags & (1 << (15 - bit)) != 0;
    if has(0) {
        r.short_str()?;
    }
    if has(1) {
        r.short_str()?;
    }
    let headers_start = raw.len() - r.buf.len();
    let old = if has(2) { Some(r.table()?) } else { None };
    if let Some(table) = old {
        crate::nesting::check_table(table).map_err(|_| ContentError::BadProperties)?;
    }
    let headers_end = raw.len() - r.buf.len();

    let mut table = Vec::with_capacity(old.map_or(0, <[u8]>::len) + append.len());
    for entry in entries(old.unwrap_or_default())? {
        if !remove.iter().any(|k| k.as_bytes() == entry.key) {
            table.extend_from_slice(entry.bytes);
        }
    }
    table.extend_from_slice(append);
    let len = u32::try_from(table.len()).map_err(|_| ContentError::BadProperties)?;

    let mut out = Vec::with_capacity(raw.len() + append.len() + 4);
    out.extend_from_slice(&raw[..headers_start]);
    out[..2].copy_from_slice(&(flags | 1 << 13).to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&table);
    out.extend_from_slice(&raw[headers_end..]);
    Ok(out)
}

/// The entries of a headers table (see [`crate::nesting::entries`]).
fn entries(body: &[u8]) -> Result<Vec<crate::nesting::Entry<'_>>, ContentError> {
    crate::nesting::entries(body).map_err(|_| ContentError::BadProperties)
}

/// The header entries named in `keys`, each decoded on its own: one whose value does not decode (a
/// non-UTF-8 string inside, which the broker forwards but cannot read) is left out, the rest kept.
/// Empty when there are no headers.
pub fn header_entries(raw: &[u8], keys: &[&str]) -> Result<FieldTable, ContentError> {
    let p = BasicProperties::parse(raw)?;
    let mut found = FieldTable::default();
    for entry in entries(p.headers.unwrap_or_default())? {
        if !keys.iter().any(|k| k.as_bytes() == entry.key) {
            continue;
        }
        if let Ok(t) = crate::nesting::parse_table(entry.bytes) {
            for (k, v) in t.inner() {
                found.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(found)
}

/// The entries of `table` encoded as they appear inside a headers table (no length prefix).
pub fn encode_entries(table: &FieldTable) -> Result<Vec<u8>, ContentError> {
    let ctx = gen_field_table(table)(WriteContext::from(Vec::new()))
        .map_err(|_| ContentError::BadProperties)?;
    Ok(ctx.write.get(4..).unwrap_or_default().to_vec())
}

/// Raw properties changed as dead-lettering changes a message: the header entries named in `remove`
/// dropped, the entries of `append` added, and the expiration (the per-message TTL) dropped when
/// asked. Every other byte stays as the publisher sent it, non-UTF-8 strings included, so a
/// consumer of the dead letter sees what was published plus the broker's own headers.
pub fn splice_properties(
    raw: &[u8],
    remove: &[&str],
    append: &FieldTable,
    drop_expiration: bool,
) -> Result<Bytes, ContentError> {
    let spliced = splice_headers(raw, remove, &encode_entries(append)?)?;
    let p = BasicProperties::parse(&spliced)?;
    if !drop_expiration || p.expiration.is_none() {
        return Ok(Bytes::from(spliced));
    }
    Ok(Bytes::from(p.encode_without_expiration()))
}

/// A content header frame's payload: class, body size and the untouched property list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    /// Property flags followed by the property values, as received.
    pub properties: Bytes,
}

/// Why a content header or its properties are malformed (502 SYNTAX_ERROR / 505 UNEXPECTED_FRAME).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContentError {
    #[error("content header shorter than 14 octets")]
    TooShort,
    #[error("malformed basic properties")]
    BadProperties,
}

impl ContentHeader {
    pub fn parse(payload: Bytes) -> Result<Self, ContentError> {
        if payload.len() < 14 {
            return Err(ContentError::TooShort);
        }
        let class_id = u16::from_be_bytes([payload[0], payload[1]]);
        let body_size = u64::from_be_bytes([
            payload[4],
            payload[5],
            payload[6],
            payload[7],
            payload[8],
            payload[9],
            payload[10],
            payload[11],
        ]);
        let properties = payload.slice(12..);
        BasicProperties::parse(&properties)?;
        Ok(ContentHeader {
            class_id,
            body_size,
            properties,
        })
    }
}

/// Offsets of the basic-class properties inside a raw property list; values are read on demand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasicProperties<'a> {
    pub content_type: Option<&'a [u8]>,
    pub content_encoding: Option<&'a [u8]>,
    /// The headers field table's encoded bytes (without its length prefix).
    pub headers: Option<&'a [u8]>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<&'a [u8]>,
    pub reply_to: Option<&'a [u8]>,
    pub expiration: Option<&'a [u8]>,
    pub message_id: Option<&'a [u8]>,
    pub timestamp: Option<u64>,
    pub kind: Option<&'a [u8]>,
    pub user_id: Option<&'a [u8]>,
    pub app_id: Option<&'a [u8]>,
    pub cluster_id: Option<&'a [u8]>,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The property-flags word of `raw` and a reader at the first property value. A continuation
    /// flag (bit 0) is refused: the basic class has 14 properties, so no client needs a second flag
    /// word, and decoders disagree on what follows one (RabbitMQ, py-amqp and amq-protocol ignore the
    /// bit and read the next word as property data). Accepting it would let the bytes Warren checks
    /// differ from the bytes a consumer or the re-encoder decodes: a forged header, or a nesting
    /// bound checked on one table while another is parsed.
    fn after_flags(raw: &'a [u8]) -> Result<(u16, Self), ContentError> {
        let mut r = Reader { buf: raw };
        let head = r.take(2)?;
        let flags = u16::from_be_bytes([head[0], head[1]]);
        if flags & 1 != 0 {
            return Err(ContentError::BadProperties);
        }
        Ok((flags, r))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ContentError> {
        if self.buf.len() < n {
            return Err(ContentError::BadProperties);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ContentError> {
        Ok(self.take(1)?[0])
    }
    fn short_str(&mut self) -> Result<&'a [u8], ContentError> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn table(&mut self) -> Result<&'a [u8], ContentError> {
        let n = self.take(4)?;
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        self.take(n)
    }
    fn u64(&mut self) -> Result<u64, ContentError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

impl<'a> BasicProperties<'a> {
    /// Locates every property present in `raw` (flags + values). A continuation flag or bytes after
    /// the last property are refused, so that every decoder sees exactly the properties Warren saw.
    pub fn parse(raw: &'a [u8]) -> Result<Self, ContentError> {
        let (flags, mut r) = Reader::after_flags(raw)?;
        let has = |bit: u16| flags & (1 << (15 - bit)) != 0;
        let mut p = BasicProperties::default();
        if has(0) {
            p.content_type = Some(r.short_str()?);
        }
        if has(1) {
            p.content_encoding = Some(r.short_str()?);
        }
        if has(2) {
            let table = r.table()?;
            // Every later decode of these headers relies on this bound (see `nesting`).
            crate::nesting::check_table(table).map_err(|_| ContentError::BadProperties)?;
            p.headers = Some(table);
        }
        if has(3) {
            p.delivery_mode = Some(r.u8()?);
        }
        if has(4) {
            p.priority = Some(r.u8()?);
        }
        if has(5) {
            p.correlation_id = Some(r.short_str()?);
        }
        if has(6) {
            p.reply_to = Some(r.short_str()?);
        }
        if has(7) {
            p.expiration = Some(r.short_str()?);
        }
        if has(8) {
            p.message_id = Some(r.short_str()?);
        }
        if has(9) {
            p.timestamp = Some(r.u64()?);
        }
        if has(10) {
            p.kind = Some(r.short_str()?);
        }
        if has(11) {
            p.user_id = Some(r.short_str()?);
        }
        if has(12) {
            p.app_id = Some(r.short_str()?);
        }
        if has(13) {
            p.cluster_id = Some(r.short_str()?);
        }
        if !r.buf.is_empty() {
            return Err(ContentError::BadProperties);
        }
        Ok(p)
    }

    /// The property list again, byte for byte, without the expiration.
    fn encode_without_expiration(&self) -> Vec<u8> {
        let mut flags = 0u16;
        let mut out = vec![0, 0];
        let short = |out: &mut Vec<u8>, v: &[u8]| {
            out.push(v.len() as u8);
            out.extend_from_slice(v);
        };
        for (bit, v) in [(0, self.content_type), (1, self.content_encoding)] {
            if let Some(v) = v {
                flags |= 1 << (15 - bit);
                short(&mut out, v);
            }
        }
        if let Some(t) = self.headers {
            flags |= 1 << 13;
            out.extend_from_slice(&(t.len() as u32).to_be_bytes());
            out.extend_from_slice(t);
        }
        for (bit, v) in [(3, self.delivery_mode), (4, self.priority)] {
            if let Some(v) = v {
                flags |= 1 << (15 - bit);
                out.push(v);
            }
        }
        for (bit, v) in [
            (5, self.correlation_id),
            (6, self.reply_to),
            (8, self.message_id),
        ] {
            if let Some(v) = v {
                flags |= 1 << (15 - bit);
                short(&mut out, v);
            }
        }
        if let Some(v) = self.timestamp {
            flags |= 1 << 6;
            out.extend_from_slice(&v.to_be_bytes());
        }
        for (bit, v) in [
            (10, self.kind),
            (11, self.user_id),
            (12, self.app_id),
            (13, self.cluster_id),
        ] {
            if let Some(v) = v {
                flags |= 1 << (15 - bit);
                short(&mut out, v);
            }
        }
        out[..2].copy_from_slice(&flags.to_be_bytes());
        out
    }

    /// The headers table decoded, for routing on headers exchanges. `None` when absent or malformed.
    pub fn headers_table(&self) -> Option<FieldTable> {
        crate::nesting::parse_table(self.headers?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
    use amq_protocol::types::{AMQPValue, LongString};

    fn encode(props: &AMQPProperties) -> Vec<u8> {
        gen_properties(props)(WriteContext::from(Vec::new()))
            .unwrap()
            .write
    }

    #[test]
    fn finds_every_property() {
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongString(LongString::from("v")));
        let props = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers.clone())
            .with_delivery_mode(2)
            .with_priority(7)
            .with_expiration("1000".into())
            .with_timestamp(99)
            .with_user_id("admin".into())
            .with_cluster_id("c".into());
        let raw = encode(&props);
        let p = BasicProperties::parse(&raw).unwrap();
        assert_eq!(p.content_type, Some(&b"text/plain"[..]));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.priority, Some(7));
        assert_eq!(p.expiration, Some(&b"1000"[..]));
        assert_eq!(p.timestamp, Some(99));
        assert_eq!(p.user_id, Some(&b"admin"[..]));
        assert_eq!(p.cluster_id, Some(&b"c"[..]));
        assert_eq!(p.headers_table(), Some(headers));
    }

    #[test]
    fn splicing_changes_only_what_the_edit_touches() {
        let raw = encode(
            &AMQPProperties::default()
                .with_app_id("app".into())
                .with_expiration("5".into()),
        );
        let out = splice_properties(&raw, &[], &FieldTable::default(), true).unwrap();
        let p = BasicProperties::parse(&out).unwrap();
        assert_eq!((p.app_id, p.expiration), (Some(&b"app"[..]), None));
        assert_eq!(p.headers_table(), Some(FieldTable::default()));
        let kept = splice_properties(&raw, &[], &FieldTable::default(), false).unwrap();
        assert_eq!(
            BasicProperties::parse(&kept).unwrap().expiration,
            Some(&b"5"[..])
        );
    }

    /// What amq-protocol cannot decode (a non-UTF-8 short string, here in content-type and in a
    /// header) survives a splice byte for byte, and the entries asked for are read around it.
    #[test]
    fn splicing_keeps_bytes_no_decoder_reads() {
        let mut raw = vec![0b1110_0001, 0b0000_0000]; // content-type, encoding, headers, expiration
        raw.extend_from_slice(b"\x02\xff\xfe"); // content-type: not UTF-8
        raw.extend_from_slice(b"\x04gzip");
        let mut table = Vec::new();
        table.extend_from_slice(b"\x03badF\x00\x00\x00\x08\x02\xc3\x28S\x00\x00\x00\x00"); // a key not UTF-8
        table.extend_from_slice(b"\x07x-deathA\x00\x00\x00\x00"); // empty array
        table.extend_from_slice(b"\x02CCA\x00\x00\x00\x06S\x00\x00\x00\x01k");
        raw.extend_from_slice(&(table.len() as u32).to_be_bytes());
        raw.extend_from_slice(&table);
        raw.extend_from_slice(b"\x0260");
        assert!(BasicProperties::parse(&raw)
            .unwrap()
            .headers_table()
            .is_none());

        let found = header_entries(&raw, &["x-death", "CC", "bad", "absent"]).unwrap();
        let names: Vec<&str> = found.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["CC", "x-death"],
            "the undecodable entry is left out"
        );

        let mut add = FieldTable::default();
        add.insert(
            "x-death".into(),
            AMQPValue::LongString(LongString::from("d")),
        );
        let out = splice_properties(&raw, &["x-death"], &add, true).unwrap();
        let p = BasicProperties::parse(&out).unwrap();
        assert_eq!(p.content_type, Some(&b"\xff\xfe"[..]));
        assert_eq!(p.content_encoding, Some(&b"gzip"[..]));
        assert_eq!(p.expiration, None);
        let headers = p.headers.unwrap();
        assert!(
            headers.starts_with(b"\x03badF\x00\x00\x00\x08\x02\xc3\x28S\x00\x00\x00\x00\x02CCA"),
            "{headers:?}"
        );
        assert!(
            headers.ends_with(b"\x07x-deathS\x00\x00\x00\x01d"),
            "{headers:?}"
        );
    }

    #[test]
    fn stamping_replaces_only_the_stamped_header() {
        let s = |x: &str| AMQPValue::LongString(LongString::from(x));
        // Publisher's table in its own order, with a forged stamp in the middle.
        let mut headers = FieldTable::default();
        headers.insert("a".into(), s("1"));
        headers.insert("x-warren-publisher".into(), s("forged"));
        headers.insert("z".into(), AMQPValue::LongLongInt(7));
        let raw = encode(
            &AMQPProperties::default()
                .with_content_type("t".into())
                .with_headers(headers)
                .with_app_id("x".into()),
        );
        let out = stamp_header(&raw, "x-warren-publisher", b"nova").unwrap();
        let p = BasicProperties::parse(&out).unwrap();
        let t = p.headers_table().unwrap();
        assert_eq!(t.inner().get("x-warren-publisher"), Some(&s("nova")));
        assert_eq!(t.inner().get("a"), Some(&s("1")));
        assert_eq!(t.inner().get("z"), Some(&AMQPValue::LongLongInt(7)));
        assert_eq!(
            (p.content_type, p.app_id),
            (Some(&b"t"[..]), Some(&b"x"[..]))
        );

        // No headers at all: the flag is set and the table inserted in its place.
        let raw = encode(
            &AMQPProperties::default()
                .with_content_type("t".into())
                .with_delivery_mode(2),
        );
        let out = stamp_header(&raw, "x-warren-publisher", b"nova").unwrap();
        let p = BasicProperties::parse(&out).unwrap();
        assert_eq!(
            (p.content_type, p.delivery_mode),
            (Some(&b"t"[..]), Some(2))
        );
        assert_eq!(p.headers_table().unwrap().inner().len(), 1);
        // A table cut short is refused (fields after the table are validated when the header arrives).
        let mut headers = FieldTable::default();
        headers.insert("a".into(), s("1"));
        let raw = encode(&AMQPProperties::default().with_headers(headers));
        assert!(stamp_header(&raw[..raw.len() - 2], "k", b"v").is_err());
    }

    #[test]
    fn truncated_properties_are_refused() {
        let raw = encode(&AMQPProperties::default().with_app_id("app".into()));
        assert_eq!(
            BasicProperties::parse(&raw[..raw.len() - 1]),
            Err(ContentError::BadProperties)
        );
        assert!(ContentHeader::parse(Bytes::from_static(&[0, 60, 0, 0])).is_err());
    }
}
