//! Configuration of the GitHub provider: the account-level [`Config`] and the per-pool
//! [`PoolSelector`], with their pure validation, and the [`Scope`] they resolve to.
//!
//! Nothing here reads a secret or opens a connection; that happens in
//! [`GithubProvider::new`](super::GithubProvider::new).

use std::time::Duration;

use reqwest::Url;
use runscale_core::adapter_type::{Problems, Selector, Validate};
use runscale_core::secret::SecretRef;
use schemars::JsonSchema;
use serde::Deserialize;

/// One GitHub account runscale scales runners for: an organisation, a repository, an
/// enterprise, or a list of repositories each with its own repository-level runners, on
/// github.com or GitHub Enterprise Server.
///
/// At most one of `org`, `repo` and `enterprise` may be set; without any of them,
/// `repositories` names the repositories served (repository scope for many repositories:
/// every pool names its `repository`, and its runners register there).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the REST API: `https://api.github.com` (default), or
    /// `https://HOST/api/v3` for GitHub Enterprise Server.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Base URL runners register against (`config.sh --url` takes it plus the scope path).
    /// Default: derived from `api_url` (`https://github.com` for github.com, `https://HOST`
    /// for GitHub Enterprise Server, `api_url` itself otherwise).
    #[serde(default = "default_web_url")]
    pub web_url: Option<String>,
    /// Organisation whose runners this account manages (organisation-level runners).
    #[serde(default = "default_scope")]
    pub org: Option<String>,
    /// Repository (`owner/name`) whose runners this account manages (repository-level
    /// runners).
    #[serde(default = "default_scope")]
    pub repo: Option<String>,
    /// Enterprise (its slug) whose runners this account manages (enterprise-level runners).
    /// Needs a classic personal access token with `manage_runners:enterprise`: GitHub Apps
    /// cannot manage enterprise runners.
    #[serde(default = "default_scope")]
    pub enterprise: Option<String>,
    /// How runscale authenticates: `{token: SECRET}` or `{app: {...}}`.
    pub auth: Auth,
    /// Secret shared with GitHub's webhook settings; deliveries to `/webhooks/github` are
    /// verified with it (`X-Hub-Signature-256`). Without it, webhooks are rejected.
    #[serde(default = "default_webhook_secret")]
    pub webhook_secret: Option<SecretRef>,
    /// Repositories polled for queued jobs, besides every repository a webhook named in the
    /// last 24 hours: a list of `name` (in the organisation) or `owner/name`, or `installation`
    /// (organisation scope with App authentication: every repository the App installation can
    /// access, listed with `GET /installation/repositories` every `installation_refresh`). In
    /// repository scope the repository itself is always polled; in enterprise scope use
    /// `owner/name`. Without `org`, `repo` and `enterprise`, the list (of `owner/name`) is the
    /// account itself: repository-level runners in each repository.
    #[serde(default = "default_repositories")]
    pub repositories: Repositories,
    /// Repositories polled for jobs per pass at most, chosen by priority: those a webhook
    /// named since their last poll, then those with queued or running jobs at their last poll,
    /// then the least recently polled (round-robin). The jobs of the others are their last
    /// poll's. From 1 to 1,000.
    #[serde(default = "default_max_repositories_per_pass")]
    pub max_repositories_per_pass: usize,
    /// How often the installation's repositories are listed again with
    /// `repositories: installation` (e.g. "10m"; at least 1 minute).
    #[serde(default = "default_installation_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub installation_refresh: Duration,
    /// Runner group new runners join (GitHub's default group is 1). A pool may override it.
    #[serde(default = "default_runner_group_id")]
    pub runner_group_id: u64,
    /// Poll workflow runs and jobs for demand on every pass (the truth; default). When false,
    /// demand is what `workflow_job` webhooks reported: cheaper on the API budget, but a lost
    /// webhook leaves a job counted (or uncounted) until it is 24 hours old.
    #[serde(default = "default_poll_jobs")]
    pub poll_jobs: bool,
    /// Timeout of one API request, including reading the response (e.g. "30s").
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Timeout for opening a connection to the API (e.g. "10s").
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
}

