//! JSON shapes of GitHub objects, built from the state: runner, job, workflow run,
//! repository, user, organisation, installation, and the `workflow_job` webhook payload.
//! Every field the OpenAPI description marks as required is present, with the right type
//! (nullable fields as `null`). URLs point at the emulator (`base_url`), which serves both
//! the API and the "web" paths.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::model::JobStatus;
use super::state::{Installation, JobRec, RunRec, RunnerRec, State};

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_ts(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(ts(t)))
}

/// A `simple-user` (users and organisations as owners).
pub(crate) fn user(base: &str, login: &str, id: u64, kind: &str) -> Value {
    let api = format!("{base}/users/{login}");
    json!({
        "login": login,
        "id": id,
        "node_id": format!("U_emu{id}"),
        "avatar_url": format!("{base}/avatars/{login}"),
        "gravatar_id": "",
        "url": api,
        "html_url": format!("{base}/{login}"),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": kind,
        "user_view_type": "public",
        "site_admin": false,
    })
}

/// The account owning a repository, as a `simple-user`.
pub(crate) fn owner(state: &State, owner: usize) -> Value {
    let o = &state.owners[owner];
    user(&state.base_url, &o.login, o.id, o.kind.as_str())
}

/// The bot that sends events.
pub(crate) fn sender(state: &State) -> Value {
    user(&state.base_url, "runscale-emulator[bot]", 9, "Bot")
}

/// An organisation as in webhook payloads.
pub(crate) fn organization(state: &State, owner: usize) -> Value {
    let o = &state.owners[owner];
    let base = &state.base_url;
    let api = format!("{base}/orgs/{}", o.login);
    json!({
        "login": o.login,
        "id": o.id,
        "node_id": format!("O_emu{}", o.id),
        "url": api,
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events"),
        "hooks_url": format!("{api}/hooks"),
        "issues_url": format!("{api}/issues"),
        "members_url": format!("{api}/members{{/member}}"),
        "public_members_url": format!("{api}/public_members{{/member}}"),
        "avatar_url": format!("{base}/avatars/{}", o.login),
        "description": null,
    })
}

/// A repository (the full `repository` shape, which also satisfies `minimal-repository`).
pub(crate) fn repository(state: &State, owner_idx: usize, repo_idx: usize) -> Value {
    let o = &state.owners[owner_idx];
    let r = &o.repos[repo_idx];
    let base = &state.base_url;
    let full = format!("{}/{}", o.login, r.name);
    let api = format!("{base}/repos/{full}");
    let created = ts(state.started_wall);
    json!({
        "id": r.id,
        "node_id": format!("R_emu{}", r.id),
        "name": r.name,
        "full_name": full,
        "private": true,
        "owner": owner(state, owner_idx),
        "html_url": format!("{base}/{full}"),
        "description": null,
        "fork": false,
        "url": api,
        "archive_url": format!("{api}/{{archive_format}}{{/ref}}"),
        "assignees_url": format!("{api}/assignees{{/user}}"),
        "blobs_url": format!("{api}/git/blobs{{/sha}}"),
        "branches_url": format!("{api}/branches{{/branch}}"),
        "collaborators_url": format!("{api}/collaborators{{/collaborator}}"),
        "comments_url": format!("{api}/comments{{/number}}"),
        "commits_url": format!("{api}/commits{{/sha}}"),
        "compare_url": format!("{api}/compare/{{base}}...{{head}}"),
        "contents_url": format!("{api}/contents/{{+path}}"),
        "contributors_url": format!("{api}/contributors"),
        "deployments_url": format!("{api}/deployments"),
        "downloads_url": format!("{api}/downloads"),
        "events_url": format!("{api}/events"),
        "forks_url": format!("{api}/forks"),
        "git_commits_url": format!("{api}/git/commits{{/sha}}"),
        "git_refs_url": format!("{api}/git/refs{{/sha}}"),
        "git_tags_url": format!("{api}/git/tags{{/sha}}"),
        "git_url": format!("git://emulator/{full}.git"),
        "issue_comment_url": format!("{api}/issues/comments{{/number}}"),
        "issue_events_url": format!("{api}/issues/events{{/number}}"),
        "issues_url": format!("{api}/issues{{/number}}"),
        "keys_url": format!("{api}/keys{{/key_id}}"),
        "labels_url": format!("{api}/labels{{/name}}"),
        "languages_url": format!("{api}/languages"),
        "merges_url": format!("{api}/merges"),
        "milestones_url": format!("{api}/milestones{{/number}}"),
        "notifications_url": format!("{api}/notifications{{?since,all,participating}}"),
        "pulls_url": format!("{api}/pulls{{/number}}"),
        "releases_url": format!("{api}/releases{{/id}}"),
        "ssh_url": format!("git@emulator:{full}.git"),
        "stargazers_url": format!("{api}/stargazers"),
        "statuses_url": format!("{api}/statuses/{{sha}}"),
        "subscribers_url": format!("{api}/subscribers"),
        "subscription_url": format!("{api}/subscription"),
        "tags_url": format!("{api}/tags"),
        "teams_url": format!("{api}/teams"),
        "trees_url": format!("{api}/git/trees{{/sha}}"),
        "clone_url": format!("{base}/{full}.git"),
        "mirror_url": null,
        "hooks_url": format!("{api}/hooks"),
        "svn_url": format!("{base}/{full}"),
        "homepage": null,
        "language": null,
        "forks_count": 0,
        "forks": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "watchers": 0,
        "size": 0,
        "default_branch": "main",
        "open_issues_count": 0,
        "open_issues": 0,
        "is_template": false,
        "topics": [],
        "has_issues": true,
        "has_projects": false,
        "has_wiki": false,
        "has_pages": false,
        "has_downloads": false,
        "has_discussions": false,
        "allow_forking": true,
        "web_commit_signoff_required": false,
        "custom_properties": {},
        "archived": false,
        "disabled": false,
        "visibility": "private",
        "license": null,
        "pushed_at": created,
        "created_at": created,
        "updated_at": created,
    })
}

