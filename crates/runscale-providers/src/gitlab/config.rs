//! Configuration of the GitLab provider: the instance-level [`Config`] (URL, token, projects,
//! groups and member projects to read demand from, webhooks) and the per-pool
//! [`PoolSelector`] (tags, `run_untagged`, runner scope, one runner per pool or per instance),
//! with their pure validation. Nothing here reads a secret or opens a connection.

use std::time::Duration;

use runscale_core::adapter_type::{Problems, Selector, Validate};
use runscale_core::secret::SecretRef;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::http::{self, push, result};

/// One GitLab instance (gitlab.com or self-managed) whose CI jobs runscale serves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of GitLab, without `/api/v4`: `https://gitlab.com` (default). Runners are given
    /// the same URL.
    #[serde(default = "default_url")]
    pub url: String,
    /// A personal, group or project access token with `api` scope (and `create_runner` to
    /// create runners).
    pub token: SecretRef,
    /// How the token is sent: `private-token` (`PRIVATE-TOKEN` header, default) or `bearer`
    /// (`Authorization: Bearer`, for OAuth tokens).
    #[serde(default)]
    pub auth: AuthHeader,
    /// Projects whose pending jobs count as demand: numeric ids or full paths (`acme/app`).
    #[serde(default)]
    pub projects: Vec<String>,
    /// Groups whose projects (subgroups included) count as demand: ids or full paths. Their
    /// project list is cached for `group_refresh`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// How long the projects of `groups` are cached before they are listed again.
    #[serde(default = "default_group_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub group_refresh: Duration,
    /// Also every project the token's user is a member of counts as demand (gitlab-runners-
    /// fleet's scope): listed with `GET /projects?membership=true&archived=false` and
    /// `min_access_level`, every page, again after `membership_refresh`. A `project_type`
    /// pool's runner is then enabled in each of these projects (`POST /projects/:id/runners`).
    #[serde(default)]
    pub membership: bool,
    /// How long the member project list is used before it is listed again (5s to 1h). A failed
    /// listing keeps the previous list.
    #[serde(default = "default_group_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub membership_refresh: Duration,
    /// The least role the user has in a member project for it to count: 40 (Maintainer,
    /// default: enabling a project runner in a project needs it), 30 (Developer), 20
    /// (Reporter), 15 (Planner), 10 (Guest) or 50 (Owner).
    #[serde(default = "default_min_access_level")]
    pub min_access_level: u32,
    /// Most member projects (1 to 10000). A longer listing is an error, never a silently
    /// truncated list: the previous list stays in use.
    #[serde(default = "default_max_projects")]
    pub max_projects: u32,
    /// Secret token of the project/group webhook (`X-Gitlab-Token`); deliveries to
    /// `/webhooks/gitlab` are checked against it. Without it, webhooks are rejected.
    #[serde(default)]
    pub webhook_token: Option<SecretRef>,
    /// A runner slot (runner manager) that runs no job and has not contacted GitLab for this
    /// long has left: its gitlab-runner exited (after `max_use_count` jobs, or it crashed), and
    /// GitLab itself keeps calling it `online` for 2 hours. gitlab-runner asks for a job every
    /// 3 s (`check_interval`), so the default 20 s covers several missed polls. With GitLab
    /// Workhorse long polling (`apiCiLongPollingDuration`, used by gitlab.com; off by default
    /// on self-managed GitLab), an idle runner's requests are answered by Workhorse and reach
    /// GitLab — and move `contacted_at` — only when its job queue changes, or at least once an
    /// hour: there, set this above 1 hour (say `65m`), or idle slots are taken for gone. Between
    /// 5 s and 2 h.
    #[serde(default = "default_contact_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub contact_timeout: Duration,
    /// How long a slot that left stays registered: its manager is unregistered once its
    /// contact is older than `contact_timeout` plus this. A runner runscale created is deleted
    /// when all its managers are that quiet (none runs a job), and runscale has not created it,
    /// handed out its token or first seen it within this long either.
    #[serde(default = "default_stale_runner_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stale_runner_timeout: Duration,
    /// Most pages (of 100) read from one listing. A listing longer than this is an error,
    /// never a silently truncated view.
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
    /// Timeout of one API request, including reading the response.
    #[serde(default = "http::default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Timeout for opening a connection.
    #[serde(default = "http::default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
}

/// How the API token is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuthHeader {
    /// `PRIVATE-TOKEN: <token>`.
    #[default]
    PrivateToken,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

/// Roles a member can have (GitLab's access levels).
const ACCESS_LEVELS: [u32; 6] = [10, 15, 20, 30, 40, 50];

