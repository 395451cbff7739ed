//! [`Kubernetes`]: the [`Backend`] implementation. It connects on first use (so building it
//! needs no network), keeps the pod inventory in a watched store, and remembers what it
//! launched and terminated until the store has caught up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use runscale_core::adapter_type::{PoolContext, Template as _, Validate as _};
use runscale_core::{
    Backend, Credentials, Error, ErrorKind, Instance, InstanceId, InstanceState, LaunchRequest,
    PoolId, Result,
};
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;
use tracing::{info, warn};

use super::config::{Config, PoolTemplate, Source, pool_name_problem};
use super::convert;
use super::errors::{api_error, is_not_found, secret_error, status_code};
use super::inventory::{Inventory, Subscribers, locked};
use super::template::{
    self, ANN_DISRUPTION, ANN_KARPENTER, ANN_SAFE_TO_EVICT, LABEL_BUILDSCALER,
    LABEL_BUILDSCALER_QUEUE, LABEL_POOL, LABEL_RC_NAME, LABEL_RC_ORG, Owner, PodParams, Resolved,
};

/// Longest wait for one API call.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the first list of the inventory.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// A terminated pod the store never showed is forgotten after this long.
const TERMINATED_MEMORY: Duration = Duration::from_secs(600);

/// Runs runners as Kubernetes pods: one pod per runner, its credentials in a Secret owned by
/// the pod.
///
/// See the [module documentation](super) for the objects it makes and how it reads them.
pub struct Kubernetes {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    templates: HashMap<PoolId, PoolTemplate>,
    conn: OnceCell<Conn>,
    subscribers: Subscribers,
    /// Pods this process created, until the store shows them (or a list that started after
    /// the launch did not).
    launched: Mutex<HashMap<String, Launched>>,
    /// Pods this process deleted (or found gone), reported `stopping` until the store drops
    /// them.
    terminated: Mutex<HashMap<String, Instant>>,
    /// Resolved template per pool, with when it was fetched.
    resolved: tokio::sync::Mutex<HashMap<PoolId, Cached>>,
    /// The last reason reported per pending pod, so each is logged once.
    pending: Mutex<HashMap<String, String>>,
}

struct Conn {
    client: Client,
    namespace: String,
    inventory: Inventory,
}

struct Launched {
    pool: PoolId,
    instance: Instance,
    at: Instant,
}

/// A pool's template as last fetched: `None` when its source does not exist.
struct Cached {
    resolved: std::result::Result<Resolved, Error>,
    at: Instant,
}

impl fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pools: Vec<&str> = self.inner.templates.keys().map(PoolId::as_str).collect();
        pools.sort_unstable();
        f.debug_struct("Kubernetes")
            .field("config", &self.inner.config)
            .field("pools", &pools)
            .finish()
    }
}

fn misconfigured(op: &'static str, message: String) -> Error {
    Error::new(op, ErrorKind::Misconfigured, message)
}

