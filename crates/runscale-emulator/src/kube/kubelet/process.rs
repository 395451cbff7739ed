//! Turning a pod's first container into a local process: the argv (Kubernetes' command/args
//! rules over the mapped image), the environment (`env` with values, `secretKeyRef`,
//! `fieldRef`, `resourceFieldRef` and `$(VAR)` expansion; `envFrom` secrets), the files of
//! secret and emptyDir volumes under the pod root, mount-path translation, spawning in its own
//! process group with output to a log file, and signals.
//!
//! **Mount paths.** A container's filesystem is the pod root directory: a volume mounted at
//! `/etc/runner` is written to `<pod root>/etc/runner/`. The process gets the root in
//! `RUNSCALE_POD_ROOT`, starts in `<pod root>/<workingDir>`, and every env value or argument
//! that is a mount path or starts with one (`/etc/runner/token`) is rewritten to the local
//! path.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use super::super::config::ImageConfig;
use super::super::resources;
use super::super::store::{Store, string_list};

/// The variable naming the pod root directory.
pub const POD_ROOT_VAR: &str = "RUNSCALE_POD_ROOT";

/// Why a container cannot start yet: the waiting reason and message shown in its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting {
    /// `ErrImagePull`, `CreateContainerConfigError`, `ContainerCreating`, ...
    pub reason: &'static str,
    /// Details.
    pub message: String,
}

/// One file to write under the pod root. No `Debug`: the contents are secret.
#[derive(Clone)]
pub(crate) struct FileSpec {
    /// Path relative to the pod root.
    pub path: PathBuf,
    /// Contents.
    pub contents: Vec<u8>,
    /// Unix mode.
    pub mode: u32,
}

/// Everything needed to start the process, resolved under the store lock. No `Debug`: the
/// environment and files hold secrets.
#[derive(Clone)]
pub(crate) struct StartSpec {
    /// argv; argv\[0\] is the program.
    pub argv: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Files of secret volumes.
    pub files: Vec<FileSpec>,
    /// Directories to create (emptyDir mounts, the working directory).
    pub dirs: Vec<PathBuf>,
    /// The pod root.
    pub root: PathBuf,
    /// The working directory (absolute, under the root).
    pub cwd: PathBuf,
    /// The log file.
    pub log: PathBuf,
}

/// What the kubelet knows about the world when preparing a container.
pub(crate) struct Context<'a> {
    /// The store (for secrets).
    pub store: &'a Store,
    /// Image mapping.
    pub images: &'a BTreeMap<String, ImageConfig>,
    /// Fallback image.
    pub default_image: Option<&'a ImageConfig>,
    /// Host variables passed through.
    pub inherit_env: &'a [String],
    /// The pod's IP.
    pub pod_ip: &'a str,
    /// The pod's directory (root and logs live inside).
    pub pod_dir: &'a Path,
}

fn secret_data(store: &Store, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let secret = store.get(&resources::SECRETS, ns, name).ok()?;
    let mut out = BTreeMap::new();
    if let Some(data) = secret.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap_or_default();
            out.insert(k.clone(), bytes);
        }
    }
    Some(out)
}

