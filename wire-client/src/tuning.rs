//! What the client says during the negotiation (start-ok, tune-ok, open), as values: the tests vary
//! every field to probe the broker, the benchmark fixes them once.

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};

/// What the client answers in connection.start-ok, tune-ok and open.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// channel-max for tune-ok; None takes the broker's.
    pub channel_max: Option<u16>,
    /// frame-max for tune-ok; None takes the broker's, capped at `frame_max_cap` if set.
    pub frame_max: Option<u32>,
    /// The largest frame-max taken from the broker (its 0, "no limit", becomes the cap).
    pub frame_max_cap: Option<u32>,
    pub heartbeat: u16,
    pub vhost: String,
    /// Advertise consumer_cancel_notify (and the other usual client capabilities) in start-ok.
    pub capabilities: bool,
    /// Also advertise `connection.blocked` (only with `capabilities`): the broker then tells this
    /// connection when a resource alarm blocks it and when it is released.
    pub connection_blocked: bool,
    /// The SASL mechanism and response of start-ok (EXTERNAL with an empty response by default: the
    /// identity is the client certificate's).
    pub mechanism: String,
    pub response: Vec<u8>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            channel_max: None,
            frame_max: None,
            frame_max_cap: None,
            heartbeat: 0,
            vhost: "/".to_string(),
            capabilities: true,
            connection_blocked: false,
            mechanism: "EXTERNAL".to_string(),
            response: Vec::new(),
        }
    }
}

impl Tuning {
    /// The tune-ok answering the broker's `tune`.
    pub fn tune_ok(&self, tune: &connection::Tune) -> connection::TuneOk {
        let frame_max = match (self.frame_max, self.frame_max_cap) {
            (Some(n), _) => n,
            (None, None) => tune.frame_max,
            (None, Some(cap)) if tune.frame_max == 0 => cap,
            (None, Some(cap)) => tune.frame_max.min(cap),
        };
        connection::TuneOk {
            channel_max: self.channel_max.unwrap_or(tune.channel_max),
            frame_max,
            heartbeat: self.heartbeat,
        }
    }

    pub fn open(&self) -> AMQPClass {
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: self.vhost.as_str().into(),
        }))
    }
}

/// connection.start-ok as `tuning` says, naming the client `product` in its properties.
pub fn start_ok(product: &str, tuning: &Tuning) -> AMQPClass {
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from(product)),
    );
    if tuning.capabilities {
        let mut caps = FieldTable::default();
        for cap in [
            "consumer_cancel_notify",
            "publisher_confirms",
            "basic.nack",
            "authentication_failure_close",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        if tuning.connection_blocked {
            caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
        }
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    }
    AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: props,
        mechanism: tuning.mechanism.as_str().into(),
        response: LongString::from(tuning.response.clone()),
        locale: "en_US".into(),
    }))
}

/// The broker's side of a completed negotiation.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub start: connection::Start,
    pub tune: connection::Tune,
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::ShortString;

    fn properties(method: &AMQPClass) -> (&FieldTable, &str, &[u8]) {
        match method {
            AMQPClass::Connection(connection::AMQPMethod::StartOk(ok)) => (
                &ok.client_properties,
                ok.mechanism.as_str(),
                ok.response.as_bytes(),
            ),
            other => panic!("not start-ok: {other:?}"),
        }
    }

    fn capabilities(props: &FieldTable) -> Vec<String> {
        match props.inner().get(&ShortString::from("capabilities")) {
            Some(AMQPValue::FieldTable(caps)) => {
                caps.inner().keys().map(|k| k.to_string()).collect()
            }
            None => Vec::new(),
            other => panic!("capabilities: {other:?}"),
        }
    }

    #[test]
    fn start_ok_names_the_product_and_the_usual_capabilities() {
        let m = start_ok("warren-tests", &Tuning::default());
        let (props, mechanism, response) = properties(&m);
        assert_eq!(
            props.inner().get(&ShortString::from("product")),
            Some(&AMQPValue::LongString("warren-tests".into()))
        );
        assert_eq!(
            capabilities(props),
            [
                "authentication_failure_close",
                "basic.nack",
                "consumer_cancel_notify",
                "publisher_confirms"
            ]
        );
        assert_eq!((mechanism, response), ("EXTERNAL", &b""[..]));
    }

    #[test]
    fn start_ok_options() {
        let blocked = Tuning {
            connection_blocked: true,
            mechanism: "PLAIN".into(),
            response: b"\0bob\0pw".to_vec(),
            ..Tuning::default()
        };
        let m = start_ok("warren-load", &blocked);
        let (props, mechanism, response) = properties(&m);
        assert!(capabilities(props).contains(&"connection.blocked".to_string()));
        assert_eq!((mechanism, response), ("PLAIN", &b"\0bob\0pw"[..]));

        let bare = Tuning {
            capabilities: false,
            connection_blocked: true,
            ..Tuning::default()
        };
        let m = start_ok("warren-tests", &bare);
        assert!(capabilities(properties(&m).0).is_empty());
    }

    #[test]
    fn tune_ok_takes_the_brokers_values_unless_told() {
        let tune = connection::Tune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        };
        let ok = Tuning::default().tune_ok(&tune);
        assert_eq!(
            (ok.channel_max, ok.frame_max, ok.heartbeat),
            (2047, 131_072, 0)
        );
        let told = Tuning {
            channel_max: Some(10),
            frame_max: Some(8192),
            heartbeat: 5,
            ..Tuning::default()
        };
        let ok = told.tune_ok(&tune);
        assert_eq!((ok.channel_max, ok.frame_max, ok.heartbeat), (10, 8192, 5));
        let capped = Tuning {
            frame_max_cap: Some(65_536),
            ..Tuning::default()
        };
        assert_eq!(capped.tune_ok(&tune).frame_max, 65_536);
        let unlimited = connection::Tune {
            frame_max: 0,
            ..tune
        };
        assert_eq!(capped.tune_ok(&unlimited).frame_max, 65_536);
        assert_eq!(Tuning::default().tune_ok(&unlimited).frame_max, 0);
    }
}
