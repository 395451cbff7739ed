//! Leader election among runscale replicas over a `coordination.k8s.io/v1` Lease.
//!
//! Every replica runs an [`Elector`]; the replica named in the Lease's `holderIdentity` is the
//! leader, and only the leader reconciles (see [`crate::daemon`]). The protocol is the one of
//! client-go's leader election, over plain get / create / replace:
//!
//! - **Acquire.** Read the Lease, creating it (held by us) when it is missing. If another
//!   replica holds it and its claim has not expired, stand by. Otherwise write ourselves as
//!   the holder with a replace that carries the `resourceVersion` just read. A 409 (Conflict on
//!   the replace, AlreadyExists on the create) means another replica wrote first: the race is
//!   lost, and the Lease is read again at the next try.
//! - **Expiry** is judged on this replica's monotonic clock, never by comparing the Lease's
//!   timestamps with the local wall clock: a claim expires `leaseDurationSeconds` (as the
//!   holder wrote it) after this replica last *saw the Lease change*. Clock offsets between
//!   machines do not matter, only clock rates.
//! - **Renew.** The leader rewrites `renewTime` every `retry_period` (one replace carrying the
//!   `resourceVersion` it last wrote; after a 409 it reads the Lease and tries again). When no
//!   renewal has succeeded for `renew_deadline` since the last successful one was sent, it
//!   steps down at that instant, even while a request still hangs. `renew_deadline` is shorter
//!   than `lease_duration`, so it has stopped before another replica may take over.
//! - **Release.** On a graceful stop (after the daemon stopped reconciling) the leader clears
//!   `holderIdentity`; a standby takes the free Lease at its next try, within one
//!   `retry_period`.
//! - Standbys try every `retry_period` (shortened at random by up to a quarter, so replicas
//!   drift apart) and also exactly when the holder's claim runs out, so a leader that died is
//!   replaced within `lease_duration` plus one `retry_period` of its last renewal.
//!
//! [`Settings`] (the validated configuration) are always compiled; the [`Elector`] needs the
//! cargo feature `leader-election` (kube, k8s-openapi).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

#[cfg(feature = "leader-election")]
pub use elector::Elector;

/// The default Lease name.
pub const DEFAULT_LEASE_NAME: &str = "runscale";
/// The default lease duration: how long a claim lasts after its last renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// The default renew deadline: the leader steps down after this long without a renewal.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// The default retry period: how often the leader renews and standbys try to acquire.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Longest lease duration accepted.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(3600);
/// Longest namespace name, and longest part of a Lease name (a DNS label).
pub const MAX_NAMESPACE: usize = 63;
/// Longest Lease name (a DNS subdomain).
const MAX_LEASE_NAME: usize = 253;
/// Longest identity accepted.
const MAX_IDENTITY: usize = 253;

/// Validated leader election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease; `None`: the Kubernetes client's default namespace.
    pub namespace: Option<String>,
    /// This replica's identity; `None`: [`default_identity`].
    pub identity: Option<String>,
    /// How long a claim lasts after its last renewal (whole seconds, at least 1 s).
    pub lease_duration: Duration,
    /// The leader steps down after this long without a successful renewal
    /// (`< lease_duration`).
    pub renew_deadline: Duration,
    /// How often the leader renews and standbys try (`< renew_deadline`).
    pub retry_period: Duration,
    /// Kubeconfig file; `None`: `$KUBECONFIG`, `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None`: the current one.
    pub context: Option<String>,
}

/// What a replica knows about the election, as its [`Elector`] publishes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// True while this replica holds the Lease (and may act).
    pub leading: bool,
    /// The holder named in the Lease when this replica last read or wrote it (`None`: free,
    /// or not read yet).
    pub holder: Option<String>,
}

/// Why `name` is not a valid Lease name (a DNS subdomain: labels joined by '.'), if it is not.
pub fn lease_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_LEASE_NAME {
        return Some(format!(
            "is {} characters long; at most {MAX_LEASE_NAME} are allowed",
            name.len()
        ));
    }
    name.split('.')
        .find_map(|label| crate::config::name_problem(label, MAX_NAMESPACE))
        .map(|problem| format!("{problem} (in each '.'-separated part of {name:?})"))
}

/// Why `identity` cannot identify a replica in a Lease, if it cannot.
pub fn identity_problem(identity: &str) -> Option<String> {
    if identity.is_empty() {
        return Some("must not be empty; leave it out for the default".to_owned());
    }
    if identity.len() > MAX_IDENTITY {
        return Some(format!(
            "is {} characters long; at most {MAX_IDENTITY} are allowed",
            identity.len()
        ));
    }
    if identity.chars().any(char::is_control) {
        return Some("must not contain control characters".to_owned());
    }
    None
}