/// `$(VAR)` expansion as the kubelet does it: defined variables are replaced, `$$` is an
/// escaped `$`, anything else stays as written.
pub(crate) fn expand(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some(value) = env.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn field_ref(pod: &Value, path: &str, pod_ip: &str) -> String {
    let meta = |k: &str| {
        pod.pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let map_entry = |map: &str, rest: &str| {
        let key = rest
            .trim_start_matches("['")
            .trim_end_matches("']")
            .to_owned();
        pod.get("metadata")
            .and_then(|m| m.get(map))
            .and_then(|m| m.get(&key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match path {
        "metadata.name" => meta("name"),
        "metadata.namespace" => meta("namespace"),
        "metadata.uid" => meta("uid"),
        "spec.nodeName" | "spec.serviceAccountName" => pod
            .pointer(&format!("/spec/{}", &path[5..]))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        "status.podIP" | "status.podIPs" => pod_ip.to_owned(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".to_owned(),
        p if p.starts_with("metadata.labels[") => map_entry("labels", &p[15..]),
        p if p.starts_with("metadata.annotations[") => map_entry("annotations", &p[20..]),
        _ => String::new(),
    }
}

fn not_found(kind: &str, name: &str) -> Waiting {
    Waiting {
        reason: "CreateContainerConfigError",
        message: format!("{kind} {name:?} not found"),
    }
}

/// The container's environment: inherited host variables, the image's `ENV`, `HOSTNAME`,
/// [`POD_ROOT_VAR`], `envFrom`, then `env` (later entries win).
fn environment(
    ctx: &Context<'_>,
    pod: &Value,
    container: &Value,
    image: &ImageConfig,
    root: &Path,
    mounts: &[(String, PathBuf)],
) -> Result<Vec<(String, String)>, Waiting> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let set =
        |k: String, v: String, order: &mut Vec<String>, values: &mut HashMap<String, String>| {
            if !values.contains_key(&k) {
                order.push(k.clone());
            }
            values.insert(k, v);
        };
    for name in ctx.inherit_env {
        if let Ok(v) = std::env::var(name) {
            set(name.clone(), v, &mut order, &mut values);
        }
    }
    for (k, v) in &image.env {
        set(k.clone(), v.clone(), &mut order, &mut values);
    }
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    set("HOSTNAME".into(), pod_name.into(), &mut order, &mut values);
    set(
        POD_ROOT_VAR.into(),
        root.display().to_string(),
        &mut order,
        &mut values,
    );
    for source in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = source
            .get("prefix")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(secret_ref) = source.get("secretRef") {
            let name = secret_ref
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let optional = secret_ref.get("optional") == Some(&Value::Bool(true));
            match secret_data(ctx.store, ns, name) {
                Some(data) => {
                    for (k, v) in data {
                        let v = String::from_utf8_lossy(&v).into_owned();
                        set(format!("{prefix}{k}"), v, &mut order, &mut values);
                    }
                }
                None if optional => {}
                None => return Err(not_found("secret", name)),
            }
        }
        if let Some(cm) = source.get("configMapRef") {
            let name = cm.get("name").and_then(Value::as_str).unwrap_or_default();
            if cm.get("optional") != Some(&Value::Bool(true)) {
                return Err(not_found("configmap", name));
            }
        }
    }
    for var in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
        let value = if let Some(v) = var.get("value").and_then(Value::as_str) {
            expand(v, &values)
        } else if let Some(from) = var.get("valueFrom") {
            if let Some(r) = from.get("secretKeyRef") {
                let secret = r.get("name").and_then(Value::as_str).unwrap_or_default();
                let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
                let optional = r.get("optional") == Some(&Value::Bool(true));
                match secret_data(ctx.store, ns, secret).map(|d| d.get(key).cloned()) {
                    Some(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                    _ if optional => continue,
                    Some(None) => {
                        return Err(Waiting {
                            reason: "CreateContainerConfigError",
                            message: format!("couldn't find key {key} in Secret {ns}/{secret}"),
                        });
                    }
                    None => return Err(not_found("secret", secret)),
                }
            } else if let Some(r) = from.get("fieldRef") {
                let path = r
                    .get("fieldPath")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                field_ref(pod, path, ctx.pod_ip)
            } else if let Some(r) = from.get("resourceFieldRef") {
                let resource = r
                    .get("resource")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let pointer = format!("/resources/{}", resource.replacen('.', "/", 1));
                match container.pointer(&pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "0".to_owned(),
                }
            } else if let Some(r) = from.get("configMapKeyRef") {
                if r.get("optional") == Some(&Value::Bool(true)) {
                    continue;
                }
                let cm = r.get("name").and_then(Value::as_str).unwrap_or_default();
                return Err(not_found("configmap", cm));
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(name.to_owned(), value, &mut order, &mut values);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = values.remove(&k).unwrap_or_default();
            let v = translate(&v, mounts);
            (k, v)
        })
        .collect())
}

/// Rewrites a value that is a mount path, or lies below one, to the local path.
fn translate(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, local) in mounts {
        let mount = mount.trim_end_matches('/');
        if value == mount {
            return local.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(mount)
            && rest.starts_with('/')
        {
            return format!("{}{rest}", local.display());
        }
    }
    value.to_owned()
}

/// `<root>/<absolute path>` without escaping the root.
fn under_root(root: &Path, path: &str) -> PathBuf {
    let mut out = root.to_path_buf();
    for part in Path::new(path).components() {
        if let std::path::Component::Normal(p) = part {
            out.push(p);
        }
    }
    out
}

/// What a container's volume mounts put under the pod root.
struct Mounts {
    /// Files of secret volumes.
    files: Vec<FileSpec>,
    /// Directories (emptyDir and other volumes, secret volume roots).
    dirs: Vec<PathBuf>,
    /// (mount path, local path), longest mount path first.
    table: Vec<(String, PathBuf)>,
}

/// The files and directories of the container's volume mounts, and the mount table.
fn volumes(
    ctx: &Context<'_>,
    pod: &Value,
    container: &Value,
    root: &Path,
) -> Result<Mounts, Waiting> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let declared: HashMap<&str, &Value> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v.get("name")?.as_str()?, v)))
        .collect();
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut mounts = Vec::new();
    for m in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
        let mount_path = m
            .get("mountPath")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let sub_path = m
            .get("subPath")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let local = under_root(root, mount_path);
        mounts.push((mount_path.to_owned(), local.clone()));
        let Some(volume) = declared.get(name) else {
            continue;
        };
        let rel = |p: &Path| {
            p.strip_prefix(root)
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        if let Some(secret) = volume.get("secret") {
            let secret_name = secret
                .get("secretName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let optional = secret.get("optional") == Some(&Value::Bool(true));
            let default_mode = secret
                .get("defaultMode")
                .and_then(Value::as_u64)
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(0o644);
            let data = match secret_data(ctx.store, ns, secret_name) {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => {
                    return Err(Waiting {
                        reason: "ContainerCreating",
                        message: format!(
                            "MountVolume.SetUp failed for volume {name:?} : secret \
                             {secret_name:?} not found"
                        ),
                    });
                }
            };
            // (path inside the volume, contents, mode)
            let mut entries: Vec<(String, Vec<u8>, u32)> = Vec::new();
            match secret.get("items").and_then(Value::as_array) {
                Some(items) => {
                    for item in items {
                        let key = item.get("key").and_then(Value::as_str).unwrap_or_default();
                        let path = item.get("path").and_then(Value::as_str).unwrap_or(key);
                        let mode = item
                            .get("mode")
                            .and_then(Value::as_u64)
                            .and_then(|m| u32::try_from(m).ok())
                            .unwrap_or(default_mode);
                        match data.get(key) {
                            Some(v) => entries.push((path.to_owned(), v.clone(), mode)),
                            None if optional => {}
                            None => {
                                return Err(Waiting {
                                    reason: "ContainerCreating",
                                    message: format!(
                                        "MountVolume.SetUp failed for volume {name:?} : \
                                         references non-existent secret key: {key}"
                                    ),
                                });
                            }
                        }
                    }
                }
                None => entries.extend(data.into_iter().map(|(k, v)| (k, v, default_mode))),
            }
            match sub_path {
                Some(sub) => {
                    if let Some((_, contents, mode)) = entries.iter().find(|(p, _, _)| p == sub) {
                        files.push(FileSpec {
                            path: rel(&local),
                            contents: contents.clone(),
                            mode: *mode,
                        });
                    }
                }
                None => {
                    dirs.push(rel(&local));
                    for (p, contents, mode) in entries {
                        files.push(FileSpec {
                            path: rel(&under_root(&local, &p)),
                            contents,
                            mode,
                        });
                    }
                }
            }
        } else if let Some(cm) = volume.get("configMap") {
            if cm.get("optional") != Some(&Value::Bool(true)) {
                let cm_name = cm.get("name").and_then(Value::as_str).unwrap_or_default();
                return Err(Waiting {
                    reason: "ContainerCreating",
                    message: format!(
                        "MountVolume.SetUp failed for volume {name:?} : configmap {cm_name:?} \
                         not found"
                    ),
                });
            }
            dirs.push(rel(&local));
        } else {
            // emptyDir and every other volume type: an empty directory.
            dirs.push(rel(&local));
        }
    }
    // Longest mount path first, so nested mounts translate to the deepest one.
    mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    Ok(Mounts {
        files,
        dirs,
        table: mounts,
    })
}

/// The container's argv by Kubernetes' rules, before expansion.
fn argv(container: &Value, image: &ImageConfig) -> Vec<String> {
    let command = string_list(container.get("command"));
    let args = string_list(container.get("args"));
    match (command.is_empty(), args.is_empty()) {
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(&args).cloned().collect(),
        (false, true) => command,
        (false, false) => command.into_iter().chain(args).collect(),
    }
}

/// Resolves everything the pod's first container needs, or why it has to wait.
pub(crate) fn prepare(ctx: &Context<'_>, pod: &Value) -> Result<StartSpec, Waiting> {
    let container = pod.pointer("/spec/containers/0").ok_or_else(|| Waiting {
        reason: "CreateContainerError",
        message: "the pod has no container".into(),
    })?;
    let image_name = container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let image = ctx
        .images
        .get(image_name)
        .or(ctx.default_image)
        .ok_or_else(|| Waiting {
            reason: "ErrImagePull",
            message: format!(
                "Failed to pull image {image_name:?}: the emulator maps no local program to \
                 this image"
            ),
        })?;
    let root = ctx.pod_dir.join("root");
    let Mounts {
        files,
        mut dirs,
        table: mounts,
    } = volumes(ctx, pod, container, &root)?;
    let env = environment(ctx, pod, container, image, &root, &mounts)?;
    let env_map: HashMap<String, String> = env.iter().cloned().collect();
    let mut argv: Vec<String> = argv(container, image)
        .iter()
        .map(|a| translate(&expand(a, &env_map), &mounts))
        .collect();
    let Some(program) = argv.first_mut() else {
        return Err(Waiting {
            reason: "CreateContainerError",
            message: "no command specified".into(),
        });
    };
    if let Some(local) = image.programs.get(program.as_str()) {
        *program = local.display().to_string();
    }
    let working_dir = container
        .get("workingDir")
        .and_then(Value::as_str)
        .unwrap_or("/");
    let cwd = under_root(&root, working_dir);
    dirs.push(
        cwd.strip_prefix(&root)
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    );
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("container");
    Ok(StartSpec {
        argv,
        env,
        files,
        dirs,
        root,
        cwd,
        log: ctx.pod_dir.join(format!("{name}.log")),
    })
}

/// Writes the pod root and starts the process in its own process group.
pub(crate) fn spawn(spec: &StartSpec) -> Result<tokio::process::Child, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::create_dir_all(&spec.root).map_err(|e| io("creating the pod root", e))?;
    for dir in &spec.dirs {
        std::fs::create_dir_all(spec.root.join(dir)).map_err(|e| io("creating a mount", e))?;
    }
    for file in &spec.files {
        let path = spec.root.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating a mount", e))?;
        }
        std::fs::write(&path, &file.contents).map_err(|e| io("writing a volume file", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| io("setting a volume file's mode", e))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| io("opening the log", e))?;
    let log_err = log.try_clone().map_err(|e| io("opening the log", e))?;
    let mut cmd = tokio::process::Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn().map_err(|e| {
        format!(
            "failed to create containerd task: exec: {:?}: {e}",
            spec.argv[0]
        )
    })
}

