//! The emulator's REST endpoints over real HTTP on loopback: happy paths, GitHub's error
//! codes and shapes, pagination, ETags, rate limits, App authentication and faults.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use runscale_emulator::github::{Faults, JobSpec, ViolationKind};
use serde_json::{Value, json};

const ORG: &str = "/orgs/octo-org";
const REPO: &str = "/repos/octo-org/app";

fn assert_github_error(body: &Value) {
    assert!(body["message"].is_string(), "{body}");
    assert!(body["documentation_url"].is_string(), "{body}");
}

#[tokio::test]
async fn unauthenticated_and_bad_tokens_get_401_in_githubs_shape() {
    let emu = start(config()).await;
    let anon = reqwest::get(format!("{}{ORG}/actions/runners", emu.base_url()))
        .await
        .expect("request");
    assert_eq!(anon.status(), 401);
    assert_eq!(header(&anon, "x-ratelimit-limit"), "60");
    assert_github_error(&anon.json().await.expect("json"));

    let bad = Api::new(emu.base_url(), "nope")
        .get(&format!("{ORG}/actions/runners"))
        .await;
    assert_eq!(bad.status(), 401);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["message"], "Bad credentials");

    let api = Api::new(emu.base_url(), TOKEN);
    let missing = api.get("/no/such/endpoint").await;
    assert_eq!(missing.status(), 404);
    assert_github_error(&missing.json().await.expect("json"));
    emu.shutdown().await;
}

