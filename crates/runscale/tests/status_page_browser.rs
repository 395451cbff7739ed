//! The status page in a real browser: headless Debian Chromium loads `/` from the HTTP service
//! served on 127.0.0.1, and the DOM it prints (`--dump-dom`, after scripts ran for a budget of
//! virtual time) must show the daemon's state: every pool with its waiting / booting / idle /
//! busy counts and status, every recent action with its reason, and the GitHub API budget.
//! A second run lets the page's own script refresh it after the state changed underneath, and
//! the refreshed DOM must show the new state.
//!
//! Pools: three on the in-memory CI system and backend of `runscale_core::testing`, one on the
//! GitHub provider against the GitHub emulator (the source of the rate-limit budget).
//!
//! Chromium comes from `RUNSCALE_CHROMIUM` (set by `scripts/test.sh`) or `/usr/bin/chromium`.
//! Without it the test prints a note and passes, unless `CI` is set.
#![cfg(feature = "provider-github")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::registry::Registry;
use runscale::http::{AppState, router};
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{Handle, Options, PoolBinding, PoolStatus, Reconciler};
use runscale_core::testing::{World, WorldConfig};
use runscale_core::{ErrorKind, PoolId, PoolSpec, TokioClock};
use runscale_emulator::github::{
    Emulator, EmulatorConfig, EmulatorHandle, JobSpec, OwnerConfig, OwnerKind,
};
use runscale_providers::github::{Config, GithubProvider, PoolSelector};
use secrecy::SecretString;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

/// Longest one Chromium run may take before it is killed (it normally takes about a second;
/// the machine is shared with other test binaries).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// Jobs outlast the test.
const HOUR: Duration = Duration::from_secs(3600);
const TOKEN: &str = "ghp_status_page_token";
/// The GitHub budget the emulator starts with.
const START_BUDGET: u64 = 1000;

/// The Chromium to use (`RUNSCALE_CHROMIUM`, else `/usr/bin/chromium`). Without it the test
/// fails, or skips under `RUNSCALE_ALLOW_SKIP=1` (then this is `None`).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("RUNSCALE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let what = format!("Chromium at {}", path.display());
    runscale_core::testing::require(
        path.is_file().then_some(path),
        &what,
        "install Debian's chromium (scripts/test.sh does) or set RUNSCALE_CHROMIUM",
    )
}

/// Runs headless Chromium on `url` and returns the DOM it printed after `budget` of virtual
/// time. The browser gets a fresh profile and home in a temporary directory and is killed by
/// PID if it outlives [`BROWSER_TIMEOUT`].
async fn dump_dom(chromium: &Path, url: &str, budget: Duration) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("chromium.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg(url)
        // Nothing lands in the real home directory.
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let mut stdout = child.stdout.take().expect("stdout");
    let run = async {
        let mut dom = String::new();
        let read = stdout.read_to_string(&mut dom);
        let (read, status) = tokio::join!(read, child.wait());
        (read.map(|_| dom), status)
    };
    let outcome = tokio::time::timeout(BROWSER_TIMEOUT, run).await;
    let log_tail = || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    let Ok((dom, status)) = outcome else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        panic!(
            "chromium did not finish within {BROWSER_TIMEOUT:?}; log:\n{}",
            log_tail()
        );
    };
    let status = status.expect("wait for chromium");
    assert!(
        status.success(),
        "chromium exited with {status}; log:\n{}",
        log_tail()
    );
    let dom = dom.expect("chromium's output is UTF-8");
    assert!(
        dom.contains("</html>"),
        "chromium printed no document:\n{dom}\nlog:\n{}",
        log_tail()
    );
    dom
}

/// Decodes the entities the page and Chromium's serializer produce.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The text of an HTML fragment: tags dropped, entities decoded, whitespace trimmed.
fn text(fragment: &str) -> String {
    let mut out = String::with_capacity(fragment.len());
    let mut in_tag = false;
    for c in fragment.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(out.trim())
}

/// The contents of every `<tag ...>...</tag>` element in `html` (not nested in each other).
fn elements<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        // `<th` must not match `<thead`.
        if !after.starts_with(['>', ' ']) {
            rest = after;
            continue;
        }
        let Some(gt) = after.find('>') else { break };
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// A table of the page by id, as rows of column name → cell text.
fn table(dom: &str, id: &str) -> Vec<BTreeMap<String, String>> {
    let marker = format!("<table id=\"{id}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no table {id} in the DOM:\n{dom}"));
    let html = &dom[start..];
    let html = &html[..html.find("</table>").expect("table closes")];
    let head = elements(html, "thead");
    let columns: Vec<String> = elements(head.first().expect("thead"), "th")
        .into_iter()
        .map(text)
        .collect();
    let body = elements(html, "tbody");
    elements(body.first().expect("tbody"), "tr")
        .into_iter()
        .map(|row| {
            let cells: Vec<String> = elements(row, "td").into_iter().map(text).collect();
            assert_eq!(cells.len(), columns.len(), "row of {id}: {row}");
            columns.iter().cloned().zip(cells).collect()
        })
        .collect()
}

