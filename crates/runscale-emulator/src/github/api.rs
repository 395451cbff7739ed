//! The GitHub REST endpoints the emulator serves, at repository (`/repos/{owner}/{repo}`)
//! and organisation (`/orgs/{org}`) scope: self-hosted runners (list with `name` filter and
//! pagination, get, delete with 422 while busy), registration and remove tokens, JIT
//! configurations, workflow runs (with `status` and `created` filters, newest first) and their
//! jobs, App installations,
//! installation tokens and the installation's repositories (`/installation/repositories`), and
//! `/rate_limit`. Enterprise scope is not served.
//!
//! Of the workflow-run list filters only `status` and `created` are implemented (others are
//! ignored); every
//! run has one attempt, so the jobs list's `filter=latest` and `filter=all` agree.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::error::{ApiError, DOC_APPS, DOC_INSTALLATIONS, DOC_REST, DOC_RUNNERS, DOC_RUNS};
use super::middleware::github_layer;
use super::server::Shared;
use super::shapes;
use super::state::{NewRunner, Principal, RunRec, Scope, State as EmuState};

type Params = HashMap<String, String>;
type ApiResult = Result<Response, ApiError>;

/// The REST routes, behind the GitHub middleware.
pub(crate) fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for prefix in ["/orgs/{org}", "/repos/{owner}/{repo}"] {
        router = router
            .route(&format!("{prefix}/actions/runners"), get(list_runners))
            .route(
                &format!("{prefix}/actions/runners/{{runner_id}}"),
                get(get_runner).delete(delete_runner),
            )
            .route(
                &format!("{prefix}/actions/runners/registration-token"),
                post(registration_token),
            )
            .route(
                &format!("{prefix}/actions/runners/remove-token"),
                post(registration_token),
            )
            .route(
                &format!("{prefix}/actions/runners/generate-jitconfig"),
                post(generate_jitconfig),
            );
    }
    router
        .route("/repos/{owner}/{repo}/actions/runs", get(list_runs))
        .route("/repos/{owner}/{repo}/actions/runs/{run_id}", get(get_run))
        .route(
            "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            get(list_jobs),
        )
        .route("/repos/{owner}/{repo}/actions/jobs/{job_id}", get(get_job))
        .route("/installation/repositories", get(installation_repositories))
        .route("/app/installations", get(list_installations))
        .route(
            "/app/installations/{installation_id}/access_tokens",
            post(access_token),
        )
        .route("/orgs/{org}/installation", get(installation))
        .route("/repos/{owner}/{repo}/installation", get(installation))
        .route("/users/{username}/installation", get(installation))
        .route("/rate_limit", get(rate_limit))
        .route_layer(from_fn_with_state(shared, github_layer))
}

/// Anything else: GitHub's 404.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found(DOC_REST)
}

/// The scope named by the path, if the caller may access it (404 otherwise, as GitHub
/// hides what a token cannot see).
fn scope(s: &EmuState, who: &Principal, p: &Params) -> Result<Scope, ApiError> {
    let scope = match p.get("org") {
        Some(org) => s.org_scope(org)?,
        None => s.repo_scope(
            p.get("owner").map_or("", String::as_str),
            p.get("repo").map_or("", String::as_str),
        )?,
    };
    if !who.may_access(scope.owner) {
        return Err(ApiError::not_found(DOC_RUNNERS));
    }
    Ok(scope)
}

/// Workflow run `run_id` of the scope's repository (404 for any other).
fn run_in<'s>(s: &'s EmuState, scope: &Scope, run_id: u64) -> Result<&'s RunRec, ApiError> {
    s.runs
        .get(&run_id)
        .filter(|r| r.owner == scope.owner && Some(r.repo) == scope.repo)
        .ok_or_else(|| ApiError::not_found(DOC_RUNS))
}

fn id_param(p: &Params, name: &str, doc: &'static str) -> Result<u64, ApiError> {
    p.get(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::not_found(doc))
}

/// `per_page` (default 30, at most 100) and `page` (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Page {
    per_page: usize,
    page: usize,
}

impl Page {
    fn from_query(q: &Params) -> Self {
        let per_page = q
            .get("per_page")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .map_or(30, |n| n.min(100));
        let page = q
            .get("page")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        Page { per_page, page }
    }

    fn slice<T>(self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .skip((self.page - 1).saturating_mul(self.per_page))
            .take(self.per_page)
            .collect()
    }

    fn last(self, total: usize) -> usize {
        total.div_ceil(self.per_page).max(1)
    }

