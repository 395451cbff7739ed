//! The Helm chart `deploy/helm/runscale`, rendered by real Helm: Helm's Go SDK through the
//! PyPI package `helm-python-sdk` (a wheel bundling `libhelm_c`, a C ABI over the SDK), which
//! renders offline as `helm template` does. `scripts/test.sh` installs it into a virtualenv
//! and names its Python in `RUNSCALE_HELM_PYTHON`; without it (and without the default
//! virtualenv `$HOME/.cache/runscale/helm-venv`) the tests print a note and pass, unless `CI`
//! is set.
//!
//! Every rendered document is parsed as YAML and checked: kinds and names, labels and
//! selectors that must match, the service account and ConfigMap the pods use, the
//! `runscale run` flags (against the binary's `--help`), probes and security context, and the
//! RBAC: the Roles grant every entry of `deploy/helm/runscale/rbac-required.json` and nothing
//! more. The ConfigMap's configuration is parsed by runscale's own loader, and checked with
//! `runscale check` when this build has the `kubernetes` backend.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_runscale");
/// Longest a render or a `runscale` command may take.
const LIMIT: Duration = Duration::from_secs(120);
/// The release the chart is rendered as.
const RELEASE: &str = "rel";
const NAMESPACE: &str = "ci";
/// `<release>-<chart>`.
const FULLNAME: &str = "rel-runscale";

/// Renders the chart (argv[1]) with the values (argv[2], JSON) as release `rel` in namespace
/// `ci`, lints it, and prints `{"manifests": {path: text}, "lint": {...}}`, or `{"error": msg}`
/// when Helm refuses.
const RENDER_PY: &str = r#"
import json, sys
import helm_python as helm
chart, values = sys.argv[1], json.loads(sys.argv[2])
try:
    with helm.Chart.load(chart) as c:
        manifests = c.render(values, name="rel", namespace="ci", is_install=True)
    lint = helm.lint(chart, values, strict=True, namespace="ci")
    print(json.dumps({"manifests": manifests, "lint": lint, "helm": helm.helm_sdk_version()}))
except helm.HelmError as e:
    print(json.dumps({"error": str(e)}))
"#;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/runscale")
}

/// The Python with `helm_python` (`RUNSCALE_HELM_PYTHON`, else the virtualenv that
/// `scripts/test.sh` makes). Without it the test fails, or skips under `RUNSCALE_ALLOW_SKIP=1`
/// (then this is `None`).
fn helm_python() -> Option<PathBuf> {
    let path = std::env::var_os("RUNSCALE_HELM_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/runscale/helm-venv/bin/python"))
        });
    runscale_core::testing::require(
        path.filter(|p| p.exists()),
        "a Python with helm-python-sdk (RUNSCALE_HELM_PYTHON)",
        "scripts/test.sh installs helm-python-sdk into $HOME/.cache/runscale/helm-venv",
    )
}

/// Runs `command` to completion within [`LIMIT`], killing it past that.
fn run_bounded(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} took longer than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// What Helm rendered: every Kubernetes document, and the NOTES.
struct Release {
    docs: Vec<Value>,
    notes: String,
}