/// A self-hosted runner.
pub(crate) fn runner(r: &RunnerRec) -> Value {
    let labels: Vec<Value> = r
        .labels
        .iter()
        .map(|l| {
            json!({
                "id": l.id,
                "name": l.name,
                "type": if l.read_only { "read-only" } else { "custom" },
            })
        })
        .collect();
    json!({
        "id": r.id,
        "runner_group_id": r.group_id,
        "name": r.name,
        "os": r.os,
        "status": if r.online { "online" } else { "offline" },
        "busy": r.job.is_some(),
        "ephemeral": r.ephemeral,
        "labels": labels,
    })
}

/// A workflow job (REST and the `workflow_job` of webhook payloads).
pub(crate) fn job(state: &State, j: &JobRec) -> Value {
    let o = &state.owners[j.owner];
    let full = format!("{}/{}", o.login, o.repos[j.repo].name);
    let api = format!("{}/repos/{full}", state.base_url);
    let steps = match j.status {
        JobStatus::Queued => json!([]),
        JobStatus::InProgress => json!([{
            "name": "Set up job", "status": "in_progress", "conclusion": null, "number": 1,
            "started_at": opt_ts(j.started_at), "completed_at": null,
        }]),
        JobStatus::Completed => match j.started_at {
            Some(started) => json!([{
                "name": "Set up job", "status": "completed",
                "conclusion": j.conclusion.map(|c| c.as_str()), "number": 1,
                "started_at": ts(started), "completed_at": opt_ts(j.completed_at),
            }]),
            None => json!([]),
        },
    };
    let runner = j.runner.as_ref();
    json!({
        "id": j.id,
        "run_id": j.run_id,
        "workflow_name": j.workflow_name,
        "head_branch": "main",
        "run_url": format!("{api}/actions/runs/{}", j.run_id),
        "run_attempt": 1,
        "node_id": format!("CR_emu{}", j.id),
        "head_sha": j.head_sha,
        "url": format!("{api}/actions/jobs/{}", j.id),
        "html_url": format!("{}/{full}/actions/runs/{}/job/{}", state.base_url, j.run_id, j.id),
        "status": j.status.as_str(),
        "conclusion": j.conclusion.map(|c| c.as_str()),
        "created_at": ts(j.created_at),
        // GitHub reports the creation time as `started_at` until a runner takes the job.
        "started_at": ts(j.started_at.unwrap_or(j.created_at)),
        "completed_at": opt_ts(j.completed_at),
        "name": j.name,
        "steps": steps,
        "check_run_url": format!("{api}/check-runs/{}", j.id),
        "labels": j.labels,
        "runner_id": runner.map(|r| r.id),
        "runner_name": runner.map(|r| r.name.clone()),
        "runner_group_id": runner.map(|r| r.group_id),
        "runner_group_name": runner.map(|r| r.group_name.clone()),
    })
}

