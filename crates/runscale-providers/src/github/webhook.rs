//! `/webhooks/github`: signature verification, de-duplication, and what a `workflow_job`
//! event means for the pools — which to wake, which repository to poll, and (when job polling
//! is off) the jobs webhooks reported.
//!
//! The signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body) is checked in constant
//! time before anything is parsed. Error messages never quote the body.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use runscale_core::{Demand, Error, ErrorKind, PoolId, Result, WaitingJob, WebhookRequest};
use serde::Deserialize;
use sha2::Sha256;

use super::convert::{GhJob, JobPhase, PoolMatcher, job_phase};

/// Largest body accepted: 1 MiB.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Keys remembered for de-duplication (per kind of key).
const DEDUP_CAPACITY: usize = 10_000;
/// How long a repository named by a webhook keeps being polled (GitHub's job queue limit).
pub(crate) const REPO_TTL: Duration = Duration::from_secs(24 * 3600);
/// Repositories remembered at most.
const REPO_CAPACITY: usize = 10_000;
/// Jobs tracked at most when demand comes from webhooks.
const JOB_CAPACITY: usize = 50_000;

const OP: &str = "github.webhook";

/// Checks `X-Hub-Signature-256` (`sha256=<hex>`) against the HMAC-SHA256 of `body` under
/// `secret`, in constant time. The error says what is wrong without quoting anything.
pub(crate) fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> std::result::Result<(), &'static str> {
    let header = header.ok_or("X-Hub-Signature-256 header missing")?;
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or("X-Hub-Signature-256 is not of the form sha256=<hex>")?;
    let tag = decode_hex(hex).ok_or("X-Hub-Signature-256 is not of the form sha256=<hex>")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "unusable webhook secret")?;
    mac.update(body);
    mac.verify_slice(&tag)
        .map_err(|_| "X-Hub-Signature-256 does not match the body and the webhook secret")
}

/// 32 bytes from 64 hex digits (either case).
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok().filter(|tag| tag.len() == 32)
}

/// A bounded set of recently seen keys: the oldest is forgotten first.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl Dedup {
    /// Whether `key` was seen.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.seen.contains(key)
    }

    /// Remembers `key`; false if it was already known.
    pub(crate) fn insert(&mut self, key: &str) -> bool {
        if self.seen.contains(key) {
            return false;
        }
        if self.order.len() >= DEDUP_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(key.to_owned());
        self.seen.insert(key.to_owned());
        true
    }

    /// Keys remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// A job reported by webhooks (used only when job polling is off).
#[derive(Clone, Debug)]
struct TrackedJob {
    /// Its latest phase; `Other` once completed (kept so late events do not revive it).
    phase: JobPhase,
    /// Its repository (`owner/name`), if the event named one.
    repo: Option<String>,
    labels: Vec<String>,
    runner_name: Option<String>,
    created_at: DateTime<Utc>,
    seen: Instant,
}

/// The rank of a phase: events only move a job forward.
fn rank(p: JobPhase) -> u8 {
    match p {
        JobPhase::Waiting => 0,
        JobPhase::Running => 1,
        JobPhase::Other => 2,
    }
}

/// What webhooks taught the provider: seen deliveries and job events, repositories to poll,
/// and (when job polling is off) jobs.
#[derive(Debug, Default)]
pub(crate) struct HookState {
    deliveries: Dedup,
    job_events: Dedup,
    repos: HashMap<String, Instant>,
    jobs: HashMap<u64, TrackedJob>,
}

/// The parts of a `workflow_job` event runscale reads.
#[derive(Debug, Deserialize)]
struct WorkflowJobEvent {
    action: String,
    workflow_job: GhJob,
    #[serde(default)]
    repository: Option<Repository>,
}

/// The repository of an event.
#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
}

/// How a delivery is handled, besides the state it updates.
pub(crate) struct Handling<'a> {
    /// The webhook secret, if configured.
    pub secret: Option<&'a [u8]>,
    /// The pools.
    pub matcher: &'a PoolMatcher,
    /// Track jobs (job polling is off).
    pub track_jobs: bool,
    /// Whether a repository (`owner/name`) may be polled for this account.
    pub repo_allowed: &'a dyn Fn(&str) -> bool,
}