impl Release {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(found.len(), 1, "exactly one {kind} expected: {found:#?}");
        found[0]
    }

    fn named(&self, kind: &str, namespace: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["namespace"] == namespace
                    && d["metadata"]["name"] == name
            })
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} rendered"))
    }

    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for d in &self.docs {
            *kinds.entry(str_of(&d["kind"]).to_owned()).or_default() += 1;
        }
        kinds
    }

    /// The one runscale container of the Deployment.
    fn container(&self) -> &Value {
        let containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container: {containers:#?}");
        &containers[0]
    }

    fn args(&self) -> Vec<&str> {
        self.container()["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(str_of)
            .collect()
    }

    /// The configuration file in the ConfigMap.
    fn config_text(&self) -> &str {
        str_of(&self.named("ConfigMap", NAMESPACE, FULLNAME)["data"]["config.yaml"])
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, found {v}"))
}

/// Renders the chart with `values`: the release, or Helm's error.
fn try_render(python: &Path, values: &Value) -> Result<Release, String> {
    let out = run_bounded(
        Command::new(python)
            .arg("-c")
            .arg(RENDER_PY)
            .arg(chart_dir())
            .arg(values.to_string()),
    );
    assert!(
        out.status.success(),
        "the Helm renderer failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("renderer output is JSON");
    if let Some(e) = answer.get("error") {
        return Err(str_of(e).to_owned());
    }
    // Helm's lint: no warning or error (severity 2 or 3) on these values.
    let lint = &answer["lint"];
    let serious: Vec<&Value> = lint["messages"]
        .as_array()
        .expect("lint messages")
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap_or(0) >= 2)
        .collect();
    assert!(serious.is_empty(), "helm lint: {serious:#?}");
    assert_eq!(lint["errors"], json!([]), "helm lint errors");
    let mut docs = Vec::new();
    let mut notes = String::new();
    let manifests = answer["manifests"].as_object().expect("manifests");
    for (path, text) in manifests {
        let text = str_of(text);
        if path.ends_with("NOTES.txt") {
            notes = text.to_owned();
            continue;
        }
        let parsed: Vec<Value> = serde_saphyr::from_multiple(text)
            .unwrap_or_else(|e| panic!("{path} is not YAML: {e}\n{text}"));
        for doc in parsed.into_iter().filter(|d| !d.is_null()) {
            for key in ["apiVersion", "kind"] {
                assert!(doc[key].is_string(), "{path}: a document without {key}");
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{path}: a document without a name"
            );
            docs.push(doc);
        }
    }
    assert!(!notes.is_empty(), "NOTES.txt rendered nothing");
    Ok(Release { docs, notes })
}

fn render(python: &Path, values: &Value) -> Release {
    try_render(python, values).unwrap_or_else(|e| panic!("Helm refused {values}: {e}"))
}

/// `sub` ⊆ `of`, both label maps.
fn labels_within(sub: &Value, of: &Value) -> bool {
    let (Some(sub), Some(of)) = (sub.as_object(), of.as_object()) else {
        return false;
    };
    !sub.is_empty() && sub.iter().all(|(k, v)| of.get(k) == Some(v))
}

/// Checks every object: chart labels, namespaces, names, and the references between them.
fn check_consistency(r: &Release) {
    for d in &r.docs {
        let labels = &d["metadata"]["labels"];
        let what = format!("{} {}", d["kind"], d["metadata"]["name"]);
        assert_eq!(labels["app.kubernetes.io/name"], "runscale", "{what}");
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{what}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{what}");
        assert_eq!(
            labels["app.kubernetes.io/version"],
            env!("CARGO_PKG_VERSION"),
            "{what}: the chart's appVersion is runscale's version"
        );
        assert!(d["metadata"]["namespace"].is_string(), "{what}: namespace");
        let name = str_of(&d["metadata"]["name"]);
        assert!(
            name.len() <= 63 && name.starts_with(FULLNAME),
            "{what}: named after the release"
        );
    }
    let deployment = r.one("Deployment");
    assert_eq!(deployment["metadata"]["name"], FULLNAME);
    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    assert!(
        labels_within(selector, pod_labels),
        "the Deployment selects its own pods"
    );
    let service = r.named("Service", NAMESPACE, FULLNAME);
    assert!(
        labels_within(&service["spec"]["selector"], pod_labels),
        "the Service selects the pods"
    );
    for pdb in r.all("PodDisruptionBudget") {
        assert!(labels_within(
            &pdb["spec"]["selector"]["matchLabels"],
            pod_labels
        ));
    }
    // The service account exists and is the one bound to the Roles.
    let account = str_of(&pod["spec"]["serviceAccountName"]);
    r.named("ServiceAccount", NAMESPACE, account);
    let roles = r.all("Role");
    let bindings = r.all("RoleBinding");
    assert_eq!(roles.len(), bindings.len(), "one binding per Role");
    for b in &bindings {
        let ns = str_of(&b["metadata"]["namespace"]);
        assert_eq!(b["roleRef"]["kind"], "Role");
        assert_eq!(b["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
        r.named("Role", ns, str_of(&b["roleRef"]["name"]));
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]),
            "binding {ns}/{}",
            b["metadata"]["name"]
        );
    }
    // Volumes: every mount names a volume; the config comes from the chart's ConfigMap.
    let volumes: BTreeMap<&str, &Value> = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (str_of(&v["name"]), v))
        .collect();
    let container = r.container();
    for m in container["volumeMounts"].as_array().expect("mounts") {
        assert!(volumes.contains_key(str_of(&m["name"])), "mount {m}");
    }
    // The config comes from the chart's ConfigMap, unless runscale reads the environment.
    let file_mode = !r.all("ConfigMap").is_empty();
    if file_mode {
        assert_eq!(volumes["config"]["configMap"]["name"], FULLNAME);
        let config_mount = container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == "config")
            .expect("config mount");
        assert_eq!(config_mount["mountPath"], "/etc/runscale/config.yaml");
        assert!(r.args().contains(&"--config=/etc/runscale/config.yaml"));
        r.named("ConfigMap", NAMESPACE, FULLNAME);
    }
    // The container port is the Service's target, the probes' port and the config's listen.
    let ports = container["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["name"], "http");
    let port = ports[0]["containerPort"].as_u64().expect("port");
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], "http");
    assert_eq!(service_port["name"], "http");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    if file_mode {
        let (config, _) = runscale::config::parse_str(
            r.config_text(),
            Path::new("configmap/config.yaml"),
            |_| None,
        )
        .unwrap_or_else(|e| panic!("runscale cannot read the ConfigMap's config: {e}"));
        assert_eq!(
            config.listen.port() as u64,
            port,
            "runscale listens on the container port"
        );
        assert!(
            config.listen.ip().is_unspecified(),
            "listens on every interface"
        );
    } else {
        let listen = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "RUNSCALE_LISTEN")
            .map(|e| str_of(&e["value"]).to_owned());
        assert_eq!(
            listen,
            Some(format!("0.0.0.0:{port}")),
            "the environment's listen"
        );
    }
    // Hardening.
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert!(pod["spec"]["securityContext"]["runAsUser"].as_u64() > Some(0));
    assert!(container["resources"]["requests"].is_object());
    assert_eq!(
        pod["metadata"]["annotations"]["checksum/config"].is_string(),
        file_mode,
        "a config change rolls the pods"
    );
}