/// The default identity, `{hostname}_{pid}`: in a pod the host name is the pod name, and the
/// process id keeps two processes on one host apart.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "runscale".to_owned());
    format!("{host}_{}", std::process::id())
}

#[cfg(feature = "leader-election")]
mod elector {
    //! The [`Elector`]: the protocol of the parent module over `Api<Lease>`.

    use std::time::Duration;

    use anyhow::Context as _;
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_openapi::jiff::Timestamp;
    use kube::api::{Api, PostParams};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use tokio::sync::watch;
    use tokio::time::{Instant, sleep, sleep_until, timeout_at};
    use tokio_util::sync::CancellationToken;
    use tracing::{debug, info, warn};

    use super::{Settings, Status, default_identity};

    /// Campaigns for the Lease and, once it holds it, renews it; publishes [`Status`].
    pub struct Elector {
        api: Api<Lease>,
        lease_name: String,
        namespace: String,
        identity: String,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
        /// The Lease as last read or written.
        observed: Option<Observed>,
        /// True from a successful claim until the step-down.
        holding: bool,
        status: watch::Sender<Status>,
    }

    struct Observed {
        lease: Lease,
        /// When this replica first saw the Lease's spec as it is now.
        changed_at: Instant,
    }

    /// The outcome of one try.
    enum Attempt {
        /// The Lease is ours (claimed or renewed).
        Holding,
        /// Another replica holds an unexpired claim.
        HeldBy(String),
        /// Another replica wrote between our read and our write.
        Conflict,
    }

    /// Why a leader stopped leading.
    enum Lead {
        /// Asked to stop: release the Lease.
        Stopped,
        /// Lost it.
        Lost(String),
    }

