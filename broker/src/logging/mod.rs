//! Warren's own log lines: Warren's structured format on stderr by default (the journal under
//! systemd), RabbitMQ's line format on request (`[log] format`), and an optional log file in
//! RabbitMQ's format (`[log] file`), so the log pipelines OpenStack deployments already run for
//! RabbitMQ (fluentd/fluent-bit parsers of `rabbit@HOST.log`) parse Warren's lines unchanged.
//!
//! The level filter is `WARREN_LOG` (tracing's env-filter syntax, default `info`), for every output.

mod file;
mod rabbit_line;

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};
pub use file::LogFile;
pub use rabbit_line::RabbitLine;

/// The file output, once `init` opened one (for [`reopen`]).
static FILE: OnceLock<LogFile> = OnceLock::new();

type Output = Box<dyn Layer<tracing_subscriber::layer::Layered<EnvFilter, Registry>> + Send + Sync>;

/// Installs the process's logger. Before the configuration is read, `init(&LogConfig::default())`
/// (Warren's format on stderr); a second call is an error from tracing and is ignored, so call it
/// once, with the configuration when there is one.
pub fn init(config: &LogConfig) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_env("WARREN_LOG").unwrap_or_else(|_| "info".into());
    let mut outputs: Vec<Output> = vec![stderr_output(config.format)];
    if let Some(path) = &config.file {
        let file = LogFile::open(path)?;
        outputs.push(output(config.file_format.0, file.clone(), false));
        let _ = FILE.set(file);
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(outputs)
        .try_init();
    Ok(())
}

/// Reopens the log file at its configured path (after logrotate moved it away; SIGHUP). Lines
/// written meanwhile went to the old file; none is lost or split.
pub fn reopen() -> std::io::Result<()> {
    match FILE.get() {
        Some(file) => file.reopen(),
        None => Ok(()),
    }
}

fn stderr_output(format: LogFormat) -> Output {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    output(format, std::io::stderr, ansi)
}

fn output<W>(format: LogFormat, writer: W, ansi: bool) -> Output
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Warren => layer.with_ansi(ansi).boxed(),
        rabbit => layer
            .with_ansi(false)
            .event_format(RabbitLine::new(rabbit))
            .boxed(),
    }
}