    /// A list body, `{"total_count": <all>, <key>: [this page of all, shaped by shape]}`, and
    /// the `Link` header of `uri` over all of them.
    fn of<T>(
        self,
        base_url: &str,
        uri: &Uri,
        key: &str,
        all: Vec<T>,
        shape: impl FnMut(T) -> Value,
    ) -> (Value, Option<String>) {
        let total = all.len();
        let items: Vec<Value> = self.slice(all).into_iter().map(shape).collect();
        let link = link_header(base_url, uri, total, self);
        (json!({ "total_count": total, key: items }), link)
    }
}

/// GitHub's `Link` header (`prev`, `next`, `last`, `first`), keeping the other query
/// parameters as they were.
fn link_header(base_url: &str, uri: &Uri, total: usize, page: Page) -> Option<String> {
    let last = page.last(total);
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("page="))
        .collect();
    let url = |n: usize| {
        let mut query = kept.clone().join("&");
        if !query.is_empty() {
            query.push('&');
        }
        format!("<{base_url}{}?{query}page={n}>", uri.path())
    };
    let mut links = Vec::new();
    if page.page > 1 {
        links.push(format!("{}; rel=\"prev\"", url((page.page - 1).min(last))));
    }
    if page.page < last {
        links.push(format!("{}; rel=\"next\"", url(page.page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page.page > 1 {
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    (!links.is_empty()).then(|| links.join(", "))
}

fn with_link(body: Value, link: Option<String>) -> Response {
    let mut resp = Json(body).into_response();
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, link);
    }
    resp
}

async fn list_runners(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    uri: Uri,
) -> ApiResult {
    let page = Page::from_query(&q);
    shared.with_state(|s, _| {
        let scope = scope(s, &who, &p)?;
        let all = s.list_runners(scope, q.get("name").map(String::as_str));
        let (body, link) = page.of(&s.base_url, &uri, "runners", all, shapes::runner);
        Ok(with_link(body, link))
    })
}

async fn get_runner(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
) -> ApiResult {
    let id = id_param(&p, "runner_id", DOC_RUNNERS)?;
    shared.with_state(|s, _| {
        let scope = scope(s, &who, &p)?;
        Ok(Json(shapes::runner(s.get_runner(scope, id)?)).into_response())
    })
}

async fn delete_runner(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
) -> ApiResult {
    let id = id_param(&p, "runner_id", DOC_RUNNERS)?;
    shared.with_state(|s, now| {
        let scope = scope(s, &who, &p)?;
        s.delete_runner(scope, id, now)
    })?;
    // Wakes the runner's long-poll, which then learns it is gone.
    shared.notify();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Registration and remove tokens have the same shape.
async fn registration_token(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
) -> ApiResult {
    shared.with_state(|s, now| {
        let scope = scope(s, &who, &p)?;
        let (token, expires_at) = s.issue_runner_token(scope, now);
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "token": token,
                "expires_at": expires_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            })),
        )
            .into_response())
    })
}

/// Parses and validates a `generate-jitconfig` body like GitHub's schema does.
fn parse_jit_body(body: &[u8]) -> Result<NewRunner, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "Problems parsing JSON",
            DOC_RUNNERS,
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::invalid(
            "Invalid input: the body must be an object.",
            DOC_RUNNERS,
        ));
    };
    for field in ["name", "runner_group_id", "labels"] {
        if !obj.contains_key(field) {
            return Err(ApiError::invalid(
                format!("\"{field}\" wasn't supplied."),
                DOC_RUNNERS,
            ));
        }
    }
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::invalid("\"name\" must be a non-empty string.", DOC_RUNNERS))?;
    let group_id = obj
        .get("runner_group_id")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::invalid("\"runner_group_id\" must be an integer.", DOC_RUNNERS))?;
    let labels = obj
        .get("labels")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("\"labels\" must be an array.", DOC_RUNNERS))?;
    if labels.is_empty() || labels.len() > 100 {
        return Err(ApiError::invalid(
            format!(
                "For 'properties/labels', {} items is not between 1 and 100.",
                labels.len()
            ),
            DOC_RUNNERS,
        ));
    }
    let labels = labels
        .iter()
        .map(|l| {
            l.as_str()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| ApiError::invalid("\"labels\" must be non-empty strings.", DOC_RUNNERS))?;
    if obj.get("work_folder").is_some_and(|w| !w.is_string()) {
        return Err(ApiError::invalid(
            "\"work_folder\" must be a string.",
            DOC_RUNNERS,
        ));
    }
    Ok(NewRunner {
        name: name.to_owned(),
        group_id,
        labels,
        ephemeral: true,
    })
}