/// The budgets line (`API budget left: account N, ...`) as account → budget; empty if absent.
fn budgets(dom: &str) -> Vec<(String, u64)> {
    let Some(start) = dom.find("id=\"budgets\"") else {
        return Vec::new();
    };
    let html = &dom[start..];
    let line = text(&html[html.find('>').expect("tag") + 1..html.find("</div>").expect("div")]);
    let list = line
        .strip_prefix("API budget left:")
        .unwrap_or_else(|| panic!("budgets line: {line}"));
    list.split(',')
        .map(|entry| {
            let (account, left) = entry.trim().rsplit_once(' ').expect("account and budget");
            (
                account.to_owned(),
                left.parse().expect("budget is a number"),
            )
        })
        .collect()
}

/// One pool row as the browser shows it.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    waiting: u32,
    booting: u32,
    idle: u32,
    busy: u32,
}

/// Checks the rendered page against the daemon's state and returns each pool's counts and
/// status text as shown.
fn check_page(dom: &str, handle: &Handle) -> BTreeMap<String, (Counts, String)> {
    let status = handle.status();
    let rows = table(dom, "pools");
    assert_eq!(rows.len(), status.len(), "one row per pool");
    let mut shown = BTreeMap::new();
    for (row, pool) in rows.iter().zip(&status) {
        let name = pool.pool.as_str();
        assert_eq!(row["pool"], name, "pools in configuration order");
        assert_eq!(row["provider"], pool.provider);
        assert_eq!(row["backend"], pool.backend);
        let num = |column: &str| -> u32 {
            row[column]
                .parse()
                .unwrap_or_else(|e| panic!("{name} {column} {:?}: {e}", row[column]))
        };
        let counts = Counts {
            waiting: num("waiting"),
            booting: num("booting"),
            idle: num("idle"),
            busy: num("busy"),
        };
        let o = pool.last_observation.clone().expect("observed");
        let daemon = Counts {
            waiting: o.waiting,
            booting: o.instances_booting,
            idle: o.runners_idle,
            busy: o.runners_busy,
        };
        assert_eq!(counts, daemon, "pool {name}: page vs daemon");
        assert_eq!(
            row["min idle / max"],
            format!("{} / {}", pool.limits.min_idle, pool.limits.max)
        );
        shown.insert(name.to_owned(), (counts, row["status"].clone()));
    }
    check_actions(dom, &status);
    assert_eq!(budgets(dom), handle.budgets(), "budget: page vs daemon");
    shown
}

/// Every recent action of the daemon is a row of the actions table, newest first, with its
/// reason and outcome.
fn check_actions(dom: &str, status: &[PoolStatus]) {
    let shown: Vec<Vec<String>> = table(dom, "actions")
        .into_iter()
        .map(|r| {
            ["time", "pool", "action", "reason", "target", "outcome"]
                .iter()
                .map(|c| r[*c].clone())
                .collect()
        })
        .collect();
    let mut daemon: Vec<(chrono::DateTime<chrono::Utc>, Vec<String>)> = status
        .iter()
        .flat_map(|p| {
            p.recent_actions.iter().map(move |a| {
                (
                    a.at,
                    vec![
                        a.at.format("%H:%M:%S").to_string(),
                        p.pool.to_string(),
                        a.action.to_owned(),
                        a.reason.to_owned(),
                        a.target.clone(),
                        a.outcome.to_owned(),
                    ],
                )
            })
        })
        .collect();
    daemon.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    // Same time: any order.
    let key = |rows: &[Vec<String>]| {
        let mut v = rows.to_vec();
        v.sort();
        v
    };
    let daemon: Vec<Vec<String>> = daemon.into_iter().map(|(_, r)| r).collect();
    assert_eq!(key(&shown), key(&daemon), "actions: page vs daemon");
    let times: Vec<&String> = shown.iter().map(|r| &r[0]).collect();
    let newest_first: Vec<&String> = daemon.iter().map(|r| &r[0]).collect();
    assert_eq!(times, newest_first, "actions newest first");
}

