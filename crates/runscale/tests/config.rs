//! The configuration pipeline through the library: interpolation, parsing, type errors,
//! validation (every error named by its field path and line), defaults, and building.

use std::path::Path;
use std::time::Duration;

use runscale::config::{self, ConfigError, FieldError, Validated};

const FILE: &str = "test.yaml";

/// A valid configuration; `pool_extra` is appended to the first pool (4-space indented keys).
fn yaml(pool_extra: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:9191
providers:
  - name: gh
    type: github
    org: acme
    repositories: [app]
    auth: {{token: {{env: RUNSCALE_TEST_TOKEN}}}}
backends:
  - name: local
    type: local-process
    state_dir: /tmp/runscale-config-test
pools:
  - name: linux
    provider: gh
    backend: local
    selector: {{labels: [linux]}}
    template: {{command: ["/bin/true"]}}
    max: 4
{pool_extra}"#
    )
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Validated, ConfigError> {
    config::load_str(text, Path::new(FILE), no_env)
}

fn errors_of(text: &str) -> Vec<FieldError> {
    match load(text) {
        Ok(_) => panic!("configuration was accepted:\n{text}"),
        Err(ConfigError::Invalid { errors, .. }) => errors,
        Err(other) => panic!("expected field errors, got: {other}"),
    }
}

fn error_at<'a>(errors: &'a [FieldError], path: &str) -> &'a FieldError {
    errors
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at {path}: {errors:#?}"))
}

#[test]
fn valid_file_gets_defaults_and_a_pool_spec() {
    let v = load(&yaml("")).expect("valid");
    assert_eq!(v.listen.to_string(), "127.0.0.1:9191");
    assert_eq!(v.options.interval, Duration::from_secs(30));
    assert_eq!(v.options.max_concurrent_passes, 16);
    assert_eq!(v.options.shutdown_timeout, Duration::from_secs(30));
    assert!(!v.options.dry_run);
    assert_eq!(v.providers.len(), 1);
    assert_eq!(v.providers[0].settings.kind(), "github");
    assert_eq!(v.backends[0].settings.kind(), "local-process");
    let p = &v.pools[0];
    assert_eq!((p.provider, p.backend), (0, 0));
    let s = &p.spec;
    assert_eq!(s.name.as_str(), "linux");
    assert_eq!((s.min_idle, s.max, s.max_booting), (0, 4, 4));
    assert_eq!(s.launches_per_minute, 0);
    assert_eq!(s.boot_timeout, Duration::from_secs(300));
    assert_eq!(s.idle_timeout, Duration::from_secs(300));
    assert_eq!(s.max_lifetime, None);
    assert_eq!(s.scale_down_delay, Duration::ZERO);
    assert_eq!(s.runners_per_instance, 1);
    assert!(s.ephemeral);
    assert!(s.schedules.is_empty());
    assert_eq!(
        s.template_hash,
        config::combined_template_hash(&p.template.backend_hash(), 1)
    );
}

#[test]
fn template_hash_follows_template_and_slots() {
    let base = load(&yaml("")).expect("valid").pools[0]
        .spec
        .template_hash
        .clone();
    let slots = load(&yaml("    runners_per_instance: 2\n"))
        .expect("valid")
        .pools[0]
        .spec
        .template_hash
        .clone();
    let other = load(&yaml("").replace("/bin/true", "/bin/false"))
        .expect("valid")
        .pools[0]
        .spec
        .template_hash
        .clone();
    assert_ne!(base, slots);
    assert_ne!(base, other);
    assert_ne!(slots, other);
}

