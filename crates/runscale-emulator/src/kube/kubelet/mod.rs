//! The scheduler and kubelet of the one simulated node.
//!
//! - **Scheduler**: after `scheduling_delay`, binds each pending pod (`spec.nodeName`,
//!   condition `PodScheduled=True`), unless the node is cordoned, its labels do not satisfy the
//!   pod's `nodeSelector`, or it already holds `max_pods` unfinished pods; then the pod stays
//!   `Pending` with `PodScheduled=False`, reason `Unschedulable`, and a scheduler-like message.
//!   Pods naming another `schedulerName` are left alone.
//! - **Kubelet**: after `start_delay`, runs the pod's first container as a local process (see
//!   [`process`]); the pod goes `Running` with a pod IP, `startTime`, conditions and container
//!   statuses. Other containers are reported running alongside it and init containers as
//!   completed; neither runs. When the process exits, `restartPolicy` decides: `Never` → the
//!   pod is `Succeeded` (exit 0) or `Failed`; `Always`/`OnFailure` → restarted after a
//!   doubling back-off (`CrashLoopBackOff` meanwhile). A deleted pod's process group gets
//!   SIGTERM, then SIGKILL when the grace period is over; once it is gone the pod object is
//!   removed.

pub(crate) mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{ImageConfig, NodeConfig};
use super::resources::PODS;
use super::server::Shared;
use super::status::ApiError;
use super::store::{Key, Store, is_deleting, meta_str, timestamp};
use process::{Context, StartSpec, Waiting};

/// The process groups the kubelet started, by pod uid, so that shutdown (and dropping the
/// handle) can kill them.
#[derive(Default)]
pub(crate) struct Processes(Mutex<HashMap<String, u32>>);

impl Processes {
    fn insert(&self, uid: &str, pid: u32) {
        self.lock().insert(uid.to_owned(), pid);
    }

    /// Forgets `uid`'s process if it is still `pid`.
    fn remove(&self, uid: &str, pid: u32) {
        let mut map = self.lock();
        if map.get(uid) == Some(&pid) {
            map.remove(uid);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many processes are running.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The pids (= process group ids) of running processes.
    pub fn pids(&self) -> Vec<u32> {
        self.lock().values().copied().collect()
    }

    /// SIGKILLs every process group.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            process::signal_group(pid, Signal::SIGKILL);
        }
    }
}

/// What the kubelet needs from the configuration.
pub(crate) struct KubeletConfig {
    /// Image mapping.
    pub images: BTreeMap<String, ImageConfig>,
    /// Fallback image.
    pub default_image: Option<ImageConfig>,
    /// Host variables passed through.
    pub inherit_env: Vec<String>,
    /// Creation → scheduling.
    pub scheduling_delay: Duration,
    /// Scheduling → start.
    pub start_delay: Duration,
    /// First restart back-off.
    pub restart_backoff: Duration,
    /// Periodic pass.
    pub resync: Duration,
}

/// The directory of a pod (its root and logs).
pub(crate) fn pod_dir(work_dir: &std::path::Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    work_dir.join("pods").join(format!("{ns}_{name}_{uid}"))
}

/// One process exit (or failure to start).
struct Exit {
    uid: String,
    run: u64,
    /// Exit code (128 + signal when killed), or the start error.
    result: Result<i32, String>,
}

/// Per-pod kubelet state.
struct Record {
    key: Key,
    dir: PathBuf,
    pod_ip: String,
    first_seen: Instant,
    bound_at: Option<Instant>,
    /// The running process.
    pid: Option<u32>,
    /// Bumped per start; exits of older runs are ignored.
    run: u64,
    started_at: Option<String>,
    /// Start in progress (outside the lock).
    starting: bool,
    restarts: i64,
    restart_at: Option<Instant>,
    term_sent: bool,
    kill_at: Option<Instant>,
    grace_seen: Option<i64>,
    /// The process is over for good (terminal phase or deletion).
    done: bool,
}

struct Kubelet {
    shared: Arc<Shared>,
    cfg: KubeletConfig,
    records: HashMap<String, Record>,
    next_ip: u32,
    exits: mpsc::UnboundedSender<Exit>,
}