    impl Elector {
        /// Connects to the Kubernetes API: the kubeconfig file and context of `settings`, or
        /// else the inferred configuration (`$KUBECONFIG`, `~/.kube/config`, in-cluster).
        pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
            // Both ring and aws-lc-rs are in the binary: name the process-wide provider (the
            // first installation wins; the kubernetes backend installs the same one).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let options = KubeConfigOptions {
                context: settings.context.clone(),
                ..KubeConfigOptions::default()
            };
            let config = match (&settings.kubeconfig, &settings.context) {
                (Some(path), _) => {
                    let file = Kubeconfig::read_from(path).with_context(|| {
                        format!("cannot read the kubeconfig {}", path.display())
                    })?;
                    kube::Config::from_custom_kubeconfig(file, &options)
                        .await
                        .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?
                }
                (None, Some(context)) => kube::Config::from_kubeconfig(&options)
                    .await
                    .with_context(|| format!("cannot use the kubeconfig context {context:?}"))?,
                (None, None) => kube::Config::infer().await.context(
                    "cannot find Kubernetes credentials (no kubeconfig and not in a pod)",
                )?,
            };
            let client =
                kube::Client::try_from(config).context("cannot build the Kubernetes client")?;
            Ok(Self::new(client, settings))
        }

        /// An elector over `client`; the namespace defaults to the client's.
        pub fn new(client: kube::Client, settings: &Settings) -> Self {
            let namespace = settings
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            Self {
                api: Api::namespaced(client, &namespace),
                lease_name: settings.lease_name.clone(),
                namespace,
                identity: settings.identity.clone().unwrap_or_else(default_identity),
                lease_duration: settings.lease_duration,
                renew_deadline: settings.renew_deadline,
                retry_period: settings.retry_period,
                observed: None,
                holding: false,
                status: watch::Sender::new(Status::default()),
            }
        }

        /// This replica's identity in the Lease.
        pub fn identity(&self) -> &str {
            &self.identity
        }

        /// The Lease, as `namespace/name`.
        pub fn lease(&self) -> String {
            format!("{}/{}", self.namespace, self.lease_name)
        }

        /// The election as this replica sees it; `leading` turns false at the instant the
        /// leader steps down.
        pub fn status(&self) -> watch::Receiver<Status> {
            self.status.subscribe()
        }

        /// Campaigns, leads, and campaigns again after losing the Lease, until `stop` is
        /// cancelled; then releases the Lease if it holds it. Cancel `stop` only once this
        /// replica no longer acts.
        pub async fn run(mut self, stop: CancellationToken) {
            info!(lease = %self.lease(), identity = %self.identity, "leader election: campaigning");
            loop {
                let Some(mut renewed) = self.acquire(&stop).await else {
                    return;
                };
                self.holding = true;
                self.publish(true);
                info!(lease = %self.lease(), identity = %self.identity, "leader election: leading");
                let end = self.lead(&stop, &mut renewed).await;
                self.holding = false;
                self.publish(false);
                match end {
                    Lead::Stopped => {
                        self.release(renewed + self.renew_deadline).await;
                        return;
                    }
                    Lead::Lost(reason) => {
                        warn!(lease = %self.lease(), reason = %reason, "leader election: stepped down");
                    }
                }
            }
        }

        /// Tries until the Lease is ours; the instant the winning request was sent, or `None`
        /// once `stop` is cancelled.
        async fn acquire(&mut self, stop: &CancellationToken) -> Option<Instant> {
            loop {
                let sent = Instant::now();
                match timeout_at(sent + self.renew_deadline, self.attempt()).await {
                    Ok(Ok(Attempt::Holding)) => return Some(sent),
                    Ok(Ok(Attempt::HeldBy(_))) => {}
                    Ok(Ok(Attempt::Conflict)) => {
                        debug!("leader election: another replica wrote the lease first");
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "leader election: cannot read or claim the lease")
                    }
                    Err(_) => warn!("leader election: a lease request timed out"),
                }
                let wait = self.standby_wait();
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = sleep(wait) => {}
                }
            }
        }

        /// Renews every retry period until `stop` or until the Lease is lost; `renewed` is the
        /// instant the last successful renewal was sent.
        async fn lead(&mut self, stop: &CancellationToken, renewed: &mut Instant) -> Lead {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Lead::Stopped,
                    () = sleep_until(*renewed + self.retry_period) => {}
                }
                let deadline = *renewed + self.renew_deadline;
                loop {
                    let sent = Instant::now();
                    if sent >= deadline {
                        return Lead::Lost("no renewal succeeded within the renew deadline".into());
                    }
                    match timeout_at(deadline, self.attempt()).await {
                        Ok(Ok(Attempt::Holding)) => {
                            *renewed = sent;
                            break;
                        }
                        Ok(Ok(Attempt::HeldBy(holder))) => {
                            return Lead::Lost(format!("the lease is held by {holder:?}"));
                        }
                        Ok(Ok(Attempt::Conflict)) => {
                            debug!("leader election: the lease changed during renewal; retrying");
                        }
                        Ok(Err(e)) => warn!(error = %e, "leader election: cannot renew the lease"),
                        Err(_) => {
                            return Lead::Lost(
                                "no renewal succeeded within the renew deadline".into(),
                            );
                        }
                    }
                    let next = (Instant::now() + self.retry_period).min(deadline);
                    tokio::select! {
                        () = stop.cancelled() => return Lead::Stopped,
                        () = sleep_until(next) => {}
                    }
                }
            }
        }

        /// One try to claim or renew the Lease.
        async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
            let pp = PostParams::default();
            // Renewal: replace our own last write (one request while nobody interferes).
            if self.holding
                && let Some(mut lease) = self.observed.as_ref().map(|o| o.lease.clone())
            {
                lease.spec.get_or_insert_with(LeaseSpec::default).renew_time =
                    Some(MicroTime(Timestamp::now()));
                match self.api.replace(&self.lease_name, &pp, &lease).await {
                    Ok(written) => {
                        self.observe(written);
                        return Ok(Attempt::Holding);
                    }
                    Err(e) if is_conflict(&e) => {
                        debug!("leader election: the lease changed since our renewal; reading it");
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(current) = self.api.get_opt(&self.lease_name).await? else {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.claim(&LeaseSpec::default(), 0)),
                };
                return match self.api.create(&pp, &lease).await {
                    Ok(created) => {
                        self.observe(created);
                        Ok(Attempt::Holding)
                    }
                    Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                    Err(e) => Err(e),
                };
            };
            self.observe(current.clone());
            let spec = current.spec.clone().unwrap_or_default();
            let ours = holder_of(&spec) == Some(self.identity.as_str());
            if let Some(holder) = holder_of(&spec)
                && !ours
                && !self.expired()
            {
                return Ok(Attempt::HeldBy(holder.to_owned()));
            }
            let transitions = spec.lease_transitions.unwrap_or(0);
            let transitions = if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            };
            let mut next = current;
            next.spec = Some(self.claim(&spec, transitions));
            match self.api.replace(&self.lease_name, &pp, &next).await {
                Ok(written) => {
                    self.observe(written);
                    Ok(Attempt::Holding)
                }
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            }
        }

        /// `previous` rewritten to name us as the holder, renewed now.
        fn claim(&self, previous: &LeaseSpec, transitions: i32) -> LeaseSpec {
            let now = MicroTime(Timestamp::now());
            let ours = holder_of(previous) == Some(self.identity.as_str());
            LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                acquire_time: match (&previous.acquire_time, ours) {
                    (Some(t), true) => Some(t.clone()),
                    _ => Some(now.clone()),
                },
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..previous.clone()
            }
        }

        /// Records the Lease as read or written now.
        fn observe(&mut self, lease: Lease) {
            let changed_at = match &self.observed {
                Some(o) if o.lease.spec == lease.spec => o.changed_at,
                _ => Instant::now(),
            };
            let holder = lease.spec.as_ref().and_then(holder_of).map(str::to_owned);
            let before = self
                .observed
                .as_ref()
                .and_then(|o| o.lease.spec.as_ref().and_then(holder_of).map(str::to_owned));
            if holder != before
                && let Some(h) = holder.as_deref()
                && h != self.identity
            {
                info!(lease = %self.lease(), holder = %h, "leader election: the lease is held by another replica");
            }
            self.observed = Some(Observed { lease, changed_at });
            self.status.send_if_modified(|s| {
                let changed = s.holder != holder;
                s.holder = holder;
                changed
            });
        }

        /// When the observed claim runs out on this replica's clock.
        fn claim_end(&self) -> Option<Instant> {
            let o = self.observed.as_ref()?;
            let secs = o
                .lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(self.lease_duration, Duration::from_secs);
            Some(o.changed_at + secs)
        }

        fn expired(&self) -> bool {
            self.claim_end().is_none_or(|end| Instant::now() >= end)
        }

        /// How long a standby waits before its next try: the retry period, shortened at
        /// random by up to a quarter, and no later than the end of another holder's claim.
        fn standby_wait(&self) -> Duration {
            let wait = self.retry_period.mul_f64(rand::random_range(0.75..=1.0));
            let held = self
                .observed
                .as_ref()
                .and_then(|o| o.lease.spec.as_ref())
                .and_then(holder_of)
                .is_some();
            match self.claim_end() {
                Some(end) if held && end > Instant::now() => {
                    wait.min(end.saturating_duration_since(Instant::now()))
                }
                _ => wait,
            }
        }

        /// Clears `holderIdentity` if the Lease is still ours, before `deadline` (after it,
        /// another replica may already hold it).
        async fn release(&mut self, deadline: Instant) {
            loop {
                let Some(mut lease) = self.observed.as_ref().map(|o| o.lease.clone()) else {
                    return;
                };
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if holder_of(spec) != Some(self.identity.as_str()) || Instant::now() >= deadline {
                    return;
                }
                spec.holder_identity = None;
                spec.renew_time = Some(MicroTime(Timestamp::now()));
                let pp = PostParams::default();
                let request = self.api.replace(&self.lease_name, &pp, &lease);
                match timeout_at(deadline, request).await {
                    Ok(Ok(written)) => {
                        self.observe(written);
                        info!(lease = %self.lease(), "leader election: released the lease");
                        return;
                    }
                    // Someone else wrote the Lease since it was read (a label, an annotation):
                    // read it again, and release it if it is still ours.
                    Ok(Err(e)) if is_conflict(&e) => {
                        match timeout_at(deadline, self.api.get_opt(&self.lease_name)).await {
                            Ok(Ok(Some(current))) => self.observe(current),
                            Ok(Ok(None)) => return,
                            Ok(Err(e)) => {
                                warn!(error = %e, "leader election: cannot read the lease to release it; it expires instead");
                                return;
                            }
                            Err(_) => {
                                warn!(
                                    "leader election: releasing the lease timed out; it expires instead"
                                );
                                return;
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "leader election: cannot release the lease; it expires instead");
                        return;
                    }
                    Err(_) => {
                        warn!("leader election: releasing the lease timed out; it expires instead");
                        return;
                    }
                }
            }
        }

        fn publish(&self, leading: bool) {
            self.status.send_if_modified(|s| {
                let changed = s.leading != leading;
                s.leading = leading;
                changed
            });
        }
    }

    /// The holder named in `spec`, if any.
    fn holder_of(spec: &LeaseSpec) -> Option<&str> {
        spec.holder_identity.as_deref().filter(|h| !h.is_empty())
    }

    /// A 409: Conflict (stale `resourceVersion`) or AlreadyExists.
    fn is_conflict(e: &kube::Error) -> bool {
        matches!(e, kube::Error::Api(s) if s.code == 409 || s.is_conflict() || s.is_already_exists())
    }
}

