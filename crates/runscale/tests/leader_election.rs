//! Leader election against the fake kube-apiserver of `runscale-emulator` over loopback HTTP:
//! electors in this process, then `runscale run --leader-elect` processes (kill -9 and
//! SIGTERM hand-overs), and the checks of the settings. Every server listens on 127.0.0.1;
//! every process is killed when its test ends.
//!
//! Timings: lease duration 6 s, renew deadline 4 s, retry period 1 s (3 s, 2 s and 0.5 s let a
//! leader on a loaded test machine miss its renew deadline and step down, so that its pool's
//! passes started over). Hand-overs are checked
//! by what the API server saw, not by the wall clock, so that a loaded machine cannot fail
//! them: after a kill the new holder's `acquireTime` is at least a lease duration after the
//! old holder's last `renewTime`, and the standby read the Lease at most
//! [`MAX_READS_TO_TAKE_OVER`] times before it wrote its claim (it retries every 0.75 to 1
//! retry period, and no later than the claim's end); after a release it claims at its next
//! read. The exact instants (step-down at the renew deadline, takeover within a lease
//! duration and a retry period) are checked on tokio's paused clock by the unit tests of
//! `runscale::leader`.
#![cfg(feature = "leader-election")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use runscale::leader::{Elector, Settings, Status};
use runscale_emulator::kube::{KubeConfig, KubeEmulator, KubeFaults, KubeHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

const LEASE_DURATION: Duration = Duration::from_secs(6);
const RENEW_DEADLINE: Duration = Duration::from_secs(4);
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// Reads of the Lease by a standby from the holder's death to its own claim: one per try,
/// tries at least 3/4 of a retry period apart during the lease duration, one at the claim's
/// end, the winning one, and one read of the dead holder that may still be answered.
const MAX_READS_TO_TAKE_OVER: usize = 11;
/// Reads of a released Lease before the standby's claim: the next one (and one in flight).
const MAX_READS_AFTER_RELEASE: usize = 2;
/// Generous bound for things that are not timed (process start-up).
const WAIT: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "ci";

/// A duration as `runscale`'s flags take it, in milliseconds.
fn as_flag(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
const SAMPLE: Duration = Duration::from_millis(5);

struct Fake {
    handle: KubeHandle,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

async fn fake() -> Fake {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let handle = KubeEmulator::start(KubeConfig::default(), addr)
        .await
        .expect("fake kube-apiserver");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    handle.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    Fake {
        handle,
        kubeconfig,
        _dir: dir,
    }
}

impl Fake {
    /// The holder named in the Lease, if any.
    fn holder(&self) -> Option<String> {
        self.handle
            .leases(NAMESPACE)
            .into_iter()
            .find(|l| l.metadata.name.as_deref() == Some("runscale"))
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }

    /// The Lease's holder, `acquireTime` and `renewTime` (microseconds since the epoch).
    fn claim(&self) -> Option<(String, i64, i64)> {
        let spec = self
            .handle
            .leases(NAMESPACE)
            .into_iter()
            .find(|l| l.metadata.name.as_deref() == Some("runscale"))
            .and_then(|l| l.spec)?;
        Some((
            spec.holder_identity?,
            spec.acquire_time?.0.as_microsecond(),
            spec.renew_time?.0.as_microsecond(),
        ))
    }

    /// A mark in the API server's request log, for [`Fake::reads_before_claim`].
    fn mark(&self) -> u64 {
        self.handle.stats().requests
    }

    /// How many times the Lease was read after `mark` before a claim was written (a
    /// successful write that follows a read: a write in flight from a dead holder comes
    /// first). `None` if no claim was written since.
    fn reads_before_claim(&self, mark: u64) -> Option<usize> {
        let log = self.handle.requests();
        let new = usize::try_from(self.mark().saturating_sub(mark)).unwrap_or(usize::MAX);
        let mut reads = 0;
        for r in log[log.len().saturating_sub(new)..]
            .iter()
            .filter(|r| r.path.ends_with("/leases/runscale"))
        {
            match r.method.as_str() {
                "GET" => reads += 1,
                "PUT" | "POST" if (200..300).contains(&r.status) && reads > 0 => {
                    return Some(reads);
                }
                _ => {}
            }
        }
        None
    }

    /// After a holder died (its last claim `old`): the Lease was taken over by `new_holder`
    /// no sooner than a lease duration after the old holder's last renewal, with at most
    /// [`MAX_READS_TO_TAKE_OVER`] reads by the standby since `mark`.
    fn assert_taken_over_after_expiry(
        &self,
        old: &(String, i64, i64),
        new_holder: &str,
        mark: u64,
    ) {
        let (holder, acquired, _) = self.claim().expect("a claim");
        assert_eq!(holder, new_holder);
        let lease_us = i64::try_from(LEASE_DURATION.as_micros()).expect("small");
        assert!(
            acquired >= old.2 + lease_us,
            "{new_holder} acquired {} µs after {}'s last renewal, before its claim ran out",
            acquired - old.2,
            old.0
        );
        let reads = self.reads_before_claim(mark).expect("a claim written");
        eprintln!(
            "takeover {} ms after the last renewal, {reads} reads of the Lease",
            (acquired - old.2) / 1000
        );
        assert!(
            reads <= MAX_READS_TO_TAKE_OVER,
            "{reads} reads before taking over"
        );
    }

    fn transitions(&self) -> Option<i32> {
        self.handle
            .leases(NAMESPACE)
            .into_iter()
            .find_map(|l| l.spec.and_then(|s| s.lease_transitions))
    }
}

// ---------------------------------------------------------------------------------------
// Electors in this process.

struct Candidate {
    status: watch::Receiver<Status>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn candidate(fake: &Fake, identity: &str) -> Candidate {
    let settings = Settings {
        lease_name: "runscale".to_owned(),
        namespace: Some(NAMESPACE.to_owned()),
        identity: Some(identity.to_owned()),
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
        kubeconfig: Some(fake.kubeconfig.clone()),
        context: None,
    };
    let elector = Elector::connect(&settings).await.expect("connect");
    assert_eq!(elector.identity(), identity);
    assert_eq!(elector.lease(), "ci/runscale");
    let status = elector.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(elector.run(stop.clone()));
    Candidate { status, stop, task }
}

impl Candidate {
    fn leading(&self) -> bool {
        self.status.borrow().leading
    }
}

/// Samples the live candidates every 5 ms for `span` (or until `done` says so), failing if two
/// lead at once; returns the index of the leader at the end, if any.
async fn sample(
    live: &[&Candidate],
    span: Duration,
    done: impl Fn(Option<usize>) -> bool,
) -> Option<usize> {
    let end = Instant::now() + span;
    loop {
        let leaders: Vec<usize> = (0..live.len()).filter(|&i| live[i].leading()).collect();
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        let leader = leaders.first().copied();
        if done(leader) || Instant::now() >= end {
            return leader;
        }
        sleep(SAMPLE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_electors_leads_and_a_killed_leader_is_replaced_in_time() {
    let fake = fake().await;
    let a = candidate(&fake, "a").await;
    let b = candidate(&fake, "b").await;
    let first = sample(&[&a, &b], WAIT, |l| l.is_some()).await;
    let first = first.expect("a leader");
    // Exactly one leads, steadily, and the Lease names it.
    assert_eq!(
        sample(&[&a, &b], LEASE_DURATION, |_| false).await,
        Some(first)
    );
    let (leader, standby) = if first == 0 { (a, b) } else { (b, a) };
    let name = ["a", "b"][first];
    assert_eq!(fake.holder().as_deref(), Some(name));
    assert_eq!(standby.status.borrow().holder.as_deref(), Some(name));

    // Killed: it stops renewing and does not release.
    leader.task.abort();
    let _ = leader.task.await;
    let mark = fake.mark();
    let old = fake.claim().expect("the killed leader's claim");
    assert_eq!(old.0, name);
    let took = sample(&[&standby], WAIT, |l| l.is_some()).await;
    assert_eq!(took, Some(0), "the standby did not take over");
    // Not before the claim ran out, and at the standby's first tries after that.
    fake.assert_taken_over_after_expiry(&old, ["b", "a"][first], mark);
    assert_eq!(fake.transitions(), Some(1));
    standby.stop.cancel();
    standby.task.await.expect("elector");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_releases_the_lease_and_the_other_takes_over_at_once() {
    let fake = fake().await;
    let a = candidate(&fake, "a").await;
    let leader = sample(&[&a], WAIT, |l| l.is_some()).await;
    assert_eq!(leader, Some(0));
    let b = candidate(&fake, "b").await;
    assert_eq!(
        sample(&[&a, &b], RETRY_PERIOD * 4, |_| false).await,
        Some(0)
    );

    a.stop.cancel();
    a.task.await.expect("elector");
    let mark = fake.mark();
    assert_eq!(fake.holder(), None, "released");
    let took = sample(&[&b], WAIT, |l| l.is_some()).await;
    assert_eq!(took, Some(0));
    assert_eq!(fake.holder().as_deref(), Some("b"));
    // At once: at b's next read of the released Lease, not after its claim would have run out.
    let reads = fake.reads_before_claim(mark).expect("b's claim");
    assert!(
        reads <= MAX_READS_AFTER_RELEASE,
        "{reads} reads after the release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_electors_never_lead_at_once_while_the_api_fails_conflicts_and_lags() {
    let fake = fake().await;
    fake.handle.set_faults(KubeFaults {
        error_rate: 0.3,
        conflict_rate: 0.3,
        latency: Duration::from_millis(30),
        seed: 7,
        ..KubeFaults::default()
    });
    let a = candidate(&fake, "a").await;
    let b = candidate(&fake, "b").await;
    let mut led = [false, false];
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Some(i) = sample(&[&a, &b], Duration::ZERO, |_| true).await {
            led[i] = true;
        }
        sleep(SAMPLE).await;
    }
    assert!(led.iter().any(|l| *l), "nobody led in 10 s");
    fake.handle.set_faults(KubeFaults::default());
    for c in [a, b] {
        c.stop.cancel();
        c.task.await.expect("elector");
    }
}

// ---------------------------------------------------------------------------------------
// `runscale run --leader-elect` processes.

const BIN: &str = env!("CARGO_BIN_EXE_runscale");

/// A configuration whose provider's API refuses connections (passes fail, but they run and
/// are counted) and whose Lease is reached through `kubeconfig`.
fn config_file(dir: &Path, kubeconfig: &Path, extra: &str) -> PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let api = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let text = format!(
        r#"listen: 127.0.0.1:0
interval: 1s
leader_election:
  kubeconfig: {kubeconfig}
  namespace: {NAMESPACE}
{extra}providers:
  - name: gh
    type: github
    api_url: {api}
    org: acme
    repositories: [app]
    auth: {{token: {{env: RUNSCALE_LE_TEST_TOKEN}}}}
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
        kubeconfig = kubeconfig.display(),
        state = dir.join("state").display(),
    );
    let path = dir.join("runscale.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn runscale(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUNSCALE_CONFIG")
        .env_remove("RUNSCALE_LOG_FORMAT")
        .env_remove("RUNSCALE_LOG_LEVEL")
        .env_remove("RUNSCALE_LEADER_ELECT")
        .env_remove("RUNSCALE_LEADER_ELECT_IDENTITY")
        .env("RUNSCALE_LE_TEST_TOKEN", "t")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// A `runscale run --leader-elect` process, killed when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
    /// Its last log lines, shown when a wait on it fails.
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// Log lines kept per replica.
const LOG_LINES: usize = 100;

impl Replica {
    async fn start(config: &Path, identity: &str) -> Self {
        let mut child = runscale(&["--log-format", "json", "run", "--leader-elect"])
            .args(["--leader-elect-identity", identity])
            .args(["--leader-elect-lease-duration", &as_flag(LEASE_DURATION)])
            .args(["--leader-elect-renew-deadline", &as_flag(RENEW_DEADLINE)])
            .args(["--leader-elect-retry-period", &as_flag(RETRY_PERIOD)])
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runscale");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let kept = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                {
                    let mut kept = kept.lock().expect("log");
                    if kept.len() == LOG_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let addr = timeout(WAIT, async {
            while let Some(line) = rx.recv().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "runscale started"
                {
                    return v["listen"].as_str().and_then(|s| s.parse().ok());
                }
            }
            None
        })
        .await
        .expect("started in time")
        .expect("listen address in the start line");
        Self { child, addr, log }
    }

    /// Its last log lines.
    fn log_tail(&self) -> String {
        let log = self.log.lock().expect("log");
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// `/api/v1/leader`.
    async fn election(&self) -> serde_json::Value {
        let (status, body) = self.get("/api/v1/leader").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    async fn leading(&self) -> bool {
        self.election().await["leading"] == true
    }

    /// The `runscale_leader` sample of `/metrics`.
    async fn leader_metric(&self) -> String {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with("runscale_leader "))
            .map(|l| l.trim_start_matches("runscale_leader ").to_owned())
            .unwrap_or_default()
    }

    /// Passes of the pool so far (`/api/v1/pools`).
    async fn passes(&self) -> u64 {
        let (_, body) = self.get("/api/v1/pools").await;
        let pools: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        pools[0]["passes"].as_u64().expect("passes")
    }

    /// Waits until the pool has had `n` passes.
    async fn until_passes(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.passes().await < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} passes; its log:\n{}",
                self.log_tail()
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (`KILL`, `TERM`) through the `kill` command.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        s.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = timeout(WAIT, exchange)
        .await
        .expect("answer in time")
        .expect("HTTP exchange");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls the replicas every 20 ms, failing if two lead at once, until `done` holds for the
/// indices of those leading (true) or `within` has passed (false).
async fn poll_replicas(
    replicas: &[&Replica],
    within: Duration,
    done: impl Fn(&[usize]) -> bool,
) -> bool {
    let end = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if r.leading().await {
                leaders.push(i);
            }
        }
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if done(&leaders) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Starts replicas `r1` and `r2` and waits until one leads: (leader, standby).
async fn elect_two(config: &Path) -> (Replica, Replica) {
    let r1 = Replica::start(config, "r1").await;
    let r2 = Replica::start(config, "r2").await;
    assert!(
        poll_replicas(&[&r1, &r2], WAIT, |l| l.len() == 1).await,
        "no leader in time"
    );
    if r1.leading().await {
        (r1, r2)
    } else {
        (r2, r1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_elect_one_leader_that_alone_reconciles_and_hand_over_after_kill_and_sigterm() {
    let fake = fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), &fake.kubeconfig, "");
    let (mut leader, mut standby) = elect_two(&config).await;
    let leader_id = leader.election().await["identity"].clone();
    assert_eq!(fake.holder().as_deref(), leader_id.as_str());
    let election = standby.election().await;
    assert_eq!(election["leader_election"], true);
    assert_eq!(election["leading"], false);
    assert_eq!(election["holder"], leader_id);
    assert_eq!(election["lease"], "ci/runscale");

    // Only the leader reconciles; the standby is ready, reports 0 and runs no pass.
    assert!(
        poll_replicas(&[&leader, &standby], WAIT, |l| l == [0]).await,
        "not in time"
    );
    leader.until_passes(2).await;
    assert_eq!(standby.passes().await, 0);
    assert_eq!(leader.leader_metric().await, "1");
    assert_eq!(standby.leader_metric().await, "0");
    let (status, body) = standby.get("/readyz").await;
    assert_eq!(
        (status, body.contains("standing by")),
        (200, true),
        "{body}"
    );
    assert_eq!(standby.get("/healthz").await, (200, "ok".to_owned()));

    // kill -9: no release; the standby takes over once the claim expires.
    leader.signal("KILL");
    let _ = leader.child.wait().await;
    let mark = fake.mark();
    let old = fake.claim().expect("the killed leader's claim");
    assert_eq!(Some(old.0.as_str()), leader_id.as_str());
    assert!(
        poll_replicas(&[&standby], WAIT, |l| l == [0]).await,
        "not in time"
    );
    let new_id = standby.election().await["identity"].clone();
    fake.assert_taken_over_after_expiry(&old, new_id.as_str().expect("identity"), mark);
    assert_eq!(standby.leader_metric().await, "1");
    standby.until_passes(1).await;

    // SIGTERM: the leader stops reconciling, releases, and the new standby takes over at once.
    leader = standby;
    standby = Replica::start(&config, "r3").await;
    assert!(
        poll_replicas(&[&leader, &standby], WAIT, |l| l == [0]).await,
        "not in time"
    );
    let deadline = Instant::now() + WAIT;
    while standby.election().await["holder"] != new_id {
        assert!(Instant::now() < deadline, "r3 never saw the holder");
        sleep(Duration::from_millis(20)).await;
    }
    leader.signal("TERM");
    let status = timeout(WAIT, leader.child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let mark = fake.mark();
    assert!(
        poll_replicas(&[&standby], WAIT, |l| l == [0]).await,
        "not in time"
    );
    assert_eq!(fake.holder().as_deref(), Some("r3"));
    // The leader released before it exited: r3 claimed at its next read.
    let reads = fake.reads_before_claim(mark).expect("r3's claim");
    assert!(
        reads <= MAX_READS_AFTER_RELEASE,
        "{reads} reads after the release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_reconciling_at_its_renew_deadline() {
    let fake = fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), &fake.kubeconfig, "");
    let (leader, standby) = elect_two(&config).await;
    leader.until_passes(1).await;

    // Every API request fails from now on: nobody can renew or acquire.
    fake.handle.set_faults(KubeFaults {
        error_rate: 1.0,
        ..KubeFaults::default()
    });
    // It steps down (at its renew deadline: unit-tested on a paused clock), and nobody takes
    // over while the API fails.
    assert!(
        poll_replicas(&[&leader, &standby], WAIT, |l| l.is_empty()).await,
        "not in time"
    );
    assert_eq!(leader.leader_metric().await, "0");
    // Its reconciler was aborted: no pass runs any more (the interval is 1 s).
    let passes = leader.passes().await;
    poll_replicas(&[&leader, &standby], Duration::from_secs(3), |_| false).await;
    assert_eq!(leader.passes().await, passes);
    assert_eq!(standby.passes().await, 0);
    let (status, body) = leader.get("/readyz").await;
    assert_eq!(
        (status, body.contains("standing by")),
        (200, true),
        "{body}"
    );

    // The API answers again: exactly one replica leads again.
    fake.handle.set_faults(KubeFaults::default());
    assert!(
        poll_replicas(&[&leader, &standby], WAIT, |l| l.len() == 1).await,
        "not in time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_could_let_two_replicas_lead_are_rejected_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), Path::new("/nonexistent/kubeconfig"), "");
    // A flag breaks the rule: the renew deadline must be shorter than the lease duration.
    let out = runscale(&[
        "run",
        "--leader-elect",
        "--leader-elect-renew-deadline",
        "20s",
        "-c",
    ])
    .arg(&config)
    .output()
    .await
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("leader_election.renew_deadline"),
        "{stderr}"
    );

    // In the file: the retry period must be shorter than the renew deadline.
    let config = config_file(dir.path(), Path::new("/nonexistent/kubeconfig"), "");
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "leader_election:\n",
        "leader_election:\n  retry_period: 10s\n  enabled: true\n",
    );
    std::fs::write(&config, text).expect("write");
    let out = runscale(&["check", "-c"])
        .arg(&config)
        .output()
        .await
        .expect("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("leader_election.retry_period"), "{stderr}");

    // Valid settings, but no API server to reach: exit 1 naming leader election.
    let config = config_file(dir.path(), Path::new("/nonexistent/kubeconfig"), "");
    let out = runscale(&["run", "--leader-elect", "-c"])
        .arg(&config)
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("leader election"), "{stderr}");
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
}

#[test]
fn the_leader_election_section_is_parsed_with_its_defaults() {
    let path = Path::new("runscale.yaml");
    let text = |section: &str| {
        format!(
            "{section}providers:\n  - name: p\n    type: exec\n    observe: [/bin/true]\n    \
             register: [/bin/true]\n    remove: [/bin/true]\n    drain: [/bin/true]\n\
             backends:\n  - {{name: b, type: local-process, state_dir: /tmp/x}}\n\
             pools:\n  - {{name: q, provider: p, backend: b, template: {{command: [/bin/true]}}, \
             max: 1}}\n"
        )
    };
    let off = runscale::config::load_str(&text(""), path, |_| None).expect("valid");
    assert_eq!(off.leader_election, None);
    let on = runscale::config::load_str(
        &text("leader_election:\n  enabled: true\n  identity: ${POD_NAME}\n"),
        path,
        |name| (name == "POD_NAME").then(|| "runscale-0".to_owned()),
    )
    .expect("valid");
    let settings = on.leader_election.expect("enabled");
    assert_eq!(settings.lease_name, "runscale");
    assert_eq!(settings.identity.as_deref(), Some("runscale-0"));
    assert_eq!(settings.namespace, None);
    assert_eq!(settings.lease_duration, Duration::from_secs(15));
    assert_eq!(settings.renew_deadline, Duration::from_secs(10));
    assert_eq!(settings.retry_period, Duration::from_secs(2));

    let err = runscale::config::load_str(
        &text("leader_election:\n  lease_duration: 1500ms\n  lease_name: Run_Scale\n  namespace: \"\"\n"),
        path,
        |_| None,
    )
    .expect_err("invalid");
    let fields: Vec<&str> = err.field_errors().iter().map(|e| e.path.as_str()).collect();
    for field in [
        "leader_election.lease_name",
        "leader_election.namespace",
        "leader_election.lease_duration",
        // 10 s is not shorter than 1.5 s.
        "leader_election.renew_deadline",
    ] {
        assert!(fields.contains(&field), "{field}: {err}");
    }
}