/// Bounds of `membership_refresh`.
const MEMBERSHIP_REFRESH_MIN: Duration = Duration::from_secs(5);
const MEMBERSHIP_REFRESH_MAX: Duration = Duration::from_secs(3600);

/// Most member projects `max_projects` may allow.
const MAX_PROJECTS_LIMIT: u32 = 10_000;

/// One pool: the jobs it serves (by tags) and the runner(s) its instances use.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSelector {
    /// The runner's tags: the pool serves jobs whose tags are all among these.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether the pool also serves jobs without tags.
    #[serde(default)]
    pub run_untagged: bool,
    /// `instance_type` (default; needs an administrator's token), `group_type` (with
    /// `group_id`) or `project_type` (with `project_id`).
    #[serde(default)]
    pub runner_type: RunnerType,
    /// The group of a `group_type` runner.
    #[serde(default)]
    pub group_id: Option<u64>,
    /// The project of a `project_type` runner. With the provider's `membership`, it may be
    /// left out: the runner is then created in the member project with the lowest id, and is
    /// enabled in every member project either way.
    #[serde(default)]
    pub project_id: Option<u64>,
    /// `pool` (default): one runner per pool, its token shared by every instance, each
    /// runner slot a distinct manager (`system_id`), as GitLab recommends. `instance`: one
    /// runner per instance, created at launch and deleted with it; it can be paused, so
    /// draining stops new jobs on the instance.
    #[serde(default)]
    pub runner_per: RunnerPer,
    /// Jobs a runner slot takes before it leaves (taskscaler's `max_use_count`): each slot is
    /// handed `RUNSCALE_GITLAB_MAX_BUILDS`, which the start-up script passes to
    /// `gitlab-runner run-single --max-builds`; the slot exits after that many jobs, counts as
    /// gone once its contact is older than `contact_timeout`, and an instance whose slots have
    /// all left is retired (with one slot per instance, this is jobs per instance). Default: no
    /// limit.
    #[serde(default)]
    pub max_use_count: Option<u32>,
}

/// The scope of the runners runscale creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunnerType {
    /// Shared with every project.
    #[default]
    InstanceType,
    /// A group's runner.
    GroupType,
    /// A project's runner.
    ProjectType,
}

impl RunnerType {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerType::InstanceType => "instance_type",
            RunnerType::GroupType => "group_type",
            RunnerType::ProjectType => "project_type",
        }
    }
}

/// What one runner (token) serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunnerPer {
    /// One runner for the pool.
    #[default]
    Pool,
    /// One runner per instance.
    Instance,
}

fn default_url() -> String {
    "https://gitlab.com".to_owned()
}

fn default_group_refresh() -> Duration {
    Duration::from_secs(5 * 60)
}

/// The default `contact_timeout`.
pub(crate) fn default_contact_timeout() -> Duration {
    Duration::from_secs(20)
}

/// Bounds of `contact_timeout`: above gitlab-runner's 3 s `check_interval`, at most GitLab's
/// 2-hour online window.
const CONTACT_TIMEOUT_MIN: Duration = Duration::from_secs(5);
const CONTACT_TIMEOUT_MAX: Duration = Duration::from_secs(2 * 3600);

fn default_stale_runner_timeout() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_max_pages() -> u32 {
    50
}

fn default_min_access_level() -> u32 {
    40
}

fn default_max_projects() -> u32 {
    1000
}