#[cfg(all(test, feature = "leader-election"))]
mod tests {
    //! The elector against an in-memory Lease API behind a tower service (no socket): one
    //! Lease with resourceVersions and 409s, per-client faults (hang, fail), a hook that
    //! writes "concurrently" just before the next write, and a call log. Time is virtual.

    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use axum::http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::sync::watch;
    use tokio::task::JoinHandle;
    use tokio::time::{Instant, sleep, timeout};
    use tokio_util::sync::CancellationToken;

    use super::*;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ci/leases";
    const RETRY: Duration = DEFAULT_RETRY_PERIOD;
    const DEADLINE: Duration = DEFAULT_RENEW_DEADLINE;
    const DURATION: Duration = DEFAULT_LEASE_DURATION;

    type Hook = Box<dyn FnOnce(&mut Store) + Send>;

    #[derive(Default)]
    struct Store {
        lease: Option<Value>,
        version: u64,
        /// `"{client}: {method} {status}"` per request.
        log: Vec<String>,
        /// Requests of these clients never complete.
        hang: HashSet<&'static str>,
        /// The next N requests of a client fail with 500.
        fail: HashMap<&'static str, usize>,
        /// Runs just before the next write is applied: another writer got there first.
        before_write: Option<Hook>,
    }

    type Shared = Arc<Mutex<Store>>;

