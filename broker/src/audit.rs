//! The audit log: one JSON line per authentication success or failure, authorisation denial and
//! administrative change (who, from where, what, result), to a file or stderr. Separate from the
//! diagnostic log so an auditor can keep, ship and parse it on its own.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use parking_lot::Mutex;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One audited event.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    /// `authentication`, `authorisation` or `admin`.
    pub kind: &'static str,
    /// What was attempted, e.g. `login`, `configure queue 'q'`, `add_user nova`.
    pub action: &'a str,
    pub user: &'a str,
    /// The peer address, or `admin-socket` for brokerctl.
    pub source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost: Option<&'a str>,
    /// `success`, `failure` or `denied`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// Where audit lines go.
/// JSON as serde_json writes it, but with every invisible character (format characters such as the
/// bidirectional override U+202E, line separators: `warren_storage::names::is_invisible`) written as a
/// `\uXXXX` escape, so a client-chosen name in an audit line cannot disguise itself (PROBE F12).
struct EscapeInvisible;

impl serde_json::ser::Formatter for EscapeInvisible {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            if warren_storage::names::is_invisible(c) {
                writer.write_all(&fragment.as_bytes()[start..at])?;
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
                start = at + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

pub(crate) struct AuditLog {
    sink: Mutex<Box<dyn Write + Send>>,
    /// On stderr beside a log in RabbitMQ's line format: that line's prefix before each JSON
    /// object (`... [info] <0.PID.0> audit {...}`), so a pipeline parsing the stream parses these
    /// too. A file keeps bare JSON lines.
    prefix: Option<crate::logging::RabbitLine>,
    /// Per source of repeatable events (a user's dropped hops, a peer's refused handshakes): the
    /// current one-second window and how many lines it wrote and suppressed.
    limits: Mutex<std::collections::HashMap<String, Window>>,
}

/// Lines one source may write per second with [`AuditLog::record_limited`].
const LINES_PER_SECOND: u32 = 20;
/// Sources tracked at once; past it the table is cleared (a flood of new sources resets it).
const TRACKED_SOURCES: usize = 4096;

struct Window {
    started: std::time::Instant,
    written: u32,
    suppressed: u64,
}

impl AuditLog {
    /// `"stderr"` or a file path (created 0600, appended to); `log` is the format of Warren's log
    /// on stderr.
    pub fn open(target: &str, log: crate::config::LogFormat) -> std::io::Result<Self> {
        let on_stderr = target == "stderr";
        let prefix = match (on_stderr, log) {
            (true, crate::config::LogFormat::Warren) | (false, _) => None,
            (true, rabbit) => Some(crate::logging::RabbitLine::new(rabbit)),
        };
        let sink: Box<dyn Write + Send> = if on_stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(Path::new(target))?,
            )
        };
        Ok(AuditLog {
            sink: Mutex::new(sink),
            prefix,
            limits: Mutex::default(),
        })
    }

    #[cfg(test)]
    pub(crate) fn to_writer(writer: Box<dyn Write + Send>) -> Self {
        AuditLog {
            sink: Mutex::new(writer),
            prefix: None,
            limits: Mutex::default(),
        }
    }

    /// [`Self::record`] for events anyone can repeat at will (a CC header with thousands of refused
    /// keys, a peer retrying a revoked certificate): at most 20 lines a second per `source`; the
    /// next line after a suppressed burst says how many similar lines were left out.
    pub(crate) fn record_limited(&self, source: &str, event: &Event<'_>) {
        let suppressed = {
            let mut limits = self.limits.lock();
            if limits.len() >= TRACKED_SOURCES && !limits.contains_key(source) {
                limits.clear();
            }
            let now = std::time::Instant::now();
            let w = limits.entry(source.to_string()).or_insert(Window {
                started: now,
                written: 0,
                suppressed: 0,
            });
            if now.duration_since(w.started) >= std::time::Duration::from_secs(1) {
                w.started = now;
                w.written = 0;
            }
            if w.written >= LINES_PER_SECOND {
                w.suppressed += 1;
                return;
            }
            w.written += 1;
            std::mem::take(&mut w.suppressed)
        };
        if suppressed == 0 {
            return self.record(event);
        }
        let detail = format!(
            "{}{suppressed} similar lines from this source were suppressed before this one",
            event.detail.map(|d| format!("{d}; ")).unwrap_or_default()
        );
        self.record(&Event {
            detail: Some(&detail),
            ..*event
        });
    }

    pub fn record(&self, event: &Event<'_>) {
        let now = OffsetDateTime::now_utc();
        let time = now.format(&Rfc3339).unwrap_or_default();
        let mut line = Vec::with_capacity(256);
        if let Some(prefix) = &self.prefix {
            line.extend_from_slice(prefix.prefix(now, &tracing::Level::INFO).as_bytes());
            line.extend_from_slice(b"audit ");
        }
        let mut json = serde_json::Serializer::with_formatter(&mut line, EscapeInvisible);
        if serde::Serialize::serialize(&Line { time, event }, &mut json).is_err() {
            return;
        }
        line.push(b'\n');
        let mut sink = self.sink.lock();
        if let Err(e) = sink.write_all(&line).and_then(|()| sink.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_json_object_per_line() {
        let buf = Shared::default();
        let log = AuditLog::to_writer(Box::new(buf.clone()));
        let event = Event {
            kind: "authentication",
            action: "login",
            user: "nova\"x",
            source: "127.0.0.1:5000",
            vhost: Some("/"),
            result: "failure",
            detail: Some("no such user"),
        };
        log.record(&event);
        log.record(&event);
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["user"], "nova\"x");
        assert_eq!(v["result"], "failure");
        assert!(v["time"].as_str().unwrap().contains('T'));
    }

    #[test]
    fn invisible_characters_are_escaped() {
        let buf = Shared::default();
        let log = AuditLog::to_writer(Box::new(buf.clone()));
        log.record(&Event {
            kind: "authorisation",
            action: "configure queue 'ev\u{202e}il\u{2028}x' \u{e0041}",
            user: "café",
            source: "127.0.0.1:5000",
            vhost: Some("/"),
            result: "denied",
            detail: None,
        });
        let line = String::from_utf8(buf.0.lock().clone()).unwrap();
        assert!(
            line.contains("ev\\u202eil\\u2028x' \\udb40\\udc41"),
            "{line}"
        );
        assert!(
            line.contains("café"),
            "printable text stays as it is: {line}"
        );
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(
            v["action"],
            "configure queue 'ev\u{202e}il\u{2028}x' \u{e0041}"
        );
    }

    #[test]
    fn repeatable_events_are_rate_limited_per_source() {
        let buf = Shared::default();
        let log = AuditLog::to_writer(Box::new(buf.clone()));
        let event = Event {
            kind: "authorisation",
            action: "write access to topic 'bob.x' ...",
            user: "alice",
            source: "routing",
            vhost: Some("/"),
            result: "denied",
            detail: None,
        };
        for _ in 0..100 {
            log.record_limited("alice", &event);
        }
        log.record_limited("carol", &event);
        let count = |b: &Shared| {
            String::from_utf8(b.0.lock().clone())
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(count(&buf), LINES_PER_SECOND as usize + 1);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        log.record_limited("alice", &event);
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        let last = text.lines().last().unwrap();
        assert!(last.contains("80 similar lines"), "{last}");
    }
}
