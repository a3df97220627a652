//! Reading field-table values the way the broker needs them: any integer width as one number, short
//! and long strings alike, string arrays (CC/BCC), and RabbitMQ's type names for error texts. One
//! place, so that arguments, header matching, dead-lettering and SASL agree on what a value is.

use amq_protocol::types::{AMQPValue, FieldTable};

/// The type names RabbitMQ's table parser gives values (used in its error texts).
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// An integer of any width. Not a timestamp: RabbitMQ's argument checks (`x-message-ttl`,
/// `x-max-length`, `x-priority`...) refuse one, so a timestamp argument gets their 406.
pub fn as_int(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => i128::from(*x),
        AMQPValue::ShortShortUInt(x) => i128::from(*x),
        AMQPValue::ShortInt(x) => i128::from(*x),
        AMQPValue::ShortUInt(x) => i128::from(*x),
        AMQPValue::LongInt(x) => i128::from(*x),
        AMQPValue::LongUInt(x) => i128::from(*x),
        AMQPValue::LongLongInt(x) => i128::from(*x),
        _ => return None,
    })
}

/// An integer of any width or a timestamp, as one number: the headers exchange compares values
/// without their types (rabbit_exchange_type_headers matches on the Erlang value, and a timestamp
/// is an integer there), so a `T` header matches an integer binding argument of the same value.
pub fn as_number(v: &AMQPValue) -> Option<i128> {
    match v {
        AMQPValue::Timestamp(x) => Some(i128::from(*x)),
        other => as_int(other),
    }
}

/// A short or long string as text (a long string that is not UTF-8 is read lossily).
pub fn as_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A short or long string's bytes, exactly.
pub fn as_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// A header holding an array of strings (CC, BCC), as a list; anything else is no list.
pub fn string_list(headers: &FieldTable, key: &str) -> Vec<String> {
    match headers.inner().get(key) {
        Some(AMQPValue::FieldArray(items)) => items.as_slice().iter().filter_map(as_text).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{FieldArray, LongString};

    #[test]
    fn a_timestamp_is_a_number_but_not_an_integer_argument() {
        assert_eq!(as_int(&AMQPValue::Timestamp(5)), None);
        assert_eq!(as_number(&AMQPValue::Timestamp(5)), Some(5));
        assert_eq!(as_number(&AMQPValue::ShortUInt(5)), Some(5));
        assert_eq!(type_name(&AMQPValue::Timestamp(5)), "timestamp");
    }

    #[test]
    fn string_lists_skip_what_is_not_a_string() {
        let mut t = FieldTable::default();
        let items = vec![
            AMQPValue::LongString(LongString::from("a")),
            AMQPValue::LongInt(1),
            AMQPValue::LongString(LongString::from(&b"b\xff"[..])),
        ];
        t.insert("CC".into(), AMQPValue::FieldArray(FieldArray::from(items)));
        assert_eq!(string_list(&t, "CC"), ["a", "b\u{fffd}"]);
        assert!(string_list(&t, "BCC").is_empty());
    }
}