fn join_errors(prefix: &str, errors: &[(String, String)]) -> String {
    errors
        .iter()
        .map(|(field, msg)| format!("{prefix}{field}: {msg}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs one API call with a deadline.
async fn call<T>(
    op: &'static str,
    what: &str,
    f: impl Future<Output = std::result::Result<T, kube::Error>>,
) -> std::result::Result<std::result::Result<T, kube::Error>, Error> {
    tokio::time::timeout(API_TIMEOUT, f).await.map_err(|_| {
        Error::new(
            op,
            ErrorKind::Transient,
            format!("{what}: no answer within {API_TIMEOUT:?}"),
        )
    })
}

impl Kubernetes {
    /// Builds the backend for these pools: validates the configuration, the templates and
    /// the pool names (runner names are pod names). Does not connect: the cluster is reached
    /// on first use, so this may be called outside a Tokio runtime.
    pub fn new(config: Config, templates: HashMap<PoolId, PoolTemplate>) -> Result<Self> {
        const OP: &str = "kubernetes.new";
        if let Err(errors) = config.validate() {
            return Err(misconfigured(OP, join_errors("", &errors)));
        }
        let mut pools: Vec<&PoolId> = templates.keys().collect();
        pools.sort();
        for pool in pools {
            if let Some(problem) = pool_name_problem(pool.as_str()) {
                return Err(misconfigured(OP, problem));
            }
            if let Err(errors) = templates[pool].validate_for(PoolContext::single(pool.as_str())) {
                return Err(misconfigured(
                    OP,
                    join_errors(&format!("pool {pool}: "), &errors),
                ));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                templates,
                conn: OnceCell::new(),
                subscribers: Arc::new(Mutex::new(Vec::new())),
                launched: Mutex::new(HashMap::new()),
                terminated: Mutex::new(HashMap::new()),
                resolved: tokio::sync::Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A client from the configuration's kubeconfig and context (or the in-cluster service
/// account), and the namespace to work in.
async fn client(c: &Config) -> Result<(Client, String)> {
    const OP: &str = "kubernetes.connect";
    let options = KubeConfigOptions {
        context: c.context.clone(),
        ..KubeConfigOptions::default()
    };
    let kube_config = match (&c.kubeconfig, &c.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                misconfigured(
                    OP,
                    format!("kubeconfig: cannot use {}: {e}", path.display()),
                )
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| kubeconfig_error(OP, c, e))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| kubeconfig_error(OP, c, e))?,
        (None, None) => kube::Config::infer().await.map_err(|e| {
            misconfigured(
                OP,
                format!(
                    "kubeconfig: none given, and neither KUBECONFIG, ~/.kube/config nor \
                         an in-cluster service account works: {e}"
                ),
            )
        })?,
    };
    let namespace = c
        .namespace
        .clone()
        .unwrap_or_else(|| kube_config.default_namespace.clone());
    // Both ring and aws-lc-rs may be compiled into the binary; rustls then has no
    // process default. Installing one fails harmlessly if somebody already did.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_from(kube_config)
        .map_err(|e| misconfigured(OP, format!("kubeconfig: cannot build a client: {e}")))?;
    Ok((client, namespace))
}

impl Kubernetes {
    /// circleci-runner-autoscaler's discovery: the CronJobs of the configured namespace
    /// labelled `resource-class-org: {org}` and `resource-class-name`, as (resource class
    /// `org/name`, CronJob name) sorted by class. Needs `list` on `cronjobs`.
    pub async fn discover_cron_jobs(config: &Config, org: &str) -> Result<Vec<(String, String)>> {
        const OP: &str = "kubernetes.discover";
        if let Err(errors) = config.validate() {
            return Err(misconfigured(OP, join_errors("", &errors)));
        }
        let (client, namespace) = client(config).await?;
        let api: Api<CronJob> = Api::namespaced(client, &namespace);
        let params = ListParams::default().labels(&format!("{LABEL_RC_ORG}={org},{LABEL_RC_NAME}"));
        let list = api.list(&params).await.map_err(|e| {
            api_error(
                OP,
                format!("listing CronJobs labelled {LABEL_RC_ORG}={org} in namespace {namespace}"),
                e,
            )
        })?;
        let mut found: Vec<(String, String)> = list
            .items
            .into_iter()
            .filter_map(|cj| {
                let name = cj.metadata.name?;
                let class = cj.metadata.labels?.get(LABEL_RC_NAME)?.clone();
                (!class.is_empty()).then(|| (format!("{org}/{class}"), name))
            })
            .collect();
        found.sort();
        Ok(found)
    }
}

/// A Job labelled as a Buildscaler template (`app.elotl.co: buildscaler` and a
/// `buildscaler.elotl.co/queue`), as [`Kubernetes::discover_template_jobs`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateJob {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID (the template version).
    pub uid: String,
    /// `metadata.creationTimestamp` (RFC 3339, UTC), empty if the server sent none.
    pub created: String,
    /// The value of its `buildscaler.elotl.co/queue` label (maybe empty).
    pub queue: String,
    /// Its `spec.parallelism`.
    pub parallelism: Option<i32>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Most objects read by one discovery list (pages of [`DISCOVERY_PAGE`]).
const MAX_DISCOVERED: usize = 10_000;
/// Page size of discovery lists.
const DISCOVERY_PAGE: u32 = 500;

impl Kubernetes {
    /// Buildscaler's discovery: the Jobs labelled `app.elotl.co=buildscaler` and
    /// `buildscaler.elotl.co/queue`, of every namespace (`all_namespaces`, a cluster-wide list
    /// that needs `list` on `jobs` cluster-wide) or of the configured one, sorted by namespace
    /// and name. Every page is read; more than 10,000 Jobs is an error.
    pub async fn discover_template_jobs(
        config: &Config,
        all_namespaces: bool,
    ) -> Result<Vec<TemplateJob>> {
        let (key, value) = LABEL_BUILDSCALER;
        let selector = format!("{key}={value},{LABEL_BUILDSCALER_QUEUE}");
        let jobs: Vec<Job> = list_every_page(config, all_namespaces, "Jobs", &selector).await?;
        let mut found: Vec<TemplateJob> = jobs.into_iter().filter_map(template_job).collect();
        found.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(found)
    }

    /// The runner pods labelled `app.elotl.co=buildscaler` (their Job's label) of the
    /// configured namespace or of every namespace, as (namespace, labels), so that the pods of
    /// a Job that is gone can still be retired. Every page is read; more than 10,000 pods is
    /// an error.
    pub async fn discover_template_job_pods(
        config: &Config,
        all_namespaces: bool,
    ) -> Result<Vec<(String, BTreeMap<String, String>)>> {
        let (key, value) = LABEL_BUILDSCALER;
        let selector = format!("{key}={value},{LABEL_POOL}");
        let pods: Vec<Pod> = list_every_page(config, all_namespaces, "pods", &selector).await?;
        Ok(pods
            .into_iter()
            .filter_map(|p| Some((p.metadata.namespace?, p.metadata.labels?)))
            .collect())
    }
}

/// Every `kind` object matching `selector` in the configured namespace or in all of them
/// (pages of [`DISCOVERY_PAGE`], at most [`MAX_DISCOVERED`]).
async fn list_every_page<K>(
    config: &Config,
    all_namespaces: bool,
    kind: &str,
    selector: &str,
) -> Result<Vec<K>>
where
    K: NamespacedObject,
{
    const OP: &str = "kubernetes.discover";
    if let Err(errors) = config.validate() {
        return Err(misconfigured(OP, join_errors("", &errors)));
    }
    let (client, namespace) = client(config).await?;
    let (api, scope): (Api<K>, String) = if all_namespaces {
        (Api::all(client), "all namespaces".to_owned())
    } else {
        (
            Api::namespaced(client, &namespace),
            format!("namespace {namespace}"),
        )
    };
    let what = format!("listing {kind} labelled {selector} in {scope}");
    let mut params = ListParams::default().labels(selector).limit(DISCOVERY_PAGE);
    let mut found = Vec::new();
    loop {
        let page = call(OP, &what, api.list(&params))
            .await?
            .map_err(|e| api_error(OP, &what, e))?;
        found.extend(page.items);
        if found.len() > MAX_DISCOVERED {
            return Err(misconfigured(
                OP,
                format!("{what}: more than {MAX_DISCOVERED}"),
            ));
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(found),
        }
    }
}

/// A listed Job as a [`TemplateJob`] (`None` without a name or namespace).
fn template_job(job: Job) -> Option<TemplateJob> {
    let meta = job.metadata;
    let created = meta
        .creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Some(TemplateJob {
        namespace: meta.namespace?,
        name: meta.name?,
        uid: meta.uid.unwrap_or_default(),
        created,
        queue: meta
            .labels
            .and_then(|mut l| l.remove(LABEL_BUILDSCALER_QUEUE))
            .unwrap_or_default(),
        parallelism: job.spec.and_then(|s| s.parallelism),
        annotations: meta.annotations.unwrap_or_default(),
    })
}

impl Inner {
    /// The connection, made on first use: client, namespace and the running inventory.
    async fn conn(&self) -> Result<&Conn> {
        self.conn.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Conn> {
        let c = &self.config;
        let (client, namespace) = client(c).await?;
        let mut pools: Vec<&str> = self.templates.keys().map(PoolId::as_str).collect();
        pools.sort_unstable();
        let selector = format!("{LABEL_POOL} in ({})", pools.join(","));
        let inventory = Inventory::start(
            Api::namespaced(client.clone(), &namespace),
            selector,
            c.resync_period,
            self.subscribers.clone(),
        );
        info!(
            namespace,
            pools = pools.len(),
            "kubernetes backend connected"
        );
        Ok(Conn {
            client,
            namespace,
            inventory,
        })
    }

    fn settings(&self, op: &'static str, pool: &PoolId) -> Result<&PoolTemplate> {
        self.templates
            .get(pool)
            .ok_or_else(|| misconfigured(op, format!("pool {pool} has no kubernetes template")))
    }

    /// The pool's template, fetched again when older than [`Config::template_refresh`].
    async fn resolve(&self, conn: &Conn, pool: &PoolId) -> Result<Resolved> {
        const OP: &str = "kubernetes.template";
        let settings = self.settings(OP, pool)?;
        let source = settings.source().ok_or_else(|| {
            misconfigured(OP, format!("pool {pool}: the template has no valid source"))
        })?;
        if let Source::Inline(pod) = source {
            return Ok(template::from_inline(pod));
        }
        let mut cache = self.resolved.lock().await;
        if let Some(c) = cache.get(pool)
            && c.at.elapsed() < self.config.template_refresh
        {
            return c.resolved.clone();
        }
        let fetched = fetch(conn, &source).await;
        match &fetched {
            // Not answered: keep what we had, and do not remember the failure.
            Err(e) if e.kind() == ErrorKind::Transient => {
                return match cache.get(pool) {
                    Some(c) => c.resolved.clone(),
                    None => fetched,
                };
            }
            _ => {}
        }
        cache.insert(
            pool.clone(),
            Cached {
                resolved: fetched.clone(),
                at: Instant::now(),
            },
        );
        fetched
    }

    /// The version of the pool's template source now: `Some("missing")` when the source is
    /// gone or unusable, `None` when it cannot be told (API unreachable).
    async fn current_version(&self, conn: &Conn, pool: &PoolId) -> Option<String> {
        match self.resolve(conn, pool).await {
            Ok(r) => Some(r.version),
            Err(e) if e.kind() == ErrorKind::Transient => None,
            Err(e) => {
                warn!(pool = %pool, error = %e, "the template source is unusable; its pods are retired once idle");
                Some("missing".to_owned())
            }
        }
    }

    /// Deletes a pod (by uid, so a newer pod of the same name is never hit). Gone is `Ok`.
    async fn delete_pod(&self, conn: &Conn, op: &'static str, pod: &Pod) -> Result<()> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(
                u32::try_from(self.config.grace_period.as_secs()).unwrap_or(u32::MAX),
            ),
            preconditions: pod.metadata.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let what = format!("pod {name}");
        match call(op, &what, api.delete(&name, &params)).await? {
            Ok(_) => {}
            // Gone, or replaced by another pod of the same name (uid precondition).
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => {}
            Err(e) => return Err(api_error(op, what, e)),
        }
        locked(&self.terminated).insert(name, Instant::now());
        Ok(())
    }

    /// Deletes a runner Job with background propagation (by uid when known, so a newer Job of
    /// the same name is never hit), then its pods with the configured grace period. Gone is
    /// `Ok`.
    async fn delete_job(
        &self,
        conn: &Conn,
        op: &'static str,
        name: &str,
        uid: Option<String>,
    ) -> Result<()> {
        let api: Api<Job> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let what = format!("Job {name}");
        match call(op, &what, api.delete(name, &params)).await? {
            Ok(_) => {}
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => {}
            Err(e) => return Err(api_error(op, what, e)),
        }
        locked(&self.terminated).insert(name.to_owned(), Instant::now());
        let pods = conn.inventory.store.state_filter(|p| {
            convert::job_of(p) == Some(name) && p.metadata.deletion_timestamp.is_none()
        });
        for pod in pods {
            self.delete_pod(conn, op, &pod).await?;
        }
        Ok(())
    }

    /// Remembers a launched instance until the store shows it.
    fn launched(&self, pool: &PoolId, what: &str, instance: Option<Instance>) -> Result<Instance> {
        let instance = instance.ok_or_else(|| {
            Error::new(
                "kubernetes.launch",
                ErrorKind::Protocol,
                format!("{what}: created without a name"),
            )
        })?;
        locked(&self.launched).insert(
            instance.id.to_string(),
            Launched {
                pool: pool.clone(),
                instance: instance.clone(),
                at: Instant::now(),
            },
        );
        Ok(instance)
    }

    /// Creates the runner's credentials Secret, owned by its pod or Job.
    async fn create_secret(
        &self,
        conn: &Conn,
        pool: &PoolId,
        owner: &Owner<'_>,
        credentials: &Credentials,
    ) -> Result<()> {
        const OP: &str = "kubernetes.launch";
        let secret = template::render_secret(owner, pool.as_str(), credentials)
            .map_err(|msg| misconfigured(OP, format!("pool {pool}: {msg}")))?;
        let name = owner.meta.name.as_deref().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let what = format!("Secret {}", template::secret_name(name));
        match call(OP, &what, secrets.create(&PostParams::default(), &secret)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(secret_error(OP, &what, &e)),
            Err(e) => Err(e),
        }
    }

    /// The runner Jobs of `pools` (label `runscale/pool`), listed; empty when none of them
    /// makes Jobs.
    async fn jobs(&self, conn: &Conn, pools: &[&PoolId]) -> Result<Vec<Job>> {
        const OP: &str = "kubernetes.instances";
        let mut names: Vec<&str> = pools
            .iter()
            .filter(|p| {
                self.templates
                    .get(**p)
                    .is_some_and(PoolTemplate::makes_jobs)
            })
            .map(|p| p.as_str())
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        names.sort_unstable();
        let api: Api<Job> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let selector = format!("{LABEL_POOL} in ({})", names.join(","));
        let what = format!("runner Jobs in namespace {}", conn.namespace);
        Ok(call(
            OP,
            &what,
            api.list(&ListParams::default().labels(&selector)),
        )
        .await?
        .map_err(|e| api_error(OP, &what, e))?
        .items)
    }

    /// `terminate` of a runner Job: reads it, checks it is this pool's, deletes it and its
    /// pod. `false` when there is no such Job.
    async fn terminate_job(&self, conn: &Conn, pool: &PoolId, name: &str) -> Result<bool> {
        const OP: &str = "kubernetes.terminate";
        let api: Api<Job> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let what = format!("Job {name}");
        let job = match call(OP, &what, api.get(name)).await? {
            Ok(j) => j,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(api_error(OP, &what, e)),
        };
        let of_pool = job
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_POOL))
            .map(String::as_str);
        if of_pool != Some(pool.as_str()) {
            warn!(pool = %pool, job = name, "not terminating a Job that is not a runner of this pool");
            return Ok(true);
        }
        self.delete_job(conn, OP, name, job.metadata.uid.clone())
            .await?;
        info!(pool = %pool, job = name, grace = ?self.config.grace_period, "runner Job deleted");
        Ok(true)
    }

    /// Logs (once per reason) why a pending pod has not started.
    fn report_pending(&self, pool: &str, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let reason = if convert::phase(pod) == "Pending" {
            convert::pending_reason(pod)
        } else {
            None
        };
        let mut pending = locked(&self.pending);
        match reason {
            Some(reason) => {
                if pending.get(&name) != Some(&reason) {
                    warn!(pool, pod = name, reason, "runner pod is not starting");
                    pending.insert(name, reason);
                }
            }
            None => {
                pending.remove(&name);
            }
        }
    }
}

fn kubeconfig_error(op: &'static str, c: &Config, e: kube::config::KubeconfigError) -> Error {
    use kube::config::KubeconfigError as K;
    let field = match (&e, &c.context) {
        (K::LoadContext(_) | K::LoadClusterOfContext(_), Some(_)) => "context",
        _ => "kubeconfig",
    };
    let file = c.kubeconfig.as_ref().map_or_else(
        || "the default kubeconfig".to_owned(),
        |p| p.display().to_string(),
    );
    misconfigured(op, format!("{field}: cannot use {file}: {e}"))
}

/// A namespaced Kubernetes object type the backend reads (pods, Jobs, CronJobs).
trait NamespacedObject:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + fmt::Debug
{
}

impl<K> NamespacedObject for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + fmt::Debug
{
}

/// How a template object is found: by name, or as the only one with these labels.
enum Lookup<'a> {
    Name(&'a str),
    Labels(String),
}

/// Gets the one `kind` object `by` names in the backend's namespace.
async fn lookup<K>(conn: &Conn, kind: &str, by: Lookup<'_>) -> Result<K>
where
    K: NamespacedObject,
{
    const OP: &str = "kubernetes.template";
    let ns = &conn.namespace;
    let api: Api<K> = Api::namespaced(conn.client.clone(), ns);
    match by {
        Lookup::Name(name) => {
            let what = format!("{kind} {name} in namespace {ns}");
            call(OP, &what, api.get(name))
                .await?
                .map_err(|e| api_error(OP, &what, e))
        }
        Lookup::Labels(selector) => {
            let what = format!("{kind}s labelled {selector} in namespace {ns}");
            let params = ListParams::default().labels(&selector);
            let mut items = call(OP, &what, api.list(&params))
                .await?
                .map_err(|e| api_error(OP, &what, e))?
                .items;
            match items.len() {
                0 => Err(Error::new(
                    OP,
                    ErrorKind::NotFound,
                    format!("{what}: none found"),
                )),
                1 => Ok(items.remove(0)),
                n => Err(misconfigured(
                    OP,
                    format!("{what}: {n} found, exactly one must match"),
                )),
            }
        }
    }
}

/// Fetches a CronJob or Job template from the cluster.
async fn fetch(conn: &Conn, source: &Source<'_>) -> Result<Resolved> {
    let unusable = |msg: String| misconfigured("kubernetes.template", msg);
    match *source {
        Source::Inline(pod) => Ok(template::from_inline(pod)),
        Source::CronJobNamed(name) => {
            let cron: CronJob = lookup(conn, "CronJob", Lookup::Name(name)).await?;
            template::from_cron_job(&cron).map_err(unusable)
        }
        Source::CronJobClass(org, name) => {
            let selector = format!("{LABEL_RC_ORG}={org},{LABEL_RC_NAME}={name}");
            let cron: CronJob = lookup(conn, "CronJob", Lookup::Labels(selector)).await?;
            template::from_cron_job(&cron).map_err(unusable)
        }
        Source::JobNamed(name) => {
            let job: Job = lookup(conn, "Job", Lookup::Name(name)).await?;
            template::from_job(&job).map_err(unusable)
        }
        Source::JobQueue(queue) => {
            let (key, value) = LABEL_BUILDSCALER;
            let selector = format!("{key}={value},{LABEL_BUILDSCALER_QUEUE}={queue}");
            let job: Job = lookup(conn, "Job", Lookup::Labels(selector)).await?;
            template::from_job(&job).map_err(unusable)
        }
    }
}

#[async_trait]
impl Backend for Kubernetes {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn instances(&self, pools: &[PoolId]) -> Result<HashMap<PoolId, Vec<Instance>>> {
        const OP: &str = "kubernetes.instances";
        let inner = &self.inner;
        let conn = inner.conn().await?;
        let store = &conn.inventory.store;
        match tokio::time::timeout(READY_TIMEOUT, store.wait_until_ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::new(
                    OP,
                    ErrorKind::Transient,
                    format!("pod watch stopped: {e}"),
                ));
            }
            Err(_) => {
                // Say why, if the watcher was told: a 403 is a configuration error.
                let (kind, why) = conn.inventory.last_error().unwrap_or((
                    ErrorKind::Transient,
                    format!("no answer within {READY_TIMEOUT:?}"),
                ));
                return Err(Error::new(
                    OP,
                    kind,
                    format!(
                        "cannot list runner pods in namespace {}: {why}",
                        conn.namespace
                    ),
                ));
            }
        }
        let wanted: HashSet<&PoolId> = pools.iter().collect();
        let mut versions: HashMap<&PoolId, Option<String>> = HashMap::new();
        for pool in pools.iter().filter(|p| inner.templates.contains_key(*p)) {
            versions.insert(pool, inner.current_version(conn, pool).await);
        }
        // Runner Jobs are listed before the pods are read: a Job whose pod the store does not
        // show yet is reported from the Job (booting), never missed.
        let jobs = inner
            .jobs(conn, &wanted.iter().copied().collect::<Vec<_>>())
            .await?;
        let pods: Vec<Arc<Pod>> = store.state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(conn.namespace.as_str())
                && convert::pool_of(p).is_some_and(|pool| wanted.contains(&PoolId::new(pool)))
        });
        let mut out: HashMap<PoolId, Vec<Instance>> =
            pools.iter().map(|p| (p.clone(), Vec::new())).collect();
        let mut seen: HashSet<String> = HashSet::new();
        // Finished pods (bare) and finished runner Jobs (by name and uid) to clean up.
        let mut finished: Vec<Arc<Pod>> = Vec::new();
        let mut finished_jobs: Vec<(String, String, Option<String>)> = Vec::new();
        {
            let terminated = locked(&inner.terminated);
            for pod in &pods {
                let Some(pool) = convert::pool_of(pod).map(PoolId::new) else {
                    continue;
                };
                let version = versions.get(&pool).cloned().flatten();
                let Some(mut instance) = convert::instance(pod, version.as_deref()) else {
                    continue;
                };
                seen.insert(instance.id.to_string());
                if terminated.contains_key(instance.id.as_str()) {
                    instance.state = InstanceState::Stopping;
                }
                if convert::is_finished(pod) && pod.metadata.deletion_timestamp.is_none() {
                    match convert::job_of(pod) {
                        Some(job) => finished_jobs.push((pool.to_string(), job.to_owned(), None)),
                        None => finished.push(pod.clone()),
                    }
                }
                inner.report_pending(pool.as_str(), pod);
                out.entry(pool).or_default().push(instance);
            }
            // Runner Jobs without a pod: not made yet (or never: a quota, an admission
            // webhook), or whose pod is gone.
            for job in &jobs {
                let Some(pool) = job
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_POOL))
                    .map(PoolId::new)
                else {
                    continue;
                };
                let version = versions.get(&pool).cloned().flatten();
                let Some(mut instance) = convert::job_instance(job, version.as_deref()) else {
                    continue;
                };
                if !wanted.contains(&pool) || !seen.insert(instance.id.to_string()) {
                    continue;
                }
                if terminated.contains_key(instance.id.as_str()) {
                    instance.state = InstanceState::Stopping;
                }
                if convert::job_finished(job) && job.metadata.deletion_timestamp.is_none() {
                    finished_jobs.push((
                        pool.to_string(),
                        instance.id.to_string(),
                        job.metadata.uid.clone(),
                    ));
                }
                out.entry(pool).or_default().push(instance);
            }
        }
        // What this process launched and the store does not show yet.
        let synced_from = conn.inventory.synced_from();
        {
            let mut launched = locked(&inner.launched);
            let terminated = locked(&inner.terminated);
            launched
                .retain(|name, l| !seen.contains(name) && synced_from.is_none_or(|s| s <= l.at));
            for (name, l) in launched.iter() {
                if wanted.contains(&l.pool) {
                    let mut instance = l.instance.clone();
                    if terminated.contains_key(name) {
                        instance.state = InstanceState::Stopping;
                    }
                    out.entry(l.pool.clone()).or_default().push(instance);
                }
            }
        }
        {
            let launched = locked(&inner.launched);
            let mut terminated = locked(&inner.terminated);
            // Every pod of this backend (by instance: pod or runner Job), not only the
            // requested pools', and the runner Jobs listed.
            let all = store.state();
            let owned: HashSet<&str> = all
                .iter()
                .filter_map(|p| convert::instance_id(p))
                .chain(jobs.iter().filter_map(|j| j.metadata.name.as_deref()))
                .collect();
            terminated.retain(|name, at| {
                (owned.contains(name.as_str()) || launched.contains_key(name))
                    && at.elapsed() < TERMINATED_MEMORY
            });
            let pod_names: HashSet<&str> = all
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            locked(&inner.pending).retain(|name, _| pod_names.contains(name.as_str()));
        }
        // Finished pods are cleaned up (their runner process is gone); they stay listed as
        // stopping until the store drops them. A runner Job goes with its pod, so the Job
        // controller makes no other.
        for pod in finished {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if locked(&inner.terminated).contains_key(&name) {
                continue;
            }
            let pool = convert::pool_of(&pod).unwrap_or_default();
            info!(
                pool,
                pod = name,
                phase = convert::phase(&pod),
                "runner pod finished; deleting it"
            );
            if let Err(e) = inner.delete_pod(conn, OP, &pod).await {
                warn!(pool, pod = name, error = %e, "cannot delete a finished runner pod");
            }
        }
        finished_jobs.sort();
        finished_jobs.dedup_by(|a, b| a.1 == b.1);
        for (pool, name, uid) in finished_jobs {
            if locked(&inner.terminated).contains_key(&name) {
                continue;
            }
            info!(pool, job = name, "runner Job finished; deleting it");
            if let Err(e) = inner.delete_job(conn, OP, &name, uid).await {
                warn!(pool, job = name, error = %e, "cannot delete a finished runner Job");
            }
        }
        for list in out.values_mut() {
            // One instance per runner Job: while a failed pod and its replacement are both
            // listed, the livelier one stands for it.
            list.sort_by(|a, b| a.id.cmp(&b.id).then(rank(a.state).cmp(&rank(b.state))));
            list.dedup_by(|a, b| a.id == b.id);
            list.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
        }
        Ok(out)
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Instance> {
        const OP: &str = "kubernetes.launch";
        let inner = &self.inner;
        let pool = &request.pool;
        let settings = inner.settings(OP, pool)?;
        let [registration] = request.runners.as_slice() else {
            return Err(misconfigured(
                OP,
                format!(
                    "pool {pool}: one pod hosts one runner, but {} were registered \
                     (set runners_per_instance to 1)",
                    request.runners.len()
                ),
            ));
        };
        let conn = inner.conn().await?;
        let resolved = inner.resolve(conn, pool).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                misconfigured(OP, format!("pool {pool}: {}", e.message()))
            } else {
                e
            }
        })?;
        let params = PodParams {
            pool: pool.as_str(),
            runner_name: &registration.runner_name,
            namespace: &conn.namespace,
            template_hash: &request.template_hash,
            resolved: &resolved,
            settings,
        };
        let unusable = |msg: String| misconfigured(OP, format!("pool {pool}: {msg}"));
        let name = registration.runner_name.clone();
        if let Some(job) = template::render_job(&params).map_err(unusable)? {
            let jobs: Api<Job> = Api::namespaced(conn.client.clone(), &conn.namespace);
            let what = format!("Job {name}");
            let created = call(OP, &what, jobs.create(&PostParams::default(), &job))
                .await?
                .map_err(|e| api_error(OP, &what, e))?;
            // The Secret is owned by the Job: the garbage collector deletes it with the Job.
            let owner = Owner::job(&created);
            if let Err(e) = inner
                .create_secret(conn, pool, &owner, &registration.credentials)
                .await
            {
                if let Err(d) = inner
                    .delete_job(conn, OP, &name, created.metadata.uid.clone())
                    .await
                {
                    warn!(pool = %pool, job = name, error = %d, "cannot delete a Job whose Secret failed; it is reaped at boot_timeout");
                }
                return Err(e);
            }
            info!(pool = %pool, job = name, origin = resolved.origin, "runner Job created");
            return inner.launched(pool, &what, convert::job_instance(&created, None));
        }
        let pod = template::render_pod(&params).map_err(unusable)?;
        let pods: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let what = format!("pod {name}");
        let created = call(OP, &what, pods.create(&PostParams::default(), &pod))
            .await?
            .map_err(|e| api_error(OP, &what, e))?;
        // The Secret is owned by the pod: the garbage collector deletes it with the pod.
        if let Err(e) = inner
            .create_secret(conn, pool, &Owner::pod(&created), &registration.credentials)
            .await
        {
            if let Err(d) = inner.delete_pod(conn, OP, &created).await {
                warn!(pool = %pool, pod = name, error = %d, "cannot delete a pod whose Secret failed; it is reaped at boot_timeout");
            }
            return Err(e);
        }
        info!(pool = %pool, pod = name, origin = resolved.origin, "runner pod created");
        inner.launched(pool, &what, convert::instance(&created, None))
    }

    async fn terminate(&self, pool: &PoolId, instance: &InstanceId) -> Result<()> {
        const OP: &str = "kubernetes.terminate";
        let inner = &self.inner;
        let name = instance.as_str();
        if super::config::dns_subdomain_problem(name).is_some() {
            // Not a pod name: nothing of ours to terminate.
            return Ok(());
        }
        let conn = inner.conn().await?;
        // A runner Job; else (no such Job) a pod, such as one an earlier runscale made.
        if inner
            .templates
            .get(pool)
            .is_some_and(PoolTemplate::makes_jobs)
            && inner.terminate_job(conn, pool, name).await?
        {
            return Ok(());
        }
        let pods: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let what = format!("pod {name}");
        let pod = match call(OP, &what, pods.get(name)).await? {
            Ok(p) => p,
            Err(e) if is_not_found(&e) => {
                locked(&inner.terminated).insert(name.to_owned(), Instant::now());
                return Ok(());
            }
            Err(e) => return Err(api_error(OP, &what, e)),
        };
        if convert::pool_of(&pod) != Some(pool.as_str()) {
            warn!(pool = %pool, pod = name, "not terminating a pod that is not a runner of this pool");
            return Ok(());
        }
        if pod.metadata.deletion_timestamp.is_some() {
            locked(&inner.terminated).insert(name.to_owned(), Instant::now());
            return Ok(());
        }
        if convert::phase(&pod) == "Pending" {
            let reason =
                convert::pending_reason(&pod).unwrap_or_else(|| "no reason reported".into());
            warn!(pool = %pool, pod = name, reason, "deleting a runner pod that never started");
        }
        inner.delete_pod(conn, OP, &pod).await?;
        info!(pool = %pool, pod = name, grace = ?inner.config.grace_period, "runner pod deleted");
        Ok(())
    }

    async fn probe(&self) -> Result<String> {
        const OP: &str = "kubernetes.probe";
        let inner = &self.inner;
        let conn = inner.conn().await?;
        let pods: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let what = format!("pods in namespace {}", conn.namespace);
        call(
            OP,
            &what,
            pods.list(&ListParams::default().labels(LABEL_POOL).limit(1)),
        )
        .await?
        .map_err(|e| api_error(OP, &what, e))?;
        let mut pools: Vec<&PoolId> = inner.templates.keys().collect();
        pools.sort();
        let mut origins = Vec::with_capacity(pools.len());
        for pool in pools {
            let r = inner
                .resolve(conn, pool)
                .await
                .map_err(|e| Error::new(OP, e.kind(), format!("pool {pool}: {}", e.message())))?;
            origins.push(format!("{pool} from {}", r.origin));
        }
        Ok(format!(
            "namespace {} reachable; templates: {}",
            conn.namespace,
            if origins.is_empty() {
                "none".to_owned()
            } else {
                origins.join(", ")
            }
        ))
    }

    async fn mark_busy(&self, pool: &PoolId, busy: &[InstanceId]) -> Result<()> {
        const OP: &str = "kubernetes.mark_busy";
        let inner = &self.inner;
        let conn = inner.conn().await?;
        let busy: HashSet<&str> = busy.iter().map(InstanceId::as_str).collect();
        let pods = conn.inventory.store.state_filter(|p| {
            convert::pool_of(p) == Some(pool.as_str())
                && p.metadata.namespace.as_deref() == Some(conn.namespace.as_str())
        });
        let api: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let mut first_error = None;
        let mut known: HashSet<&str> = HashSet::new();
        let mut changes: Vec<(String, bool)> = Vec::new();
        for pod in &pods {
            let (Some(name), Some(id)) = (pod.metadata.name.as_deref(), convert::instance_id(pod))
            else {
                continue;
            };
            known.insert(id);
            let annotations = pod.metadata.annotations.as_ref();
            let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
            if get(ANN_DISRUPTION) == Some("template")
                || convert::state(pod) == InstanceState::Stopping
            {
                continue;
            }
            let want = busy.contains(id);
            if want != (get(ANN_KARPENTER) == Some("true")) {
                changes.push((name.to_owned(), want));
            }
        }
        // Busy pods the store does not show yet (a runner Job's pod is named by the Job
        // controller: patching the Job's name finds nothing, and the next pass protects it).
        changes.extend(
            busy.iter()
                .filter(|n| !known.contains(**n))
                .map(|n| ((*n).to_owned(), true)),
        );
        for (name, protect) in changes {
            let annotations = if protect {
                serde_json::json!({ANN_KARPENTER: "true", ANN_SAFE_TO_EVICT: "false"})
            } else {
                serde_json::json!({ANN_KARPENTER: null, ANN_SAFE_TO_EVICT: null})
            };
            let patch = Patch::Merge(serde_json::json!({"metadata": {"annotations": annotations}}));
            let what = format!("pod {name}");
            let result =
                match call(OP, &what, api.patch(&name, &PatchParams::default(), &patch)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if is_not_found(&e) => Ok(()),
                    Ok(Err(e)) => Err(api_error(OP, &what, e)),
                    Err(e) => Err(e),
                };
            match result {
                Ok(()) => {
                    info!(pool = %pool, pod = name, busy = protect, "disruption protection updated")
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn subscribe(&self, events: mpsc::UnboundedSender<PoolId>) {
        locked(&self.inner.subscribers).push(events);
    }
}

/// Order of preference among the pods of one runner Job: running, booting, stopping.
fn rank(state: InstanceState) -> u8 {
    match state {
        InstanceState::Running => 0,
        InstanceState::Booting => 1,
        _ => 2,
    }
}