    impl Store {
        fn respond(&mut self, who: &str, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
            let (code, value) = self.route(who, method, path, body);
            self.log.push(format!("{who}: {method} {code}"));
            (code, value)
        }

        fn route(&mut self, who: &str, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
            if let Some(n) = self.fail.get_mut(who)
                && *n > 0
            {
                *n -= 1;
                return failure(500, "InternalError", "injected failure");
            }
            let item = format!("{LEASES}/{DEFAULT_LEASE_NAME}");
            let sent = || serde_json::from_slice::<Value>(body).expect("JSON body");
            match method.as_str() {
                "GET" if path == item => match &self.lease {
                    Some(l) => (200, l.clone()),
                    None => failure(404, "NotFound", "leases \"runscale\" not found"),
                },
                "POST" if path == LEASES => {
                    self.run_hook();
                    if self.lease.is_some() {
                        return failure(409, "AlreadyExists", "leases \"runscale\" already exists");
                    }
                    (201, self.store(sent()))
                }
                "PUT" if path == item => {
                    self.run_hook();
                    let Some(current) = &self.lease else {
                        return failure(404, "NotFound", "leases \"runscale\" not found");
                    };
                    let lease = sent();
                    if lease["metadata"]["resourceVersion"]
                        != current["metadata"]["resourceVersion"]
                    {
                        return failure(409, "Conflict", "the object has been modified");
                    }
                    (200, self.store(lease))
                }
                _ => failure(405, "MethodNotAllowed", "unexpected request"),
            }
        }

        fn run_hook(&mut self) {
            if let Some(hook) = self.before_write.take() {
                hook(self);
            }
        }

        fn store(&mut self, mut lease: Value) -> Value {
            self.version += 1;
            lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
            self.lease = Some(lease.clone());
            lease
        }

