//! A bound on how deeply field tables and arrays nest, checked before anything decodes them.
//!
//! The table parser (amq-protocol's) recurses once per level, so a frame of a few KiB nesting tables a
//! thousand deep would overflow a worker's stack and take the whole broker down. AMQP puts no limit on
//! nesting; real clients use two or three levels. This scanner walks the encoding without allocating,
//! with its own recursion capped at [`MAX_DEPTH`], and refuses anything deeper.

use crate::constants::*;

/// Deepest nesting of tables/arrays accepted (the outermost table is depth 1).
pub const MAX_DEPTH: usize = 64;

/// Why a table was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("field tables nested deeper than {MAX_DEPTH} levels")]
pub struct TooDeep;

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<usize> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

/// Checks the body of a field table (the bytes after its length prefix). Malformed encodings are
/// accepted here: the real parser rejects them; only excessive depth is this function's business.
pub fn check_table(body: &[u8]) -> Result<(), TooDeep> {
    table(body, 1)
}

fn table(body: &[u8], depth: usize) -> Result<(), TooDeep> {
    if depth > MAX_DEPTH {
        return Err(TooDeep);
    }
    let mut c = Cursor { buf: body };
    while !c.buf.is_empty() {
        let Some(klen) = c.take(1) else { return Ok(()) };
        if c.take(klen[0] as usize).is_none() {
            return Ok(());
        }
        if !value(&mut c, depth)? {
            return Ok(());
        }
    }
    Ok(())
}

fn array(body: &[u8], depth: usize) -> Result<(), TooDeep> {
    if depth > MAX_DEPTH {
        return Err(TooDeep);
    }
    let mut c = Cursor { buf: body };
    while !c.buf.is_empty() {
        if !value(&mut c, depth)? {
            return Ok(());
        }
    }
    Ok(())
}

/// Skips one tagged value; false when the encoding ends or is not understood (left to the parser).
fn value(c: &mut Cursor<'_>, depth: usize) -> Result<bool, TooDeep> {
    let Some(tag) = c.take(1) else {
        return Ok(false);
    };
    let fixed = match tag[0] {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'x' => match c.u32() {
            Some(n) => n,
            None => return Ok(false),
        },
        b'F' | b'A' => {
            let Some(n) = c.u32() else { return Ok(false) };
            let Some(inner) = c.take(n) else {
                return Ok(false);
            };
            if tag[0] == b'F' {
                table(inner, depth + 1)?;
            } else {
                array(inner, depth + 1)?;
            }
            return Ok(true);
        }
        _ => return Ok(false),
    };
    Ok(c.take(fixed).is_some())
}

/// Where the field-table argument of a client-sent method starts, for the methods that carry one
/// (connection.start-ok, exchange.declare/bind/unbind, queue.declare/bind/unbind, basic.consume).
fn table_offset(payload: &[u8]) -> Option<usize> {
    let class = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
    let method = u16::from_be_bytes([*payload.get(2)?, *payload.get(3)?]);
    // The fields before the table: 's' short string, 'h' u16 (ticket), 'b' one octet of bits.
    let layout: &[u8] = match (class, method) {
        (CLASS_CONNECTION, 11) => b"",
        (CLASS_EXCHANGE, 10) => b"hssb",
        (CLASS_EXCHANGE, 30) | (CLASS_EXCHANGE, 40) => b"hsssb",
        (CLASS_QUEUE, 10) => b"hsb",
        (CLASS_QUEUE, 20) => b"hsssb",
        (CLASS_QUEUE, 50) => b"hsss",
        (CLASS_BASIC, 20) => b"hssb",
        _ => return None,
    };
    let mut at = 4;
    for field in layout {
        at += match field {
            b's' => 1 + *payload.get(at)? as usize,
            b'h' => 2,
            _ => 1,
        };
    }
    Some(at)
}

/// Refuses a method whose table argument nests too deeply (other methods carry no table).
pub fn check_method(payload: &[u8]) -> Result<(), TooDeep> {
    let Some(at) = table_offset(payload) else {
        return Ok(());
    };
    let Some(len) = payload.get(at..at + 4) else {
        return Ok(());
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    match payload.get(at + 4..).and_then(|rest| rest.get(..len)) {
        Some(body) => check_table(body),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table holding one key whose value is a table, `depth` levels deep in all.
    fn nested(depth: usize) -> Vec<u8> {
        let mut body = b"\x01kS\x00\x00\x00\x01v".to_vec();
        for _ in 1..depth {
            let mut outer = b"\x01kF".to_vec();
            outer.extend_from_slice(&(body.len() as u32).to_be_bytes());
            outer.extend_from_slice(&body);
            body = outer;
        }
        body
    }

    #[test]
    fn depth_is_bounded_without_deep_recursion() {
        assert_eq!(check_table(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(check_table(&nested(MAX_DEPTH + 1)), Err(TooDeep));
        // Far deeper than any stack could parse recursively: refused, not overflowed.
        assert_eq!(check_table(&nested(20_000)), Err(TooDeep));
        assert_eq!(
            check_table(b"\x05short"),
            Ok(()),
            "malformed input is left to the parser"
        );
    }

    #[test]
    fn finds_the_table_argument_of_queue_declare() {
        let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        let table = nested(200);
        payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
        payload.extend_from_slice(&table);
        assert_eq!(check_method(&payload), Err(TooDeep));
        assert_eq!(
            check_method(&[0, 60, 0, 40, 0, 0]),
            Ok(()),
            "basic.publish has no table"
        );
    }
}