/// How runscale authenticates to GitHub.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// A personal access token (classic with `admin:org` / `repo` / `manage_runners:enterprise`,
    /// or fine-grained with "Self-hosted runners" read/write and "Actions" read).
    Token(SecretRef),
    /// A GitHub App installed on the organisation or repository.
    App(AppAuth),
}

/// GitHub App credentials.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppAuth {
    /// The App's numeric id. Set this or `client_id`.
    #[serde(default = "default_app_id")]
    pub app_id: Option<u64>,
    /// The App's client id (`Iv1...`), which GitHub recommends over the App id. Set this or
    /// `app_id`.
    #[serde(default = "default_client_id")]
    pub client_id: Option<String>,
    /// The App's private key (PEM), used to sign the JWTs that obtain installation tokens.
    pub private_key: SecretRef,
    /// The installation on the organisation or repository. Default: looked up with the App's
    /// JWT (`GET /orgs/{org}/installation` or `GET /repos/{owner}/{repo}/installation`).
    #[serde(default = "default_installation_id")]
    pub installation_id: Option<u64>,
}

/// The repositories a GitHub account polls (or serves, without `org`, `repo` and
/// `enterprise`): a list, or every repository of the App installation.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Repositories {
    /// `installation`: every repository the App installation can access.
    Installation(InstallationKeyword),
    /// A list of `name` or `owner/name`.
    List(Vec<String>),
}

/// The keyword `installation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum InstallationKeyword {
    /// Every repository of the App installation.
    #[serde(rename = "installation")]
    Installation,
}

impl Repositories {
    /// The listed repositories (none for `installation`).
    pub fn list(&self) -> &[String] {
        match self {
            Repositories::List(v) => v,
            Repositories::Installation(_) => &[],
        }
    }

    /// Whether the repositories come from the App installation.
    pub fn is_installation(&self) -> bool {
        matches!(self, Repositories::Installation(_))
    }
}

impl From<Vec<String>> for Repositories {
    fn from(v: Vec<String>) -> Self {
        Repositories::List(v)
    }
}

/// Which jobs and runners of the account belong to one pool.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSelector {
    /// Labels of the pool's runners. A job is for this pool when every label of its `runs-on`
    /// is among these (case-insensitive; `self-hosted` is implied). A job several pools could
    /// run counts for the first of them in configuration order. New runners get these labels.
    pub labels: Vec<String>,
    /// Only jobs of this repository (`owner/name`) are for the pool. Required when the
    /// account is a list of repositories (no `org`, `repo` or `enterprise`): the pool's
    /// runners register at this repository, and a repository-level runner takes only its
    /// repository's jobs. With `org`, the pool's runners are still organisation runners.
    #[serde(default = "default_pool_repository")]
    pub repository: Option<String>,
    /// Runner group of the pool's runners; default: the account's `runner_group_id`.
    #[serde(default = "default_pool_runner_group_id")]
    pub runner_group_id: Option<u64>,
    /// Whether the pool's runners take one job each. Not read from configuration: the binary
    /// copies the pool's `ephemeral` setting here. Ephemeral runners are registered with a
    /// just-in-time configuration, persistent ones with a registration token.
    #[serde(skip, default = "default_ephemeral")]
    #[schemars(skip)]
    pub ephemeral: bool,
}

/// The default [`Config::api_url`]: github.com's API.
fn default_api_url() -> String {
    "https://api.github.com".to_owned()
}

/// The default [`Config::web_url`]: derived from the API URL.
fn default_web_url() -> Option<String> {
    None
}

/// The default of [`Config::org`], [`Config::repo`] and [`Config::enterprise`]: unset.
fn default_scope() -> Option<String> {
    None
}

/// The default [`Config::webhook_secret`]: none (webhooks rejected).
fn default_webhook_secret() -> Option<SecretRef> {
    None
}

/// The default [`Config::repositories`]: none besides those webhooks name.
fn default_repositories() -> Repositories {
    Repositories::List(Vec::new())
}

/// The default [`Config::max_repositories_per_pass`]: 50.
fn default_max_repositories_per_pass() -> usize {
    50
}

/// The default [`Config::installation_refresh`]: 10 minutes.
fn default_installation_refresh() -> Duration {
    Duration::from_secs(600)
}

/// The default [`PoolSelector::repository`]: any repository.
fn default_pool_repository() -> Option<String> {
    None
}

