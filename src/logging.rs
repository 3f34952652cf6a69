//! The log's format: human-readable lines or one JSON object per line (`proxy.log_format`),
//! filtered by `RUST_LOG` (default `info`). No line carries a secret: passwords are kept in
//! types whose `Debug` hides them, and SQL text is logged only at debug level.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process's subscriber writing to `writer` in `format`; false if one was
/// installed already.
pub fn init<W>(format: LogFormat, writer: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
            .is_ok(),
    }
}
