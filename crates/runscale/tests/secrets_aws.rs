//! Secrets from AWS Secrets Manager, end to end: the real `runscale` executable reads its
//! GitHub token from moto's Secrets Manager (a `moto_server` per test, from the emulator's
//! AWS harness) and talks to the GitHub emulator with it; a missing secret or key fails naming
//! the field and the secret, never the value.
//!
//! `runscale check` with an AWS identity whose IAM policy lacks some of the aws-asg backend's
//! permissions lists exactly those (moto enforcing IAM).
//!
//! Without `RUNSCALE_MOTO_SERVER` (set by scripts/test.sh) the tests print a note and pass,
//! unless `CI` is set.

#![cfg(all(
    feature = "secrets-aws",
    feature = "provider-github",
    feature = "backend-local-process",
    feature = "backend-aws-asg"
))]

use std::path::{Path, PathBuf};

use std::time::Duration;

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use runscale_emulator::aws::MotoServer;
use runscale_emulator::github::{Emulator, EmulatorHandle, EmulatorOptions};
use secrecy::SecretString;

mod support;

use support::{moto, run_with_aws};

/// The token the GitHub emulator accepts.
const TOKEN: &str = "ghp-from-secrets-manager-5f3a";

/// Creates the secret `name` holding `value` in moto.
async fn create_secret(moto: &MotoServer, name: &str, value: &str) {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.url())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create secret");
}

