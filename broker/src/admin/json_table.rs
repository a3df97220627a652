//! AMQP field tables as JSON and back, as RabbitMQ's definitions files hold queue, exchange and
//! binding arguments: strings, numbers, booleans, lists and nested objects.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::{Map, Number, Value};

/// A field table as a JSON object (byte strings that are not UTF-8 are replaced lossily).
pub(crate) fn to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &AMQPValue) -> Value {
    use AMQPValue::*;
    match v {
        Boolean(b) => Value::Bool(*b),
        ShortShortInt(n) => Value::from(*n),
        ShortShortUInt(n) => Value::from(*n),
        ShortInt(n) => Value::from(*n),
        ShortUInt(n) => Value::from(*n),
        LongInt(n) => Value::from(*n),
        LongUInt(n) => Value::from(*n),
        LongLongInt(n) => Value::from(*n),
        Timestamp(n) => Value::from(*n),
        Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        DecimalValue(d) => {
            let value = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(value).map_or(Value::Null, Value::Number)
        }
        ShortString(s) => Value::String(s.as_str().to_string()),
        LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
        FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        FieldTable(t) => to_json(t),
        Void => Value::Null,
    }
}

/// A JSON object as a field table (RabbitMQ's types: integers as signed 64-bit, other numbers as
/// doubles, strings as long strings); at `path`, what is not an object.
pub(crate) fn from_json(v: &Value, path: &str) -> Result<FieldTable, String> {
    let Value::Object(map) = v else {
        return Err(format!("{path}: expected an object"));
    };
    table(map, path)
}

fn table(map: &Map<String, Value>, path: &str) -> Result<FieldTable, String> {
    let mut t = FieldTable::default();
    for (k, v) in map {
        if k.len() > 255 {
            return Err(format!("{path}.{k}: a key longer than 255 bytes"));
        }
        t.insert(k.as_str().into(), value(v, &format!("{path}.{k}"))?);
    }
    Ok(t)
}

fn value(v: &Value, path: &str) -> Result<AMQPValue, String> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            _ => return Err(format!("{path}: a number out of range")),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            let mut a = FieldArray::default();
            for (i, item) in items.iter().enumerate() {
                a.push(value(item, &format!("{path}[{i}]"))?);
            }
            AMQPValue::FieldArray(a)
        }
        Value::Object(map) => AMQPValue::FieldTable(table(map, path)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_round_trip_through_json() {
        let v = json!({"x-message-ttl": 60000, "x-queue-type": "quorum", "x-flag": true,
                       "list": [1, "a"], "nested": {"k": 1.5}});
        let t = from_json(&v, "$.queues[0].arguments").unwrap();
        assert_eq!(to_json(&t), v);
        assert_eq!(
            from_json(&json!([1]), "$.queues[0].arguments").unwrap_err(),
            "$.queues[0].arguments: expected an object"
        );
    }
}
