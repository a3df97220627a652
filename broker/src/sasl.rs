//! Decoding the PLAIN and AMQPLAIN SASL responses used by the optional password bridge.

use amq_protocol::types::AMQPValue;

use warren_protocol::field::as_text;

/// Returns (login, password) from a PLAIN (`authzid NUL login NUL password`) or AMQPLAIN (a field
/// table with LOGIN and PASSWORD, sent without its length prefix) response.
pub fn parse_password_response(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let login = std::str::from_utf8(parts.next()?).ok()?;
            let password = std::str::from_utf8(parts.next()?).ok()?;
            if parts.next().is_some() {
                return None;
            }
            Some((login.to_string(), password.to_string()))
        }
        "AMQPLAIN" => {
            // Pre-authentication input: the guarded parser bounds its nesting.
            let table = warren_protocol::nesting::parse_table(response).ok()?;
            let get = |k: &str| table.inner().get(k).and_then(|v: &AMQPValue| as_text(v));
            Some((get("LOGIN")?, get("PASSWORD")?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain() {
        assert_eq!(
            parse_password_response("PLAIN", b"\0nova\0pw"),
            Some(("nova".into(), "pw".into()))
        );
        assert_eq!(parse_password_response("PLAIN", b"nova"), None);
        // LOGIN S "nova", PASSWORD S "pw"
        let mut t = Vec::new();
        for (k, v) in [("LOGIN", "nova"), ("PASSWORD", "pw")] {
            t.push(k.len() as u8);
            t.extend_from_slice(k.as_bytes());
            t.push(b'S');
            t.extend_from_slice(&(v.len() as u32).to_be_bytes());
            t.extend_from_slice(v.as_bytes());
        }
        assert_eq!(
            parse_password_response("AMQPLAIN", &t),
            Some(("nova".into(), "pw".into()))
        );
        assert_eq!(parse_password_response("AMQPLAIN", &t[..5]), None);
    }
}