/// The default [`Config::runner_group_id`]: GitHub's default group, 1.
fn default_runner_group_id() -> u64 {
    1
}

/// The default [`Config::poll_jobs`]: poll.
fn default_poll_jobs() -> bool {
    true
}

/// The default [`Config::request_timeout`]: 30 seconds.
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The default [`Config::connect_timeout`]: 10 seconds.
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The default [`AppAuth::app_id`]: unset.
fn default_app_id() -> Option<u64> {
    None
}

/// The default [`AppAuth::client_id`]: unset.
fn default_client_id() -> Option<String> {
    None
}

/// The default [`AppAuth::installation_id`]: looked up.
fn default_installation_id() -> Option<u64> {
    None
}

/// The default [`PoolSelector::runner_group_id`]: the account's.
fn default_pool_runner_group_id() -> Option<u64> {
    None
}

/// The default [`PoolSelector::ephemeral`]: one job per runner.
fn default_ephemeral() -> bool {
    true
}

/// The account a configuration names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// An organisation.
    Org(String),
    /// A repository.
    Repo {
        /// Its owner.
        owner: String,
        /// Its name.
        name: String,
    },
    /// An enterprise (slug).
    Enterprise(String),
    /// Many repositories, each with its own repository-level runners.
    Repos {
        /// The repository whose installation an App looks up (the first listed).
        lookup: Option<(String, String)>,
    },
}

impl Scope {
    /// The API path prefix of the scope's runner endpoints (`orgs/x`, `repos/o/r`,
    /// `enterprises/e`), without slashes around it.
    pub(crate) fn api_path(&self) -> String {
        match self {
            Scope::Org(org) => format!("orgs/{org}"),
            Scope::Repo { owner, name } => format!("repos/{owner}/{name}"),
            Scope::Enterprise(e) => format!("enterprises/{e}"),
            Scope::Repos { .. } => "repos".to_owned(),
        }
    }

    /// The path of the scope in the web UI (what `config.sh --url` takes after the host).
    pub(crate) fn web_path(&self) -> String {
        match self {
            Scope::Org(org) => org.clone(),
            Scope::Repo { owner, name } => format!("{owner}/{name}"),
            Scope::Enterprise(e) => format!("enterprises/{e}"),
            Scope::Repos { .. } => String::new(),
        }
    }

    /// A short description: `org x`, `repo o/r`, `enterprise e`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Scope::Org(org) => format!("org {org}"),
            Scope::Repo { owner, name } => format!("repo {owner}/{name}"),
            Scope::Enterprise(e) => format!("enterprise {e}"),
            Scope::Repos { .. } => "repositories".to_owned(),
        }
    }
}

/// Repositories listed (or listed by an installation) at most.
pub(crate) const MAX_REPOSITORIES: usize = 10_000;

/// Whether `s` is a plausible GitHub login, repository name or enterprise slug: non-empty,
/// ASCII letters, digits, `-`, `_` and `.` only (which also keeps it safe in a URL path).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Splits `owner/name`, if both halves are valid names.
pub(crate) fn split_repo(s: &str) -> Option<(&str, &str)> {
    let (owner, name) = s.split_once('/')?;
    (valid_name(owner) && valid_name(name)).then_some((owner, name))
}

/// Checks an absolute http(s) URL without query or fragment.
fn url_problem(s: &str) -> Option<String> {
    match Url::parse(s) {
        Err(e) => Some(format!("is not a URL: {e}")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            Some("must be an http:// or https:// URL".to_owned())
        }
        Ok(u) if u.host_str().is_none() => Some("must name a host".to_owned()),
        Ok(u) if u.query().is_some() || u.fragment().is_some() => {
            Some("must not have a query or fragment".to_owned())
        }
        Ok(_) => None,
    }
}