#[test]
fn negative_max_names_the_field_and_line() {
    let text = yaml("").replace("    max: 4\n", "    max: -1\n");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(e.path, "pools[0].max");
    assert_eq!(e.line, Some(18));
    assert!(e.message.contains("-1"), "{e}");
    assert!(e.message.contains("whole number"), "{e}");
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let errors = errors_of(&yaml("    max_idle: 3\n"));
    let e = error_at(&errors, "pools[0].max_idle");
    assert_eq!(e.line, Some(19));
    assert!(e.message.contains("unknown field `max_idle`"), "{e}");
    assert!(e.message.contains("min_idle"), "lists valid keys: {e}");

    let errors = errors_of(&format!("colour: blue\n{}", yaml("")));
    let e = error_at(&errors, "colour");
    assert_eq!(e.line, Some(1));
}

#[test]
fn unknown_keys_inside_adapter_settings_and_templates_are_named() {
    let text = yaml("").replace(
        "    state_dir: /tmp/runscale-config-test\n",
        "    state_dir: /tmp/x\n    stat_dir: /tmp/y\n",
    );
    let e = errors_of(&text);
    assert_eq!(error_at(&e, "backends[0].stat_dir").line, Some(12));

    let text = yaml("").replace(
        r#"template: {command: ["/bin/true"]}"#,
        "template:\n      command: [\"/bin/true\"]\n      comand: []",
    );
    let e = errors_of(&text);
    let e = error_at(&e, "pools[0].template.comand");
    assert_eq!(e.line, Some(19));
}

#[test]
fn missing_required_field_is_named() {
    let text = yaml("").replace("    max: 4\n", "");
    let errors = errors_of(&text);
    let e = error_at(&errors, "pools[0].max");
    assert!(e.message.contains("required"), "{e}");
    // Reported at the pool's line, since the field itself is absent.
    assert_eq!(e.line, Some(13));
}

