//! The four CI systems' API answers: what the clients make of status, headers and body, then
//! the decoding of each kind of answer and the conversions the providers apply to it.
//!
//! An input's first line is `KIND STATUS` (`runners 200`); unknown kinds decode nothing
//! beyond the status and headers, an unparsable status is 200.

use std::sync::LazyLock;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use runscale_core::{Error, ErrorKind, Result, RunnerState};
use secrecy::SecretString;

use super::Message;
use super::webhooks::SECRET;
use crate::http::{self, Answer, MAX_SERVER_WAIT};
use crate::{buildkite, circleci, github, gitlab};

/// The status of the first line (200 when missing or not a status).
fn status(msg: &Message<'_>) -> StatusCode {
    msg.word(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK)
}

/// The headers a client would see (lines that are no valid header are dropped, as no HTTP
/// library would deliver them).
fn header_map(msg: &Message<'_>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in &msg.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    map
}

fn answer(msg: &Message<'_>) -> Answer {
    Answer {
        status: status(msg),
        headers: header_map(msg),
        body: msg.body.to_vec(),
    }
}

/// What every error must be: not quoting the secret, and asking for a bounded wait.
fn check_error(e: &Error) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(SECRET), "an error quotes the secret: {text}");
    if let ErrorKind::RateLimited {
        retry_after: Some(d),
    } = e.kind()
    {
        assert!(d <= MAX_SERVER_WAIT, "a wait of {d:?} is not bounded");
    }
}

fn check<T>(result: Result<T>) -> Option<T> {
    result.map_err(|e| check_error(&e)).ok()
}

const TIMEOUT: Duration = Duration::from_secs(5);

static GITHUB: LazyLock<github::client::Client> = LazyLock::new(|| {
    github::client::Client::new(
        "http://127.0.0.1:9".to_owned(),
        github::config::Scope::Org("acme".to_owned()),
        github::auth::Credential::Token(SecretString::from(SECRET.to_owned())),
        None,
        TIMEOUT,
        TIMEOUT,
    )
    .expect("the harness's GitHub client")
});

/// A GitHub REST answer: rate-limit headers, throttling, the ETag cache (`KIND STATUS cached`
/// caches, a 304 is served from the cache), then the body as the kind's type: `runners`,
/// `jobs`, `runs`, `repositories`, `jitconfig`, `token`, `installation`.
pub fn github_api(data: &[u8]) {
    use github::convert::{
        ExpiringToken, Installation, InstallationRepos, JitConfig, JobList, RunList, RunnerList,
        job_phase, runner_state, to_runner,
    };
    let msg = Message::parse(data);
    let kind = msg.word(0).unwrap_or_default().to_owned();
    let cached = msg.word(2) == Some("cached");
    let op = "github.fuzz";
    let reply = GITHUB.receive(
        op,
        format!("http://127.0.0.1:9/{kind}"),
        cached,
        status(&msg),
        &header_map(&msg),
        msg.body.to_vec(),
    );
    if let Some(pause) = GITHUB.paused_for() {
        assert!(
            pause <= github::client::MAX_PAUSE,
            "a pause of {pause:?} is not bounded"
        );
    }
    let Some(reply) = check(reply) else { return };
    let ok = [StatusCode::OK, StatusCode::CREATED];
    let _ = reply.message();
    match kind.as_str() {
        "runners" => {
            if let Some(list) = check(reply.json::<RunnerList>(op, &ok, "runners")) {
                for r in &list.runners {
                    let runner = to_runner(r);
                    assert_eq!(runner.state, runner_state(r));
                    assert!(!r.busy || runner.state == RunnerState::Busy);
                }
            }
        }
        "jobs" => {
            if let Some(list) = check(reply.json::<JobList>(op, &ok, "jobs")) {
                for j in &list.jobs {
                    let _ = job_phase(&j.status);
                }
            }
        }
        "runs" => {
            check(reply.json::<RunList>(op, &ok, "runs"));
        }
        "repositories" => {
            check(reply.json::<InstallationRepos>(op, &ok, "repos"));
        }
        "jitconfig" => {
            check(reply.json::<JitConfig>(op, &ok, "jitconfig"));
        }
        "token" => {
            check(reply.json::<ExpiringToken>(op, &ok, "token"));
        }
        "installation" => {
            check(reply.json::<Installation>(op, &ok, "installation"));
        }
        _ => {}
    }
}