/// Launch rows of the actions table for `pool`, by reason.
fn launches(dom: &str, pool: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for row in table(dom, "actions") {
        if row["pool"] == pool && row["action"] == "launch" {
            assert_eq!(row["outcome"], "ok", "{row:?}");
            *out.entry(row["reason"].clone()).or_default() += 1;
        }
    }
    out
}

/// Page loads seen by the server: by navigation, and by the page's own refresh script.
#[derive(Clone, Default)]
struct Loads {
    navigations: Arc<AtomicUsize>,
    refreshes: Arc<AtomicUsize>,
}

/// What the server does on the page's first script refresh, once: the state changes.
#[derive(Clone)]
struct OnRefresh {
    loads: Loads,
    done: Arc<tokio::sync::OnceCell<()>>,
    reconciler: Arc<Reconciler>,
    fast: Arc<World>,
    slow: Arc<World>,
}

/// Counts page loads; a load by script (its `Sec-Fetch-Mode` is not `navigate`) first changes
/// the state: four jobs for `warm` (two taken at once by its idle runners), a failing
/// observation for `arm`, and a pass.
async fn count_loads(State(on): State<OnRefresh>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/" {
        let by_script = request
            .headers()
            .get("sec-fetch-mode")
            .is_some_and(|m| m != "navigate");
        if by_script {
            on.loads.refreshes.fetch_add(1, Ordering::SeqCst);
            on.done
                .get_or_init(|| async {
                    on.fast.enqueue("warm", 4, HOUR);
                    on.slow.fail_next("observe", 1, ErrorKind::Transient);
                    on.reconciler.once().await;
                })
                .await;
        } else {
            on.loads.navigations.fetch_add(1, Ordering::SeqCst);
        }
    }
    next.run(request).await
}

async fn github_emulator() -> EmulatorHandle {
    let owner = OwnerConfig {
        login: "acme".into(),
        kind: OwnerKind::Organization,
        repos: vec!["app".into()],
        runner_groups: Vec::new(),
    };
    let mut config = EmulatorConfig::new(vec![owner], vec![SecretString::from(TOKEN)]);
    config.rate_limit.start_remaining = Some(START_BUDGET as u32);
    Emulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts")
}

