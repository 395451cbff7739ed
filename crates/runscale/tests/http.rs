//! The HTTP router without a socket (`tower::ServiceExt::oneshot`), backed by a real reconciler
//! over the in-memory CI system and backend of `runscale_core::testing`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use prometheus_client::registry::Registry;
use runscale::http::{AppState, OPENMETRICS_CONTENT_TYPE, WEBHOOK_BODY_LIMIT, router};
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
use runscale_core::testing::{World, WorldConfig};
use runscale_core::{ErrorKind, PoolSpec, TokioClock};
use serde_json::Value;
use tower::ServiceExt as _;

/// Two pools on two in-memory CI systems ("ci" and "flaky"), sharing one backend world each.
struct Fixture {
    reconciler: Reconciler,
    app: Router,
    world: Arc<World>,
    flaky: Arc<World>,
}

fn fixture() -> Fixture {
    let clock = Arc::new(TokioClock::starting_at(chrono::Utc::now()));
    let world = World::new(clock.clone(), WorldConfig::default());
    let flaky = World::new(clock.clone(), WorldConfig::default());
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let pools = vec![
        PoolBinding {
            spec: PoolSpec::test("linux").max(5).min_idle(1),
            provider_name: "ci".to_owned(),
            provider: world.provider(),
            backend_name: "mem".to_owned(),
            backend: world.backend(),
        },
        PoolBinding {
            spec: PoolSpec::test("arm").max(2),
            provider_name: "flaky".to_owned(),
            provider: flaky.provider(),
            backend_name: "mem-flaky".to_owned(),
            backend: flaky.backend(),
        },
    ];
    let reconciler = Reconciler::new(pools, clock, metrics, Options::default());
    let app = router(AppState {
        handle: reconciler.handle(),
        registry: Arc::new(registry),
    });
    Fixture {
        reconciler,
        app,
        world,
        flaky,
    }
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, Vec<u8>) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
        .await
        .expect("body");
    (status, content_type, body.to_vec())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

fn post(path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).expect("request")
}