/// Sends `signal` to the process group `pid`; a group that is gone already is fine.
pub(crate) fn signal_group(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_like_the_kubelet() {
        let env = HashMap::from([("A".to_owned(), "x".to_owned())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }

    #[test]
    fn argv_rules() {
        let image = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            ..ImageConfig::default()
        };
        let c = |v: Value| argv(&v, &image);
        assert_eq!(c(json!({})), ["/entry", "default"]);
        assert_eq!(c(json!({"args": ["a"]})), ["/entry", "a"]);
        assert_eq!(c(json!({"command": ["/bin/x"]})), ["/bin/x"]);
        assert_eq!(
            c(json!({"command": ["/bin/x"], "args": ["a"]})),
            ["/bin/x", "a"]
        );
    }

    #[test]
    fn mount_paths_translate() {
        let mounts = vec![(
            "/etc/runner".to_owned(),
            PathBuf::from("/tmp/pod/root/etc/runner"),
        )];
        assert_eq!(
            translate("/etc/runner/token", &mounts),
            "/tmp/pod/root/etc/runner/token"
        );
        assert_eq!(
            translate("/etc/runner", &mounts),
            "/tmp/pod/root/etc/runner"
        );
        assert_eq!(translate("/etc/runnerx", &mounts), "/etc/runnerx");
        assert_eq!(
            under_root(Path::new("/r"), "/a/../b"),
            PathBuf::from("/r/a/b")
        );
    }
}