/// Runs the scheduler and kubelet until shutdown, then kills every process.
pub(crate) async fn run(shared: Arc<Shared>, cfg: KubeletConfig) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut changed = shared.changed.subscribe();
    let cancel = shared.cancel.clone();
    let mut tick = tokio::time::interval(cfg.resync);
    let mut kubelet = Kubelet {
        shared,
        cfg,
        records: HashMap::new(),
        next_ip: 0,
        exits: tx,
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = changed.changed() => {}
            _ = tick.tick() => {}
            Some(exit) = rx.recv() => kubelet.exited(exit),
        }
        kubelet.pass();
    }
    kubelet.shared.processes.kill_all();
}

fn condition(kind: &str, status: bool, reason: Option<&str>, message: Option<&str>) -> Value {
    let mut c = json!({"type": kind, "status": if status { "True" } else { "False" },
        "lastProbeTime": null, "lastTransitionTime": timestamp(Utc::now())});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

/// Sets a condition, keeping `lastTransitionTime` when its status does not change.
fn set_condition(pod: &mut Value, new: Value) {
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let Some(list) = pod["status"]["conditions"].as_array_mut() else {
        return;
    };
    match list.iter_mut().find(|c| c.get("type") == new.get("type")) {
        Some(old) => {
            let mut new = new;
            if old.get("status") == new.get("status") {
                new["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
            *old = new;
        }
        None => list.push(new),
    }
}

fn node_labels(node: &NodeConfig) -> BTreeMap<String, String> {
    let mut labels = node.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), node.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels
}

const NO_PREEMPTION: &str = "preemption: 0/1 nodes are available: 1 Preemption is not helpful \
                             for scheduling.";

/// Why the node cannot take the pod, as the scheduler would say it.
fn unschedulable_reason(pod: &Value, node: &NodeConfig, bound: usize) -> Option<String> {
    let why = if node.unschedulable {
        "1 node(s) were unschedulable"
    } else if pod
        .pointer("/spec/nodeSelector")
        .and_then(Value::as_object)
        .is_some_and(|sel| {
            let labels = node_labels(node);
            sel.iter()
                .any(|(k, v)| labels.get(k).map(String::as_str) != v.as_str())
        })
    {
        "1 node(s) didn't match Pod's node affinity/selector"
    } else if bound >= node.max_pods {
        "1 Too many pods"
    } else {
        return None;
    };
    Some(format!("0/1 nodes are available: {why}. {NO_PREEMPTION}"))
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

fn container_names(pod: &Value, list: &str) -> Vec<(String, String)> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let s = |k: &str| {
                        c.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    (s("name"), s("image"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn container_status(
    name: &str,
    image: &str,
    state: Value,
    ready: bool,
    restarts: i64,
    id: &str,
) -> Value {
    let mut s = json!({
        "name": name, "image": image, "imageID": format!("emulator://{image}"),
        "ready": ready, "started": state.get("running").is_some(), "restartCount": restarts,
        "state": state,
    });
    if !id.is_empty() {
        s["containerID"] = json!(id);
    }
    s
}

impl Kubelet {
    fn exited(&mut self, exit: Exit) {
        let Some(rec) = self.records.get_mut(&exit.uid) else {
            return;
        };
        if rec.run != exit.run {
            return;
        }
        rec.pid = None;
        rec.starting = false;
        let key = rec.key.clone();
        let finished = timestamp(Utc::now());
        let started = rec.started_at.clone().unwrap_or_else(|| finished.clone());
        let (code, reason, message) = match &exit.result {
            Ok(0) => (0, "Completed", None),
            Ok(c) => (*c, "Error", None),
            Err(e) => (128, "StartError", Some(e.clone())),
        };
        let mut terminated = json!({"exitCode": code, "reason": reason,
            "startedAt": started, "finishedAt": finished,
            "containerID": format!("emulator://{}", exit.run)});
        if let Some(m) = &message {
            terminated["message"] = json!(m);
        }
        let backoff = self.cfg.restart_backoff;
        let restarts = rec.restarts;
        let restart = self.shared.read(|s| {
            s.by_key(&key).is_some_and(|pod| {
                let policy = pod.pointer("/spec/restartPolicy").and_then(Value::as_str);
                !is_deleting(pod)
                    && match policy {
                        Some("Always") | None => true,
                        Some("OnFailure") => code != 0,
                        _ => false,
                    }
            })
        });
        if restart {
            rec.restarts += 1;
            rec.restart_at = Some(Instant::now() + backoff * 2u32.pow(restarts.clamp(0, 5) as u32));
        } else {
            rec.done = true;
        }
        let terminal_phase = if code == 0 { "Succeeded" } else { "Failed" };
        self.shared.write(|s| {
            s.write_internal(&PODS, &key, |pod| {
                let all = container_names(pod, "containers");
                let statuses: Vec<Value> = all
                    .iter()
                    .enumerate()
                    .map(|(i, (name, image))| {
                        if restart {
                            let mut st = container_status(
                                name,
                                image,
                                json!({"waiting": {"reason": "CrashLoopBackOff",
                                    "message": format!("back-off restarting failed container {name}")}}),
                                false,
                                restarts + 1,
                                "",
                            );
                            if i == 0 {
                                st["lastState"] = json!({"terminated": terminated});
                            }
                            st
                        } else {
                            let t = if i == 0 {
                                terminated.clone()
                            } else {
                                json!({"exitCode": 0, "reason": "Completed",
                                    "startedAt": started, "finishedAt": finished})
                            };
                            container_status(name, image, json!({"terminated": t}), false, restarts, "")
                        }
                    })
                    .collect();
                pod["status"]["containerStatuses"] = json!(statuses);
                if !restart {
                    pod["status"]["phase"] = json!(terminal_phase);
                }
                let reason = if restart { "ContainersNotReady" } else { "PodCompleted" };
                set_condition(pod, condition("Ready", false, Some(reason), None));
                set_condition(pod, condition("ContainersReady", false, Some(reason), None));
            });
        });
    }

    /// One pass over every pod: schedule, start, terminate, clean up.
    fn pass(&mut self) {
        let now = Instant::now();
        let node = self
            .shared
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut starts: Vec<(String, StartSpec)> = Vec::new();
        let mut signals: Vec<(u32, Signal)> = Vec::new();
        let records = &mut self.records;
        let cfg = &self.cfg;
        let next_ip = &mut self.next_ip;
        let work_dir = self.shared.work_dir.clone();
        self.shared.write(|store| {
            let pods: Vec<(Key, Arc<Value>)> = store
                .all(&PODS, None)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut bound = pods
                .iter()
                .filter(|(_, p)| {
                    p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node.name.as_str())
                        && !matches!(phase(p), "Succeeded" | "Failed")
                })
                .count();
            let live: std::collections::HashSet<String> = pods
                .iter()
                .filter_map(|(_, p)| meta_str(p, "uid").map(str::to_owned))
                .collect();
            for (key, pod) in &pods {
                let Some(uid) = meta_str(pod, "uid").map(str::to_owned) else {
                    continue;
                };
                let rec = records.entry(uid.clone()).or_insert_with(|| {
                    *next_ip += 1;
                    Record {
                        key: key.clone(),
                        dir: pod_dir(&work_dir, &key.1, &key.2, &uid),
                        pod_ip: format!("10.244.{}.{}", *next_ip / 250, *next_ip % 250 + 1),
                        first_seen: now,
                        bound_at: None,
                        pid: None,
                        run: 0,
                        started_at: None,
                        starting: false,
                        restarts: 0,
                        restart_at: None,
                        term_sent: false,
                        kill_at: None,
                        grace_seen: None,
                        done: false,
                    }
                });
                if is_deleting(pod) {
                    terminate(store, key, pod, rec, now, &mut signals);
                    continue;
                }
                let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str);
                if node_name.is_none_or(str::is_empty) {
                    if now < rec.first_seen + cfg.scheduling_delay {
                        continue;
                    }
                    if schedule(store, key, pod, &node, bound) {
                        bound += 1;
                        rec.bound_at = Some(now);
                    }
                    continue;
                }
                if node_name != Some(node.name.as_str())
                    || rec.done
                    || rec.pid.is_some()
                    || rec.starting
                {
                    continue;
                }
                if matches!(phase(pod), "Succeeded" | "Failed") {
                    rec.done = true;
                    continue;
                }
                let bound_at = *rec.bound_at.get_or_insert(now);
                if now < bound_at + cfg.start_delay || rec.restart_at.is_some_and(|t| now < t) {
                    continue;
                }
                let ctx = Context {
                    store,
                    images: &cfg.images,
                    default_image: cfg.default_image.as_ref(),
                    inherit_env: &cfg.inherit_env,
                    pod_ip: &rec.pod_ip,
                    pod_dir: &rec.dir,
                };
                match process::prepare(&ctx, pod) {
                    Ok(spec) => {
                        rec.starting = true;
                        rec.restart_at = None;
                        rec.run += 1;
                        starts.push((uid.clone(), spec));
                    }
                    Err(waiting) => wait(store, key, pod, &waiting, rec.restarts),
                }
            }
            // Pods gone from the store: kill what is left, forget the rest.
            records.retain(|uid, rec| {
                if live.contains(uid) {
                    return true;
                }
                if let Some(pid) = rec.pid {
                    signals.push((pid, Signal::SIGKILL));
                    return true;
                }
                if rec.starting {
                    return true;
                }
                let _ = std::fs::remove_dir_all(&rec.dir);
                false
            });
        });
        for (pid, signal) in signals {
            process::signal_group(pid, signal);
        }
        for (uid, spec) in starts {
            self.start(&uid, &spec);
        }
    }

    fn start(&mut self, uid: &str, spec: &StartSpec) {
        let Some(rec) = self.records.get_mut(uid) else {
            return;
        };
        let run = rec.run;
        let key = rec.key.clone();
        match process::spawn(spec) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or_default();
                rec.pid = Some(pid);
                rec.starting = false;
                let started = timestamp(Utc::now());
                rec.started_at = Some(started.clone());
                self.shared.processes.insert(uid, pid);
                let exits = self.exits.clone();
                let processes_uid = uid.to_owned();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let result = match child.wait().await {
                        Ok(status) => {
                            use std::os::unix::process::ExitStatusExt;
                            Ok(status
                                .code()
                                .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    shared.processes.remove(&processes_uid, pid);
                    let _ = exits.send(Exit {
                        uid: processes_uid,
                        run,
                        result,
                    });
                });
                let pod_ip = rec.pod_ip.clone();
                let restarts = rec.restarts;
                self.shared.write(|s| {
                    s.write_internal(&PODS, &key, |pod| {
                        running(pod, &pod_ip, &started, pid, restarts)
                    });
                });
            }
            Err(message) => {
                let _ = self.exits.send(Exit {
                    uid: uid.to_owned(),
                    run,
                    result: Err(message),
                });
            }
        }
    }
}

/// Binds the pod, or records why it cannot be. Returns whether it was bound.
fn schedule(store: &mut Store, key: &Key, pod: &Value, node: &NodeConfig, bound: usize) -> bool {
    if pod.pointer("/spec/schedulerName").and_then(Value::as_str) != Some("default-scheduler") {
        return false;
    }
    match unschedulable_reason(pod, node, bound) {
        None => {
            store.write_internal(&PODS, key, |p| {
                p["spec"]["nodeName"] = json!(node.name);
                set_condition(p, condition("PodScheduled", true, None, None));
            });
            true
        }
        Some(message) => {
            store.write_internal(&PODS, key, |p| {
                let same = p["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
                    .is_some_and(|c| c["message"] == json!(message));
                if !same {
                    set_condition(
                        p,
                        condition("PodScheduled", false, Some("Unschedulable"), Some(&message)),
                    );
                }
            });
            false
        }
    }
}

/// Records why the container waits (image, config or mount problems).
fn wait(store: &mut Store, key: &Key, pod: &Value, waiting: &Waiting, restarts: i64) {
    let statuses: Vec<Value> = container_names(pod, "containers")
        .iter()
        .map(|(name, image)| {
            container_status(
                name,
                image,
                json!({"waiting": {"reason": waiting.reason, "message": waiting.message}}),
                false,
                restarts,
                "",
            )
        })
        .collect();
    store.write_internal(&PODS, key, |p| {
        p["status"]["containerStatuses"] = json!(statuses);
        set_condition(p, condition("Initialized", true, None, None));
        set_condition(
            p,
            condition(
                "Ready",
                false,
                Some("ContainersNotReady"),
                Some("containers with unready status"),
            ),
        );
        set_condition(
            p,
            condition(
                "ContainersReady",
                false,
                Some("ContainersNotReady"),
                Some("containers with unready status"),
            ),
        );
    });
}

/// The status of a pod whose process started.
fn running(pod: &mut Value, pod_ip: &str, started: &str, pid: u32, restarts: i64) {
    let id = format!("emulator://{pid}");
    let statuses: Vec<Value> = container_names(pod, "containers")
        .iter()
        .enumerate()
        .map(|(i, (name, image))| {
            let id = if i == 0 {
                id.as_str()
            } else {
                "emulator://idle"
            };
            container_status(
                name,
                image,
                json!({"running": {"startedAt": started}}),
                true,
                restarts,
                id,
            )
        })
        .collect();
    let inits: Vec<Value> = container_names(pod, "initContainers")
        .iter()
        .map(|(name, image)| {
            container_status(
                name,
                image,
                json!({"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": started, "finishedAt": started}}),
                true,
                0,
                "emulator://init",
            )
        })
        .collect();
    let status = &mut pod["status"];
    status["phase"] = json!("Running");
    status["hostIP"] = json!("127.0.0.1");
    status["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
    status["podIP"] = json!(pod_ip);
    status["podIPs"] = json!([{"ip": pod_ip}]);
    if status.get("startTime").is_none() {
        status["startTime"] = json!(started);
    }
    status["containerStatuses"] = json!(statuses);
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(inits);
    }
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ] {
        set_condition(pod, condition(kind, true, None, None));
    }
}

/// Terminates a deleted pod: SIGTERM once, SIGKILL when the grace period is over, removal of
/// the object once no process is left.
fn terminate(
    store: &mut Store,
    key: &Key,
    pod: &Value,
    rec: &mut Record,
    now: Instant,
    signals: &mut Vec<(u32, Signal)>,
) {
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .max(0);
    if rec.grace_seen != Some(grace) {
        let deadline = now + Duration::from_secs(grace as u64);
        rec.kill_at = Some(rec.kill_at.map_or(deadline, |k| k.min(deadline)));
        rec.grace_seen = Some(grace);
    }
    rec.done = true;
    match rec.pid {
        Some(pid) => {
            if !rec.term_sent {
                rec.term_sent = true;
                signals.push((pid, Signal::SIGTERM));
            }
            if rec.kill_at.is_some_and(|k| now >= k) {
                signals.push((pid, Signal::SIGKILL));
            }
        }
        None if rec.starting => {}
        None => {
            // The kubelet's final delete: grace 0, then gone unless finalizers remain.
            store.write_internal(&PODS, key, |p| {
                p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            });
            store.finalize_if_done(&PODS, key.clone());
        }
    }
}

/// `GET .../pods/{name}/log`: the first container's output so far (`tailLines` honoured).
pub(crate) fn logs(
    shared: &Shared,
    ns: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pod = shared.read(|s| s.get(&PODS, ns, name))?;
    let uid = meta_str(&pod, "uid").unwrap_or_default();
    let first = pod
        .pointer("/spec/containers/0/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let container = query.get("container").map_or(first, String::as_str);
    let path = pod_dir(&shared.work_dir, ns, name, uid).join(format!("{container}.log"));
    let text = std::fs::read_to_string(&path).map_err(|_| {
        ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is waiting to start: ContainerCreating"
        ))
    })?;
    let text = match query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut tail = lines[lines.len().saturating_sub(n)..].join("\n");
            tail.push('\n');
            tail
        }
        None => text,
    };
    let mut response = (StatusCode::OK, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}