/// A GitLab REST answer: status, pagination and clock, then the body as the kind's type:
/// `jobs` (also as past arrivals), `runners`, `runner`, `managers`, `projects`, `value`.
pub fn gitlab_api(data: &[u8]) {
    use gitlab::client::{ApiJob, ApiManager, ApiProject, ApiRunner, ApiRunnerDetail};
    let msg = Message::parse(data);
    let op = "gitlab.fuzz";
    let what = "fuzzed answer";
    let Some(a) = check(gitlab::client::answer(op, what, answer(&msg))) else {
        return;
    };
    let body = &a.body;
    match msg.word(0).unwrap_or_default() {
        "jobs" => {
            if let Some(jobs) = check(http::decode::<Vec<ApiJob>>(op, what, body)) {
                for j in &jobs {
                    if let Some(past) = gitlab::history::past_job(j) {
                        assert!(past.started_at.is_none_or(|s| s >= past.queued_at));
                    }
                }
            }
        }
        "runners" => {
            if let Some(runners) = check(http::decode::<Vec<ApiRunner>>(op, what, body)) {
                for r in &runners {
                    let _ = r.is_paused();
                }
            }
        }
        "runner" => {
            check(http::decode::<ApiRunnerDetail>(op, what, body));
        }
        "managers" => {
            if let Some(managers) = check(http::decode::<Vec<ApiManager>>(op, what, body)) {
                let now = a.date.unwrap_or_else(chrono::Utc::now);
                for m in &managers {
                    let _ = (m.active(), m.online(), m.contact_age(now));
                }
            }
        }
        "projects" => {
            check(http::decode::<Vec<ApiProject>>(op, what, body));
        }
        "value" => {
            check(http::decode::<serde_json::Value>(op, what, body));
        }
        _ => {}
    }
}

static BUILDKITE: LazyLock<buildkite::client::Client> = LazyLock::new(|| {
    buildkite::client::Client::new(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/v3",
        SecretString::from(SECRET.to_owned()),
        SecretString::from(SECRET.to_owned()),
        buildkite::client::RestBudgets {
            org: 200,
            user: 200,
        },
        TIMEOUT,
        TIMEOUT,
    )
    .expect("the harness's Buildkite client")
});

/// A Buildkite answer: the REST rate-limit headers, then the body as the kind's type:
/// `metrics` (agent metrics API), `agents` (with `Link` pagination), `agent`, `scheduled`,
/// `reserved` (Stacks API), `stop`, `builds` (the build history, with `Link` pagination).
pub fn buildkite_api(data: &[u8]) {
    use buildkite::client::{
        ApiAgent, ApiBuild, Client, Reserved, ScheduledJobs, metrics_answer, next_link, stop_answer,
    };
    let msg = Message::parse(data);
    let op = "buildkite.fuzz";
    let what = "fuzzed answer";
    let a = answer(&msg);
    BUILDKITE.note_limits(&a.headers, a.status);
    let _ = BUILDKITE.remaining();
    match msg.word(0).unwrap_or_default() {
        "metrics" => {
            if let Some(m) = check(metrics_answer(op, "acme", &a)) {
                assert!(m.poll_duration.is_none_or(|d| d <= MAX_SERVER_WAIT));
            }
        }
        "agents" => {
            if let Some(agents) = check(Client::parse::<Vec<ApiAgent>>(op, what, &a)) {
                for agent in &agents {
                    let _ = agent.is_connected();
                }
            }
            let _ = next_link(&a.headers);
        }
        "agent" => {
            check(Client::parse::<ApiAgent>(op, what, &a));
        }
        "scheduled" => {
            check(Client::parse::<ScheduledJobs>(op, what, &a));
        }
        "reserved" => {
            check(Client::parse::<Reserved>(op, what, &a));
        }
        "stop" => {
            check(stop_answer(op, what, &a));
        }
        "builds" => {
            if let Some(builds) = check(Client::parse::<Vec<ApiBuild>>(op, what, &a)) {
                for past in builds
                    .iter()
                    .flat_map(|b| &b.jobs)
                    .filter_map(buildkite::history::past_job)
                {
                    assert!(past.started_at.is_none_or(|s| s >= past.queued_at));
                }
            }
            let _ = next_link(&a.headers);
        }
        _ => {}
    }
}

/// A CircleCI runner API answer, as the kind's type: `unclaimed`, `running`, `runners`.
pub fn circleci_api(data: &[u8]) {
    use circleci::client::{RunnerList, Running, Unclaimed, answer as decode};
    let msg = Message::parse(data);
    let op = "circleci.fuzz";
    let what = "fuzzed answer";
    let a = answer(&msg);
    match msg.word(0).unwrap_or_default() {
        "unclaimed" => {
            check(decode::<Unclaimed>(op, what, &a));
        }
        "running" => {
            check(decode::<Running>(op, what, &a));
        }
        "runners" => {
            check(decode::<RunnerList>(op, what, &a));
        }
        _ => {
            check(decode::<serde_json::Value>(op, what, &a));
        }
    }
}
