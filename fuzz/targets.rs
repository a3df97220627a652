// The inputs the broker parses besides frames: one function per fuzz target, shared by the cargo-fuzz
// targets (fuzz/fuzz_targets/*.rs) and the corpus replay test (tests/e2e/fuzz_corpora.rs), both of
// which bring it in with `#[path = ...] mod targets;`. Nothing here may panic on any input; the
// asserts are properties the broker relies on.

use std::path::Path;

use bytes::Bytes;
use warren_broker::message::codec::{decode_message, encode_message};
use warren_broker::meta::{codec, legacy};
use warren_protocol::method::decode_method;
use warren_protocol::spec::{connection, AMQPClass};
use warren_protocol::types::FieldTable;
use warren_storage::frame::{declared_len, header_for, HEADER};
use warren_storage::log::medium::{Medium, MemoryMedium};
use warren_storage::log::record::{read_at, Read, Record};

/// The SASL responses of the password bridge (PLAIN, AMQPLAIN: a field table without its length)
/// and connection.start-ok as a whole: its client properties, as the handshake reads them.
pub fn sasl(data: &[u8]) {
    for mechanism in ["PLAIN", "AMQPLAIN", "EXTERNAL"] {
        if let Some((login, password)) =
            warren_broker::sasl::parse_password_response(mechanism, data)
        {
            assert!(mechanism != "EXTERNAL");
            assert!(
                login.len() + password.len() <= data.len(),
                "parsed more than was sent"
            );
        }
    }
    let mut payload = vec![0, 10, 0, 11];
    payload.extend_from_slice(data);
    if let Ok(AMQPClass::Connection(connection::AMQPMethod::StartOk(ok))) = decode_method(&payload)
    {
        let _ = warren_broker::connection::handshake::client_capabilities(&ok.client_properties);
    }
}

/// One line of the admin socket, parsed as the broker parses it.
pub fn admin_request(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((_change, description)) = warren_broker::admin::requests::parse_for_fuzzing(line) {
        assert!(
            !description.contains("\"password\""),
            "a password reached the audit description: {description}"
        );
    }
}

/// A `warren.toml`, parsed and validated; a valid one prints and parses back to a valid one.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("warren.toml");
    if let Ok(config) = warren_broker::config::Config::from_toml(text, path) {
        let printed = toml::to_string(&config).expect("a valid configuration prints");
        warren_broker::config::Config::from_toml(&printed, path)
            .expect("a printed configuration parses back");
    }
}

/// A `definitions.json`; what parses prints and parses back to the same definitions.
pub fn definitions(data: &[u8]) {
    let path = Path::new("definitions.json");
    if let Ok(defs) = warren_storage::definitions::Definitions::from_slice(data, path) {
        let printed = serde_json::to_vec(&defs).expect("definitions print");
        let back = warren_storage::definitions::Definitions::from_slice(&printed, path)
            .expect("printed definitions parse back");
        assert_eq!(back, defs);
    }
}

/// Stored records as recovery reads them: the records framed in a segment, the log opened over
/// that segment (replay), and each payload decoded as the broker decodes stored messages and
/// definitions.
pub fn log_records(data: &[u8]) {
    // As read, and with every frame's checksum set right: random bytes almost never carry a valid
    // CRC-32, so without the second pass the records behind it would never be decoded or replayed.
    let as_read = Bytes::copy_from_slice(data);
    for segment in [as_read.clone(), Bytes::from(with_valid_checksums(data))] {
        let mut offset = 0;
        while let Read::Record(record, next) = read_at(&segment, offset) {
            assert!(next > offset && next <= segment.len());
            let mut again = Vec::new();
            record.encode(&mut again);
            assert_eq!(
                &again[..],
                &segment[offset..next],
                "a record re-encodes to its bytes"
            );
            stored_payload(&record);
            offset = next;
        }
        let mut medium = MemoryMedium::default();
        if medium.create(1).is_ok() && medium.append(1, &segment).is_ok() {
            let _ = warren_storage::log::Log::open(medium, 64 << 20);
        }
    }
    message_payload(&as_read);
    definition_value(data);
}

/// `data` with the checksum of each frame (`len:u32 crc32:u32 payload`) set right, frame after frame
/// as far as the declared lengths fit.
fn with_valid_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0;
    while out.len() - at >= HEADER {
        let end = at + HEADER + declared_len(&out[at..]);
        if end > out.len() {
            break;
        }
        let header = header_for(&out[at + HEADER..end]);
        out[at..at + HEADER].copy_from_slice(&header);
        at = end;
    }
    out
}

/// What recovery does with a record's contents: messages decoded, definitions parsed.
fn stored_payload(record: &Record) {
    match record {
        Record::Enqueue { payload, .. } => message_payload(payload),
        Record::Put { value, .. } => definition_value(value),
        _ => {}
    }
}

/// A stored message, which must re-encode to the same message.
fn message_payload(payload: &Bytes) {
    if let Some(message) = decode_message(payload) {
        let again =
            decode_message(&encode_message(&message)).expect("a decoded message re-encodes");
        assert_eq!(
            (&again.properties, &again.body, &again.publisher),
            (&message.properties, &message.body, &message.publisher)
        );
    }
}

/// A stored definition, as recovery reads it back: a metadata command (which must encode to a
/// record that decodes to the same command), or an earlier version's JSON record under each kind
/// of key.
fn definition_value(value: &[u8]) {
    if let Ok(command) = codec::decode(value) {
        let again = codec::decode(&codec::encode(&command)).expect("a decoded command re-encodes");
        assert_eq!(again, command);
    }
    for key in [
        r#"["queue","/","q"]"#,
        r#"["exchange","/","x"]"#,
        r#"["binding","/","x","queue","q","k","{}"]"#,
    ] {
        let _ = legacy::command(key, value);
    }
    let _ = serde_json::from_slice::<FieldTable>(value);
    let _ = serde_json::from_slice::<Vec<String>>(value);
}