async fn generate_jitconfig(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
    body: Bytes,
) -> ApiResult {
    shared.with_state(|s, now| {
        let scope = scope(s, &who, &p)?;
        let spec = parse_jit_body(&body)?;
        let id = s.create_runner(scope, spec, false, now)?;
        let runner = s
            .runners
            .get(&id)
            .map(shapes::runner)
            .ok_or_else(|| ApiError::not_found(DOC_RUNNERS))?;
        let encoded = s
            .jit_config(id)
            .map(|j| j.encode())
            .ok_or_else(|| ApiError::not_found(DOC_RUNNERS))?;
        Ok((
            StatusCode::CREATED,
            Json(json!({"runner": runner, "encoded_jit_config": encoded})),
        )
            .into_response())
    })
}

/// Values of the runs list `status` filter: statuses, then conclusions.
const RUN_STATUSES: &[&str] = &[
    "queued",
    "in_progress",
    "completed",
    "requested",
    "waiting",
    "pending",
];
const RUN_CONCLUSIONS: &[&str] = &[
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "skipped",
    "stale",
    "success",
    "timed_out",
];

async fn list_runs(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    uri: Uri,
) -> ApiResult {
    let page = Page::from_query(&q);
    let status = q.get("status").filter(|v| !v.is_empty()).cloned();
    if let Some(st) = &status
        && !RUN_STATUSES.contains(&st.as_str())
        && !RUN_CONCLUSIONS.contains(&st.as_str())
    {
        return Err(ApiError::invalid(
            format!("{st:?} is not a valid status."),
            DOC_RUNS,
        ));
    }
    let created = match q.get("created").filter(|v| !v.is_empty()) {
        Some(v) => Some(created_range(v).ok_or_else(|| {
            ApiError::invalid(format!("{v:?} is not a valid date range."), DOC_RUNS)
        })?),
        None => None,
    };
    shared.with_state(|s, _| {
        let scope = scope(s, &who, &p)?;
        let repo = scope.repo;
        let mut runs: Vec<_> = s
            .runs
            .values()
            .filter(|r| r.owner == scope.owner && Some(r.repo) == repo)
            .filter(|r| {
                let (st, concl) = s.run_status(r);
                status
                    .as_deref()
                    .is_none_or(|want| want == st || Some(want) == concl)
            })
            .filter(|r| created.is_none_or(|(lo, hi)| in_range(r.created_at, lo, hi)))
            .collect();
        // Newest first.
        runs.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
        let (body, link) = page.of(&s.base_url, &uri, "workflow_runs", runs, |r| {
            shapes::run(s, r)
        });
        Ok(with_link(body, link))
    })
}

/// Bounds of a `created` filter, as half-open instants `[from, to)`: the search syntax's
/// dates (`YYYY-MM-DD`, a whole day, or an ISO 8601 time, one instant) with `>`, `>=`, `<`,
/// `<=`, a range `A..B` (either side `*`), or one date alone. `None` if malformed.
type Range = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn created_range(v: &str) -> Option<Range> {
    if let Some((a, b)) = v.split_once("..") {
        let from = if a == "*" { None } else { Some(span(a)?.0) };
        let to = if b == "*" { None } else { Some(span(b)?.1) };
        return Some((from, to));
    }
    for (op, pick) in [(">=", 0), ("<=", 1), (">", 2), ("<", 3)] {
        if let Some(rest) = v.strip_prefix(op) {
            let (start, end) = span(rest)?;
            return Some(match pick {
                0 => (Some(start), None),
                1 => (None, Some(end)),
                2 => (Some(end), None),
                _ => (None, Some(start)),
            });
        }
    }
    let (start, end) = span(v)?;
    Some((Some(start), Some(end)))
}

/// The instants a search-syntax date stands for: a day, or one instant.
fn span(v: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let start = day.and_hms_opt(0, 0, 0)?.and_utc();
        return Some((start, start + chrono::Duration::days(1)));
    }
    let at = DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc())
        })
        .ok()?;
    Some((at, at + chrono::Duration::nanoseconds(1)))
}

fn in_range(t: DateTime<Utc>, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> bool {
    from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e)
}

async fn get_run(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
) -> ApiResult {
    let run_id = id_param(&p, "run_id", DOC_RUNS)?;
    shared.with_state(|s, _| {
        let scope = scope(s, &who, &p)?;
        let run = run_in(s, &scope, run_id)?;
        Ok(Json(shapes::run(s, run)).into_response())
    })
}