/// Every `--flag` the chart passes to `runscale run` exists in this binary.
fn check_flags_exist(r: &Release) {
    let help = run_bounded(Command::new(BIN).args(["run", "--help"]));
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let args = r.args();
    assert_eq!(args[0], "run");
    for arg in &args[1..] {
        let flag = arg.split('=').next().expect("flag");
        assert!(flag.starts_with("--"), "argument {arg}");
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "runscale run has no {flag}:\n{help}"
        );
    }
}

/// One permission: (API group, resource, verb).
type Permission = (String, String, String);

/// The permissions of `rbac-required.json` of the given scopes.
fn required(scopes: &[&str]) -> BTreeSet<Permission> {
    let text = std::fs::read_to_string(chart_dir().join("rbac-required.json")).expect("read");
    let fixture: Value = serde_json::from_str(&text).expect("rbac-required.json is JSON");
    let mut set = BTreeSet::new();
    for rule in fixture["rules"].as_array().expect("rules") {
        if !scopes.contains(&str_of(&rule["scope"])) {
            continue;
        }
        for verb in rule["verbs"].as_array().expect("verbs") {
            set.insert((
                str_of(&rule["apiGroup"]).to_owned(),
                str_of(&rule["resource"]).to_owned(),
                str_of(verb).to_owned(),
            ));
        }
    }
    assert!(!set.is_empty(), "no rule of scopes {scopes:?}");
    set
}