async fn github() -> EmulatorHandle {
    let options = EmulatorOptions {
        token: SecretString::from(TOKEN),
        ..EmulatorOptions::default()
    }
    .into_config()
    .expect("emulator options");
    Emulator::start(options, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("GitHub emulator")
}

/// A configuration in `dir` whose GitHub provider (at `api`) authenticates with `token` (a
/// secret reference in YAML flow style) and verifies webhooks with `webhook_secret`.
fn config_file(dir: &Path, api: &str, token: &str, webhook_secret: &str) -> PathBuf {
    let text = format!(
        r#"listen: 127.0.0.1:0
providers:
  - name: gh
    type: github
    api_url: {api}
    org: octo-org
    repositories: [app]
    auth:
      token: {token}
    webhook_secret: {webhook_secret}
backends:
  - name: local
    type: local-process
    state_dir: {state}
pools:
  - name: linux
    provider: gh
    backend: local
    selector: {{labels: [linux]}}
    template: {{command: ["/bin/true"]}}
    max: 2
"#,
        state = dir.join("state").display()
    );
    let path = dir.join("runscale.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `runscale <args> -c <config>` with the AWS environment pointing at moto: exit code,
/// stdout, stderr.
async fn runscale(moto: &MotoServer, args: &[&str], config: &Path) -> (i32, String, String) {
    runscale_as(moto, args, config, ("testing", "testing")).await
}

/// [`runscale`] with the access key `(id, secret)`.
async fn runscale_as(
    moto: &MotoServer,
    args: &[&str],
    config: &Path,
    key: (&str, &str),
) -> (i32, String, String) {
    let mut args = args.to_vec();
    let config_text = config.display().to_string();
    args.extend(["-c", config_text.as_str()]);
    let dir = config.parent().expect("config in a directory");
    run_with_aws(moto, dir, key, &args, &[], Duration::from_secs(120)).await
}

/// Asserts that `text` contains every one of `needles`.
fn assert_names(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}

/// The fields of the table row of `name` in `check`'s output.
fn row<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_once_use_the_token_from_a_json_key_of_the_secret() {
    let Some(moto) = moto().await else { return };
    let gh = github().await;
    create_secret(
        &moto,
        "runscale-test/github",
        &format!(r#"{{"user": "ci-bot", "token": "{TOKEN}"}}"#),
    )
    .await;
    create_secret(&moto, "runscale-test/hook", "hook-secret-b81c").await;
    create_secret(
        &moto,
        "runscale-test/stale",
        r#"{"token": "ghp-revoked-0000"}"#,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = "{aws_secrets_manager: {name: runscale-test/hook, region: us-east-1}}";
    let path = config_file(
        dir.path(),
        gh.base_url(),
        "{aws_secrets_manager: {name: runscale-test/github, key: token}}",
        hook,
    );

    let (code, stdout, stderr) = runscale(&moto, &["check"], &path).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(&row(&stdout, "gh")[..4], ["gh", "provider", "github", "OK"]);
    let (code, stdout, stderr) = runscale(&moto, &["once"], &path).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(&row(&stdout, "linux")[..2], ["linux", "ok"], "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(TOKEN) && !text.contains("hook-secret"),
            "{text}"
        );
    }

    // The value read is the one used: another secret's token is refused by GitHub.
    let path = config_file(
        dir.path(),
        gh.base_url(),
        "{aws_secrets_manager: {name: runscale-test/stale, key: token}}",
        hook,
    );
    let (code, stdout, stderr) = runscale(&moto, &["check"], &path).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        &row(&stdout, "gh")[..4],
        ["gh", "provider", "github", "FAIL"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_or_key_is_an_error_naming_the_field_and_the_secret() {
    let Some(moto) = moto().await else { return };
    let gh = github().await;
    create_secret(
        &moto,
        "runscale-test/keys",
        &format!(r#"{{"token": "{TOKEN}"}}"#),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");

    let absent = config_file(
        dir.path(),
        gh.base_url(),
        "{aws_secrets_manager: {name: runscale-test/absent, key: token}}",
        "null",
    );
    for cmd in ["once", "run"] {
        let (code, stdout, stderr) = runscale(&moto, &[cmd], &absent).await;
        assert_eq!(code, 2, "{cmd}: {stdout}{stderr}");
        assert_names(
            &stderr,
            &[
                "provider \"gh\"",
                "auth.token",
                "secret \"runscale-test/absent\"",
                "does not exist",
            ],
        );
    }

    let wrong_key = config_file(
        dir.path(),
        gh.base_url(),
        "{aws_secrets_manager: {name: runscale-test/keys, key: tokn}}",
        "null",
    );
    let (code, stdout, stderr) = runscale(&moto, &["check"], &wrong_key).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let detail = row(&stdout, "gh")[4..].join(" ");
    assert_names(
        &detail,
        &[
            "auth.token",
            "secret \"runscale-test/keys\" (key \"tokn\")",
            "has no key \"tokn\" (its keys: token)",
        ],
    );
    let (code, stdout, stderr) = runscale(&moto, &["once"], &wrong_key).await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("has no key \"tokn\""), "{stderr}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains(TOKEN), "{text}");
    }
}

/// One IAM Query API call to moto (routed by the credential scope; moto does not check the
/// signature before authorization is switched on); the response body.
async fn iam(moto: &MotoServer, params: &[(&str, &str)]) -> String {
    let mut form: Vec<(&str, &str)> = vec![("Version", "2010-05-08")];
    form.extend_from_slice(params);
    let resp = reqwest::Client::new()
        .post(moto.url())
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20261130/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&form))
        .send()
        .await
        .expect("IAM call");
    let status = resp.status();
    let body = resp.text().await.expect("IAM body");
    assert!(status.is_success(), "{params:?}: {status} {body}");
    body
}

/// `application/x-www-form-urlencoded` text of `pairs`.
fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://form.invalid/").expect("url");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

/// The text of `<tag>` in an XML answer.
fn xml_field(body: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = body.find(&open).expect("field") + open.len();
    let end = body[start..].find("</").expect("end") + start;
    body[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_the_iam_actions_the_policy_lacks() {
    let Some(moto) = moto().await else { return };
    let gh = github().await;
    let aws = runscale_emulator::aws::MotoClient::new(moto.url(), "us-east-1");
    aws.create_group("iam-runners", 2).await.expect("group");
    // A user allowed to read the group and the parameters, and nothing else runscale needs.
    iam(
        &moto,
        &[("Action", "CreateUser"), ("UserName", "runscale-check")],
    )
    .await;
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": [
                "autoscaling:DescribeAutoScalingGroups",
                "ssm:GetParameter",
                "ssm:GetParametersByPath"
            ],
            "Resource": "*"
        }]
    })
    .to_string();
    iam(
        &moto,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", "runscale-check"),
            ("PolicyName", "partial"),
            ("PolicyDocument", &policy),
        ],
    )
    .await;
    let key = iam(
        &moto,
        &[
            ("Action", "CreateAccessKey"),
            ("UserName", "runscale-check"),
        ],
    )
    .await;
    let (id, secret) = (
        xml_field(&key, "AccessKeyId"),
        xml_field(&key, "SecretAccessKey"),
    );
    // From now on moto authenticates and authorizes every request.
    let resp = reqwest::Client::new()
        .post(format!("{}/moto-api/reset-auth", moto.url()))
        .body("0")
        .send()
        .await
        .expect("reset-auth");
    assert!(resp.status().is_success());

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("gh-token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let text = format!(
        r#"listen: 127.0.0.1:0
providers:
  - name: gh
    type: github
    api_url: {api}
    org: octo-org
    repositories: [app]
    auth:
      token: {{file: {token}}}
backends:
  - name: asg
    type: aws-asg
    region: us-east-1
pools:
  - name: iam
    provider: gh
    backend: asg
    selector: {{labels: [linux]}}
    template: {{group: iam-runners}}
    max: 2
"#,
        api = gh.base_url(),
        token = token_file.display()
    );
    let path = dir.path().join("runscale.yaml");
    std::fs::write(&path, &text).expect("config");
    let (code, stdout, stderr) = runscale_as(&moto, &["check"], &path, (&id, &secret)).await;
    assert_eq!(code, 1, "{text}\n{stdout}{stderr}");
    let detail = row(&stdout, "asg")[4..].join(" ");
    assert!(detail.contains("missing IAM permissions"), "{stdout}");
    for missing in [
        "autoscaling:SetInstanceProtection",
        "autoscaling:DescribeAutoScalingInstances",
        "ssm:DeleteParameter",
    ] {
        assert!(detail.contains(missing), "{missing} not listed: {detail}");
    }
    for allowed in [
        "autoscaling:DescribeAutoScalingGroups,",
        "ssm:GetParametersByPath,",
    ] {
        assert!(
            !detail
                .split("missing IAM permissions:")
                .nth(1)
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .contains(allowed.trim_end_matches(',')),
            "{allowed} listed as missing: {detail}"
        );
    }
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));
}