async fn list_jobs(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    uri: Uri,
) -> ApiResult {
    let run_id = id_param(&p, "run_id", DOC_RUNS)?;
    let page = Page::from_query(&q);
    match q.get("filter").map(String::as_str) {
        None | Some("latest") | Some("all") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                format!("{other:?} is not a valid filter (latest, all)."),
                DOC_RUNS,
            ));
        }
    }
    shared.with_state(|s, _| {
        let scope = scope(s, &who, &p)?;
        let run = run_in(s, &scope, run_id)?;
        let jobs: Vec<_> = run.jobs.iter().filter_map(|j| s.jobs.get(j)).collect();
        let (body, link) = page.of(&s.base_url, &uri, "jobs", jobs, |j| shapes::job(s, j));
        Ok(with_link(body, link))
    })
}

async fn get_job(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(p): Path<Params>,
) -> ApiResult {
    let job_id = id_param(&p, "job_id", DOC_RUNS)?;
    shared.with_state(|s, _| {
        let scope = scope(s, &who, &p)?;
        let job = s
            .jobs
            .get(&job_id)
            .filter(|j| j.owner == scope.owner && Some(j.repo) == scope.repo)
            .ok_or_else(|| ApiError::not_found(DOC_RUNS))?;
        Ok(Json(shapes::job(s, job)).into_response())
    })
}

/// `GET /installation/repositories`: the repositories an installation token can access
/// (every repository of the installation's account: installations are `repository_selection:
/// all`), paginated. Other tokens get 403.
async fn installation_repositories(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<Params>,
    uri: Uri,
) -> ApiResult {
    let page = Page::from_query(&q);
    let Principal::Token {
        bucket,
        owner: Some(owner),
    } = &who
    else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "This endpoint needs an installation access token.",
            DOC_INSTALLATIONS,
        ));
    };
    if !bucket.starts_with("installation:") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "This endpoint needs an installation access token.",
            DOC_INSTALLATIONS,
        ));
    }
    shared.with_state(|s, _| {
        let indices: Vec<usize> = (0..s.owners[*owner].repos.len()).collect();
        let (mut body, link) = page.of(&s.base_url, &uri, "repositories", indices, |r| {
            shapes::repository(s, *owner, r)
        });
        body["repository_selection"] = json!("all");
        Ok(with_link(body, link))
    })
}

async fn list_installations(State(shared): State<Arc<Shared>>) -> ApiResult {
    shared.with_state(|s, _| {
        let items: Vec<Value> = s
            .app
            .as_ref()
            .map(|a| {
                a.installations
                    .iter()
                    .map(|i| shapes::installation(s, i))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Json(Value::Array(items)).into_response())
    })
}

async fn access_token(State(shared): State<Arc<Shared>>, Path(p): Path<Params>) -> ApiResult {
    let id = id_param(&p, "installation_id", DOC_APPS)?;
    shared.with_state(|s, now| {
        let (token, expires_at) = s.issue_installation_token(id, now)?;
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "token": token,
                "expires_at": expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                "permissions": {
                    "actions": "read",
                    "administration": "write",
                    "metadata": "read",
                    "organization_self_hosted_runners": "write",
                },
                "repository_selection": "all",
            })),
        )
            .into_response())
    })
}

/// `GET /orgs/{org}/installation`, `/repos/{owner}/{repo}/installation`,
/// `/users/{username}/installation`.
async fn installation(State(shared): State<Arc<Shared>>, Path(p): Path<Params>) -> ApiResult {
    shared.with_state(|s, _| {
        let owner = match (p.get("org"), p.get("username")) {
            (Some(org), _) => s.org_scope(org)?.owner,
            (None, Some(user)) => s
                .owners
                .iter()
                .position(|o| o.login.eq_ignore_ascii_case(user))
                .ok_or_else(|| ApiError::not_found(DOC_APPS))?,
            (None, None) => {
                s.repo_scope(
                    p.get("owner").map_or("", String::as_str),
                    p.get("repo").map_or("", String::as_str),
                )?
                .owner
            }
        };
        let inst = s
            .installation_of(owner)
            .ok_or_else(|| ApiError::not_found(DOC_APPS))?;
        Ok(Json(shapes::installation(s, inst)).into_response())
    })
}