        /// Another replica writes the Lease as held by `holder` (renewal number `n`).
        fn write_as(&mut self, holder: &str, n: u32) {
            let time = format!("2026-01-01T00:00:00.{n:06}Z");
            let mut lease = self.lease.clone().unwrap_or_else(|| {
                json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": DEFAULT_LEASE_NAME, "namespace": "ci"},
                    "spec": {"leaseTransitions": 0, "acquireTime": time},
                })
            });
            lease["spec"]["holderIdentity"] = json!(holder);
            lease["spec"]["leaseDurationSeconds"] = json!(DURATION.as_secs());
            lease["spec"]["renewTime"] = json!(time);
            self.store(lease);
        }

        fn spec(&self) -> Value {
            self.lease.as_ref().expect("a lease")["spec"].clone()
        }
    }

    fn failure(code: u16, reason: &str, message: &str) -> (u16, Value) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        });
        (code, status)
    }

    fn client(store: &Shared, who: &'static str) -> kube::Client {
        let store = store.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let store = store.clone();
            async move {
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let body = request.into_body().collect_bytes().await.expect("body");
                if store.lock().expect("store").hang.contains(who) {
                    std::future::pending::<()>().await;
                }
                let (code, value) = store
                    .lock()
                    .expect("store")
                    .respond(who, &method, &path, &body);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).expect("JSON")))
                    .expect("response");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }

    fn settings(identity: &str) -> Settings {
        Settings {
            lease_name: DEFAULT_LEASE_NAME.to_owned(),
            namespace: Some("ci".to_owned()),
            identity: Some(identity.to_owned()),
            lease_duration: DURATION,
            renew_deadline: DEADLINE,
            retry_period: RETRY,
            kubeconfig: None,
            context: None,
        }
    }

    struct Replica {
        status: watch::Receiver<Status>,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    fn start(store: &Shared, who: &'static str) -> Replica {
        let elector = Elector::new(client(store, who), &settings(who));
        let status = elector.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(elector.run(stop.clone()));
        Replica { status, stop, task }
    }

    impl Replica {
        fn leading(&self) -> bool {
            self.status.borrow().leading
        }

        /// Waits (at most `within`) until leading is `leading`; the instant it became so.
        async fn until(&mut self, leading: bool, within: Duration) -> Instant {
            timeout(within, self.status.wait_for(|s| s.leading == leading))
                .await
                .expect("in time")
                .expect("elector running");
            Instant::now()
        }
    }

    fn log(store: &Shared) -> Vec<String> {
        store.lock().expect("store").log.clone()
    }

    fn count(store: &Shared, entry: &str) -> usize {
        log(store).iter().filter(|l| *l == entry).count()
    }

    /// Samples both replicas every 10 ms for `span`, failing if both lead at once.
    async fn never_both(a: &Replica, b: &Replica, span: Duration) {
        let end = Instant::now() + span;
        while Instant::now() < end {
            assert!(
                !(a.leading() && b.leading()),
                "two leaders at {:?}",
                Instant::now()
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_lease_is_created_then_renewed_by_one_replace_per_retry_period() {
        let store = Shared::default();
        let mut a = start(&store, "a");
        a.until(true, RETRY).await;
        assert_eq!(log(&store), ["a: GET 404", "a: POST 201"]);
        let created = store.lock().expect("store").spec();
        assert_eq!(created["holderIdentity"], "a");
        assert_eq!(created["leaseDurationSeconds"], 15);
        assert_eq!(created["leaseTransitions"], 0);

        sleep(RETRY * 5 + RETRY / 2).await;
        let mut expected = vec!["a: GET 404", "a: POST 201"];
        expected.extend(["a: PUT 200"; 5]);
        assert_eq!(log(&store), expected);
        let renewed = store.lock().expect("store").spec();
        assert_eq!(renewed["acquireTime"], created["acquireTime"]);
        assert_eq!(renewed["leaseTransitions"], 0);
        assert!(a.leading());
    }

    #[tokio::test(start_paused = true)]
    async fn another_holders_claim_is_taken_when_it_expires_on_our_clock() {
        let store = Shared::default();
        store.lock().expect("store").write_as("x", 0);
        let started = Instant::now();
        let mut b = start(&store, "b");
        let took = b.until(true, DURATION + RETRY).await;
        // First seen at `started`; the claim ends exactly 15 s later, and b tries right then.
        assert_eq!(took - started, DURATION);
        let spec = store.lock().expect("store").spec();
        assert_eq!(spec["holderIdentity"], "b");
        assert_eq!(spec["leaseTransitions"], 1);
        assert_ne!(spec["acquireTime"], "2026-01-01T00:00:00.000000Z");
        let entries = log(&store);
        assert_eq!(entries.last().map(String::as_str), Some("b: PUT 200"));
        assert!(
            entries[..entries.len() - 1]
                .iter()
                .all(|l| l == "b: GET 200")
        );
        // Tries every 1.5 to 2 s, plus the one at expiry.
        assert!((8..=12).contains(&entries.len()), "{entries:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_that_keeps_being_renewed_is_never_taken() {
        let store = Shared::default();
        store.lock().expect("store").write_as("x", 0);
        let mut b = start(&store, "b");
        let mut last = Instant::now();
        for n in 1..=30 {
            sleep(RETRY).await;
            assert!(!b.leading(), "took a renewed claim at renewal {n}");
            store.lock().expect("store").write_as("x", n);
            last = Instant::now();
        }
        let took = b.until(true, DURATION + RETRY * 2).await;
        let after = took - last;
        // b sees the last renewal within one of its tries, then waits the lease duration.
        assert!(after >= DURATION && after <= DURATION + RETRY, "{after:?}");
        assert_eq!(b.status.borrow().holder.as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_on_create_is_a_lost_race_and_the_lease_is_read_again() {
        let store = Shared::default();
        store.lock().expect("store").before_write = Some(Box::new(|s| s.write_as("racer", 0)));
        let b = start(&store, "b");
        sleep(RETRY * 5).await;
        assert!(!b.leading());
        assert_eq!(b.status.borrow().holder.as_deref(), Some("racer"));
        let entries = log(&store);
        assert_eq!(entries[..3], ["b: GET 404", "b: POST 409", "b: GET 200"]);
        assert!(
            entries[3..].iter().all(|l| l == "b: GET 200"),
            "{entries:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_on_replace_is_a_lost_race() {
        let store = Shared::default();
        store.lock().expect("store").write_as("x", 0);
        let b = start(&store, "b");
        // Just before b's takeover lands, "racer" takes the expired claim.
        sleep(DURATION - RETRY / 4).await;
        store.lock().expect("store").before_write = Some(Box::new(|s| s.write_as("racer", 1)));
        sleep(RETRY * 4).await;
        assert!(!b.leading());
        assert_eq!(b.status.borrow().holder.as_deref(), Some("racer"));
        let entries = log(&store);
        let put = entries
            .iter()
            .position(|l| l == "b: PUT 409")
            .expect("a PUT");
        assert!(
            entries[put + 1..].iter().all(|l| l == "b: GET 200"),
            "{entries:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_conflict_reads_the_lease_and_renews_while_still_the_holder() {
        let store = Shared::default();
        let mut a = start(&store, "a");
        a.until(true, RETRY).await;
        // Someone touches the Lease (a label) without taking it: the resourceVersion moves.
        store.lock().expect("store").before_write = Some(Box::new(|s| {
            let mut lease = s.lease.clone().expect("lease");
            lease["metadata"]["labels"] = json!({"touched": "yes"});
            s.store(lease);
        }));
        sleep(RETRY * 2 + RETRY / 2).await;
        assert!(a.leading());
        assert_eq!(
            log(&store),
            [
                "a: GET 404",
                "a: POST 201",
                "a: PUT 409",
                "a: GET 200",
                "a: PUT 200",
                "a: PUT 200"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_requests_hang_steps_down_at_the_renew_deadline() {
        let store = Shared::default();
        let mut a = start(&store, "a");
        let led = a.until(true, RETRY).await;
        sleep(RETRY / 4).await;
        store.lock().expect("store").hang.insert("a");
        let stepped_down = a.until(false, DURATION).await;
        // The last renewal that succeeded was sent when a took the lease.
        assert_eq!(stepped_down - led, DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewals_fail_steps_down_at_the_renew_deadline_and_campaigns_again() {
        let store = Shared::default();
        let mut a = start(&store, "a");
        a.until(true, RETRY).await;
        sleep(RETRY * 2 + RETRY / 4).await;
        let renewed = Instant::now() - RETRY / 4;
        store.lock().expect("store").fail.insert("a", 100);
        let stepped_down = a.until(false, DURATION).await;
        assert_eq!(stepped_down - renewed, DEADLINE);
        // Retries every retry period until the deadline: at +2, +4, +6, +8 s.
        assert_eq!(count(&store, "a: PUT 500"), 4, "{:?}", log(&store));
        // Once the API answers again it finds its own claim and resumes.
        store.lock().expect("store").fail.clear();
        a.until(true, RETRY * 2).await;
        assert_eq!(store.lock().expect("store").spec()["holderIdentity"], "a");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_off_leader_stops_before_the_standby_takes_over() {
        // The cut falls at every phase of the leader's and the standby's periods.
        for step in 0..20u32 {
            let store = Shared::default();
            let mut a = start(&store, "a");
            a.until(true, RETRY).await;
            sleep(RETRY * step / 7).await;
            let mut b = start(&store, "b");
            never_both(&a, &b, RETRY * 3 + RETRY * step / 11).await;
            assert!(a.leading() && !b.leading());
            store.lock().expect("store").hang.insert("a");
            let cut = Instant::now();
            let mut b_status = b.status.clone();
            let watch_b = tokio::spawn(async move {
                b_status.wait_for(|s| s.leading).await.expect("running");
                Instant::now()
            });
            let stopped = a.until(false, DURATION).await;
            assert!(!b.leading(), "step {step}: b took over before a stopped");
            let took = watch_b.await.expect("watcher");
            assert!(took > stopped, "step {step}");
            // Within the lease duration and a retry period of a's last renewal.
            assert!(
                took - cut <= DURATION + RETRY,
                "step {step}: {:?}",
                took - cut
            );
            b.until(true, Duration::ZERO).await;
            a.task.abort();
            b.task.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn two_replicas_never_lead_at_once_through_partitions_and_failures() {
        let store = Shared::default();
        let a = start(&store, "a");
        let b = start(&store, "b");
        let mut leaders = Vec::new();
        // Phases of 25 s: cut a, heal, cut b, heal, fail a, fail b, and so on.
        let phases: [(&str, bool); 8] = [
            ("a", true),
            ("", false),
            ("b", true),
            ("", false),
            ("a", false),
            ("b", false),
            ("b", true),
            ("", false),
        ];
        for (who, hang) in phases {
            {
                let mut s = store.lock().expect("store");
                s.hang.clear();
                s.fail.clear();
                match (who, hang) {
                    ("", _) => {}
                    ("a", true) => drop(s.hang.insert("a")),
                    ("b", true) => drop(s.hang.insert("b")),
                    ("a", false) => drop(s.fail.insert("a", 1000)),
                    (_, _) => drop(s.fail.insert("b", 1000)),
                }
            }
            let end = Instant::now() + Duration::from_secs(25);
            while Instant::now() < end {
                let (la, lb) = (a.leading(), b.leading());
                assert!(!(la && lb), "two leaders at {:?}", Instant::now());
                let now = if la {
                    "a"
                } else if lb {
                    "b"
                } else {
                    "-"
                };
                if leaders.last() != Some(&now) {
                    leaders.push(now);
                }
                sleep(Duration::from_millis(10)).await;
            }
        }
        // Leadership moved back and forth, with gaps between leaders.
        let handovers = leaders.iter().filter(|l| **l != "-").count();
        assert!(handovers >= 4, "{leaders:?}");
        assert_ne!(leaders.last(), Some(&"-"), "{leaders:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_graceful_stop_releases_the_lease_and_the_standby_takes_it_within_a_retry_period() {
        let store = Shared::default();
        let mut a = start(&store, "a");
        a.until(true, RETRY).await;
        let mut b = start(&store, "b");
        sleep(RETRY * 3).await;
        a.stop.cancel();
        a.task.await.expect("elector");
        let released = Instant::now();
        assert!(store.lock().expect("store").spec()["holderIdentity"].is_null());
        assert!(!a.status.borrow().leading);
        let took = b.until(true, RETRY * 2).await;
        assert!(took - released <= RETRY, "{:?}", took - released);
        assert_eq!(store.lock().expect("store").spec()["leaseTransitions"], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_meets_another_write_reads_the_lease_again_and_releases_it() {
        let store = Shared::default();
        let mut a = start(&store, "a");
        a.until(true, RETRY).await;
        sleep(RETRY * 3 + RETRY / 2).await;
        // Just before the release is written, something else labels the Lease.
        store.lock().expect("store").before_write = Some(Box::new(|s: &mut Store| {
            let mut lease = s.lease.clone().expect("a lease");
            lease["metadata"]["labels"] = json!({"touched": "yes"});
            s.store(lease);
        }));
        a.stop.cancel();
        a.task.await.expect("elector");
        assert!(store.lock().expect("store").spec()["holderIdentity"].is_null());
        let tail: Vec<String> = log(&store).into_iter().rev().take(3).collect();
        assert_eq!(
            tail,
            ["a: PUT 200", "a: GET 200", "a: PUT 409"],
            "{:?}",
            log(&store)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_stops_without_writing() {
        let store = Shared::default();
        store.lock().expect("store").write_as("x", 0);
        let b = start(&store, "b");
        sleep(RETRY * 2).await;
        b.stop.cancel();
        b.task.await.expect("elector");
        assert!(log(&store).iter().all(|l| l == "b: GET 200"));
        assert_eq!(store.lock().expect("store").spec()["holderIdentity"], "x");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_restarted_with_the_same_identity_resumes_its_claim_at_once() {
        let store = Shared::default();
        store.lock().expect("store").write_as("a", 0);
        let mut a = start(&store, "a");
        a.until(true, Duration::ZERO + Duration::from_millis(1))
            .await;
        assert_eq!(log(&store), ["a: GET 200", "a: PUT 200"]);
        assert_eq!(store.lock().expect("store").spec()["leaseTransitions"], 0);
    }

    #[test]
    fn lease_names_and_identities_are_checked() {
        assert_eq!(lease_name_problem("runscale.ci-1"), None);
        assert!(lease_name_problem("").is_some());
        assert!(lease_name_problem("Runscale").is_some());
        assert!(lease_name_problem("-runscale").is_some());
        assert!(lease_name_problem(&"a".repeat(254)).is_some());
        assert_eq!(identity_problem("runscale-7d9f_1"), None);
        assert!(identity_problem("").is_some());
        assert!(identity_problem("a\nb").is_some());
        let id = default_identity();
        assert!(id.ends_with(&format!("_{}", std::process::id())), "{id}");
        assert_eq!(identity_problem(&id), None);
    }
}