fn github_provider(emu: &EmulatorHandle, secrets: &Path) -> GithubProvider {
    let token = secrets.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    let config: Config = serde_json::from_value(serde_json::json!({
        "api_url": emu.base_url(),
        "org": "acme",
        "auth": {"token": {"file": token}},
        "repositories": ["app"],
        "request_timeout": "10s",
    }))
    .expect("config");
    let selector = PoolSelector {
        labels: vec!["linux".into(), "gpu".into()],
        repository: None,
        runner_group_id: None,
        ephemeral: true,
    };
    GithubProvider::new(config, vec![(PoolId::new("gpu"), selector)]).expect("provider")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_pools_actions_and_budget_and_refreshes_itself() {
    let Some(chromium) = chromium() else {
        return;
    };
    let started = Instant::now();

    // "fast" instances boot at once; "slow" ones stay booting for the whole test. Timeouts are
    // an hour, so a slow machine changes nothing between passes.
    let clock = Arc::new(TokioClock::starting_at(chrono::Utc::now()));
    let fast = World::new(
        clock.clone(),
        WorldConfig {
            boot_delay: Duration::ZERO,
            ..WorldConfig::default()
        },
    );
    let slow = World::new(
        clock.clone(),
        WorldConfig {
            boot_delay: HOUR,
            ..WorldConfig::default()
        },
    );
    let emu = github_emulator().await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let github = Arc::new(github_provider(&emu, secrets.path()));
    let binding = |spec: PoolSpec, world: &Arc<World>, backend: &str| PoolBinding {
        spec,
        provider_name: "memory".to_owned(),
        provider: world.provider(),
        backend_name: backend.to_owned(),
        backend: world.backend(),
    };
    let pools = vec![
        binding(PoolSpec::test("linux").max(3), &fast, "mem-fast"),
        binding(
            PoolSpec::test("warm").max(6).min_idle(2).idle_timeout(HOUR),
            &fast,
            "mem-fast",
        ),
        PoolBinding {
            provider_name: "memory-slow".to_owned(),
            ..binding(
                PoolSpec::test("arm").max(4).boot_timeout(HOUR),
                &slow,
                "mem-slow",
            )
        },
        PoolBinding {
            spec: PoolSpec::test("gpu").max(2).boot_timeout(HOUR),
            provider_name: "github".to_owned(),
            provider: github,
            backend_name: "mem-slow".to_owned(),
            backend: slow.backend(),
        },
    ];
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let reconciler = Arc::new(Reconciler::new(pools, clock, metrics, Options::default()));
    let handle = reconciler.handle();

    // Demand, then two passes: the first launches, the second observes the result.
    fast.enqueue("linux", 5, HOUR);
    slow.enqueue("arm", 1, HOUR);
    let labels = ["self-hosted", "linux", "gpu"];
    for i in 0..3 {
        emu.enqueue(JobSpec::new("acme/app", &labels, HOUR).named(format!("gpu-{i}")))
            .expect("enqueue");
    }
    for _ in 0..2 {
        for report in reconciler.once().await {
            assert!(report.outcome.is_ok(), "{report:?}");
        }
    }

    let loads = Loads::default();
    let on_refresh = OnRefresh {
        loads: loads.clone(),
        done: Arc::default(),
        reconciler: reconciler.clone(),
        fast: fast.clone(),
        slow: slow.clone(),
    };
    let app = router(AppState {
        handle: handle.clone(),
        registry: Arc::new(registry),
    })
    .layer(axum::middleware::from_fn_with_state(
        on_refresh,
        count_loads,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let browse = async |budget: Duration| {
        let t = Instant::now();
        let dom = dump_dom(&chromium, &url, budget).await;
        (dom, t.elapsed())
    };

    // 1. The page as loaded: less virtual time than the refresh interval (2 s).
    let (dom, first_run) = browse(Duration::from_millis(1000)).await;
    assert_eq!(loads.navigations.load(Ordering::SeqCst), 1);
    assert_eq!(loads.refreshes.load(Ordering::SeqCst), 0, "no refresh yet");
    let shown = check_page(&dom, &handle);
    let counts = |waiting, booting, idle, busy| Counts {
        waiting,
        booting,
        idle,
        busy,
    };
    let ok = |c: Counts| (c, "ok".to_owned());
    // Max 3 for 5 jobs; 2 warm runners; 1 job on a booting instance; 3 GitHub jobs, max 2.
    let expected: BTreeMap<String, (Counts, String)> = [
        ("linux", ok(counts(2, 0, 0, 3))),
        ("warm", ok(counts(0, 0, 2, 0))),
        ("arm", ok(counts(1, 1, 0, 0))),
        ("gpu", ok(counts(3, 2, 0, 0))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(shown, expected);
    let reasons = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect()
    };
    assert_eq!(launches(&dom, "linux"), reasons(&[("demand", 3)]));
    assert_eq!(launches(&dom, "warm"), reasons(&[("min_idle", 2)]));
    assert_eq!(launches(&dom, "arm"), reasons(&[("demand", 1)]));
    assert_eq!(launches(&dom, "gpu"), reasons(&[("demand", 2)]));
    let budget = budgets(&dom);
    assert_eq!(budget.len(), 1, "{budget:?}");
    assert_eq!(budget[0].0, "github");
    assert!(
        budget[0].1 < START_BUDGET && budget[0].1 > START_BUDGET - 100,
        "the emulator's x-ratelimit-remaining after a few calls: {budget:?}"
    );

    // 2. Long enough for the script to refresh the page (at 2 s and 4 s of virtual time); the
    //    first refresh changes the state before it is answered.
    let (dom, second_run) = browse(Duration::from_millis(5000)).await;
    assert_eq!(loads.navigations.load(Ordering::SeqCst), 2);
    let refreshes = loads.refreshes.load(Ordering::SeqCst);
    assert!(refreshes >= 1, "the page refreshed itself");
    let shown = check_page(&dom, &handle);
    // Four new jobs: two on the idle runners, two waiting (and launches for them).
    assert_eq!(shown["warm"], ok(counts(2, 0, 0, 2)));
    assert_eq!(shown["linux"], expected["linux"]);
    assert_eq!(shown["gpu"], expected["gpu"]);
    // The failed pass keeps the last good observation and shows the error.
    assert_eq!(shown["arm"].0, expected["arm"].0);
    assert_eq!(shown["arm"].1, "transient (1 in a row)");
    let warm = launches(&dom, "warm");
    assert!(
        warm.get("demand").copied().unwrap_or_default() >= 2,
        "launches for the new demand: {warm:?}"
    );
    assert!(!handle.budgets().is_empty());

    stop.cancel();
    server.await.expect("server task").expect("server");
    emu.shutdown().await;
    eprintln!(
        "status page browser test: chromium runs {first_run:.2?} and {second_run:.2?} \
         ({refreshes} refreshes), whole test {:.2?}",
        started.elapsed()
    );
}