impl Validate for Config {
    /// Checks the settings without reading secrets or touching the network. Errors name the
    /// field and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([
            ("group_refresh", Some(self.group_refresh)),
            ("stale_runner_timeout", Some(self.stale_runner_timeout)),
            ("request_timeout", Some(self.request_timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
        ]));
        match reqwest::Url::parse(&self.url) {
            Err(e) => push(&mut errors, "url", format!("not a URL: {e}")),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                push(&mut errors, "url", "must be http or https");
            }
            Ok(u) if u.query().is_some() || u.path().trim_end_matches('/').ends_with("/api/v4") => {
                push(
                    &mut errors,
                    "url",
                    "give the GitLab base URL, without /api/v4 or a query",
                );
            }
            Ok(_) => {}
        }
        if self.projects.is_empty() && self.groups.is_empty() && !self.membership {
            push(
                &mut errors,
                "projects",
                "list at least one project or group, or set membership: GitLab has no \
                 instance-wide pending-jobs API",
            );
        }
        if !(MEMBERSHIP_REFRESH_MIN..=MEMBERSHIP_REFRESH_MAX).contains(&self.membership_refresh) {
            push(
                &mut errors,
                "membership_refresh",
                "must be between 5s and 1h",
            );
        }
        if !ACCESS_LEVELS.contains(&self.min_access_level) {
            push(
                &mut errors,
                "min_access_level",
                format!(
                    "{} is not a GitLab access level (10, 15, 20, 30, 40 or 50)",
                    self.min_access_level
                ),
            );
        }
        if !(1..=MAX_PROJECTS_LIMIT).contains(&self.max_projects) {
            push(
                &mut errors,
                "max_projects",
                format!("must be between 1 and {MAX_PROJECTS_LIMIT}"),
            );
        }
        for (field, list) in [("projects", &self.projects), ("groups", &self.groups)] {
            for (i, p) in list.iter().enumerate() {
                if p.trim().is_empty() || p.starts_with('/') || p.ends_with('/') {
                    push(
                        &mut errors,
                        &format!("{field}[{i}]"),
                        format!("{p:?} is not an id or a full path"),
                    );
                }
            }
        }
        if self.max_pages == 0 {
            push(&mut errors, "max_pages", "must be at least 1");
        }
        if self.request_timeout.is_zero() {
            push(&mut errors, "request_timeout", "must not be zero");
        }
        if self.stale_runner_timeout < Duration::from_secs(1) {
            push(&mut errors, "stale_runner_timeout", "must be at least 1s");
        }
        if !(CONTACT_TIMEOUT_MIN..=CONTACT_TIMEOUT_MAX).contains(&self.contact_timeout) {
            push(
                &mut errors,
                "contact_timeout",
                "must be between 5s (gitlab-runner polls every 3s) and 2h (GitLab's online window)",
            );
        }
        result(errors)
    }
}

/// Checks a GitLab pool's own settings: each runner slot's `system_id` holds its slot number on
/// two digits, so an instance has at most 99 slots; a `project_type` runner needs its
/// `project_id` unless the provider reads member projects. Errors name the field of the pool
/// (the selector's fields under `selector.`).
pub fn validate_pool(
    config: &Config,
    selector: &PoolSelector,
    runners_per_instance: u32,
) -> Result<(), Vec<(String, String)>> {
    let mut errors = Vec::new();
    if selector.runner_type == RunnerType::ProjectType
        && selector.project_id.is_none()
        && !config.membership
    {
        push(
            &mut errors,
            "selector.project_id",
            "required with runner_type project_type (unless the provider sets membership)",
        );
    }
    if runners_per_instance > super::identity::MAX_SLOTS {
        push(
            &mut errors,
            "runners_per_instance",
            format!(
                "GitLab runner slots are numbered in their system_id on two digits: at most {}, \
                 not {runners_per_instance}",
                super::identity::MAX_SLOTS
            ),
        );
    }
    result(errors)
}

impl Selector for PoolSelector {
    fn labels(&self) -> Vec<String> {
        self.tags.clone()
    }
}

