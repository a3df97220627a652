//! RabbitMQ's log line, for parsers written against RabbitMQ's files:
//!
//! ```text
//! 2026-12-07 01:24:47.123456+00:00 [info] <0.4242.0> conn{peer=10.0.0.5:51234}: connection opened
//! 2026-12-07 01:24:47.123 [info] <0.4242.0> ...                     (format = "rabbitmq-3.8")
//! ```
//!
//! Time in UTC with RabbitMQ 3.13's precision and offset (or lager's milliseconds), the level by
//! RabbitMQ's names (`debug`, `info`, `warning`, `error`), and in the Erlang process field the OS
//! process id (`<0.PID.0>`: which node process wrote the line, where RabbitMQ names the Erlang
//! process). Then Warren's message with its span and `key=value` fields; a message of several lines
//! gets the prefix on every line, as RabbitMQ writes them, so a line-based parser never sees a
//! continuation without a time stamp.

use std::fmt::Write as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

pub struct RabbitLine {
    millis_only: bool,
    pid: u32,
}

impl RabbitLine {
    pub fn new(format: LogFormat) -> RabbitLine {
        RabbitLine {
            millis_only: format == LogFormat::Rabbitmq38,
            pid: std::process::id(),
        }
    }

    /// The prefix of every line of an event at `now` (UTC).
    pub fn prefix(&self, now: time::OffsetDateTime, level: &Level) -> String {
        let fraction = match self.millis_only {
            true => format!("{:03}", now.millisecond()),
            false => format!("{:06}+00:00", now.microsecond()),
        };
        let level = match *level {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG | Level::TRACE => "debug",
        };
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{fraction} [{level}] <0.{}.0> ",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            self.pid
        )
    }
}

impl<S, N> FormatEvent<S, N> for RabbitLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut body = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                body.push_str(span.name());
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(body, "{{{fields}}}")?;
                    }
                }
                body.push_str(": ");
            }
        }
        ctx.field_format()
            .format_fields(Writer::new(&mut body), event)?;
        let prefix = self.prefix(time::OffsetDateTime::now_utc(), event.metadata().level());
        let mut lines = body.lines().peekable();
        if lines.peek().is_none() {
            return writeln!(writer, "{}", prefix.trim_end());
        }
        for line in lines {
            writeln!(writer, "{prefix}{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Lines an event produces through the real fmt layer with this format.
    fn lines_of(format: LogFormat, emit: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || out.clone())
                .event_format(RabbitLine::new(format)),
        );
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn lines_match_rabbitmq_3_13s_parsers() {
        let lines = lines_of(LogFormat::Rabbitmq, || {
            let span = tracing::info_span!("conn", peer = "127.0.0.1:5000");
            let _entered = span.enter();
            tracing::warn!(vhost = "/", "connection blocked\nsecond line");
            tracing::error!("disk alarm");
        });
        // The expression fluent-bit's and Google's ops-agent RabbitMQ parsers use (their `\<`, `\>`
        // are plain angle brackets here: the regex crate has no such escape).
        let parser = regex::Regex::new(
            r"^(?<time>\d+-\d+-\d+ \d+:\d+:\d+\.\d+\+\d+:\d+) \[(?<level>\w+)\] <(?<pid>\d+\.\d+\.\d+)> (?<message>.*)$",
        )
        .unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let parsed: Vec<_> = lines
            .iter()
            .map(|l| parser.captures(l).unwrap_or_else(|| panic!("{l}")))
            .collect();
        assert_eq!(&parsed[0]["level"], "warning");
        assert_eq!(
            &parsed[0]["message"],
            "conn{peer=\"127.0.0.1:5000\"}: connection blocked"
        );
        assert_eq!(&parsed[1]["message"], "second line vhost=\"/\"");
        assert_eq!(&parsed[2]["level"], "error");
        assert_eq!(
            &parsed[2]["pid"],
            format!("0.{}.0", std::process::id()).as_str()
        );
        assert_eq!(
            parsed[0]["time"].len(),
            "2026-12-07 01:24:47.123456+00:00".len()
        );
    }

    #[test]
    fn the_3_8_format_has_milliseconds_and_no_offset() {
        let lines = lines_of(LogFormat::Rabbitmq38, || tracing::info!("started"));
        let parser = regex::Regex::new(
            r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} \[info\] <0\.\d+\.0> started$",
        )
        .unwrap();
        assert_eq!(lines.len(), 1);
        assert!(parser.is_match(&lines[0]), "{}", lines[0]);
    }

    #[test]
    fn prefix_pads_every_field() {
        let at = time::Date::from_calendar_date(2026, time::Month::January, 2)
            .unwrap()
            .with_hms_micro(3, 4, 5, 6007)
            .unwrap()
            .assume_utc();
        let line = RabbitLine {
            millis_only: false,
            pid: 7,
        };
        assert_eq!(
            line.prefix(at, &Level::DEBUG),
            "2026-01-02 03:04:05.006007+00:00 [debug] <0.7.0> "
        );
        let old = RabbitLine {
            millis_only: true,
            pid: 7,
        };
        assert_eq!(
            old.prefix(at, &Level::INFO),
            "2026-01-02 03:04:05.006 [info] <0.7.0> "
        );
    }
}