/// A workflow run.
pub(crate) fn run(state: &State, r: &RunRec) -> Value {
    let o = &state.owners[r.owner];
    let full = format!("{}/{}", o.login, o.repos[r.repo].name);
    let api = format!("{}/repos/{full}/actions/runs/{}", state.base_url, r.id);
    let (status, conclusion) = state.run_status(r);
    let updated = r
        .jobs
        .iter()
        .filter_map(|j| state.jobs.get(j))
        .flat_map(|j| [Some(j.created_at), j.started_at, j.completed_at])
        .flatten()
        .max()
        .unwrap_or(r.created_at);
    let repo = repository(state, r.owner, r.repo);
    let actor = owner(state, r.owner);
    let workflow_id = 500_000 + r.repo as u64;
    json!({
        "id": r.id,
        "name": r.workflow_name,
        "node_id": format!("WFR_emu{}", r.id),
        "check_suite_id": r.id + 1,
        "check_suite_node_id": format!("CS_emu{}", r.id + 1),
        "head_branch": "main",
        "head_sha": r.head_sha,
        "path": ".github/workflows/ci.yml",
        "display_title": r.workflow_name,
        "run_number": r.run_number,
        "run_attempt": 1,
        "referenced_workflows": [],
        "event": "push",
        "status": status,
        "conclusion": conclusion,
        "workflow_id": workflow_id,
        "url": api,
        "html_url": format!("{}/{full}/actions/runs/{}", state.base_url, r.id),
        "pull_requests": [],
        "created_at": ts(r.created_at),
        "updated_at": ts(updated),
        "run_started_at": ts(r.created_at),
        "actor": actor,
        "triggering_actor": actor,
        "jobs_url": format!("{api}/jobs"),
        "logs_url": format!("{api}/logs"),
        "check_suite_url": format!("{}/repos/{full}/check-suites/{}", state.base_url, r.id + 1),
        "artifacts_url": format!("{api}/artifacts"),
        "cancel_url": format!("{api}/cancel"),
        "rerun_url": format!("{api}/rerun"),
        "previous_attempt_url": null,
        "workflow_url": format!("{}/repos/{full}/actions/workflows/{workflow_id}", state.base_url),
        "head_commit": {
            "id": r.head_sha,
            "tree_id": r.head_sha,
            "message": "emulated commit",
            "timestamp": ts(r.created_at),
            "author": {"name": "octocat", "email": "octocat@example.invalid"},
            "committer": {"name": "octocat", "email": "octocat@example.invalid"},
        },
        "repository": repo,
        "head_repository": repo,
        "head_repository_id": o.repos[r.repo].id,
    })
}

/// An App installation.
pub(crate) fn installation(state: &State, inst: &Installation) -> Value {
    let o = &state.owners[inst.owner];
    let base = &state.base_url;
    let (app_id, slug, client_id) = state
        .app
        .as_ref()
        .map(|a| (a.app_id, a.slug.clone(), a.client_id.clone()))
        .unwrap_or_default();
    let created = ts(state.started_wall);
    // `GET /app/installations` describes the account as `allOf` a simple user and an
    // enterprise: carry the enterprise fields too, so either reading validates.
    let mut account = owner(state, inst.owner);
    account["name"] = json!(o.login);
    account["slug"] = json!(o.login.to_ascii_lowercase());
    account["created_at"] = json!(created);
    account["updated_at"] = json!(created);
    json!({
        "id": inst.id,
        "account": account,
        "repository_selection": "all",
        "access_tokens_url": format!("{base}/app/installations/{}/access_tokens", inst.id),
        "repositories_url": format!("{base}/installation/repositories"),
        "html_url": format!("{base}/organizations/{}/settings/installations/{}", o.login, inst.id),
        "app_id": app_id,
        "client_id": client_id.unwrap_or_else(|| format!("Iv1.emu{app_id}")),
        "app_slug": slug,
        "target_id": o.id,
        "target_type": o.kind.as_str(),
        "permissions": {
            "actions": "read",
            "administration": "write",
            "metadata": "read",
            "organization_self_hosted_runners": "write",
        },
        "events": ["workflow_job"],
        "created_at": created,
        "updated_at": created,
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_by": null,
        "suspended_at": null,
    })
}

/// The `workflow_job` webhook payload.
pub(crate) fn workflow_job_event(state: &State, j: &JobRec, action: &str) -> Value {
    let mut event = json!({
        "action": action,
        "workflow_job": job(state, j),
        "repository": repository(state, j.owner, j.repo),
        "sender": sender(state),
    });
    if state.owners[j.owner].kind == super::config::OwnerKind::Organization {
        event["organization"] = organization(state, j.owner);
    }
    if let Some(inst) = state.installation_of(j.owner) {
        event["installation"] = json!({"id": inst.id, "node_id": format!("MDIz_emu{}", inst.id)});
    }
    event
}