#[tokio::test]
async fn runners_are_created_read_listed_and_deleted_per_scope() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let resp = api
        .post(
            &format!("{ORG}/actions/runners/generate-jitconfig"),
            json!({"name": "rs-a-1", "runner_group_id": 2,
                   "labels": ["self-hosted", "linux", "X64", "gpu"], "work_folder": "_work"}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    assert!(!header(&resp, "x-ratelimit-remaining").is_empty());
    let body: Value = resp.json().await.expect("json");
    let runner = &body["runner"];
    let id = runner["id"].as_u64().expect("id");
    assert_eq!(runner["name"], "rs-a-1");
    assert_eq!(runner["os"], "linux");
    assert_eq!(runner["status"], "offline");
    assert_eq!(runner["busy"], false);
    assert_eq!(runner["ephemeral"], true);
    assert_eq!(runner["runner_group_id"], 2);
    let labels: Vec<(String, String)> = runner["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| {
            assert!(l["id"].is_u64());
            (
                l["name"].as_str().expect("name").to_owned(),
                l["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        vec![
            ("self-hosted".into(), "read-only".into()),
            ("Linux".into(), "read-only".into()),
            ("X64".into(), "read-only".into()),
            ("gpu".into(), "custom".into()),
        ]
    );
    assert!(body["encoded_jit_config"].is_string());

    let got = api.get(&format!("{ORG}/actions/runners/{id}")).await;
    assert_eq!(got.status(), 200);
    let got: Value = got.json().await.expect("json");
    assert_eq!(&got, runner);

    let list: Value = api
        .get(&format!("{ORG}/actions/runners"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["total_count"], 1);
    assert_eq!(list["runners"][0]["id"], id);

    // Scopes are separate: the org runner is not a repository runner.
    let repo_list: Value = api
        .get(&format!("{REPO}/actions/runners"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(repo_list["total_count"], 0);
    assert_eq!(
        api.get(&format!("{REPO}/actions/runners/{id}"))
            .await
            .status(),
        404
    );
    let (repo_runner, _) = api.jit(REPO, "rs-r-1", &["self-hosted"]).await;
    assert_eq!(
        api.get(&format!("{REPO}/actions/runners/{repo_runner}"))
            .await
            .status(),
        200
    );

    assert_eq!(
        api.delete(&format!("{ORG}/actions/runners/{id}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        api.get(&format!("{ORG}/actions/runners/{id}"))
            .await
            .status(),
        404
    );
    let again = api.delete(&format!("{ORG}/actions/runners/{id}")).await;
    assert_eq!(again.status(), 404);
    assert_github_error(&again.json().await.expect("json"));
    assert_eq!(
        api.get(&format!("{ORG}/actions/runners/not-a-number"))
            .await
            .status(),
        404
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn generate_jitconfig_rejects_what_github_rejects() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let path = format!("{ORG}/actions/runners/generate-jitconfig");
    api.jit(ORG, "dup", &["self-hosted"]).await;
    let dup = api
        .post(
            &path,
            json!({"name": "dup", "runner_group_id": 1, "labels": ["x"]}),
        )
        .await;
    assert_eq!(dup.status(), 409);
    assert_github_error(&dup.json().await.expect("json"));
    let too_many: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
    for body in [
        json!({"runner_group_id": 1, "labels": ["x"]}),
        json!({"name": "a", "labels": ["x"]}),
        json!({"name": "a", "runner_group_id": 1}),
        json!({"name": "a", "runner_group_id": 1, "labels": []}),
        json!({"name": "a", "runner_group_id": 1, "labels": too_many}),
        json!({"name": "", "runner_group_id": 1, "labels": ["x"]}),
    ] {
        let resp = api.post(&path, body.clone()).await;
        assert_eq!(resp.status(), 422, "{body}");
        assert_github_error(&resp.json().await.expect("json"));
    }
    let bad_json = api
        .req(reqwest::Method::POST, &path)
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(bad_json.status(), 400);
    let no_group = api
        .post(
            &path,
            json!({"name": "g", "runner_group_id": 99, "labels": ["x"]}),
        )
        .await;
    assert_eq!(no_group.status(), 404);
    // Repository runners live in the default group only.
    let repo_group = api
        .post(
            &format!("{REPO}/actions/runners/generate-jitconfig"),
            json!({"name": "g", "runner_group_id": 2, "labels": ["x"]}),
        )
        .await;
    assert_eq!(repo_group.status(), 404);
    // Unknown organisations, and user accounts at /orgs, are 404; a user's repo works.
    for org in ["/orgs/nobody", "/orgs/alice"] {
        let resp = api
            .post(
                &format!("{org}/actions/runners/generate-jitconfig"),
                json!({"name": "u", "runner_group_id": 1, "labels": ["x"]}),
            )
            .await;
        assert_eq!(resp.status(), 404, "{org}");
    }
    api.jit("/repos/alice/dotfiles", "u", &["self-hosted"])
        .await;
    emu.shutdown().await;
}

#[tokio::test]
async fn deleting_a_busy_runner_is_refused_with_422_until_its_job_is_done() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (id, encoded) = api.jit(ORG, "busy-one", &["self-hosted", "linux"]).await;
    let runner = RawRunner::from_jit(&encoded);
    assert_eq!(runner.connect().await.status(), 200);
    let online: Value = api
        .get(&format!("{ORG}/actions/runners/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(online["status"], "online");
    let job = emu
        .enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted", "Linux"],
            Duration::from_secs(60),
        ))
        .expect("queued");
    let assignment = runner.take_job().await;
    assert_eq!(assignment["job_id"], job.job_id);

    let busy: Value = api
        .get(&format!("{ORG}/actions/runners/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(busy["busy"], true);
    let refused = api.delete(&format!("{ORG}/actions/runners/{id}")).await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("Runner \"busy-one\" is still running a job"),
        "{body}"
    );
    assert_github_error(&body);

    let done: Value = runner
        .complete(job.job_id)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(done["removed"], true, "JIT runners are ephemeral");
    assert_eq!(
        api.get(&format!("{ORG}/actions/runners/{id}"))
            .await
            .status(),
        404
    );
    assert_eq!(runner.connect().await.status(), 404);
    assert!(emu.violations().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn a_busy_runner_that_goes_silent_stays_busy_offline_then_is_released() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (id, encoded) = api.jit(ORG, "lost", &["self-hosted"]).await;
    let runner = RawRunner::from_jit(&encoded);
    runner.connect().await;
    let job = emu
        .enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted"],
            Duration::from_secs(600),
        ))
        .expect("queued");
    runner.take_job().await;
    // Silence: no heartbeats. Offline after 2 s, but still busy: DELETE keeps refusing.
    assert!(
        eventually(&emu, 20, |s| s.runners.iter().any(|r| r.id == id
            && r.busy
            && r.status == runscale_emulator::github::RunnerStatus::Offline))
        .await
    );
    let runner_json: Value = api
        .get(&format!("{ORG}/actions/runners/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        (
            runner_json["status"].as_str(),
            runner_json["busy"].as_bool()
        ),
        (Some("offline"), Some(true))
    );
    assert_eq!(
        api.delete(&format!("{ORG}/actions/runners/{id}"))
            .await
            .status(),
        422
    );
    // Released after lost_job_timeout: the job failed and a violation is recorded.
    assert!(
        eventually(&emu, 20, |s| s
            .runners
            .iter()
            .any(|r| r.id == id && !r.busy))
        .await
    );
    let violations = emu.violations();
    assert!(
        violations.iter().any(|v| matches!(
            &v.kind,
            ViolationKind::RunnerLostMidJob { job_id, runner_name, .. }
                if *job_id == job.job_id && runner_name == "lost"
        )),
        "{violations:?}"
    );
    let job_json: Value = api
        .get(&format!("{REPO}/actions/jobs/{}", job.job_id))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(job_json["conclusion"], "failure");
    assert_eq!(
        api.delete(&format!("{ORG}/actions/runners/{id}"))
            .await
            .status(),
        204
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn runner_lists_paginate_with_link_headers_and_filter_by_name() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    for i in 0..5 {
        api.jit(ORG, &format!("rs-p-{i}"), &["self-hosted"]).await;
    }
    let first = api
        .get(&format!("{ORG}/actions/runners?per_page=2&page=1"))
        .await;
    let link = header(&first, "link").to_owned();
    assert!(link.contains("rel=\"next\""), "{link}");
    assert!(link.contains("page=3>; rel=\"last\""), "{link}");
    assert!(!link.contains("rel=\"prev\""), "{link}");
    let mut seen = BTreeSet::new();
    let mut resp = first;
    let mut pages = 0;
    loop {
        pages += 1;
        let next = header(&resp, "link")
            .split(", ")
            .find(|l| l.ends_with("rel=\"next\""))
            .map(|l| {
                l.trim_start_matches('<')
                    .split('>')
                    .next()
                    .expect("url")
                    .to_owned()
            });
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["total_count"], 5);
        for r in body["runners"].as_array().expect("runners") {
            assert!(seen.insert(r["name"].as_str().expect("name").to_owned()));
        }
        match next {
            Some(url) => resp = api.get(&url).await,
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 5));
    let last = api
        .get(&format!("{ORG}/actions/runners?per_page=2&page=3"))
        .await;
    let link = header(&last, "link");
    assert!(link.contains("page=2>; rel=\"prev\"") && link.contains("rel=\"first\""));
    assert!(!link.contains("rel=\"next\""));

    let named: Value = api
        .get(&format!("{ORG}/actions/runners?name=rs-p-3"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(named["total_count"], 1);
    assert_eq!(named["runners"][0]["name"], "rs-p-3");
    let default_page = api.get(&format!("{ORG}/actions/runners")).await;
    assert!(header(&default_page, "link").is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn etag_revalidation_answers_304_without_using_the_rate_limit() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let path = format!("{ORG}/actions/runners");
    let first = api.get(&path).await;
    assert_eq!(first.status(), 200);
    let etag = header(&first, "etag").to_owned();
    assert!(!etag.is_empty());
    let remaining: u32 = header(&first, "x-ratelimit-remaining")
        .parse()
        .expect("number");
    for _ in 0..3 {
        let again = api
            .req(reqwest::Method::GET, &path)
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("request");
        assert_eq!(again.status(), 304);
        assert_eq!(header(&again, "etag"), etag);
        assert_eq!(
            header(&again, "x-ratelimit-remaining"),
            remaining.to_string()
        );
        assert!(again.bytes().await.expect("body").is_empty());
    }
    api.jit(ORG, "changes-the-list", &["self-hosted"]).await;
    let changed = api
        .req(reqwest::Method::GET, &path)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("request");
    assert_eq!(changed.status(), 200);
    assert_ne!(header(&changed, "etag"), etag);
    assert_eq!(
        header(&changed, "x-ratelimit-remaining"),
        (remaining - 2).to_string()
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn exhausted_primary_limit_answers_403_per_token_and_rate_limit_is_free() {
    let mut c = config();
    c.rate_limit.start_remaining = Some(2);
    let emu = start(c).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let path = format!("{ORG}/actions/runners");
    let r1 = api.get(&path).await;
    assert_eq!(header(&r1, "x-ratelimit-limit"), "5000");
    assert_eq!(header(&r1, "x-ratelimit-remaining"), "1");
    assert_eq!(header(&r1, "x-ratelimit-used"), "4999");
    assert_eq!(header(&r1, "x-ratelimit-resource"), "core");
    let reset: i64 = header(&r1, "x-ratelimit-reset").parse().expect("epoch");
    assert!(reset > chrono::Utc::now().timestamp());
    let rl = api.get("/rate_limit").await;
    assert_eq!(rl.status(), 200);
    assert_eq!(header(&rl, "x-ratelimit-remaining"), "1");
    let body: Value = rl.json().await.expect("json");
    assert_eq!(body["resources"]["core"]["remaining"], 1);
    assert_eq!(body["rate"]["limit"], 5000);
    assert!(body["resources"]["search"]["limit"].is_u64());
    assert_eq!(api.get(&path).await.status(), 200);
    let denied = api.get(&path).await;
    assert_eq!(denied.status(), 403);
    assert_eq!(header(&denied, "x-ratelimit-remaining"), "0");
    assert_github_error(&denied.json().await.expect("json"));
    // Other tokens have their own bucket.
    let other = Api::new(emu.base_url(), OTHER_TOKEN).get(&path).await;
    assert_eq!(other.status(), 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn registration_tokens_register_persistent_runners_and_remove_tokens_are_issued() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    for kind in ["registration-token", "remove-token"] {
        let resp = api
            .post(&format!("{ORG}/actions/runners/{kind}"), json!({}))
            .await;
        assert_eq!(resp.status(), 201, "{kind}");
        let body: Value = resp.json().await.expect("json");
        assert!(body["token"].as_str().is_some_and(|t| t.len() >= 20));
        let expires =
            chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("time"))
                .expect("rfc3339");
        let ttl = expires.timestamp() - chrono::Utc::now().timestamp();
        assert!((3500..=3601).contains(&ttl), "{ttl}");
    }
    let token: Value = api
        .post(
            &format!("{REPO}/actions/runners/registration-token"),
            json!({}),
        )
        .await
        .json()
        .await
        .expect("json");
    let register = |token: &str, name: &str| {
        json!({"url": format!("{}/octo-org/app", emu.base_url()), "token": token,
               "name": name, "labels": ["big"]})
    };
    let anon = Api::new(emu.base_url(), "");
    let ok = anon
        .post(
            "/_emulator/runners/register",
            register(token["token"].as_str().expect("token"), "persistent-1"),
        )
        .await;
    assert_eq!(ok.status(), 201);
    let bad = anon
        .post("/_emulator/runners/register", register("WRONG", "p2"))
        .await;
    assert_eq!(bad.status(), 401);
    let list: Value = api
        .get(&format!("{REPO}/actions/runners"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["runners"][0]["name"], "persistent-1");
    assert_eq!(list["runners"][0]["ephemeral"], false);
    // A token for another scope does not register here.
    let org_token: Value = api
        .post(
            &format!("{ORG}/actions/runners/registration-token"),
            json!({}),
        )
        .await
        .json()
        .await
        .expect("json");
    let wrong_scope = anon
        .post(
            "/_emulator/runners/register",
            register(org_token["token"].as_str().expect("token"), "p3"),
        )
        .await;
    assert_eq!(wrong_scope.status(), 401);
    emu.shutdown().await;
}

#[tokio::test]
async fn workflow_runs_and_jobs_are_listed_filtered_and_paginated() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let matrix: Vec<JobSpec> = (0..3)
        .map(|i| {
            JobSpec::new(
                "octo-org/app",
                &["self-hosted", "gpu"],
                Duration::from_secs(5),
            )
            .named(format!("test ({i})"))
        })
        .collect();
    let refs = emu.enqueue_run(matrix).expect("queued");
    let run_id = refs[0].run_id;
    let other = emu
        .enqueue(JobSpec::new(
            "octo-org/app",
            &["self-hosted"],
            Duration::from_secs(5),
        ))
        .expect("queued");
    emu.enqueue(JobSpec::new(
        "octo-org/web",
        &["self-hosted"],
        Duration::from_secs(5),
    ))
    .expect("queued");

    let runs: Value = api
        .get(&format!("{REPO}/actions/runs?status=queued&per_page=100"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(runs["total_count"], 2);
    assert_eq!(runs["workflow_runs"][0]["id"], other.run_id, "newest first");
    assert_eq!(runs["workflow_runs"][1]["status"], "queued");
    assert_eq!(
        runs["workflow_runs"][1]["repository"]["full_name"],
        "octo-org/app"
    );

    let page1 = api
        .get(&format!(
            "{REPO}/actions/runs/{run_id}/jobs?filter=latest&per_page=2"
        ))
        .await;
    assert!(header(&page1, "link").contains("rel=\"next\""));
    let page1: Value = page1.json().await.expect("json");
    assert_eq!(page1["total_count"], 3);
    assert_eq!(page1["jobs"].as_array().expect("jobs").len(), 2);
    let job = &page1["jobs"][0];
    assert_eq!(job["status"], "queued");
    assert_eq!(job["runner_id"], Value::Null);
    assert_eq!(job["runner_name"], Value::Null);
    assert_eq!(job["run_attempt"], 1);
    assert_eq!(job["labels"], json!(["self-hosted", "gpu"]));
    let all: Value = api
        .get(&format!(
            "{REPO}/actions/runs/{run_id}/jobs?filter=all&page=2&per_page=2"
        ))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(all["jobs"].as_array().expect("jobs").len(), 1);
    assert_eq!(
        api.get(&format!("{REPO}/actions/runs/{run_id}/jobs?filter=bogus"))
            .await
            .status(),
        422
    );
    assert_eq!(
        api.get(&format!("{REPO}/actions/runs?status=bogus"))
            .await
            .status(),
        422
    );
    assert_eq!(
        api.get(&format!("/repos/octo-org/web/actions/runs/{run_id}/jobs"))
            .await
            .status(),
        404
    );

    // A runner takes one job: the run is in progress, the job names its runner.
    let (runner_id, encoded) = api.jit(ORG, "gpu-1", &["gpu"]).await;
    let runner = RawRunner::from_jit(&encoded);
    runner.connect().await;
    let taken = runner.take_job().await;
    let job_id = taken["job_id"].as_u64().expect("job id");
    assert!(refs.iter().any(|r| r.job_id == job_id));
    let job: Value = api
        .get(&format!("{REPO}/actions/jobs/{job_id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(job["status"], "in_progress");
    assert_eq!(job["runner_id"], runner_id);
    assert_eq!(job["runner_name"], "gpu-1");
    assert_eq!(job["runner_group_name"], "Default");
    let in_progress: Value = api
        .get(&format!("{REPO}/actions/runs?status=in_progress"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(in_progress["workflow_runs"][0]["id"], run_id);
    let run: Value = api
        .get(&format!("{REPO}/actions/runs/{run_id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(run["status"], "in_progress");
    runner.complete(job_id).await;
    let done: Value = api
        .get(&format!("{REPO}/actions/jobs/{job_id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        (done["status"].as_str(), done["conclusion"].as_str()),
        (Some("completed"), Some("success"))
    );
    assert!(done["completed_at"].is_string());
    assert_eq!(
        api.get(&format!("{REPO}/actions/jobs/999")).await.status(),
        404
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn app_jwts_are_verified_and_installation_tokens_are_scoped() {
    let emu = start(config()).await;
    let jwt_api = Api::new(emu.base_url(), &good_jwt());
    let inst = jwt_api.get("/orgs/octo-org/installation").await;
    assert_eq!(inst.status(), 200);
    let inst: Value = inst.json().await.expect("json");
    assert_eq!(inst["id"], INSTALLATION);
    assert_eq!(inst["app_id"], APP_ID);
    assert_eq!(inst["account"]["login"], "octo-org");
    assert_eq!(
        jwt_api
            .get("/repos/octo-org/app/installation")
            .await
            .status(),
        200
    );
    assert_eq!(
        jwt_api.get("/orgs/other-org/installation").await.status(),
        404
    );
    assert_eq!(jwt_api.get("/app/installations").await.status(), 200);
    // A PAT is not a JWT.
    assert_eq!(
        Api::new(emu.base_url(), TOKEN)
            .get("/orgs/octo-org/installation")
            .await
            .status(),
        401
    );
    for (what, jwt) in [
        (
            "wrong key",
            app_jwt(OTHER_PRIVATE_KEY, json!(APP_ID), -60, 540),
        ),
        ("expired", app_jwt(PRIVATE_KEY, json!(APP_ID), -700, -10)),
        ("too long", app_jwt(PRIVATE_KEY, json!(APP_ID), 0, 1200)),
        ("future iat", app_jwt(PRIVATE_KEY, json!(APP_ID), 300, 500)),
        ("wrong iss", app_jwt(PRIVATE_KEY, json!(1), -60, 540)),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let resp = Api::new(emu.base_url(), &jwt)
            .post(
                &format!("/app/installations/{INSTALLATION}/access_tokens"),
                json!({}),
            )
            .await;
        assert_eq!(resp.status(), 401, "{what}");
        assert_github_error(&resp.json().await.expect("json"));
    }
    // The client id is an accepted issuer too.
    let by_client_id = app_jwt(PRIVATE_KEY, json!("Iv1.test"), -60, 540);
    assert_eq!(
        Api::new(emu.base_url(), &by_client_id)
            .get("/orgs/octo-org/installation")
            .await
            .status(),
        200
    );
    assert_eq!(
        jwt_api
            .post("/app/installations/12345/access_tokens", json!({}))
            .await
            .status(),
        404
    );
    let resp = jwt_api
        .post(
            &format!("/app/installations/{INSTALLATION}/access_tokens"),
            json!({}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.expect("json");
    let token = body["token"].as_str().expect("token");
    assert!(token.starts_with("ghs_"));
    assert!(body["expires_at"].is_string());
    let inst_api = Api::new(emu.base_url(), token);
    assert_eq!(
        inst_api
            .get(&format!("{ORG}/actions/runners"))
            .await
            .status(),
        200
    );
    assert_eq!(
        inst_api
            .get("/orgs/other-org/actions/runners")
            .await
            .status(),
        404
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn injected_faults_answer_429_with_retry_after_502_503_and_add_latency() {
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let path = format!("{ORG}/actions/runners");
    emu.set_faults(Faults {
        burst_429: Some((2, 7)),
        ..Faults::none()
    })
    .expect("valid");
    for _ in 0..2 {
        let resp = api.get(&path).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(header(&resp, "retry-after"), "7");
        assert!(!header(&resp, "x-ratelimit-remaining").is_empty());
        assert_github_error(&resp.json().await.expect("json"));
    }
    assert_eq!(api.get(&path).await.status(), 200);

    emu.set_faults(Faults {
        error_rate_5xx: 1.0,
        ..Faults::none()
    })
    .expect("valid");
    let mut statuses = BTreeSet::new();
    for _ in 0..20 {
        let resp = api.get(&path).await;
        statuses.insert(resp.status().as_u16());
        assert_github_error(&resp.json().await.expect("json"));
    }
    assert_eq!(statuses, BTreeSet::from([502, 503]));

    emu.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::none()
    })
    .expect("valid");
    let t = Instant::now();
    assert_eq!(api.get(&path).await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(emu.set_faults(Faults::uniform(2.0)).is_err());
    emu.shutdown().await;
}

#[tokio::test]
async fn standalone_admin_endpoints_queue_jobs_and_report() {
    let emu = start(config()).await;
    let anon = Api::new(emu.base_url(), "");
    let resp = anon
        .post(
            "/_emulator/jobs",
            json!({"jobs": [{"repo": "octo-org/app", "labels": ["self-hosted"], "duration": "1s"}]}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let refs: Value = resp.json().await.expect("json");
    assert!(refs[0]["job_id"].is_u64());
    let bad = anon
        .post(
            "/_emulator/jobs",
            json!({"jobs": [{"repo": "nope/nope", "labels": ["x"], "duration": "1s"}]}),
        )
        .await;
    assert_eq!(bad.status(), 422);
    let snap: Value = anon
        .get("/_emulator/snapshot")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(snap["jobs"][0]["status"], "queued");
    let check: Value = anon
        .post("/_emulator/check", json!({}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(check[0]["kind"]["type"], "job_never_started");
    let violations: Value = anon
        .get("/_emulator/violations")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(violations.as_array().expect("list").len(), 1);
    emu.shutdown().await;
}

/// Checks `value` against a dereferenced OpenAPI schema: every required property present,
/// types right (nullable allowed), recursively.
fn check_schema(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if !(schema["nullable"] == true || schema.get("type").is_none()) {
            errors.push(format!("{path}: null but not nullable"));
        }
        return;
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema[key].as_array() {
            let ok = options.iter().any(|s| {
                let mut e = Vec::new();
                check_schema(s, value, path, &mut e);
                e.is_empty()
            });
            if !ok {
                errors.push(format!("{path}: matches no {key} option"));
            }
            return;
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check_schema(s, value, path, errors);
        }
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let type_ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{path}: expected {ty}, got {value}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} not in enum"));
    }
    if let Some(required) = schema["required"].as_array() {
        for key in required.iter().filter_map(Value::as_str) {
            if value.get(key).is_none() {
                errors.push(format!("{path}.{key}: required but missing"));
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (key, sub) in props {
            if let Some(v) = obj.get(key) {
                check_schema(sub, v, &format!("{path}.{key}"), errors);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check_schema(items, v, &format!("{path}[{i}]"), errors);
        }
    }
}

/// GitHub's dereferenced OpenAPI description, if `scripts/test.sh` installed it.
fn openapi() -> Option<Value> {
    let dir = std::env::var("RUNSCALE_NPM_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/runscale/npm",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let path = format!("{dir}/node_modules/@octokit/openapi/generated/api.github.com.deref.json");
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// (OpenAPI path, method, documented status, request path, body, client, expected status).
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    String,
    Option<Value>,
    &'a Api,
    u16,
);

#[tokio::test]
async fn responses_have_every_field_githubs_openapi_requires() {
    let Some(spec) = runscale_core::testing::require(
        openapi(),
        "the npm package @octokit/openapi (its dereferenced description)",
        "scripts/test.sh installs it into RUNSCALE_NPM_DIR",
    ) else {
        return;
    };
    let emu = start(config()).await;
    let api = Api::new(emu.base_url(), TOKEN);
    let (_, encoded) = api.jit(ORG, "shape", &["self-hosted"]).await;
    let runner = RawRunner::from_jit(&encoded);
    runner.connect().await;
    let refs = emu
        .enqueue_run(vec![
            JobSpec::new("octo-org/app", &["self-hosted"], Duration::from_secs(60)),
            JobSpec::new("octo-org/app", &["gpu"], Duration::from_secs(60)),
        ])
        .expect("queued");
    runner.take_job().await;
    let run = refs[0].run_id;
    let job = refs[1].job_id;
    let jwt = Api::new(emu.base_url(), &good_jwt());
    let token: Value = jwt
        .post(
            &format!("/app/installations/{INSTALLATION}/access_tokens"),
            json!({}),
        )
        .await
        .json()
        .await
        .expect("json");

    let cases: Vec<Case> = vec![
        (
            "/orgs/{org}/actions/runners",
            "get",
            "200",
            format!("{ORG}/actions/runners"),
            None,
            &api,
            200,
        ),
        (
            "/repos/{owner}/{repo}/actions/runners",
            "get",
            "200",
            format!("{REPO}/actions/runners"),
            None,
            &api,
            200,
        ),
        (
            "/orgs/{org}/actions/runners/{runner_id}",
            "get",
            "200",
            format!("{ORG}/actions/runners/1"),
            None,
            &api,
            200,
        ),
        (
            "/orgs/{org}/actions/runners/generate-jitconfig",
            "post",
            "201",
            format!("{ORG}/actions/runners/generate-jitconfig"),
            Some(json!({"name": "shape-2", "runner_group_id": 1, "labels": ["a"]})),
            &api,
            201,
        ),
        (
            "/orgs/{org}/actions/runners/registration-token",
            "post",
            "201",
            format!("{ORG}/actions/runners/registration-token"),
            Some(json!({})),
            &api,
            201,
        ),
        (
            "/repos/{owner}/{repo}/actions/runners/remove-token",
            "post",
            "201",
            format!("{REPO}/actions/runners/remove-token"),
            Some(json!({})),
            &api,
            201,
        ),
        (
            "/repos/{owner}/{repo}/actions/runs",
            "get",
            "200",
            format!("{REPO}/actions/runs"),
            None,
            &api,
            200,
        ),
        (
            "/repos/{owner}/{repo}/actions/runs/{run_id}",
            "get",
            "200",
            format!("{REPO}/actions/runs/{run}"),
            None,
            &api,
            200,
        ),
        (
            "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            "get",
            "200",
            format!("{REPO}/actions/runs/{run}/jobs"),
            None,
            &api,
            200,
        ),
        (
            "/repos/{owner}/{repo}/actions/jobs/{job_id}",
            "get",
            "200",
            format!("{REPO}/actions/jobs/{job}"),
            None,
            &api,
            200,
        ),
        (
            "/orgs/{org}/installation",
            "get",
            "200",
            "/orgs/octo-org/installation".into(),
            None,
            &jwt,
            200,
        ),
        (
            "/app/installations/{installation_id}/access_tokens",
            "post",
            "201",
            format!("/app/installations/{INSTALLATION}/access_tokens"),
            Some(json!({})),
            &jwt,
            201,
        ),
        (
            "/app/installations",
            "get",
            "200",
            "/app/installations".into(),
            None,
            &jwt,
            200,
        ),
        (
            "/rate_limit",
            "get",
            "200",
            "/rate_limit".into(),
            None,
            &api,
            200,
        ),
        (
            "/orgs/{org}/actions/runners/{runner_id}",
            "delete",
            "422",
            format!("{ORG}/actions/runners/1"),
            None,
            &api,
            422,
        ),
        (
            "/orgs/{org}/actions/runners/generate-jitconfig",
            "post",
            "409",
            format!("{ORG}/actions/runners/generate-jitconfig"),
            Some(json!({"name": "shape", "runner_group_id": 1, "labels": ["a"]})),
            &api,
            409,
        ),
    ];
    let mut errors = Vec::new();
    for (template, method, code, path, body, client, status) in cases {
        let resp = match (method, body) {
            ("get", _) => client.get(&path).await,
            ("delete", _) => client.delete(&path).await,
            (_, Some(b)) => client.post(&path, b).await,
            _ => unreachable!("every post has a body"),
        };
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let value: Value = resp.json().await.expect("json");
        let schema = &spec["paths"][template][method]["responses"][code]["content"]["application/json"]
            ["schema"];
        assert!(
            schema.is_object(),
            "no schema for {method} {template} {code}"
        );
        check_schema(schema, &value, &format!("{method} {template}"), &mut errors);
    }
    assert!(token["token"].is_string());
    assert!(errors.is_empty(), "{errors:#?}");
    emu.shutdown().await;
}
