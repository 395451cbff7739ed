//! Job traces: what the simulator replays.
//!
//! A trace is a list of jobs, each with the time it was queued, how long it runs once started,
//! its labels, and optionally the pool it must run on and the workflow run it belongs to.
//! Sources:
//! - CSV ([`csv`]) and JSON Lines ([`jsonl`]) with the documented columns `queued_at`,
//!   `duration_s`, `labels`, optional `pool`, optional `run`;
//! - GitHub Actions jobs JSON as returned by the REST API ([`github`]), so a team can replay
//!   its own history;
//! - generators ([`generate`]): `workday`, `burst`, `nightly`, `matrix`.
//!
//! Parse errors name the file, the line and the column.

pub mod csv;
pub mod generate;
pub mod github;
pub mod jsonl;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use runscale_core::Timestamp;

pub use generate::{GenOptions, GeneratorKind};

/// One job of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceJob {
    /// When the job was queued.
    pub queued_at: Timestamp,
    /// How long it runs once a runner took it.
    pub duration: Duration,
    /// Its labels (`runs-on`, tags, resource class...).
    pub labels: Arc<[String]>,
    /// The pool it must run on, overriding label selectors.
    pub pool: Option<String>,
    /// The workflow run (pipeline, build) it belongs to, if known.
    pub run: Option<String>,
}

/// A loaded trace.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Where it came from (a path or `generate:workday seed=1`), for the report.
    pub source: String,
    /// The jobs, in any order.
    pub jobs: Vec<TraceJob>,
    /// Records that were read but are not jobs to replay (GitHub jobs that never started,
    /// skipped jobs).
    pub skipped: usize,
}

/// Where a trace comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceSource {
    /// A file; the format is chosen by its extension: `.csv`, `.jsonl`/`.ndjson`, or `.json`
    /// (GitHub Actions jobs JSON).
    File(PathBuf),
    /// A generated workload.
    Generate {
        /// Which one.
        kind: GeneratorKind,
        /// Its random seed.
        seed: u64,
    },
}

impl fmt::Display for TraceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceSource::File(p) => write!(f, "{}", p.display()),
            TraceSource::Generate { kind, seed } => write!(f, "generate:{kind} seed={seed}"),
        }
    }
}

/// A trace format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// GitHub Actions REST jobs (`{"total_count":..,"jobs":[..]}`, an array of such pages, or
    /// an array of jobs).
    GithubJobs,
}

impl FromStr for TraceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            "json" | "github" => Ok(Self::GithubJobs),
            other => Err(format!("unknown trace format `{other}`")),
        }
    }
}

impl TraceFormat {
    /// The format a path's extension implies.
    pub fn of_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        ext.parse().ok()
    }
}

/// Why a trace could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The file could not be read.
    #[error("reading trace {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record is malformed.
    #[error("{path}: line {line}, column {column}: {message}")]
    Parse {
        /// The file (or `<input>`).
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column: characters in JSON traces, the field's position in CSV ones.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The extension names no known format.
    #[error("{path}: unknown trace format (use .csv, .jsonl or .json)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The trace holds no job to replay.
    #[error("{source_name}: the trace holds no job")]
    Empty {
        /// The file or generator.
        source_name: String,
    },
}

/// Loads a trace from its source (a generator with its default options).
pub fn load(source: &TraceSource) -> Result<Trace, TraceError> {
    load_with(source, &GenOptions::default())
}

/// Loads a trace from its source; a generator draws with `options`.
pub fn load_with(source: &TraceSource, options: &GenOptions) -> Result<Trace, TraceError> {
    let trace = match source {
        TraceSource::Generate { kind, seed } => generate::generate_with(*kind, *seed, options),
        TraceSource::File(path) => {
            let format = TraceFormat::of_path(path)
                .ok_or_else(|| TraceError::UnknownFormat { path: path.clone() })?;
            let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
                path: path.clone(),
                source,
            })?;
            let name = path.display().to_string();
            parse(&text, format, &name)?
        }
    };
    if trace.jobs.is_empty() {
        return Err(TraceError::Empty {
            source_name: trace.source,
        });
    }
    Ok(trace)
}

/// Parses trace text in `format`; `name` is used in errors and as the trace's source.
pub fn parse(text: &str, format: TraceFormat, name: &str) -> Result<Trace, TraceError> {
    let (jobs, skipped) = match format {
        TraceFormat::Csv => (csv::parse(text, name)?, 0),
        TraceFormat::Jsonl => (jsonl::parse(text, name)?, 0),
        TraceFormat::GithubJobs => github::parse(text, name)?,
    };
    Ok(Trace {
        source: name.to_owned(),
        jobs,
        skipped,
    })
}

/// Splits a labels field: separators are `;`, `,`, `|` and whitespace.
pub(crate) fn split_labels(s: &str) -> Arc<[String]> {
    s.split(|c: char| c == ';' || c == ',' || c == '|' || c.is_whitespace())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses a `queued_at` value: RFC 3339, or a number of seconds since the Unix epoch.
pub(crate) fn parse_time(s: &str) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return Err(format!("`{s}` is not a time"));
        }
        let ms = (secs * 1000.0).round() as i64;
        return chrono::DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| format!("`{s}` is out of range"));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{s}` is neither RFC 3339 nor Unix seconds ({e})"))
}

/// Parses a `duration_s` value: seconds (a non-negative number), or `1m30s`-style.
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    crate::boot::parse_duration(s)
        .ok_or_else(|| format!("`{}` is not a duration in seconds", s.trim()))
}
