//! Boot-time distributions: how long an instance takes from launch until its runners can
//! register. Parsed from the CLI forms `45s`, `uniform:30s..90s`,
//! `lognormal:mean=45s,sd=15s` and `file:PATH` (one duration per line, sampled uniformly).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, LogNormal};

use crate::SimError;

/// A boot-time distribution.
#[derive(Clone, Debug, PartialEq)]
pub enum BootDist {
    /// Every instance boots in exactly this long.
    Fixed(Duration),
    /// Uniform between the two bounds (inclusive).
    Uniform(Duration, Duration),
    /// Log-normal with this mean and standard deviation.
    LogNormal {
        /// Mean boot time.
        mean: Duration,
        /// Standard deviation.
        sd: Duration,
    },
    /// Empirical: a file with one duration per line (`45s`, `1m 5s`, or plain seconds);
    /// blank lines and lines starting with `#` are ignored. Sampled uniformly.
    File(PathBuf),
}

impl Default for BootDist {
    /// 45 s, a typical VM-with-prebuilt-image boot.
    fn default() -> Self {
        BootDist::Fixed(Duration::from_secs(45))
    }
}

impl fmt::Display for BootDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            BootDist::Fixed(d) => write!(f, "{}", h(d)),
            BootDist::Uniform(a, b) => write!(f, "uniform:{}..{}", h(a), h(b)),
            BootDist::LogNormal { mean, sd } => {
                write!(f, "lognormal:mean={},sd={}", h(mean), h(sd))
            }
            BootDist::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

fn bad(message: impl Into<String>) -> SimError {
    SimError::Invalid {
        field: "boot",
        message: message.into(),
    }
}

/// Parses `45s`, `1m30s`, `1.5s` or a plain number of seconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    if let Some(num) = s.strip_suffix('s')
        && let Ok(secs) = num.parse::<f64>()
    {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(s).ok()
}

impl FromStr for BootDist {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let dur = |v: &str| {
            parse_duration(v).ok_or_else(|| bad(format!("`{v}` is not a duration (try `45s`)")))
        };
        if let Some(rest) = s.strip_prefix("uniform:") {
            let (a, b) = rest
                .split_once("..")
                .ok_or_else(|| bad("expected `uniform:LOW..HIGH`, e.g. `uniform:30s..90s`"))?;
            return Ok(BootDist::Uniform(dur(a)?, dur(b)?));
        }
        if let Some(rest) = s.strip_prefix("lognormal:") {
            let (mut mean, mut sd) = (None, None);
            for part in rest.split(',') {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| bad("expected `lognormal:mean=45s,sd=15s`"))?;
                match k.trim() {
                    "mean" => mean = Some(dur(v)?),
                    "sd" => sd = Some(dur(v)?),
                    other => return Err(bad(format!("unknown lognormal parameter `{other}`"))),
                }
            }
            return Ok(BootDist::LogNormal {
                mean: mean.ok_or_else(|| bad("lognormal needs `mean=`"))?,
                sd: sd.ok_or_else(|| bad("lognormal needs `sd=`"))?,
            });
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(bad("`file:` needs a path"));
            }
            return Ok(BootDist::File(PathBuf::from(path)));
        }
        Ok(BootDist::Fixed(dur(s)?))
    }
}

impl BootDist {
    /// Checks the parameters (not the file's contents; [`BootDist::sampler`] reads it).
    pub fn validate(&self) -> Result<(), SimError> {
        match self {
            BootDist::Uniform(a, b) if a > b => Err(bad(format!(
                "uniform lower bound {} is above the upper bound {}",
                humantime::format_duration(*a),
                humantime::format_duration(*b)
            ))),
            BootDist::LogNormal { mean, .. } if mean.is_zero() => {
                Err(bad("lognormal mean must be above zero"))
            }
            _ => Ok(()),
        }
    }