/// What the Roles in `namespace` grant. Wildcards are refused outright.
fn granted(r: &Release, namespace: &str) -> BTreeSet<Permission> {
    let mut set = BTreeSet::new();
    for role in r.all("Role") {
        if role["metadata"]["namespace"] != namespace {
            continue;
        }
        for rule in role["rules"].as_array().expect("rules") {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .unwrap_or_else(|| panic!("rule without {key}: {rule}"))
                    .iter()
                    .map(|v| str_of(v).to_owned())
                    .collect()
            };
            for (group, resource, verb) in
                product(&list("apiGroups"), &list("resources"), &list("verbs"))
            {
                assert!(
                    group != "*" && resource != "*" && verb != "*",
                    "wildcard in {rule}"
                );
                set.insert((group, resource, verb));
            }
        }
    }
    set
}

/// Fails unless `granted` is exactly `required`, naming what is missing and what is more.
fn assert_grants(granted: &BTreeSet<Permission>, required: &BTreeSet<Permission>, what: &str) {
    let missing: Vec<_> = required.difference(granted).collect();
    let beyond: Vec<_> = granted.difference(required).collect();
    assert!(
        missing.is_empty() && beyond.is_empty(),
        "{what}: the Roles must grant exactly rbac-required.json; missing {missing:?}, \
         beyond it {beyond:?}"
    );
}

/// The cartesian product of three lists.
fn product(a: &[String], b: &[String], c: &[String]) -> Vec<Permission> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            for z in c {
                out.push((x.clone(), y.clone(), z.clone()));
            }
        }
    }
    out
}

/// The leader election arguments and the pod name behind the identity.
fn check_leader_election(r: &Release, lease: &str) {
    let args = r.args();
    for expected in [
        "--leader-elect".to_owned(),
        format!("--leader-elect-lease-name={lease}"),
        "--leader-elect-namespace=$(POD_NAMESPACE)".to_owned(),
        "--leader-elect-identity=$(POD_NAME)".to_owned(),
    ] {
        assert!(args.contains(&expected.as_str()), "{expected} in {args:?}");
    }
    let env = r.container()["env"].as_array().expect("env");
    let field = |name: &str| {
        let var = env
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in env"));
        str_of(&var["valueFrom"]["fieldRef"]["fieldPath"]).to_owned()
    };
    assert_eq!(field("POD_NAME"), "metadata.name");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
    // The Lease's get and update are limited to the chart's Lease.
    let role = r.named("Role", NAMESPACE, &format!("{FULLNAME}-leader-election"));
    for rule in role["rules"].as_array().expect("rules") {
        let verbs = &rule["verbs"];
        if verbs
            .as_array()
            .expect("verbs")
            .iter()
            .any(|v| v == "create")
        {
            assert!(rule.get("resourceNames").is_none());
        } else {
            assert_eq!(rule["resourceNames"], json!([lease]));
        }
    }
}