async fn rate_limit(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
) -> ApiResult {
    shared.with_state(|s, now| {
        let core = s.rate_info(who.bucket(), now);
        let core = json!({
            "limit": core.limit,
            "remaining": core.remaining,
            "reset": core.reset_epoch,
            "used": core.used(),
            "resource": "core",
        });
        // Buckets the emulator does not model are reported full.
        let full = |limit: u32, resource: &str| {
            json!({
                "limit": limit, "remaining": limit, "used": 0,
                "reset": now.wall.timestamp() + 3600, "resource": resource,
            })
        };
        Ok(Json(json!({
            "resources": {
                "core": core,
                "search": full(30, "search"),
                "graphql": full(5000, "graphql"),
                "actions_runner_registration": full(10000, "actions_runner_registration"),
            },
            "rate": core,
        }))
        .into_response())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn page_defaults_and_caps() {
        assert_eq!(
            Page::from_query(&q(&[])),
            Page {
                per_page: 30,
                page: 1
            }
        );
        assert_eq!(Page::from_query(&q(&[("per_page", "500")])).per_page, 100);
        assert_eq!(Page::from_query(&q(&[("page", "0")])).page, 1);
        let p = Page {
            per_page: 2,
            page: 2,
        };
        assert_eq!(p.slice(vec![1, 2, 3, 4, 5]), vec![3, 4]);
        assert_eq!(p.last(5), 3);
        assert_eq!(p.last(0), 1);
    }

    #[test]
    fn link_header_keeps_other_parameters() {
        let uri: Uri = "/orgs/o/actions/runners?per_page=2&page=2&name=x"
            .parse()
            .expect("uri");
        let link = link_header(
            "http://e",
            &uri,
            5,
            Page {
                per_page: 2,
                page: 2,
            },
        )
        .expect("links");
        assert_eq!(
            link,
            "<http://e/orgs/o/actions/runners?per_page=2&name=x&page=1>; rel=\"prev\", \
             <http://e/orgs/o/actions/runners?per_page=2&name=x&page=3>; rel=\"next\", \
             <http://e/orgs/o/actions/runners?per_page=2&name=x&page=3>; rel=\"last\", \
             <http://e/orgs/o/actions/runners?per_page=2&name=x&page=1>; rel=\"first\""
        );
        let one: Uri = "/x".parse().expect("uri");
        assert_eq!(
            link_header(
                "http://e",
                &one,
                1,
                Page {
                    per_page: 30,
                    page: 1
                }
            ),
            None
        );
    }

    #[test]
    fn jit_body_validation_matches_the_schema() {
        let ok =
            parse_jit_body(br#"{"name":"r","runner_group_id":1,"labels":["a"]}"#).expect("valid");
        assert_eq!(ok.labels, vec!["a"]);
        let status = |b: &[u8]| parse_jit_body(b).map(|_| ()).map_err(|e| e.status);
        assert_eq!(status(b"{"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            status(br#"{"runner_group_id":1,"labels":["a"]}"#),
            Err(StatusCode::UNPROCESSABLE_ENTITY)
        );
        assert_eq!(
            status(br#"{"name":"r","labels":["a"]}"#),
            Err(StatusCode::UNPROCESSABLE_ENTITY)
        );
        assert_eq!(
            status(br#"{"name":"r","runner_group_id":1,"labels":[]}"#),
            Err(StatusCode::UNPROCESSABLE_ENTITY)
        );
        let many: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
        let body = json!({"name":"r","runner_group_id":1,"labels":many}).to_string();
        assert_eq!(
            status(body.as_bytes()),
            Err(StatusCode::UNPROCESSABLE_ENTITY)
        );
    }

    #[test]
    fn created_filters_follow_the_search_syntax() {
        let t = |v: &str| {
            DateTime::parse_from_rfc3339(v)
                .expect("time")
                .with_timezone(&Utc)
        };
        let day = t("2026-11-20T00:00:00Z");
        let next = t("2026-11-21T00:00:00Z");
        assert_eq!(created_range(">=2026-11-20"), Some((Some(day), None)));
        assert_eq!(created_range(">2026-11-20"), Some((Some(next), None)));
        assert_eq!(created_range("<2026-11-21"), Some((None, Some(next))));
        assert_eq!(created_range("<=2026-11-20"), Some((None, Some(next))));
        assert_eq!(created_range("2026-11-20"), Some((Some(day), Some(next))));
        assert_eq!(created_range("2026-11-20..*"), Some((Some(day), None)));
        let noon = t("2026-11-20T12:00:00Z");
        let (from, _) = created_range(">=2026-11-20T12:00:00Z").expect("valid");
        assert_eq!(from, Some(noon));
        assert!(in_range(noon, from, None));
        assert!(!in_range(noon - chrono::Duration::seconds(1), from, None));
        assert_eq!(created_range(">=yesterday"), None);
    }
}