    /// Builds the sampler (reads the file of an empirical distribution).
    pub(crate) fn sampler(&self) -> Result<BootSampler, SimError> {
        self.validate()?;
        let ms = |d: &Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Ok(match self {
            BootDist::Fixed(d) => BootSampler::Fixed(ms(d)),
            BootDist::Uniform(a, b) => BootSampler::Uniform(ms(a), ms(b)),
            BootDist::LogNormal { mean, sd } => {
                let m = mean.as_secs_f64();
                let s = sd.as_secs_f64();
                let sigma2 = (1.0 + (s * s) / (m * m)).ln();
                let mu = m.ln() - sigma2 / 2.0;
                let dist = LogNormal::new(mu, sigma2.sqrt())
                    .map_err(|e| bad(format!("lognormal parameters: {e}")))?;
                BootSampler::LogNormal(dist)
            }
            BootDist::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
                    path: path.clone(),
                    source,
                })?;
                let mut samples = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    let l = line.trim();
                    if l.is_empty() || l.starts_with('#') {
                        continue;
                    }
                    let d = parse_duration(l).ok_or_else(|| {
                        bad(format!(
                            "{}: line {}, column 1: `{l}` is not a duration",
                            path.display(),
                            i + 1
                        ))
                    })?;
                    samples.push(ms(&d));
                }
                if samples.is_empty() {
                    return Err(bad(format!("{} holds no boot time", path.display())));
                }
                BootSampler::Empirical(Arc::from(samples))
            }
        })
    }
}

/// Draws boot times in milliseconds.
#[derive(Clone, Debug)]
pub(crate) enum BootSampler {
    Fixed(i64),
    Uniform(i64, i64),
    LogNormal(LogNormal<f64>),
    Empirical(Arc<[i64]>),
}

impl BootSampler {
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> i64 {
        match self {
            BootSampler::Fixed(ms) => *ms,
            BootSampler::Uniform(a, b) => rng.random_range(*a..=*b),
            BootSampler::LogNormal(d) => (d.sample(rng) * 1000.0).round().clamp(0.0, 1e12) as i64,
            BootSampler::Empirical(s) => s[rng.random_range(0..s.len())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(
            "45s".parse::<BootDist>().expect("fixed"),
            BootDist::Fixed(Duration::from_secs(45))
        );
        assert_eq!(
            "uniform:30s..90s".parse::<BootDist>().expect("uniform"),
            BootDist::Uniform(Duration::from_secs(30), Duration::from_secs(90))
        );
        assert_eq!(
            "lognormal:mean=45s,sd=15s"
                .parse::<BootDist>()
                .expect("lognormal"),
            BootDist::LogNormal {
                mean: Duration::from_secs(45),
                sd: Duration::from_secs(15)
            }
        );
        assert_eq!(
            "file:/tmp/boot.txt".parse::<BootDist>().expect("file"),
            BootDist::File(PathBuf::from("/tmp/boot.txt"))
        );
        assert!(
            "uniform:90s..30s"
                .parse::<BootDist>()
                .expect("p")
                .validate()
                .is_err()
        );
        assert!("soon".parse::<BootDist>().is_err());
        assert!("lognormal:mean=45s".parse::<BootDist>().is_err());
    }

    #[test]
    fn lognormal_sampler_has_the_requested_mean() {
        let s = "lognormal:mean=45s,sd=15s"
            .parse::<BootDist>()
            .expect("parse")
            .sampler()
            .expect("sampler");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 20_000;
        let mean = (0..n).map(|_| s.sample(&mut rng) as f64).sum::<f64>() / n as f64;
        assert!((mean - 45_000.0).abs() < 1_000.0, "mean {mean} ms");
    }

    #[test]
    fn empirical_file_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("boot.txt");
        std::fs::write(&p, "# boots\n40s\n\nfast\n").expect("write");
        let err = BootDist::File(p.clone()).sampler().expect_err("bad line");
        assert!(err.to_string().contains("line 4"), "{err}");
        std::fs::write(&p, "40s\n1m\n50\n").expect("write");
        let s = BootDist::File(p).sampler().expect("ok");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..50 {
            assert!([40_000, 60_000, 50_000].contains(&s.sample(&mut rng)));
        }
    }

    use rand::SeedableRng;
}