/// The backend types this build of runscale has.
fn compiled_backends() -> Vec<String> {
    let out = run_bounded(Command::new(BIN).arg("version"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("backends:"))
        .map(|l| l.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default()
}

/// `runscale check` accepts the ConfigMap's configuration: it is valid (exit code not 2). The
/// probes fail here (the Secrets are not mounted, there is no cluster), which is exit code 1.
fn check_config_with_runscale(r: &Release) {
    let kubernetes = compiled_backends().iter().any(|b| b == "kubernetes");
    if runscale_core::testing::require(
        kubernetes.then_some(()),
        "the kubernetes backend in this build of runscale",
        "build with --all-features (scripts/test.sh does)",
    )
    .is_none()
    {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("config.yaml");
    std::fs::write(&path, r.config_text()).expect("write");
    let out = run_bounded(
        Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(&path)
            // No cluster may be reached from a test: no kubeconfig, not in a pod.
            .env("HOME", tmp.path())
            .env("KUBECONFIG", tmp.path().join("absent-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("RUNSCALE_CONFIG"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "runscale check rejects the chart's config:\n{stdout}{stderr}"
    );
    assert!(
        stdout.starts_with("configuration is valid: "),
        "{stdout}{stderr}"
    );
}

#[test]
fn default_values_render_a_consistent_release_with_leader_election() {
    let Some(python) = helm_python() else { return };
    let r = render(&python, &json!({}));
    assert_eq!(
        r.kinds(),
        BTreeMap::from(
            [
                ("ConfigMap", 1),
                ("Deployment", 1),
                ("PodDisruptionBudget", 1),
                ("Role", 2),
                ("RoleBinding", 2),
                ("Service", 1),
                ("ServiceAccount", 1),
            ]
            .map(|(k, n)| (k.to_owned(), n))
        ),
        "no ServiceMonitor or Ingress by default"
    );
    check_consistency(&r);
    check_flags_exist(&r);
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 2);
    check_leader_election(&r, FULLNAME);
    // Runner pods in the release namespace, the Lease too: both scopes' permissions there,
    // and exactly those.
    assert_grants(
        &granted(&r, NAMESPACE),
        &required(&["runners", "release"]),
        "default values",
    );
    // The credentials of the default config come from the existing Secret, as files.
    let volumes = &r.one("Deployment")["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["secret"]["secretName"] == "runscale-github"),
        "{volumes:#}"
    );
    assert!(
        r.config_text()
            .contains("/etc/runscale/secrets/github/private-key.pem")
    );
    assert!(r.notes.contains("runscale-github"), "{}", r.notes);
    check_config_with_runscale(&r);
}

#[test]
fn service_monitor_and_ingress_are_optional() {
    let Some(python) = helm_python() else { return };
    let r = render(
        &python,
        &json!({
            "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            "ingress": {"enabled": true, "host": "runscale.example.com", "className": "nginx"},
        }),
    );
    check_consistency(&r);
    let monitor = r.one("ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let service = r.one("Service");
    assert!(
        labels_within(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "the ServiceMonitor selects the Service"
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoints[0]["path"], "/metrics");
    // The Ingress exposes the webhooks and nothing else.
    let ingress = r.one("Ingress");
    let rules = ingress["spec"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["host"], "runscale.example.com");
    let paths = rules[0]["http"]["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0]["path"], "/webhooks/");
    assert_eq!(
        paths[0]["backend"]["service"]["name"],
        service["metadata"]["name"]
    );
    assert_eq!(paths[0]["backend"]["service"]["port"]["name"], "http");
}

#[test]
fn one_replica_without_leader_election_has_no_lease_permissions() {
    let Some(python) = helm_python() else { return };
    let r = render(
        &python,
        &json!({"replicaCount": 1, "leaderElection": {"enabled": false}}),
    );
    check_consistency(&r);
    check_flags_exist(&r);
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 1);
    assert!(
        !r.args().iter().any(|a| a.starts_with("--leader-elect")),
        "{:?}",
        r.args()
    );
    assert!(
        r.all("PodDisruptionBudget").is_empty(),
        "no PDB for one pod"
    );
    assert_eq!(r.all("Role").len(), 1);
    assert_grants(
        &granted(&r, NAMESPACE),
        &required(&["runners"]),
        "no leader election",
    );
}

#[test]
fn two_replicas_without_leader_election_are_refused() {
    let Some(python) = helm_python() else { return };
    let Err(e) = try_render(
        &python,
        &json!({"replicaCount": 2, "leaderElection": {"enabled": false}}),
    ) else {
        panic!("two replicas without leader election rendered");
    };
    assert!(e.contains("leaderElection.enabled"), "{e}");
}

#[test]
fn runner_roles_follow_the_backend_namespaces() {
    let Some(python) = helm_python() else { return };
    // A second kubernetes backend in another namespace, a third one in another cluster (its
    // own kubeconfig: no Role here), and a custom Lease name.
    let mut values = json!({
        "leaderElection": {"leaseName": "runscale-leader"},
        "config": {
            "backends": [
                {"name": "cluster", "type": "kubernetes", "namespace": "ci-runners"},
                {"name": "gpu", "type": "kubernetes", "namespace": "gpu-runners"},
                {"name": "elsewhere", "type": "kubernetes", "kubeconfig": "/etc/remote/kubeconfig"},
            ],
        },
    });
    let r = render(&python, &values);
    check_consistency(&r);
    check_leader_election(&r, "runscale-leader");
    let runners = required(&["runners"]);
    for ns in ["ci-runners", "gpu-runners"] {
        assert_grants(&granted(&r, ns), &runners, ns);
        r.named("RoleBinding", ns, &format!("{FULLNAME}-runners"));
    }
    assert_grants(
        &granted(&r, NAMESPACE),
        &required(&["release"]),
        "release namespace",
    );
    assert_eq!(r.all("Role").len(), 3);
    // The config lists three backends; the chart's values replace the default's whole list.
    let (config, _) =
        runscale::config::parse_str(r.config_text(), Path::new("config.yaml"), |_| None)
            .expect("parse");
    assert_eq!(config.backends.len(), 3);

    // A config given as text is used verbatim; the runner namespaces are then named.
    let text = "listen: 0.0.0.0:9090\nproviders: []\nbackends: []\npools: []\n";
    values = json!({"config": text, "rbac": {"runnerNamespaces": ["builds"]}});
    let r = render(&python, &values);
    check_consistency(&r);
    assert_eq!(r.config_text(), text);
    assert_grants(&granted(&r, "builds"), &runners, "rbac.runnerNamespaces");
}

/// `mode: environment` (circleci-runner-autoscaler users): no configuration file, the seed's
/// `APP_*` variables and token Secret as given, the HTTP address the Service expects, the
/// runner Role in the seed's namespace with every permission the CronJob → Job path needs, and
/// leader election through the same flags.
#[test]
fn environment_mode_runs_without_a_config_file_with_the_seed_variables() {
    let Some(python) = helm_python() else { return };
    let r = render(
        &python,
        &json!({
            "mode": "environment",
            "secretMounts": [],
            "extraEnv": [
                {"name": "APP_CIRCLE_RESOURCE_NAMESPACE", "value": "vela-games"},
                {"name": "APP_KUBERNETES_NAMESPACE", "value": "circleci-runners"},
            ],
            "secretEnv": [{"name": "APP_CIRCLE_TOKEN", "secretName": "circleci-runner-autoscaler",
                "key": "APP_CIRCLE_TOKEN"}],
        }),
    );
    check_consistency(&r);
    check_flags_exist(&r);
    assert!(r.all("ConfigMap").is_empty(), "no configuration file");
    assert!(
        !r.args().iter().any(|a| a.starts_with("--config")),
        "{:?}",
        r.args()
    );
    check_leader_election(&r, FULLNAME);
    let container = &r.one("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().expect("env");
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {env:#?}"))
            .clone()
    };
    assert_eq!(value("RUNSCALE_LISTEN")["value"], "0.0.0.0:9090");
    assert_eq!(
        value("APP_CIRCLE_RESOURCE_NAMESPACE")["value"],
        "vela-games"
    );
    assert_eq!(
        value("APP_CIRCLE_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
        "circleci-runner-autoscaler"
    );
    assert!(
        !container["volumeMounts"]
            .to_string()
            .contains("/etc/runscale/config.yaml")
    );
    assert_grants(
        &granted(&r, "circleci-runners"),
        &required(&["runners"]),
        "the seed's namespace",
    );
    assert_grants(
        &granted(&r, NAMESPACE),
        &required(&["release"]),
        "release namespace",
    );
    // Anything else is refused.
    let Err(e) = try_render(&python, &json!({"mode": "file"})) else {
        panic!("mode: file was accepted")
    };
    assert!(e.contains("mode must be config or environment"), "{e}");
}