#[test]
fn semantic_errors_are_all_collected_with_lines() {
    let text = format!(
        "{}  - name: Bad_Name\n    provider: nope\n    backend: local\n    template: {{command: [\"/bin/true\"]}}\n    max: 0\n",
        yaml("    max_booting: 9\n    min_idle: 100\n    scale_down_delay: 10m\n")
    );
    let errors = errors_of(&text);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for path in [
        "pools[0].max_booting",
        "pools[0].min_idle",
        "pools[0].scale_down_delay",
        "pools[1].name",
        "pools[1].max",
        "pools[1].provider",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    let e = error_at(&errors, "pools[0].max_booting");
    assert_eq!(e.line, Some(19));
    assert!(e.message.contains("from 1 to max (4)"), "{e}");
    let e = error_at(&errors, "pools[1].provider");
    assert_eq!(e.line, Some(23));
    assert!(
        e.message.contains("\"nope\"") && e.message.contains("gh"),
        "{e}"
    );
    let e = error_at(&errors, "pools[0].scale_down_delay");
    assert!(e.message.contains("idle_timeout"), "{e}");
}

#[test]
fn duplicate_pool_names_are_rejected() {
    let text = format!(
        "{}  - name: linux\n    provider: gh\n    backend: local\n    selector: {{labels: [x]}}\n    template: {{command: [\"/bin/true\"]}}\n    max: 1\n",
        yaml("")
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = error_at(&errors, "pools[1].name");
    assert_eq!(e.line, Some(19));
    assert!(e.message.contains("pools[0]"), "{e}");
}

#[test]
fn pool_referencing_unknown_backend_or_provider_is_rejected() {
    let text = yaml("").replace("    backend: local\n", "    backend: remote\n");
    let errors = errors_of(&text);
    let e = error_at(&errors, "pools[0].backend");
    assert!(
        e.message.contains("\"remote\"") && e.message.contains("local"),
        "{e}"
    );
    let text = yaml("").replace("    provider: gh\n", "    provider: gl\n");
    let errors = errors_of(&text);
    let e = error_at(&errors, "pools[0].provider");
    assert_eq!(e.line, Some(14));
}

#[test]
fn durations_are_human() {
    let v = load(&format!(
        "interval: 90s\nshutdown_timeout: 2m\n{}",
        yaml(
            "    boot_timeout: 10m\n    idle_timeout: 1h 30m\n    max_lifetime: 12h\n    scale_down_delay: 45s\n"
        )
    ))
    .expect("valid");
    assert_eq!(v.options.interval, Duration::from_secs(90));
    assert_eq!(v.options.shutdown_timeout, Duration::from_secs(120));
    let s = &v.pools[0].spec;
    assert_eq!(s.boot_timeout, Duration::from_secs(600));
    assert_eq!(s.idle_timeout, Duration::from_secs(5400));
    assert_eq!(s.max_lifetime, Some(Duration::from_secs(12 * 3600)));
    assert_eq!(s.scale_down_delay, Duration::from_secs(45));

    let errors = errors_of(&yaml("    idle_timeout: soon\n"));
    let e = error_at(&errors, "pools[0].idle_timeout");
    assert!(e.message.contains("\"10m\""), "{e}");
    let errors = errors_of(&format!("interval: 30\n{}", yaml("")));
    let e = error_at(&errors, "interval");
    assert_eq!(e.line, Some(1));
    let errors = errors_of(&yaml("    idle_timeout: 0s\n"));
    error_at(&errors, "pools[0].idle_timeout");
}

#[test]
fn schedules_with_bad_cron_or_timezone_are_named() {
    let v = load(&yaml(
        "    schedules:\n      - cron: \"* 8-17 * * MON-FRI\"\n        timezone: Europe/Berlin\n        min_idle: 2\n      - cron: \"* * * * SAT,SUN\"\n        max: 0\n",
    ))
    .expect("valid");
    let s = &v.pools[0].spec.schedules;
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].timezone(), "Europe/Berlin");
    assert_eq!(s[0].min_idle, Some(2));
    assert_eq!(s[1].timezone(), "UTC");
    assert_eq!(s[1].max, Some(0));

    let errors = errors_of(&yaml(
        "    schedules:\n      - cron: \"* * * * *\"\n        min_idle: 1\n      - cron: \"61 * * * *\"\n        timezone: Mars/Olympus\n        min_idle: 1\n",
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let e = error_at(&errors, "pools[0].schedules[1].cron");
    assert_eq!(e.line, Some(22));
    assert!(e.message.contains("61 * * * *"), "{e}");
    let e = error_at(&errors, "pools[0].schedules[1].timezone");
    assert_eq!(e.line, Some(23));
    assert!(e.message.contains("Mars/Olympus"), "{e}");
}

#[test]
fn interpolation_fills_values_and_names_unset_variables() {
    let text = yaml("    min_idle: ${MIN_IDLE}\n    max_booting: ${MAX_BOOTING:-2}\n")
        .replace("127.0.0.1:9191", "127.0.0.1:${PORT}")
        .replace(r#"["/bin/true"]"#, r#"["/bin/true"], env: {A: "$${HOME}"}"#);
    let env = |name: &str| match name {
        "MIN_IDLE" => Some("3".to_owned()),
        "PORT" => Some("9292".to_owned()),
        _ => None,
    };
    let v = config::load_str(&text, Path::new(FILE), env).expect("valid");
    assert_eq!(v.listen.port(), 9292);
    assert_eq!(v.pools[0].spec.min_idle, 3);
    assert_eq!(v.pools[0].spec.max_booting, 2);
    let template = format!("{:?}", v.pools[0].template);
    assert!(template.contains(r#"{"A": "${HOME}"}"#), "{template}");

    match config::load_str(&text, Path::new(FILE), no_env) {
        Err(ConfigError::Interpolation { errors, .. }) => {
            assert_eq!(errors.len(), 2, "{errors:?}");
            assert_eq!(errors[0].line, 1);
            assert!(errors[0].message.contains("PORT"));
            assert_eq!(errors[1].line, 19);
            assert!(errors[1].message.contains("MIN_IDLE"));
        }
        other => panic!("expected interpolation errors, got {other:?}"),
    }
}

#[test]
fn syntax_errors_have_a_line() {
    match load("pools:\n  - name: a\n    max: [1, 2\n") {
        Err(ConfigError::Syntax { error, .. }) => {
            assert!(error.line.is_some(), "{error}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    match load("- just\n- a list\n") {
        Err(ConfigError::Invalid { errors, .. }) => {
            assert!(errors[0].message.contains("mapping"), "{errors:?}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn unknown_adapter_type_is_a_clear_error() {
    let text = yaml("").replace("type: local-process", "type: nomad");
    let errors = errors_of(&text);
    let e = error_at(&errors, "backends[0].type");
    assert!(e.message.contains("\"nomad\""), "{e}");
    assert!(e.message.contains("local-process"), "{e}");
    // The pool that refers to it is not blamed for the backend's problem.
    assert_eq!(errors.len(), 1, "{errors:#?}");
}

#[test]
fn adapter_validation_errors_are_prefixed_with_their_path() {
    let text = yaml("").replace("    org: acme\n", "    org: acme\n    repo: acme/app\n");
    let errors = errors_of(&text);
    assert!(
        errors.iter().all(|e| e.path.starts_with("providers[0].")),
        "{errors:#?}"
    );
    let text = yaml("").replace("selector: {labels: [linux]}", "selector: {labels: []}");
    let errors = errors_of(&text);
    error_at(&errors, "pools[0].selector.labels");
}

#[test]
fn env_delivery_with_several_slots_is_rejected() {
    let text = yaml("    runners_per_instance: 2\n").replace(
        r#"template: {command: ["/bin/true"]}"#,
        r#"template: {command: ["/bin/true"], credentials: env}"#,
    );
    let errors = errors_of(&text);
    let e = error_at(&errors, "pools[0].template.credentials");
    assert!(e.message.contains("runners_per_instance"), "{e}");
}

#[test]
fn pool_names_must_be_dns_labels() {
    let long = "a".repeat(41);
    let errors = errors_of(&yaml("").replace("name: linux", &format!("name: {long}")));
    let e = error_at(&errors, "pools[0].name");
    assert!(e.message.contains("40"), "{e}");
}

#[test]
fn missing_secret_fails_the_build_as_misconfiguration() {
    let state = tempfile::tempdir().expect("tempdir");
    let text = yaml("").replace(
        "/tmp/runscale-config-test",
        &state.path().join("s").to_string_lossy(),
    );
    let v = load(&text).expect("valid");
    let adapters = config::build_adapters(&v);
    let provider = adapters.providers[0]
        .adapter
        .as_ref()
        .err()
        .expect("token variable is not set");
    assert!(provider.is_misconfiguration());
    assert!(
        runscale::commands::chain(provider).contains("RUNSCALE_TEST_TOKEN"),
        "{provider}"
    );
    assert!(adapters.backends[0].adapter.is_ok());
    let e = config::build(&v).err().expect("build fails");
    assert_eq!(e.name, "gh");
}

#[test]
fn schema_describes_the_pool_fields() {
    let schema = config::schema();
    let pool = &schema["$defs"]["PoolConfig"];
    for field in [
        "name",
        "provider",
        "backend",
        "selector",
        "template",
        "min_idle",
        "max",
        "max_booting",
        "launches_per_minute",
        "boot_timeout",
        "idle_timeout",
        "max_lifetime",
        "scale_down_delay",
        "runners_per_instance",
        "ephemeral",
        "schedules",
    ] {
        assert!(
            pool["properties"][field]["description"].is_string(),
            "{field}: {}",
            pool["properties"][field]
        );
    }
    assert_eq!(pool["additionalProperties"], false);
    let backends = &schema["properties"]["backends"]["items"]["oneOf"];
    let local = backends
        .as_array()
        .and_then(|v| {
            v.iter()
                .find(|b| b["properties"]["type"]["const"] == "local-process")
        })
        .expect("local-process backend in schema");
    assert!(local["properties"]["state_dir"].is_object());
    assert!(local["properties"]["name"].is_object());
}

#[test]
fn exec_provider_settings_and_selectors_are_checked_by_path() {
    let exec = "providers:\n  - name: ci\n    type: exec\n    observe: [\"ci\", \"observe\"]\n    register: []\n    remove: [\"ci\", \"remove\"]\n    timeout: 0s\nbackends:\n  - name: local\n    type: local-process\n    state_dir: /tmp/x\npools:\n  - name: a\n    provider: ci\n    backend: local\n    selector: {labels: [\"ok\", \"a,b\"]}\n    template: {command: [\"/bin/true\"]}\n    max: 1\n";
    let errors = errors_of(exec);
    let e = error_at(&errors, "providers[0].register");
    assert_eq!(e.line, Some(5));
    let e = error_at(&errors, "providers[0].timeout");
    assert_eq!(e.line, Some(7));
    // The selector of a pool whose provider has errors is not parsed.
    assert_eq!(errors.len(), 2, "{errors:#?}");

    let fixed = exec
        .replace("register: []", "register: [\"ci\", \"register\"]")
        .replace("timeout: 0s", "timeout: 5s");
    let errors = errors_of(&fixed);
    let e = error_at(&errors, "pools[0].selector.labels[1]");
    assert_eq!(e.line, Some(16));
    assert!(e.message.contains(','), "{e}");

    let v = load(&fixed.replace("\"a,b\"", "\"b\"")).expect("valid");
    assert_eq!(v.providers[0].settings.kind(), "exec");
}

/// A backend hosting one runner per instance: `settings` (its `type` and settings lines) with
/// the pool's `template` is valid; two runners per instance is an error at the pool's
/// `runners_per_instance` whose message contains `one_runner`; `bad_template` gets errors under
/// the pool's template only.
fn check_one_runner_backend(
    settings: &str,
    template: &str,
    bad_template: &str,
    kind: &str,
    one_runner: &str,
) {
    let text = |template: &str, extra: &str| {
        yaml(extra)
            .replace(
                "    type: local-process\n    state_dir: /tmp/runscale-config-test\n",
                settings,
            )
            .replace(r#"template: {command: ["/bin/true"]}"#, template)
    };
    let v = load(&text(template, "")).expect("valid");
    assert_eq!(v.backends[0].settings.kind(), kind);

    let errors = errors_of(&text(template, "    runners_per_instance: 2\n"));
    let e = error_at(&errors, "pools[0].runners_per_instance");
    assert!(e.message.contains(one_runner), "{e}");

    let errors = errors_of(&text(bad_template, ""));
    assert!(
        errors
            .iter()
            .all(|e| e.path.starts_with("pools[0].template")),
        "{errors:#?}"
    );
}

#[test]
fn kubernetes_pools_host_one_runner_per_pod_and_need_one_template_source() {
    check_one_runner_backend(
        "    type: kubernetes\n    namespace: ci\n",
        "template: {pod: {spec: {containers: [{name: runner, image: runner:1}]}}}",
        "template: {credentials: env}",
        "kubernetes",
        "one runner per pod",
    );
}

#[test]
fn aws_asg_pools_name_their_group_and_host_one_runner_per_instance() {
    check_one_runner_backend(
        "    type: aws-asg\n    region: eu-west-1\n",
        "template: {group: ci-linux}",
        "template: {}",
        "aws-asg",
        "the aws-asg backend runs one runner per instance",
    );
}

#[test]
fn runners_named_by_the_instances_need_circleci_and_plan_from_counts() {
    let asg = |provider: &str| {
        yaml("")
            .replace(
                "    type: github\n    org: acme\n    repositories: [app]\n    auth: {token: {env: RUNSCALE_TEST_TOKEN}}\n",
                provider,
            )
            .replace(
                "    type: local-process\n    state_dir: /tmp/runscale-config-test\n",
                "    type: aws-asg\n    region: eu-west-1\n",
            )
            .replace(
                r#"template: {command: ["/bin/true"]}"#,
                "template: {group: ci-linux, runner_name: unknown, max_size: 4}",
            )
    };
    let circle = asg("    type: circleci\n    token: {env: RUNSCALE_TEST_TOKEN}\n").replace(
        "selector: {labels: [linux]}",
        "selector: {resource_class: acme/linux}",
    );
    let v = load(&circle).expect("valid");
    assert!(v.pools[0].spec.runners_unattributed);
    let errors = errors_of(&asg(
        "    type: github\n    org: acme\n    repositories: [app]\n    auth: {token: {env: RUNSCALE_TEST_TOKEN}}\n",
    ));
    let e = error_at(&errors, "pools[0].template.runner_name");
    assert!(e.message.contains("needs a circleci provider"), "{e}");
}

#[test]
fn aws_ec2_pools_name_a_launch_template_and_host_one_runner_per_instance() {
    check_one_runner_backend(
        "    type: aws-ec2\n    owner: ci-prod\n    region: eu-west-1\n",
        "template: {launch_template_name: ci-linux, instance_types: [m6i.large]}",
        "template: {instance_types: [m6i.large]}",
        "aws-ec2",
        "the aws-ec2 backend runs one runner per instance",
    );
}

#[test]
fn circleci_pools_select_a_resource_class_with_its_token() {
    let circle = |selector: &str| {
        yaml("")
            .replace(
                "    type: github\n    org: acme\n    repositories: [app]\n    auth: {token: {env: RUNSCALE_TEST_TOKEN}}\n",
                "    type: circleci\n    token: {env: RUNSCALE_TEST_TOKEN}\n",
            )
            .replace("selector: {labels: [linux]}", selector)
    };
    let v = load(&circle(
        "selector: {resource_class: acme/linux, token: {env: RUNSCALE_TEST_CLASS_TOKEN}}",
    ))
    .expect("valid");
    assert_eq!(v.providers[0].settings.kind(), "circleci");
    let errors = errors_of(&circle(
        "selector: {resource_class: no-slash, token: {env: T}}",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.path.starts_with("pools[0].selector.resource_class")),
        "{errors:#?}"
    );
}

#[test]
fn gitlab_pools_on_exec_machines_are_validated_and_built() {
    let text = r#"providers:
  - name: gl
    type: gitlab
    url: https://gitlab.example.com
    token: {env: RUNSCALE_TEST_GL_TOKEN}
    projects: [acme/app]
backends:
  - name: cloud
    type: exec
    command: ["/usr/local/bin/hcloud-runners", "--verbose"]
    timeouts: {create: 5m}
pools:
  - name: docker
    provider: gl
    backend: cloud
    selector: {tags: [docker], run_untagged: true}
    template: {params: {server_type: cx22, image: ubuntu-24.04}}
    runners_per_instance: 2
    max: 4
"#;
    let v = config::load_str(text, Path::new(FILE), no_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.providers[0].settings.kind(), "gitlab");
    assert_eq!(v.pools[0].spec.runners_per_instance, 2);
    let errors = errors_of(&text.replace("run_untagged: true", "run_untagged: maybe"));
    assert!(
        errors
            .iter()
            .any(|e| e.path == "pools[0].selector.run_untagged"),
        "{errors:#?}"
    );
    let errors = errors_of(&text.replace("command: [", "command: [] #"));
    assert!(
        errors
            .iter()
            .any(|e| e.path.starts_with("backends[0].command")),
        "{errors:#?}"
    );
    // A slot's GitLab system_id numbers it on two digits.
    let errors = errors_of(&text.replace("runners_per_instance: 2", "runners_per_instance: 100"));
    assert!(
        errors
            .iter()
            .any(|e| e.path == "pools[0].runners_per_instance" && e.message.contains("99")),
        "{errors:#?}"
    );
    let errors = errors_of(&text.replace(
        "projects: [acme/app]",
        "projects: [acme/app]\n    contact_timeout: 1s",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.path == "providers[0].contact_timeout"),
        "{errors:#?}"
    );
    let schema = config::schema().to_string();
    assert!(schema.contains("\"gitlab\"") && schema.contains("\"exec\""));
}

#[test]
fn a_token_written_inline_is_refused_and_never_quoted() {
    let token = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    let text = yaml("").replace(
        "auth: {token: {env: RUNSCALE_TEST_TOKEN}}",
        &format!("auth: {{token: {token}}}"),
    );
    let errors = errors_of(&text);
    let all = format!("{errors:?} {}", load(&text).expect_err("invalid"));
    assert!(!all.contains("ghp_"), "{all}");
    let e = error_at(&errors, "providers[0].auth");
    assert!(e.message.contains("{env: NAME}"), "{e}");
    assert!(e.message.contains("not shown"), "{e}");
}

#[test]
fn durations_and_counts_have_upper_bounds() {
    // Each would overflow a clock or a counter later (the pool task panicked after one pass,
    // or `once` exited 101): `check` refuses them, naming the field and the limit.
    let top = |line: &str| yaml("").replace("listen: 127.0.0.1:9191\n", &format!("{line}\n"));
    for (text, path, limit) in [
        (top("interval: 18446744073709551615s"), "interval", "1day"),
        (top("shutdown_timeout: 100years"), "shutdown_timeout", "1h"),
        (
            top("max_concurrent_passes: 2305843009213693952"),
            "max_concurrent_passes",
            "1024",
        ),
        (
            yaml("    boot_timeout: 1000days\n"),
            "pools[0].boot_timeout",
            "1day",
        ),
        (
            yaml("    idle_timeout: 30days\n"),
            "pools[0].idle_timeout",
            "7days",
        ),
        (
            yaml("    max_lifetime: 1year\n"),
            "pools[0].max_lifetime",
            "30days",
        ),
        (
            yaml("").replace("    max: 4\n", "    max: 4000000000\n"),
            "pools[0].max",
            "100000",
        ),
        (
            yaml("    launches_per_minute: 4000000000\n"),
            "pools[0].launches_per_minute",
            "100000",
        ),
    ] {
        let errors = errors_of(&text);
        let e = error_at(&errors, path);
        assert!(e.message.contains(limit), "{path}: {e}");
    }
    // The limits themselves are accepted.
    load(&yaml("    boot_timeout: 24h\n    idle_timeout: 7days\n")).expect("at the limits");
}

#[test]
fn adapter_durations_have_an_upper_bound() {
    // Every adapter's timeouts, grace periods and refresh intervals: at most a day.
    let text = yaml("")
        .replace(
            "    repositories: [app]\n",
            "    repositories: [app]\n    request_timeout: 18446744073709551615s\n",
        )
        .replace(
            "    state_dir: /tmp/runscale-config-test\n",
            "    state_dir: /tmp/runscale-config-test\n    stop_grace: 25h\n",
        );
    let errors = errors_of(&text);
    for path in ["providers[0].request_timeout", "backends[0].stop_grace"] {
        let e = error_at(&errors, path);
        assert!(e.message.contains("at most 24h"), "{path}: {e}");
    }
    let text = yaml("")
        .replace(
            "    repositories: [app]\n",
            "    repositories: [app]\n    request_timeout: 24h\n",
        )
        .replace(
            "    state_dir: /tmp/runscale-config-test\n",
            "    state_dir: /tmp/runscale-config-test\n    stop_grace: 1day\n",
        );
    load(&text).expect("at the limit");
}

#[test]
fn warm_is_auto_by_default_and_can_be_off_or_set() {
    let warm = |extra: &str| load(&yaml(extra)).expect("valid").pools[0].spec.warm;
    assert_eq!(warm(""), Some(runscale_core::Warm::AUTO));
    assert_eq!(warm("    warm: auto\n"), Some(runscale_core::Warm::AUTO));
    assert_eq!(warm("    warm: off\n"), None);
    assert_eq!(
        warm("    warm: {target_wait: 5s, coverage: 0.95}\n"),
        Some(runscale_core::Warm {
            target_wait: Duration::from_secs(5),
            coverage: 0.95,
        })
    );
    assert_eq!(
        warm("    warm: {coverage: 0.5}\n").map(|w| w.target_wait),
        Some(runscale_core::Warm::AUTO.target_wait)
    );
    let errors = errors_of(&yaml("    warm: {target_wait: 5s, coverage: 1.5}\n"));
    assert!(
        error_at(&errors, "pools[0].warm.coverage")
            .message
            .contains("below 1"),
        "{errors:?}"
    );
    let errors = errors_of(&yaml("    warm: {target_wait: 2h}\n"));
    error_at(&errors, "pools[0].warm.target_wait");
    // A word that is neither mode is refused, naming the field and what is expected.
    let errors = errors_of(&yaml("    warm: sometimes\n"));
    let e = errors
        .iter()
        .find(|e| e.path.starts_with("pools[0]"))
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert!(e.message.contains("expected auto, off"), "{e:?}");
    let errors = errors_of(&yaml("    warm: {target: 5s}\n"));
    assert!(
        errors.iter().any(|e| e.message.contains("target")),
        "{errors:?}"
    );
}

#[test]
fn reuse_is_off_by_default_and_needs_ephemeral_runners_on_a_backend_that_can_reuse() {
    assert_eq!(load(&yaml("")).expect("valid").pools[0].spec.reuse, None);
    // local-process: the runner process is the instance.
    let errors = errors_of(&yaml("    reuse: {max_uses: 5}\n"));
    let e = error_at(&errors, "pools[0].reuse");
    assert!(
        e.message.contains("local-process") && e.message.contains("exec"),
        "{e}"
    );
    let on_exec = |extra: &str| {
        yaml(extra)
            .replace(
                "    type: local-process\n    state_dir: /tmp/runscale-config-test\n",
                "    type: exec\n    command: [\"/usr/local/bin/machines\"]\n",
            )
            .replace(
                "    template: {command: [\"/bin/true\"]}\n",
                "    template: {params: {size: small}}\n",
            )
    };
    let reuse = |extra: &str| load(&on_exec(extra)).expect("valid").pools[0].spec.reuse;
    assert_eq!(
        reuse("    reuse: {max_uses: 5, max_age: 2h}\n"),
        Some(runscale_core::Reuse {
            max_uses: 5,
            max_age: Duration::from_secs(7200),
        })
    );
    assert_eq!(
        reuse("    reuse: {}\n"),
        Some(runscale_core::Reuse {
            max_uses: 10,
            max_age: Duration::from_secs(12 * 3600),
        })
    );
    let errors = errors_of(&on_exec("    reuse: {max_uses: 1, max_age: 8d}\n"));
    assert!(
        error_at(&errors, "pools[0].reuse.max_uses")
            .message
            .contains("from 2 to 1000")
    );
    error_at(&errors, "pools[0].reuse.max_age");
    let errors = errors_of(&on_exec("    ephemeral: false\n    reuse: {}\n"));
    assert!(
        error_at(&errors, "pools[0].reuse")
            .message
            .contains("ephemeral"),
        "{errors:?}"
    );
    let errors = errors_of(&on_exec("    reuse: {uses: 3}\n"));
    assert!(
        errors.iter().any(|e| e.message.contains("uses")),
        "{errors:?}"
    );
}