#[tokio::test]
async fn healthz_is_always_ok_and_readyz_waits_for_a_pass() {
    let f = fixture();
    let (status, _, body) = send(&f.app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"ok");
    let (status, _, _) = send(&f.app, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    f.reconciler.once().await;
    let (status, _, _) = send(&f.app, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn pools_api_shows_limits_observation_plan_error_and_next_pass() {
    let f = fixture();
    f.world.enqueue("linux", 2, Duration::from_secs(60));
    f.flaky.fail_next("observe", 1, ErrorKind::Transient);
    f.reconciler.once().await;

    let (status, content_type, body) = send(&f.app, get("/api/v1/pools")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let pools: Value = serde_json::from_slice(&body).expect("JSON");
    let pools = pools.as_array().expect("array");
    assert_eq!(pools.len(), 2);

    let linux = &pools[0];
    assert_eq!(linux["pool"], "linux");
    assert_eq!(linux["provider"], "ci");
    assert_eq!(linux["backend"], "mem");
    assert_eq!(linux["limits"]["max"], 5);
    assert_eq!(linux["limits"]["min_idle"], 1);
    assert_eq!(linux["limits"]["max_booting"], 5);
    assert_eq!(linux["last_observation"]["waiting"], 2);
    // Two waiting jobs plus one warm runner: three launches, with their reason.
    let actions = linux["last_plan"]["actions"].as_array().expect("actions");
    let launched: u64 = actions
        .iter()
        .filter(|a| a["action"]["type"] == "launch")
        .map(|a| a["action"]["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(launched, 3, "{actions:?}");
    let reasons: Vec<&str> = actions
        .iter()
        .map(|a| a["reason"].as_str().expect("reason"))
        .collect();
    assert!(reasons.contains(&"demand"), "{reasons:?}");
    assert_eq!(linux["last_plan"]["desired_instances"], 3);
    assert!(linux["last_error"].is_null());
    assert!(linux["next_pass_at"].is_string(), "{linux}");
    assert_eq!(linux["passes"], 1);
    // Read afresh just now: its age is known and it is not stale.
    assert_eq!(linux["last_observation"]["stale"], false, "{linux}");
    assert!(linux["last_observation"]["view_at"].is_string(), "{linux}");
    assert!(
        linux["view_age_secs"].as_f64().is_some_and(|a| a < 5.0),
        "{linux}"
    );
    assert_eq!(linux["stale"], false, "{linux}");

    let arm = &pools[1];
    // Never read: nothing is known, and the pool says so.
    assert!(arm["view_age_secs"].is_null(), "{arm}");
    assert_eq!(arm["stale"], true, "{arm}");
    assert_eq!(arm["pool"], "arm");
    assert_eq!(arm["last_error"]["kind"], "transient");
    assert!(arm["last_error"]["message"].is_string());
    assert_eq!(arm["consecutive_failures"], 1);
    assert!(arm["last_plan"].is_null());
    assert!(arm["next_pass_at"].is_string(), "{arm}");
}

#[tokio::test]
async fn metrics_are_strict_openmetrics() {
    let f = fixture();
    f.world.enqueue("linux", 1, Duration::from_secs(60));
    f.flaky.fail_next("observe", 1, ErrorKind::Transient);
    f.reconciler.once().await;

    let (status, content_type, body) = send(&f.app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
    let text = String::from_utf8(body).expect("UTF-8");
    let families = openmetrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let family = |name: &str| {
        families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name}:\n{text}"))
    };
    let pass = family("runscale_pass_duration_seconds");
    assert_eq!(pass.kind, "histogram");
    assert!(!pass.help.is_empty());
    let count = pass
        .samples
        .iter()
        .find(|s| s.name == "runscale_pass_duration_seconds_count")
        .expect("count");
    assert_eq!(count.value, 2.0);

    let desired = family("runscale_desired_instances");
    assert_eq!(desired.kind, "gauge");
    let linux = desired
        .samples
        .iter()
        .find(|s| s.label("pool") == Some("linux"))
        .expect("linux sample");
    // One waiting job plus one warm runner.
    assert_eq!(linux.value, 2.0);

    let failures = family("runscale_pass_failures");
    assert_eq!(failures.kind, "counter");
    let arm = failures
        .samples
        .iter()
        .find(|s| s.name == "runscale_pass_failures_total" && s.label("pool") == Some("arm"))
        .expect("arm failure");
    assert_eq!(arm.label("kind"), Some("transient"));
    assert_eq!(arm.value, 1.0);

    let requests = family("runscale_api_requests");
    assert!(
        requests
            .samples
            .iter()
            .any(|s| s.label("account") == Some("ci") && s.label("op") == Some("observe")),
        "{text}"
    );
}

#[tokio::test]
async fn webhooks_wake_pools_and_reject_bad_deliveries_without_echoing_them() {
    let f = fixture();
    let marker = "body-marker-7f3a";

    let (status, _, body) = send(
        &f.app,
        post(
            "/webhooks/ci",
            &[("x-memory-signature", "valid")],
            "linux\nnot-a-pool\n",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(v, serde_json::json!({"woke": ["linux"]}));

    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Vec<u8>,
        StatusCode,
    );
    let cases: [Case; 3] = [
        (
            "/webhooks/nobody",
            &[("x-memory-signature", "valid")],
            marker.as_bytes().to_vec(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/webhooks/ci",
            &[("x-memory-signature", "forged")],
            marker.as_bytes().to_vec(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/webhooks/ci",
            &[("x-memory-signature", "valid")],
            [marker.as_bytes(), &[0xff, 0xfe]].concat(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, headers, body, expected) in cases {
        let (status, _, answer) = send(&f.app, post(path, headers, body)).await;
        assert_eq!(status, expected, "{path}");
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains(marker), "{path} echoed the body: {answer}");
        let v: Value = serde_json::from_str(&answer).expect("JSON error");
        assert!(v["error"].is_string(), "{answer}");
    }

    // Every delivery is counted by outcome; a path naming no provider is not a label value.
    let (_, _, metrics) = send(&f.app, get("/metrics")).await;
    let metrics = String::from_utf8(metrics).expect("UTF-8");
    for line in [
        r#"runscale_webhook_deliveries_total{provider="ci",outcome="accepted"} 1"#,
        r#"runscale_webhook_deliveries_total{provider="",outcome="unknown_provider"} 1"#,
        r#"runscale_webhook_deliveries_total{provider="ci",outcome="unauthenticated"} 1"#,
        r#"runscale_webhook_deliveries_total{provider="ci",outcome="malformed"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(!metrics.contains("nobody"), "{metrics}");
}

#[tokio::test]
async fn webhook_bodies_over_one_mebibyte_are_refused() {
    let f = fixture();
    let big = vec![b'a'; WEBHOOK_BODY_LIMIT + 1];
    let (status, _, answer) = send(
        &f.app,
        post("/webhooks/ci", &[("x-memory-signature", "valid")], big),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.len() < 1024);

    // Also when the sender does not announce the length (chunked).
    let stream =
        futures::stream::iter((0..17).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 64 * 1024])));
    let (status, _, _) = send(
        &f.app,
        post(
            "/webhooks/ci",
            &[("x-memory-signature", "valid")],
            Body::from_stream(stream),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Exactly the limit is accepted (and parsed by the provider).
    let mut ok = vec![b' '; WEBHOOK_BODY_LIMIT];
    ok[..5].copy_from_slice(b"linux");
    let (status, _, _) = send(
        &f.app,
        post("/webhooks/ci", &[("x-memory-signature", "valid")], ok),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_refused() {
    let f = fixture();
    let (status, _, _) = send(&f.app, get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(&f.app, get("/webhooks/ci")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn the_openmetrics_parser_is_strict() {
    let good = "# HELP a Things.\n# TYPE a counter\na_total{x=\"1\"} 3\n# TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n# EOF\n";
    let families = openmetrics::parse(good).expect("valid");
    assert_eq!(families.len(), 2);
    assert_eq!(families[0].name, "a");
    assert_eq!(families[0].samples[0].label("x"), Some("1"));
    for (bad, why) in [
        (good.replace("# EOF\n", ""), "no EOF"),
        (good.replace("# EOF\n", "# EOF\nx 1\n"), "data after EOF"),
        (
            good.replace("a_total{x=\"1\"} 3", "a_total{x=1} 3"),
            "unquoted label",
        ),
        (
            good.replace("a_total{x=\"1\"} 3", "a_total{x=\"1\"}"),
            "no value",
        ),
        (
            good.replace("a_total{x=\"1\"} 3", "a_total{x=\"1\"} three"),
            "bad value",
        ),
        (
            good.replace("a_total{x=\"1\"} 3", "b_total 3"),
            "sample of another family",
        ),
        (
            good.replace("# TYPE a counter", "# TYPE a countr"),
            "bad type",
        ),
        (
            good.replace("h_count 2", "h_count 3"),
            "count differs from +Inf bucket",
        ),
        (
            good.replace("h_bucket{le=\"+Inf\"} 2\n", ""),
            "no +Inf bucket",
        ),
        (
            good.replace("h_bucket{le=\"+Inf\"} 2", "h_bucket{le=\"+Inf\"} 0"),
            "decreasing buckets",
        ),
        (
            good.replace("# TYPE h histogram\n", "\n# TYPE h histogram\n"),
            "blank line",
        ),
        (
            good.replacen("# TYPE h histogram", "# TYPE a gauge", 1),
            "family twice",
        ),
    ] {
        assert!(openmetrics::parse(&bad).is_err(), "accepted: {why}\n{bad}");
    }
}

/// A small strict parser of the OpenMetrics text format (the subset prometheus-client emits:
/// counters, gauges, histograms, info; no exemplars or timestamps expected).
mod openmetrics {
    /// One metric family.
    #[derive(Debug)]
    pub struct Family {
        pub name: String,
        pub kind: String,
        pub help: String,
        pub samples: Vec<Sample>,
    }

    /// One sample line.
    #[derive(Debug)]
    pub struct Sample {
        pub name: String,
        pub labels: Vec<(String, String)>,
        pub value: f64,
    }

    impl Sample {
        pub fn label(&self, name: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn is_metric_name(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn is_label_name(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s
                .parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}")),
            _ => Err(format!("bad value {s:?}")),
        }
    }

    fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
        let mut labels: Vec<(String, String)> = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("label without '=': {s}"))?;
            let name = &rest[..eq];
            if !is_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("label value not quoted: {s}"))?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {s}")),
                    },
                    Some((_, '\n')) | None => return Err(format!("unterminated label value: {s}")),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.iter().any(|(k, _)| k == name) {
                return Err(format!("label {name} repeated"));
            }
            labels.push((name.to_owned(), value));
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
                if rest.is_empty() {
                    return Err(format!("trailing comma in {s}"));
                }
            } else if !rest.is_empty() {
                return Err(format!("expected ',' between labels: {s}"));
            }
        }
        Ok(labels)
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let (name, labels, rest) = match line.find('{') {
            Some(open) if line[..open].find(' ').is_none() => {
                let close = line
                    .rfind('}')
                    .ok_or_else(|| format!("unclosed '{{': {line}"))?;
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close])?,
                    &line[close + 1..],
                )
            }
            _ => {
                let sp = line.find(' ').ok_or_else(|| format!("no value: {line}"))?;
                (&line[..sp], Vec::new(), &line[sp..])
            }
        };
        if !is_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no value: {line}"))?;
        let mut parts = rest.split(' ');
        let value = parse_value(parts.next().unwrap_or(""))?;
        if let Some(ts) = parts.next() {
            parse_value(ts).map_err(|e| format!("bad timestamp: {e}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("unexpected text after the value: {line}"));
        }
        Ok(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    fn suffixes(kind: &str) -> &'static [&'static str] {
        match kind {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" => &[""],
            "histogram" | "gaugehistogram" => {
                &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"]
            }
            "summary" => &["", "_count", "_sum", "_created"],
            "info" => &["_info"],
            "stateset" => &[""],
            _ => &[],
        }
    }

    fn check_histogram(f: &Family) -> Result<(), String> {
        // Group buckets by their labels other than `le`.
        let key = |s: &Sample| {
            let mut l: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            l.sort();
            l
        };
        type Labels = Vec<(String, String)>;
        let mut groups: Vec<(Labels, Vec<&Sample>)> = Vec::new();
        for s in f.samples.iter().filter(|s| s.name.ends_with("_bucket")) {
            let k = key(s);
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, v)) => v.push(s),
                None => groups.push((k, vec![s])),
            }
        }
        if groups.is_empty() {
            return Err(format!("histogram {} has no buckets", f.name));
        }
        for (labels, buckets) in groups {
            let mut last_le = f64::NEG_INFINITY;
            let mut last_count = 0.0;
            for b in &buckets {
                let le = parse_value(b.label("le").ok_or("bucket without le")?)?;
                if le <= last_le {
                    return Err(format!("{}: le not increasing", f.name));
                }
                if b.value < last_count {
                    return Err(format!("{}: bucket counts decrease", f.name));
                }
                last_le = le;
                last_count = b.value;
            }
            if last_le != f64::INFINITY {
                return Err(format!("{}: no +Inf bucket", f.name));
            }
            let count = f
                .samples
                .iter()
                .find(|s| s.name.ends_with("_count") && key(s) == labels)
                .ok_or_else(|| format!("{}: no _count", f.name))?;
            if count.value != last_count {
                return Err(format!("{}: _count differs from the +Inf bucket", f.name));
            }
        }
        Ok(())
    }

    /// Parses an exposition; any deviation from the format is an error.
    pub fn parse(text: &str) -> Result<Vec<Family>, String> {
        let body = text
            .strip_suffix("# EOF\n")
            .or_else(|| text.strip_suffix("# EOF"))
            .ok_or("does not end with \"# EOF\"")?;
        let mut families: Vec<Family> = Vec::new();
        for line in body.lines() {
            if line.is_empty() {
                return Err("blank line".to_owned());
            }
            if let Some(meta) = line.strip_prefix("# ") {
                let mut parts = meta.splitn(3, ' ');
                let (keyword, name, rest) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next(),
                );
                if !is_metric_name(name) {
                    return Err(format!("bad family name in {line:?}"));
                }
                let current = match families.last_mut() {
                    Some(f) if f.name == name && f.samples.is_empty() => f,
                    _ => {
                        if families.iter().any(|f| f.name == name) {
                            return Err(format!("family {name} appears twice"));
                        }
                        families.push(Family {
                            name: name.to_owned(),
                            kind: "unknown".to_owned(),
                            help: String::new(),
                            samples: Vec::new(),
                        });
                        families.last_mut().ok_or("no family")?
                    }
                };
                match (keyword, rest) {
                    ("HELP", Some(help)) => current.help = help.to_owned(),
                    ("TYPE", Some(kind)) if !suffixes(kind).is_empty() => {
                        current.kind = kind.to_owned()
                    }
                    ("UNIT", Some(_)) => {}
                    _ => return Err(format!("bad metadata line {line:?}")),
                }
                continue;
            }
            if line.starts_with('#') {
                return Err(format!("bad comment line {line:?}"));
            }
            let sample = parse_sample(line)?;
            let family = families
                .last_mut()
                .ok_or_else(|| format!("sample before any family: {line}"))?;
            let suffix = sample
                .name
                .strip_prefix(family.name.as_str())
                .ok_or_else(|| format!("{} is not of family {}", sample.name, family.name))?;
            if !suffixes(&family.kind).contains(&suffix) {
                return Err(format!(
                    "{} is not a valid sample of {} {}",
                    sample.name, family.kind, family.name
                ));
            }
            if family
                .samples
                .iter()
                .any(|s| s.name == sample.name && s.labels == sample.labels)
            {
                return Err(format!("duplicate sample {line}"));
            }
            family.samples.push(sample);
        }
        for f in &families {
            if f.kind == "histogram" && !f.samples.is_empty() {
                check_histogram(f)?;
            }
        }
        Ok(families)
    }
}

/// Serves the fixture's router on a loopback socket with small limits; returns its address.
async fn serve_with(
    limits: runscale::server::ServerLimits,
) -> (
    Fixture,
    std::net::SocketAddr,
    runscale::server::ServerMetrics,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let f = fixture();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let metrics = runscale::server::ServerMetrics::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(runscale::server::serve(
        listener,
        f.app.clone(),
        limits,
        metrics.clone(),
        stop.clone(),
    ));
    (f, addr, metrics, stop, task)
}

/// Reads until the peer closes the connection (or 10 s pass: the test then fails); returns
/// what was read.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open; read so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

#[tokio::test]
async fn the_server_closes_slow_and_idle_connections_and_caps_their_number() {
    use tokio::io::AsyncWriteExt as _;
    let limits = runscale::server::ServerLimits {
        max_connections: 3,
        header_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
    };
    let (_f, addr, metrics, stop, task) = serve_with(limits).await;
    let connect = || tokio::net::TcpStream::connect(addr);

    // Slow-loris: half a request's headers, then nothing. The connection is closed.
    let mut slow = connect().await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    read_until_closed(&mut slow).await;

    // A connection that never sends anything is closed too.
    let mut silent = connect().await.expect("connect");
    read_until_closed(&mut silent).await;

    // A body that never comes: 408 once the request's time is up.
    let mut body = connect().await.expect("connect");
    body.write_all(b"POST /webhooks/ci HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nlinux")
        .await
        .expect("write");
    let answer = String::from_utf8_lossy(&read_until_closed(&mut body).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(metrics.timed_out.get(), 1);

    // Three connections hold every slot; a fourth is closed at once without an answer, and
    // counted. Once the three are gone, a request is served again.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect().await.expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        held.push(c);
    }
    // The server has accepted the three when it reports them open.
    for _ in 0..100 {
        if metrics.open.get() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.open.get(), 3);
    let mut refused = connect().await.expect("the kernel accepts the connection");
    assert!(read_until_closed(&mut refused).await.is_empty());
    assert_eq!(metrics.refused.get(), 1);
    for mut c in held {
        read_until_closed(&mut c).await;
    }
    let mut ok = connect().await.expect("connect");
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = String::from_utf8_lossy(&read_until_closed(&mut ok).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server stops")
        .expect("task")
        .expect("serve");
}
