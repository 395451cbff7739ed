//! Logging to stderr through `tracing-subscriber`: human-readable text or one JSON object per
//! line, filtered by an `EnvFilter` directive such as `info` or `runscale_core=debug,info`.

use std::io::IsTerminal as _;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Checks a filter directive (for the command line parser).
pub fn parse_level(directive: &str) -> Result<String, String> {
    EnvFilter::try_new(directive)
        .map(|_| directive.to_owned())
        .map_err(|e| format!("invalid log filter {directive:?}: {e}"))
}

/// Installs the global subscriber. Does nothing if one is already installed (tests).
pub fn init(format: LogFormat, directive: &str) {
    let filter = EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_directives_are_checked() {
        assert_eq!(parse_level("debug").as_deref(), Ok("debug"));
        assert!(parse_level("runscale_core=trace,warn").is_ok());
        assert!(parse_level("x=notalevel").is_err());
    }
}