impl HookState {
    /// Verifies and handles one delivery; returns the pools to wake.
    pub(crate) fn handle(&mut self, req: &WebhookRequest, h: &Handling<'_>) -> Result<Vec<PoolId>> {
        if req.body.len() > MAX_BODY {
            return Err(Error::new(
                OP,
                ErrorKind::Protocol,
                format!(
                    "body of {} bytes is larger than {MAX_BODY} bytes",
                    req.body.len()
                ),
            ));
        }
        let Some(secret) = h.secret else {
            return Err(Error::new(
                OP,
                ErrorKind::Misconfigured,
                "no webhook_secret is configured for this GitHub account, so deliveries \
                 cannot be verified and are rejected",
            ));
        };
        verify_signature(secret, &req.body, req.header("x-hub-signature-256"))
            .map_err(|why| Error::new(OP, ErrorKind::Misconfigured, why))?;

        let delivery = req.header("x-github-delivery").map(str::to_owned);
        if let Some(d) = &delivery
            && self.deliveries.contains(d)
        {
            return Ok(Vec::new());
        }
        let event = req.header("x-github-event").unwrap_or_default();
        if event != "workflow_job" {
            if let Some(d) = &delivery {
                self.deliveries.insert(d);
            }
            return Ok(Vec::new());
        }
        let ev: WorkflowJobEvent = serde_json::from_slice(&req.body).map_err(|e| {
            // serde's message can quote the input; report only where it failed.
            Error::new(
                OP,
                ErrorKind::Protocol,
                format!(
                    "workflow_job payload is not valid ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if let Some(d) = &delivery {
            self.deliveries.insert(d);
        }
        let job = &ev.workflow_job;
        let key = format!("{}/{}/{}", job.id, job.run_attempt, ev.action);
        if !self.job_events.insert(&key) {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        if let Some(repo) = &ev.repository
            && (h.repo_allowed)(&repo.full_name)
        {
            self.remember_repo(&repo.full_name, now);
        }
        let repo_name = ev.repository.as_ref().map(|r| r.full_name.as_str());
        if h.track_jobs {
            self.track(job, repo_name, &ev.action, now);
        }
        let mut pools = h.matcher.all(repo_name, &job.labels);
        if let Some(owner) = job
            .runner_name
            .as_deref()
            .and_then(|n| h.matcher.owner_of(n))
            && !pools.contains(owner)
        {
            pools.push(owner.clone());
        }
        Ok(pools)
    }

    /// Remembers a repository to poll (bounded; the least recently seen is forgotten).
    fn remember_repo(&mut self, full_name: &str, now: Instant) {
        let key = full_name.to_lowercase();
        if self.repos.len() >= REPO_CAPACITY
            && !self.repos.contains_key(&key)
            && let Some(oldest) = self
                .repos
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
        {
            self.repos.remove(&oldest);
        }
        self.repos.insert(key, now);
    }

    /// Repositories (`owner/name`, lower case) named by webhooks in the last 24 hours, with
    /// when they were last named.
    pub(crate) fn recent_repos(&mut self, now: Instant) -> Vec<(String, Instant)> {
        self.repos
            .retain(|_, seen| now.saturating_duration_since(*seen) < REPO_TTL);
        let mut v: Vec<(String, Instant)> =
            self.repos.iter().map(|(k, t)| (k.clone(), *t)).collect();
        v.sort();
        v
    }

    /// Updates the job table from an event; jobs only move forward (queued → in progress →
    /// completed), so a late or reordered event does not revive a finished job.
    fn track(&mut self, job: &GhJob, repo: Option<&str>, action: &str, now: Instant) {
        let phase = match action {
            "completed" => JobPhase::Other,
            _ => job_phase(&job.status),
        };
        if let Some(t) = self.jobs.get_mut(&job.id) {
            if rank(phase) >= rank(t.phase) {
                t.phase = phase;
                if job.runner_name.is_some() {
                    t.runner_name = job.runner_name.clone();
                }
            }
            t.seen = now;
            return;
        }
        if self.jobs.len() >= JOB_CAPACITY
            && let Some(oldest) = self
                .jobs
                .iter()
                .min_by_key(|(_, t)| t.seen)
                .map(|(k, _)| *k)
        {
            self.jobs.remove(&oldest);
        }
        self.jobs.insert(
            job.id,
            TrackedJob {
                phase,
                repo: repo.map(str::to_owned),
                labels: job.labels.clone(),
                runner_name: job.runner_name.clone(),
                created_at: job.created_at.unwrap_or_else(Utc::now),
                seen: now,
            },
        );
    }

    /// Demand per pool from the tracked jobs (job polling off). Jobs not heard of for 24
    /// hours are dropped: GitHub fails a job that waited that long.
    pub(crate) fn demand(
        &mut self,
        matcher: &PoolMatcher,
        now: Instant,
    ) -> HashMap<PoolId, Demand> {
        self.jobs
            .retain(|_, t| now.saturating_duration_since(t.seen) < REPO_TTL);
        let mut out: HashMap<PoolId, Demand> = HashMap::new();
        let mut ids: Vec<(&u64, &TrackedJob)> = self.jobs.iter().collect();
        ids.sort_by_key(|(id, t)| (t.created_at, **id));
        for (id, t) in ids {
            match t.phase {
                JobPhase::Waiting => {
                    if let Some(pool) = matcher.first(t.repo.as_deref(), &t.labels) {
                        out.entry(pool.clone())
                            .or_default()
                            .waiting
                            .push(WaitingJob {
                                id: id.to_string(),
                                queued_at: t.created_at,
                            });
                    }
                }
                JobPhase::Running => {
                    let pool = t
                        .runner_name
                        .as_deref()
                        .and_then(|n| matcher.owner_of(n))
                        .or_else(|| matcher.first(t.repo.as_deref(), &t.labels));
                    if let Some(pool) = pool {
                        out.entry(pool.clone()).or_default().running += 1;
                    }
                }
                JobPhase::Other => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::convert::LabelSet;
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const DOC_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn sign(body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("key");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!("sha256={}", hex::encode(tag))
    }

    fn matcher() -> PoolMatcher {
        PoolMatcher::new([
            (
                PoolId::new("linux"),
                LabelSet::new(&["linux".to_owned(), "x64".to_owned()]),
            ),
            (
                PoolId::new("gpu"),
                LabelSet::new(&["linux".to_owned(), "gpu".to_owned()]),
            ),
        ])
    }

    fn request(event: &str, delivery: &str, body: &[u8]) -> WebhookRequest {
        WebhookRequest {
            headers: vec![
                ("x-github-event".into(), event.into()),
                ("x-github-delivery".into(), delivery.into()),
                ("x-hub-signature-256".into(), sign(body)),
            ],
            body: body.to_vec(),
        }
    }

    fn job_body(id: u64, action: &str, labels: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "action": action,
            "workflow_job": {
                "id": id, "run_id": 7, "run_attempt": 1, "status": action,
                "labels": labels, "created_at": "2024-01-01T00:00:00Z",
                "runner_name": null
            },
            "repository": {"full_name": "acme/widgets"}
        }))
        .expect("json")
    }

    fn handle(state: &mut HookState, req: &WebhookRequest, track: bool) -> Result<Vec<PoolId>> {
        let m = matcher();
        let allowed = |r: &str| r.starts_with("acme/");
        state.handle(
            req,
            &Handling {
                secret: Some(SECRET),
                matcher: &m,
                track_jobs: track,
                repo_allowed: &allowed,
            },
        )
    }

    #[test]
    fn githubs_documented_test_vector_verifies() {
        assert_eq!(sign(b"Hello, World!"), DOC_SIG);
        assert_eq!(
            verify_signature(SECRET, b"Hello, World!", Some(DOC_SIG)),
            Ok(())
        );
        let upper = DOC_SIG.replace("757107ea", "757107EA");
        assert_eq!(
            verify_signature(SECRET, b"Hello, World!", Some(&upper)),
            Ok(())
        );
    }

    #[test]
    fn wrong_missing_or_malformed_signatures_fail() {
        assert!(verify_signature(SECRET, b"Hello, World?", Some(DOC_SIG)).is_err());
        assert!(verify_signature(b"other", b"Hello, World!", Some(DOC_SIG)).is_err());
        assert!(verify_signature(SECRET, b"Hello, World!", None).is_err());
        assert!(verify_signature(SECRET, b"Hello, World!", Some("sha1=abc")).is_err());
        assert!(verify_signature(SECRET, b"Hello, World!", Some(&DOC_SIG[..70])).is_err());
        let bad_hex = DOC_SIG.replace('7', "g");
        assert!(verify_signature(SECRET, b"Hello, World!", Some(&bad_hex)).is_err());
    }

    #[test]
    fn rejections_never_quote_the_body() {
        let mut s = HookState::default();
        let body = b"{\"secret-ish\": \"do-not-echo\"}".to_vec();
        let mut req = request("workflow_job", "d1", &body);
        req.headers[2].1 = DOC_SIG.to_owned();
        let e = handle(&mut s, &req, false).expect_err("bad signature");
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(!e.to_string().contains("do-not-echo"));

        let bad = b"{\"action\": \"do-not-echo\", \"workflow_job\": 5}".to_vec();
        let e =
            handle(&mut s, &request("workflow_job", "d2", &bad), false).expect_err("bad payload");
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(!e.to_string().contains("do-not-echo"), "{e}");
    }

    #[test]
    fn without_a_secret_deliveries_are_rejected() {
        let mut s = HookState::default();
        let m = matcher();
        let body = job_body(1, "queued", &["linux"]);
        let e = s
            .handle(
                &request("workflow_job", "d", &body),
                &Handling {
                    secret: None,
                    matcher: &m,
                    track_jobs: false,
                    repo_allowed: &|_| true,
                },
            )
            .expect_err("no secret");
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
    }

    #[test]
    fn oversized_bodies_are_rejected_before_verification() {
        let mut s = HookState::default();
        let body = vec![b' '; MAX_BODY + 1];
        let e = handle(&mut s, &request("workflow_job", "d", &body), false).expect_err("big");
        assert_eq!(e.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn workflow_job_wakes_every_matching_pool() {
        let mut s = HookState::default();
        let body = job_body(1, "queued", &["self-hosted", "Linux"]);
        let pools = handle(&mut s, &request("workflow_job", "d1", &body), false).expect("ok");
        assert_eq!(pools, [PoolId::new("linux"), PoolId::new("gpu")]);
        let body = job_body(2, "completed", &["linux", "gpu"]);
        let pools = handle(&mut s, &request("workflow_job", "d2", &body), false).expect("ok");
        assert_eq!(pools, [PoolId::new("gpu")]);
        let body = job_body(3, "queued", &["windows"]);
        let pools = handle(&mut s, &request("workflow_job", "d3", &body), false).expect("ok");
        assert!(pools.is_empty());
    }

    #[test]
    fn other_events_are_acknowledged() {
        let mut s = HookState::default();
        let pools =
            handle(&mut s, &request("ping", "p1", b"{\"zen\": \"x\"}"), false).expect("ping");
        assert!(pools.is_empty());
        let pools = handle(
            &mut s,
            &request("workflow_run", "p2", b"not even json"),
            false,
        )
        .expect("ignored");
        assert!(pools.is_empty());
    }

    #[test]
    fn duplicates_by_delivery_and_by_job_event_wake_nothing() {
        let mut s = HookState::default();
        let body = job_body(1, "queued", &["linux", "x64"]);
        assert_eq!(
            handle(&mut s, &request("workflow_job", "d1", &body), false)
                .expect("first")
                .len(),
            1
        );
        // Redelivery: same delivery id.
        assert!(
            handle(&mut s, &request("workflow_job", "d1", &body), false)
                .expect("redelivery")
                .is_empty()
        );
        // The org hook delivering the same event with its own delivery id.
        assert!(
            handle(&mut s, &request("workflow_job", "d2", &body), false)
                .expect("org hook")
                .is_empty()
        );
        // The next action of the same job is news.
        let body = job_body(1, "in_progress", &["linux", "x64"]);
        assert_eq!(
            handle(&mut s, &request("workflow_job", "d3", &body), false)
                .expect("next action")
                .len(),
            1
        );
    }

    #[test]
    fn dedup_memory_is_bounded() {
        let mut d = Dedup::default();
        for i in 0..DEDUP_CAPACITY + 50 {
            assert!(d.insert(&i.to_string()));
        }
        assert_eq!(d.len(), DEDUP_CAPACITY);
        assert!(!d.contains("0"), "the oldest key is forgotten");
        assert!(d.contains(&(DEDUP_CAPACITY + 49).to_string()));
        assert!(!d.insert(&(DEDUP_CAPACITY + 49).to_string()));
    }

    #[test]
    fn repositories_from_events_are_remembered_for_a_day() {
        let mut s = HookState::default();
        let body = job_body(1, "queued", &["linux"]);
        handle(&mut s, &request("workflow_job", "d1", &body), false).expect("ok");
        let now = Instant::now();
        let names = |s: &mut HookState, at| -> Vec<String> {
            s.recent_repos(at).into_iter().map(|(r, _)| r).collect()
        };
        assert_eq!(names(&mut s, now), ["acme/widgets"]);
        let mut other =
            serde_json::from_slice::<serde_json::Value>(&job_body(2, "queued", &[])).expect("json");
        other["repository"]["full_name"] = "elsewhere/x".into();
        let body = serde_json::to_vec(&other).expect("json");
        handle(&mut s, &request("workflow_job", "d2", &body), false).expect("ok");
        assert_eq!(
            names(&mut s, now),
            ["acme/widgets"],
            "repos of other accounts are not polled"
        );
        assert!(s.recent_repos(now + REPO_TTL).is_empty());
    }

    #[test]
    fn tracked_jobs_give_demand_and_only_move_forward() {
        let mut s = HookState::default();
        for (i, (id, action)) in [
            (1, "queued"),
            (2, "queued"),
            (2, "in_progress"),
            (3, "completed"),
            (3, "queued"),
        ]
        .iter()
        .enumerate()
        {
            let body = job_body(*id, action, &["linux"]);
            handle(
                &mut s,
                &request("workflow_job", &format!("d{i}"), &body),
                true,
            )
            .expect("ok");
        }
        let demand = s.demand(&matcher(), Instant::now());
        let linux = &demand[&PoolId::new("linux")];
        assert_eq!(
            linux
                .waiting
                .iter()
                .map(|w| w.id.as_str())
                .collect::<Vec<_>>(),
            ["1"]
        );
        assert_eq!(linux.running, 1);
        assert!(
            s.demand(&matcher(), Instant::now() + REPO_TTL).is_empty(),
            "jobs unheard of for a day are dropped"
        );
    }
}