impl Config {
    /// The account the configuration names. Call after [`Config::validate`]; `None` when
    /// the scope is missing or malformed.
    pub(crate) fn scope(&self) -> Option<Scope> {
        match (&self.org, &self.repo, &self.enterprise) {
            (Some(org), None, None) if valid_name(org) => Some(Scope::Org(org.clone())),
            (None, Some(repo), None) => split_repo(repo).map(|(o, n)| Scope::Repo {
                owner: o.to_owned(),
                name: n.to_owned(),
            }),
            (None, None, Some(e)) if valid_name(e) => Some(Scope::Enterprise(e.clone())),
            (None, None, None) if !self.repositories.list().is_empty() => Some(Scope::Repos {
                lookup: self
                    .repositories
                    .list()
                    .first()
                    .and_then(|r| split_repo(r))
                    .map(|(o, n)| (o.to_owned(), n.to_owned())),
            }),
            _ => None,
        }
    }

    /// The API base URL without a trailing slash.
    pub(crate) fn api_base(&self) -> String {
        self.api_url.trim_end_matches('/').to_owned()
    }

    /// The base URL runners register against, without a trailing slash.
    pub(crate) fn web_base(&self) -> String {
        if let Some(web) = &self.web_url {
            return web.trim_end_matches('/').to_owned();
        }
        let api = self.api_base();
        let Ok(url) = Url::parse(&api) else {
            return api;
        };
        let host = url.host_str().unwrap_or_default();
        if host.eq_ignore_ascii_case("api.github.com") {
            return "https://github.com".to_owned();
        }
        if let Some(rest) = host.strip_prefix("api.")
            && rest.ends_with(".ghe.com")
        {
            return format!("{}://{rest}", url.scheme());
        }
        if let Some(base) = api.strip_suffix("/api/v3") {
            return base.to_owned();
        }
        api
    }

    /// The repositories (`owner/name`) configured for polling, bare names qualified with the
    /// organisation; the repository itself in repository scope.
    pub(crate) fn poll_repositories(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(Scope::Repo { owner, name }) = self.scope() {
            out.push(format!("{owner}/{name}"));
        }
        for r in self.repositories.list() {
            let full = match (&self.org, r.contains('/')) {
                (_, true) => r.clone(),
                (Some(org), false) => format!("{org}/{r}"),
                (None, false) => continue,
            };
            if !out.iter().any(|o| o.eq_ignore_ascii_case(&full)) {
                out.push(full);
            }
        }
        out
    }
}

