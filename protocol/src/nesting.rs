//! A bound on how deeply field tables and arrays nest, checked before anything decodes them.
//!
//! The table parser (amq-protocol's) recurses once per level, so a frame of a few KiB nesting tables a
//! thousand deep would overflow a worker's stack and take the whole broker down. AMQP puts no limit on
//! nesting; real clients use two or three levels. This scanner walks the encoding without allocating,
//! with its own recursion capped at [`MAX_DEPTH`], and refuses anything deeper.
//!
//! It fails closed: it understands every field type the parser accepts (amq-protocol's
//! `AMQPType::from_id`, including the spec's `U` short int that RabbitMQ does not send) and refuses any
//! other tag and any truncated value, so the parser never sees bytes this scan did not walk. (A scan that
//! stopped at an unknown tag once let a `U` entry hide 18,000 levels of tables behind it.)

use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::FieldTable;

use crate::constants::*;

/// Deepest nesting of tables/arrays accepted (the outermost table is depth 1). Real clients use two or
/// three levels (x-death: headers, array, table). 32 also keeps a durable queue's or binding's
/// arguments readable when stored as JSON: two JSON levels per table, under serde_json's limit of 128.
pub const MAX_DEPTH: usize = 32;

/// Why a table was refused before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Nesting beyond [`MAX_DEPTH`].
    #[error("field tables nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A field type the decoder does not know, or a value cut short.
    #[error("malformed field table")]
    Malformed,
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TableError> {
        if self.buf.len() < n {
            return Err(TableError::Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<usize, TableError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

/// Checks the body of a field table (the bytes after its length prefix): every entry must be well
/// formed and no table or array may nest deeper than [`MAX_DEPTH`].
pub(crate) fn check_table(body: &[u8]) -> Result<(), TableError> {
    table(body, 1)
}

fn table(body: &[u8], depth: usize) -> Result<(), TableError> {
    if depth > MAX_DEPTH {
        return Err(TableError::TooDeep);
    }
    let mut c = Cursor { buf: body };
    while !c.buf.is_empty() {
        let klen = c.take(1)?[0] as usize;
        c.take(klen)?;
        value(&mut c, depth)?;
    }
    Ok(())
}

fn array(body: &[u8], depth: usize) -> Result<(), TableError> {
    if depth > MAX_DEPTH {
        return Err(TableError::TooDeep);
    }
    let mut c = Cursor { buf: body };
    while !c.buf.is_empty() {
        value(&mut c, depth)?;
    }
    Ok(())
}

/// Skips one tagged value. The tags are exactly those of amq-protocol's `AMQPType::from_id`.
fn value(c: &mut Cursor<'_>, depth: usize) -> Result<(), TableError> {
    let tag = c.take(1)?[0];
    let fixed = match tag {
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'x' => c.u32()?,
        b'F' | b'A' => {
            let n = c.u32()?;
            let inner = c.take(n)?;
            return if tag == b'F' {
                table(inner, depth + 1)
            } else {
                array(inner, depth + 1)
            };
        }
        _ => return Err(TableError::Malformed),
    };
    c.take(fixed).map(|_| ())
}

/// One entry of an encoded field table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a [u8],
    /// The whole entry: key length, key, type tag and value.
    pub bytes: &'a [u8],
}

/// The entries of a field-table body, checked as [`check_table`] does: each key with the bytes of its
/// whole entry (key length, key, tag and value), nothing decoded, so keys and strings no decoder
/// accepts (a non-UTF-8 key) are walked like any other.
pub fn entries(body: &[u8]) -> Result<Vec<Entry<'_>>, TableError> {
    let mut c = Cursor { buf: body };
    let mut out = Vec::new();
    while !c.buf.is_empty() {
        let start = c.buf;
        let klen = c.take(1)?[0] as usize;
        let key = c.take(klen)?;
        value(&mut c, 1)?;
        out.push(Entry {
            key,
            bytes: &start[..start.len() - c.buf.len()],
        });
    }
    Ok(out)
}

/// Decodes a field-table body (the bytes after its length prefix) after [`check_table`]: the one way
/// this workspace turns untrusted table bytes into a `FieldTable`.
pub fn parse_table(body: &[u8]) -> Result<FieldTable, TableError> {
    check_table(body)?;
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(body);
    match parse_field_table(framed.as_slice()) {
        Ok(([], table)) => Ok(table),
        _ => Err(TableError::Malformed),
    }
}

/// Where the field-table argument of a method starts, for every method whose arguments include one
/// (amq-protocol decodes all of them, whichever side may send them: a client sending connection.start
/// still has its table parsed before the state machine refuses it). `Ok(None)`: the method has no
/// table; an error: it has one but the payload ends before it.
fn table_offset(payload: &[u8]) -> Result<Option<usize>, TableError> {
    let (Some(class), Some(method)) = (payload.get(..2), payload.get(2..4)) else {
        return Ok(None);
    };
    let ids = (
        u16::from_be_bytes([class[0], class[1]]),
        u16::from_be_bytes([method[0], method[1]]),
    );
    // The fields before the table: 's' short string, 'h' u16 (ticket), 'b' one octet (bits, versions).
    let layout: &[u8] = match ids {
        (CLASS_CONNECTION, 10) => b"bb",
        (CLASS_CONNECTION, 11) => b"",
        (CLASS_EXCHANGE, 10) => b"hssb",
        (CLASS_EXCHANGE, 30) | (CLASS_EXCHANGE, 40) => b"hsssb",
        (CLASS_QUEUE, 10) => b"hsb",
        (CLASS_QUEUE, 20) => b"hsssb",
        (CLASS_QUEUE, 50) => b"hsss",
        (CLASS_BASIC, 20) => b"hssb",
        _ => return Ok(None),
    };
    let mut at = 4;
    for field in layout {
        at += match field {
            b's' => 1 + *payload.get(at).ok_or(TableError::Malformed)? as usize,
            b'h' => 2,
            _ => 1,
        };
    }
    Ok(Some(at))
}

/// Checks the table argument of a method payload (methods without one pass).
pub(crate) fn check_method(payload: &[u8]) -> Result<(), TableError> {
    let Some(at) = table_offset(payload)? else {
        return Ok(());
    };
    let mut c = Cursor {
        buf: payload.get(at..).ok_or(TableError::Malformed)?,
    };
    let len = c.u32()?;
    check_table(c.take(len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `prefix` then one key whose value is a table, `depth` levels deep in all.
    fn nested_after(prefix: &[u8], depth: usize) -> Vec<u8> {
        let mut body = b"\x01kS\x00\x00\x00\x01v".to_vec();
        for _ in 1..depth {
            let mut outer = b"\x01kF".to_vec();
            outer.extend_from_slice(&(body.len() as u32).to_be_bytes());
            outer.extend_from_slice(&body);
            body = outer;
        }
        let mut all = prefix.to_vec();
        all.extend_from_slice(&body);
        all
    }

    fn nested(depth: usize) -> Vec<u8> {
        nested_after(b"", depth)
    }

    #[test]
    fn depth_is_bounded_without_deep_recursion() {
        assert_eq!(check_table(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(
            check_table(&nested(MAX_DEPTH + 1)),
            Err(TableError::TooDeep)
        );
        // Far deeper than any stack could parse recursively: refused, not overflowed.
        assert_eq!(check_table(&nested(20_000)), Err(TableError::TooDeep));
    }

    #[test]
    fn every_tag_the_parser_accepts_is_walked() {
        // One entry of each type the decoder knows (`U` is the spec's short int), then deep tables:
        // the scan must reach them (PROBE F1: it once stopped at `U`).
        let entries: &[&[u8]] = &[
            b"\x01at\x01",
            b"\x01bb\x01",
            b"\x01cB\x01",
            b"\x01ds\x00\x01",
            b"\x01eU\x00\x01",
            b"\x01fu\x00\x01",
            b"\x01gI\x00\x00\x00\x01",
            b"\x01hi\x00\x00\x00\x01",
            b"\x01if\x00\x00\x00\x01",
            b"\x01jl\x00\x00\x00\x00\x00\x00\x00\x01",
            b"\x01kL\x00\x00\x00\x00\x00\x00\x00\x01",
            b"\x01ld\x00\x00\x00\x00\x00\x00\x00\x01",
            b"\x01mT\x00\x00\x00\x00\x00\x00\x00\x01",
            b"\x01nD\x02\x00\x00\x00\x01",
            b"\x01oV",
            b"\x01pS\x00\x00\x00\x01z",
            b"\x01qx\x00\x00\x00\x01z",
            b"\x01rA\x00\x00\x00\x03U\x00\x01",
            b"\x01sF\x00\x00\x00\x00",
        ];
        for entry in entries {
            assert_eq!(check_table(&nested_after(entry, 3)), Ok(()), "{entry:?}");
            assert_eq!(
                check_table(&nested_after(entry, 18_000)),
                Err(TableError::TooDeep),
                "{entry:?}"
            );
        }
    }

    #[test]
    fn unknown_tags_and_truncation_are_refused() {
        assert_eq!(check_table(b"\x01aZ\x00"), Err(TableError::Malformed));
        assert_eq!(
            check_table(&nested_after(b"\x01aZ", 18_000)),
            Err(TableError::Malformed)
        );
        assert_eq!(check_table(b"\x05short"), Err(TableError::Malformed));
        assert_eq!(
            check_table(b"\x01aS\x00\x00\x00\x09ab"),
            Err(TableError::Malformed)
        );
        assert_eq!(check_table(b"\x01aI\x00"), Err(TableError::Malformed));
        assert_eq!(check_table(b""), Ok(()));
    }

    fn method(class: u16, method: u16, before: &[u8], table: &[u8]) -> Vec<u8> {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(before);
        payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
        payload.extend_from_slice(table);
        payload
    }

    #[test]
    fn finds_the_table_of_every_method_that_has_one() {
        let deep = nested_after(b"\x01aU\x00\x00", 200);
        let cases: &[(u16, u16, &[u8])] = &[
            (CLASS_CONNECTION, 10, b"\x00\x09"),
            (CLASS_CONNECTION, 11, b""),
            (CLASS_EXCHANGE, 10, b"\x00\x00\x01x\x05topic\x00"),
            (CLASS_EXCHANGE, 30, b"\x00\x00\x01x\x01y\x01k\x00"),
            (CLASS_EXCHANGE, 40, b"\x00\x00\x01x\x01y\x01k\x00"),
            (CLASS_QUEUE, 10, b"\x00\x00\x01q\x00"),
            (CLASS_QUEUE, 20, b"\x00\x00\x01q\x01x\x01k\x00"),
            (CLASS_QUEUE, 50, b"\x00\x00\x01q\x01x\x01k"),
            (CLASS_BASIC, 20, b"\x00\x00\x01q\x01c\x00"),
        ];
        for &(class, id, before) in cases {
            assert_eq!(
                check_method(&method(class, id, before, &deep)),
                Err(TableError::TooDeep),
                "{class}.{id}"
            );
            assert_eq!(
                check_method(&method(class, id, before, &nested(3))),
                Ok(()),
                "{class}.{id}"
            );
            // Cut short before or inside the table: refused, never half-scanned.
            let whole = method(class, id, before, &nested(3));
            assert_eq!(
                check_method(&whole[..whole.len() - 1]),
                Err(TableError::Malformed)
            );
        }
        assert_eq!(
            check_method(&[0, 60, 0, 40, 0, 0]),
            Ok(()),
            "basic.publish has no table"
        );
    }
}