impl Validate for PoolSelector {
    /// Checks the selector without reading secrets. Errors name the field.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        if self.max_use_count == Some(0) {
            push(
                &mut errors,
                "max_use_count",
                "must be at least 1 (leave it out for no limit)",
            );
        }
        if self.tags.is_empty() && !self.run_untagged {
            push(
                &mut errors,
                "tags",
                "give tags or set run_untagged: otherwise no job can ever run on this pool",
            );
        }
        for (i, t) in self.tags.iter().enumerate() {
            if t.trim().is_empty() || t.contains(',') || t.trim() != t {
                push(
                    &mut errors,
                    &format!("tags[{i}]"),
                    format!("{t:?} is not a tag"),
                );
            }
        }
        match self.runner_type {
            RunnerType::InstanceType if self.group_id.is_some() || self.project_id.is_some() => {
                push(
                    &mut errors,
                    "runner_type",
                    "group_id and project_id need group_type or project_type",
                );
            }
            RunnerType::GroupType if self.group_id.is_none() => {
                push(
                    &mut errors,
                    "group_id",
                    "required with runner_type group_type",
                );
            }
            _ => {}
        }
        result(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> Result<Config, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn an_account_with_defaults_validates() {
        let c = config(serde_json::json!({
            "token": { "env": "GITLAB_TOKEN" },
            "groups": ["acme"],
        }))
        .expect("parses");
        assert_eq!(c.url, "https://gitlab.com");
        assert_eq!(c.auth, AuthHeader::PrivateToken);
        assert_eq!(c.group_refresh, Duration::from_secs(300));
        assert_eq!(c.contact_timeout, Duration::from_secs(20));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn contact_timeout_is_bounded_by_the_poll_and_the_online_window() {
        let with = |t: &str| {
            config(serde_json::json!({
                "token": { "env": "T" }, "projects": ["a/b"], "contact_timeout": t,
            }))
            .expect("parses")
            .validate()
            .map_err(|e| e.into_iter().map(|e| e.0).collect::<Vec<_>>())
        };
        assert_eq!(with("4s"), Err(vec!["contact_timeout".to_owned()]));
        assert_eq!(with("3h"), Err(vec!["contact_timeout".to_owned()]));
        assert_eq!(with("5s"), Ok(()));
        assert_eq!(with("65m"), Ok(()));
        let c = config(serde_json::json!({ "token": { "env": "T" }, "projects": ["a/b"] }))
            .expect("parses");
        let sel: PoolSelector =
            serde_json::from_value(serde_json::json!({ "tags": ["a"] })).expect("selector");
        assert!(validate_pool(&c, &sel, 99).is_ok());
        assert_eq!(
            validate_pool(&c, &sel, 100).expect_err("too many")[0].0,
            "runners_per_instance"
        );
    }

    #[test]
    fn member_projects_are_a_scope_of_their_own_with_bounded_settings() {
        let c = config(serde_json::json!({ "token": { "env": "T" }, "membership": true }))
            .expect("parses");
        assert!(c.validate().is_ok());
        assert_eq!(c.membership_refresh, Duration::from_secs(300));
        assert_eq!(c.min_access_level, 40);
        assert_eq!(c.max_projects, 1000);
        let c = config(serde_json::json!({
            "token": { "env": "T" },
            "membership": true,
            "membership_refresh": "2h",
            "min_access_level": 35,
            "max_projects": 0,
        }))
        .expect("parses");
        let fields: Vec<String> = c
            .validate()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            fields,
            ["membership_refresh", "min_access_level", "max_projects"]
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let err = config(serde_json::json!({ "token": { "env": "T" }, "project": ["x"] }))
            .expect_err("unknown field");
        assert!(err.to_string().contains("project"), "{err}");
        let c = config(serde_json::json!({
            "url": "https://gitlab.example/api/v4",
            "token": { "env": "T" },
            "projects": ["/acme"],
            "max_pages": 0,
        }))
        .expect("parses");
        let fields: Vec<String> = c
            .validate()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(fields, ["url", "projects[0]", "max_pages"]);
        let c = config(serde_json::json!({ "token": { "env": "T" } })).expect("parses");
        assert_eq!(c.validate().expect_err("no projects")[0].0, "projects");
    }

    #[test]
    fn selectors_need_a_way_to_get_jobs_and_a_consistent_scope() {
        let sel = |v: serde_json::Value| serde_json::from_value::<PoolSelector>(v).expect("parses");
        assert!(
            sel(serde_json::json!({ "tags": ["linux"] }))
                .validate()
                .is_ok()
        );
        assert!(
            sel(serde_json::json!({ "run_untagged": true }))
                .validate()
                .is_ok()
        );
        let fields = |s: PoolSelector| -> Vec<String> {
            s.validate()
                .expect_err("invalid")
                .into_iter()
                .map(|e| e.0)
                .collect()
        };
        assert_eq!(fields(sel(serde_json::json!({}))), ["tags"]);
        assert_eq!(
            fields(sel(serde_json::json!({ "tags": ["a,b"] }))),
            ["tags[0]"]
        );
        assert_eq!(
            fields(sel(
                serde_json::json!({ "tags": ["a"], "runner_type": "group_type" })
            )),
            ["group_id"]
        );
        assert_eq!(
            fields(sel(serde_json::json!({ "tags": ["a"], "project_id": 3 }))),
            ["runner_type"]
        );
        // A project runner needs its project, unless member projects are read.
        let project_runner =
            sel(serde_json::json!({ "tags": ["a"], "runner_type": "project_type" }));
        assert!(project_runner.validate().is_ok());
        let account = |v: serde_json::Value| config(v).expect("parses");
        let listed = account(serde_json::json!({ "token": { "env": "T" }, "projects": ["a/b"] }));
        assert_eq!(
            validate_pool(&listed, &project_runner, 1).expect_err("no project")[0].0,
            "selector.project_id"
        );
        let members = account(serde_json::json!({ "token": { "env": "T" }, "membership": true }));
        assert!(validate_pool(&members, &project_runner, 1).is_ok());
        let s = sel(serde_json::json!({
            "tags": ["a"], "runner_type": "project_type", "project_id": 3, "runner_per": "instance",
        }));
        assert!(s.validate().is_ok());
        assert_eq!(s.runner_per, RunnerPer::Instance);
    }
}