impl Validate for Config {
    /// Checks the settings without reading secrets or touching the network. Errors name the
    /// field (relative to this struct, e.g. `auth.app.client_id`) and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors: Vec<(String, String)> = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([
            ("installation_refresh", Some(self.installation_refresh)),
            ("request_timeout", Some(self.request_timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
        ]));
        let mut err = |field: &str, msg: String| errors.push((field.to_owned(), msg));
        if let Some(p) = url_problem(&self.api_url) {
            err("api_url", p);
        }
        if let Some(web) = &self.web_url
            && let Some(p) = url_problem(web)
        {
            err("web_url", p);
        }
        let set = [
            self.org.is_some(),
            self.repo.is_some(),
            self.enterprise.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            err(
                "org",
                format!(
                    "set at most one of org, repo and enterprise ({set} are set): it names \
                     the account whose runners are managed"
                ),
            );
        }
        if set == 0 && self.repositories.list().is_empty() {
            err(
                "org",
                "set one of org, repo and enterprise, or list the repositories (owner/name) \
                 whose repository-level runners are managed in repositories"
                    .to_owned(),
            );
        }
        if self.repositories.is_installation() {
            if self.org.is_none() {
                err(
                    "repositories",
                    "installation (every repository of the App installation) needs org: \
                     list the repositories instead"
                        .to_owned(),
                );
            }
            if !matches!(self.auth, Auth::App(_)) {
                err(
                    "repositories",
                    "installation lists the App installation's repositories: it needs \
                     auth.app"
                        .to_owned(),
                );
            }
        }
        if !(1..=1000).contains(&self.max_repositories_per_pass) {
            err(
                "max_repositories_per_pass",
                "must be from 1 to 1000".to_owned(),
            );
        }
        if self.installation_refresh < Duration::from_secs(60) {
            err(
                "installation_refresh",
                "must be at least 1 minute".to_owned(),
            );
        }
        if let Some(org) = &self.org
            && !valid_name(org)
        {
            err(
                "org",
                format!("{org:?} is not an organisation login (letters, digits, -, _, .)"),
            );
        }
        if let Some(repo) = &self.repo
            && split_repo(repo).is_none()
        {
            err("repo", format!("{repo:?} is not of the form owner/name"));
        }
        if let Some(e) = &self.enterprise {
            if !valid_name(e) {
                err(
                    "enterprise",
                    format!("{e:?} is not an enterprise slug (letters, digits, -, _, .)"),
                );
            }
            if matches!(self.auth, Auth::App(_)) {
                err(
                    "auth.app",
                    "GitHub Apps cannot manage enterprise runners: use a classic personal \
                     access token with manage_runners:enterprise"
                        .to_owned(),
                );
            }
        }
        if self.repositories.list().len() > MAX_REPOSITORIES {
            err(
                "repositories",
                format!("at most {MAX_REPOSITORIES} repositories"),
            );
        }
        for (i, r) in self.repositories.list().iter().enumerate() {
            let field = format!("repositories[{i}]");
            let ok = if r.contains('/') {
                split_repo(r).is_some()
            } else {
                valid_name(r) && self.org.is_some()
            };
            if !ok {
                let msg = if self.org.is_some() {
                    format!("{r:?} is neither a repository name nor owner/name")
                } else {
                    format!("{r:?} must be owner/name (a bare name needs org scope)")
                };
                err(&field, msg);
            }
        }
        if self.poll_jobs
            && self.repo.is_none()
            && self.repositories.list().is_empty()
            && !self.repositories.is_installation()
            && self.webhook_secret.is_none()
        {
            err(
                "repositories",
                "name the repositories to poll for queued jobs, or set webhook_secret so \
                 repositories are learnt from workflow_job webhooks: otherwise no demand is \
                 ever seen"
                    .to_owned(),
            );
        }
        if !self.poll_jobs && self.webhook_secret.is_none() {
            err(
                "poll_jobs",
                "without polling, demand comes from workflow_job webhooks only: set \
                 webhook_secret"
                    .to_owned(),
            );
        }
        if self.runner_group_id == 0 {
            err(
                "runner_group_id",
                "must be a runner group id (1 is the default group)".to_owned(),
            );
        }
        if self.request_timeout.is_zero() {
            err("request_timeout", "must be longer than zero".to_owned());
        }
        if self.connect_timeout.is_zero() {
            err("connect_timeout", "must be longer than zero".to_owned());
        }
        if let Auth::App(app) = &self.auth {
            match (&app.app_id, &app.client_id) {
                (None, None) => err(
                    "auth.app.client_id",
                    "set client_id (or app_id): it identifies the App".to_owned(),
                ),
                (Some(_), Some(_)) => err(
                    "auth.app.client_id",
                    "set client_id or app_id, not both".to_owned(),
                ),
                (Some(0), None) => err("auth.app.app_id", "must not be 0".to_owned()),
                (None, Some(c)) if c.trim().is_empty() || c.chars().any(char::is_whitespace) => {
                    err(
                        "auth.app.client_id",
                        "must be the App's client id, without spaces".to_owned(),
                    )
                }
                _ => {}
            }
            if app.installation_id == Some(0) {
                err("auth.app.installation_id", "must not be 0".to_owned());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Selector for PoolSelector {
    fn labels(&self) -> Vec<String> {
        self.labels.clone()
    }
}

impl Validate for PoolSelector {
    /// Checks the selector. Errors name the field (relative to this struct, e.g.
    /// `labels[2]`) and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        if self.labels.is_empty() {
            errors.push((
                "labels".to_owned(),
                "must name at least one label (jobs are matched by their runs-on labels)"
                    .to_owned(),
            ));
        }
        if self.labels.len() > 99 {
            errors.push((
                "labels".to_owned(),
                "GitHub allows at most 100 labels per runner (self-hosted included)".to_owned(),
            ));
        }
        for (i, l) in self.labels.iter().enumerate() {
            let field = format!("labels[{i}]");
            if l.trim().is_empty() {
                errors.push((field, "must not be empty".to_owned()));
            } else if l.contains(',') || l.trim() != l {
                errors.push((
                    field,
                    "must not contain commas or leading/trailing spaces".to_owned(),
                ));
            } else if self.labels[..i]
                .iter()
                .any(|other| other.eq_ignore_ascii_case(l))
            {
                errors.push((
                    field,
                    format!("{l:?} is listed twice (labels are case-insensitive)"),
                ));
            }
        }
        if let Some(r) = &self.repository
            && split_repo(r).is_none()
        {
            errors.push((
                "repository".to_owned(),
                format!("{r:?} is not of the form owner/name"),
            ));
        }
        if self.runner_group_id == Some(0) {
            errors.push((
                "runner_group_id".to_owned(),
                "must be a runner group id (1 is the default group)".to_owned(),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org_config() -> Config {
        Config {
            api_url: default_api_url(),
            web_url: None,
            org: Some("acme".into()),
            repo: None,
            enterprise: None,
            auth: Auth::Token(SecretRef::Env("GH_TOKEN".into())),
            webhook_secret: None,
            repositories: vec!["widgets".to_owned(), "other/tools".to_owned()].into(),
            max_repositories_per_pass: 50,
            installation_refresh: Duration::from_secs(600),
            runner_group_id: 1,
            poll_jobs: true,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }

    fn fields(r: Result<(), Vec<(String, String)>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    #[test]
    fn yaml_with_defaults_parses_and_validates() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "org": "acme",
            "auth": {"app": {"client_id": "Iv1.abc", "private_key": {"file": "/k.pem"}}},
            "webhook_secret": {"env": "HOOK"},
            "request_timeout": "5s"
        }))
        .expect("parses");
        assert_eq!(c.api_url, "https://api.github.com");
        assert_eq!(c.runner_group_id, 1);
        assert!(c.poll_jobs);
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.scope(), Some(Scope::Org("acme".into())));
        assert_eq!(c.web_base(), "https://github.com");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<Config, _> = serde_json::from_value(serde_json::json!({
            "org": "acme", "auth": {"token": {"env": "T"}}, "orgg": "x"
        }));
        assert!(r.is_err());
        let r: Result<PoolSelector, _> =
            serde_json::from_value(serde_json::json!({"labels": ["a"], "ephemeral": false}));
        assert!(
            r.is_err(),
            "ephemeral is filled in by the binary, not configured"
        );
    }

    #[test]
    fn exactly_one_scope() {
        let mut c = org_config();
        c.repo = Some("acme/widgets".into());
        assert_eq!(fields(c.validate()), ["org"]);
        c.org = None;
        c.repo = None;
        c.repositories = Vec::new().into();
        assert!(fields(c.validate()).contains(&"org".to_owned()));
    }

    #[test]
    fn a_list_of_repositories_is_an_account_of_repository_runners() {
        let mut c = org_config();
        c.org = None;
        c.repositories = vec!["acme/a".to_owned(), "other/b".to_owned()].into();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.scope(),
            Some(Scope::Repos {
                lookup: Some(("acme".into(), "a".into()))
            })
        );
        assert_eq!(c.poll_repositories(), ["acme/a", "other/b"]);
        c.repositories = vec!["bare".to_owned()].into();
        assert_eq!(fields(c.validate()), ["repositories[0]"]);
    }

    #[test]
    fn installation_needs_an_org_and_an_app() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "org": "acme", "repositories": "installation",
            "auth": {"app": {"client_id": "Iv1.abc", "private_key": {"file": "/k.pem"}}},
        }))
        .expect("parses");
        assert!(c.repositories.is_installation());
        assert_eq!(c.validate(), Ok(()));
        let c: Config = serde_json::from_value(serde_json::json!({
            "org": "acme", "repositories": "installation", "auth": {"token": {"env": "T"}},
            "max_repositories_per_pass": 0, "installation_refresh": "5s",
        }))
        .expect("parses");
        assert_eq!(
            fields(c.validate()),
            [
                "repositories",
                "max_repositories_per_pass",
                "installation_refresh"
            ]
        );
        let bad: Result<Config, _> = serde_json::from_value(serde_json::json!({
            "org": "acme", "repositories": "everything", "auth": {"token": {"env": "T"}},
        }));
        assert!(bad.is_err(), "only the keyword installation or a list");
    }

    #[test]
    fn names_are_checked() {
        let mut c = org_config();
        c.org = Some("ac me".into());
        c.repositories = vec!["ok".to_owned(), "a/b/c".to_owned(), String::new()].into();
        assert_eq!(
            fields(c.validate()),
            ["org", "repositories[1]", "repositories[2]"]
        );
        let mut c = org_config();
        c.org = None;
        c.repo = Some("acme".into());
        c.repositories = vec!["bare".to_owned()].into();
        assert_eq!(fields(c.validate()), ["repo", "repositories[0]"]);
    }

    #[test]
    fn app_settings_are_checked() {
        let mut c = org_config();
        c.auth = Auth::App(AppAuth {
            app_id: Some(1),
            client_id: Some("Iv1.x".into()),
            private_key: SecretRef::Env("K".into()),
            installation_id: Some(0),
        });
        assert_eq!(
            fields(c.validate()),
            ["auth.app.client_id", "auth.app.installation_id"]
        );
        c.org = None;
        c.enterprise = Some("big".into());
        assert!(fields(c.validate()).contains(&"auth.app".to_owned()));
    }

    #[test]
    fn org_scope_needs_repositories_or_webhooks_to_see_demand() {
        let mut c = org_config();
        c.repositories = Vec::new().into();
        assert_eq!(fields(c.validate()), ["repositories"]);
        c.webhook_secret = Some(SecretRef::Env("HOOK".into()));
        assert_eq!(c.validate(), Ok(()));
        c.poll_jobs = false;
        assert_eq!(
            c.validate(),
            Ok(()),
            "webhook-only demand is the user's choice"
        );
        c.webhook_secret = None;
        assert_eq!(fields(c.validate()), ["poll_jobs"]);
    }

    #[test]
    fn urls_and_timeouts_are_checked() {
        let mut c = org_config();
        c.api_url = "ftp://x".into();
        c.web_url = Some("not a url".into());
        c.request_timeout = Duration::ZERO;
        c.runner_group_id = 0;
        assert_eq!(
            fields(c.validate()),
            ["api_url", "web_url", "runner_group_id", "request_timeout"]
        );
    }

    #[test]
    fn web_url_is_derived_from_the_api_url() {
        let mut c = org_config();
        c.api_url = "https://ghe.example.com/api/v3/".into();
        assert_eq!(c.web_base(), "https://ghe.example.com");
        c.api_url = "https://api.octo.ghe.com".into();
        assert_eq!(c.web_base(), "https://octo.ghe.com");
        c.api_url = "http://127.0.0.1:8080".into();
        assert_eq!(c.web_base(), "http://127.0.0.1:8080");
        c.web_url = Some("http://web.example/".into());
        assert_eq!(c.web_base(), "http://web.example");
    }

    #[test]
    fn poll_repositories_are_qualified() {
        let c = org_config();
        assert_eq!(c.poll_repositories(), ["acme/widgets", "other/tools"]);
        let mut c = org_config();
        c.org = None;
        c.repo = Some("o/r".into());
        c.repositories = vec!["O/R".to_owned(), "o/s".to_owned()].into();
        assert_eq!(c.poll_repositories(), ["o/r", "o/s"]);
    }

    #[test]
    fn json_schema_describes_every_field_and_hides_ephemeral() {
        let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema");
        let props = schema["properties"].as_object().expect("properties");
        for (name, prop) in props {
            assert!(
                prop.get("description").is_some(),
                "field {name} has no description"
            );
        }
        assert!(props.contains_key("api_url") && props.contains_key("auth"));
        let sel = serde_json::to_value(schemars::schema_for!(PoolSelector)).expect("schema");
        let props = sel["properties"].as_object().expect("properties");
        assert!(props.contains_key("labels"));
        assert!(!props.contains_key("ephemeral"), "filled in by the binary");
    }

    #[test]
    fn selector_validation() {
        let s = PoolSelector {
            labels: vec!["linux".into(), "".into(), "a,b".into(), "LINUX".into()],
            repository: Some("no-slash".into()),
            runner_group_id: Some(0),
            ephemeral: true,
        };
        let got: Vec<String> = s
            .validate()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            got,
            [
                "labels[1]",
                "labels[2]",
                "labels[3]",
                "repository",
                "runner_group_id"
            ]
        );
        let empty = PoolSelector {
            labels: vec![],
            repository: None,
            runner_group_id: None,
            ephemeral: true,
        };
        assert!(empty.validate().is_err());
    }
}
