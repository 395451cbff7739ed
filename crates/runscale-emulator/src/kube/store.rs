//! The object store: every object as JSON keyed by (resource type, namespace, name), a
//! global resourceVersion counter, uids, the bounded history of change events that watches
//! read, and the semantics of create (generateName), get, list (selectors, pages), update
//! (optimistic concurrency, status subresource, generation), patch and delete (grace periods,
//! finalizers, propagation policies). Garbage collection lives in [`super::gc`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::admission::{self, FieldValidation};
use super::patch::{self, PatchType};
use super::resources::{self, ResourceType};
use super::selectors::Selectors;
use super::status::{self, ApiError, Cause};
use super::validation;

/// (resource type id, namespace or `""`, name).
pub(crate) type Key = (u8, String, String);

/// What a change event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object is gone.
    Deleted,
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// The resource type's id.
    pub rt: u8,
    /// The object's namespace (`""` when cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: EventKind,
    /// The object after the change (for `Deleted`, its last state).
    pub object: Arc<Value>,
    /// The object before a `Modified` change (to turn it into `ADDED`/`DELETED` for watches
    /// whose selector it enters or leaves).
    pub prev: Option<Arc<Value>>,
}

/// Options of a write.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WriteOptions {
    /// `dryRun=All`: validate and answer, store nothing.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub validation: FieldValidation,
}

/// `propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Dependents keep existing, without the owner reference.
    Orphan,
    /// The owner goes now; the garbage collector removes dependents afterwards.
    Background,
    /// Dependents go first; the owner waits (finalizer `foregroundDeletion`).
    Foreground,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// `propagationPolicy` (or `orphanDependents`).
    pub propagation: Option<Propagation>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListOptions {
    /// Label and field selectors.
    pub selectors: Selectors,
    /// `limit` (0 = no limit).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
}

/// A page of a list.
pub(crate) struct Page {
    /// The matching objects.
    pub items: Vec<Arc<Value>>,
    /// The list's resourceVersion.
    pub resource_version: u64,
    /// The token for the next page.
    pub continue_token: Option<String>,
}

/// What a delete answers.
pub(crate) enum Deleted {
    /// The object (pods, and objects whose deletion is pending).
    Object(Value),
    /// A `Status` of kind Success.
    Status(Value),
}

/// Counts of objects created and removed, per resource plural.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    /// Objects created.
    pub created: BTreeMap<&'static str, u64>,
    /// Objects removed from the store.
    pub removed: BTreeMap<&'static str, u64>,
}

/// The object store. All access is under one mutex (see `server::Shared`).
pub(crate) struct Store {
    objects: BTreeMap<Key, Arc<Value>>,
    uids: HashMap<String, Key>,
    rv: u64,
    events: VecDeque<Event>,
    history: usize,
    compacted: u64,
    rng: StdRng,
    create_namespaces: bool,
    /// Something happened the garbage collector may have to act on.
    pub(crate) dirty: bool,
    /// Creation and removal counts.
    pub counters: Counters,
}

/// An RFC 3339 timestamp with second precision, as the API server writes them.
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// The finalizers of an object.
pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    string_list(obj.pointer("/metadata/finalizers"))
}

/// The strings of a JSON array (other items skipped); empty when not an array.
pub(crate) fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an object is on its way out.
pub(crate) fn is_deleting(obj: &Value) -> bool {
    meta_str(obj, "deletionTimestamp").is_some()
}

fn parse_rv(rt: &ResourceType, name: &str, rv: &str) -> Result<u64, ApiError> {
    rv.parse().map_err(|_| {
        ApiError::invalid(
            rt,
            name,
            vec![Cause::invalid(
                "metadata.resourceVersion",
                rv,
                "must be a number",
            )],
        )
    })
}

impl Store {
    /// An empty store with `namespaces` created.
    pub fn new(namespaces: &[String], history: usize, create_namespaces: bool, seed: u64) -> Self {
        let mut store = Store {
            objects: BTreeMap::new(),
            uids: HashMap::new(),
            rv: 0,
            events: VecDeque::new(),
            history,
            compacted: 0,
            rng: StdRng::seed_from_u64(seed),
            create_namespaces,
            dirty: false,
            counters: Counters::default(),
        };
        for ns in namespaces {
            store.ensure_namespace(ns);
        }
        store
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Drops the whole event history: every watch from an older resourceVersion gets
    /// `410 Gone` (like an etcd compaction).
    pub fn compact(&mut self) {
        self.events.clear();
        self.compacted = self.rv;
    }

    /// Events with a resourceVersion above `after`, or `Err(compacted)` when some of them
    /// are no longer kept.
    pub fn events_after(&self, after: u64) -> Result<impl Iterator<Item = &Event>, u64> {
        if after < self.compacted {
            return Err(self.compacted);
        }
        let start = self.events.partition_point(|e| e.rv <= after);
        Ok(self.events.range(start..))
    }

    /// Whether a watch may start at `rv`.
    pub fn check_watch_start(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.compacted {
            Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.compacted
            )))
        } else {
            Ok(())
        }
    }

    fn key(rt: &ResourceType, ns: &str, name: &str) -> Key {
        let ns = if rt.namespaced { ns } else { "" };
        (rt.id, ns.to_owned(), name.to_owned())
    }

    /// One object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.objects
            .get(&Self::key(rt, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Every object of a type (in one namespace, or all), sorted by namespace and name.
    pub fn all<'a>(
        &'a self,
        rt: &ResourceType,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Arc<Value>)> + 'a {
        let start = (rt.id, String::new(), String::new());
        let end = (rt.id + 1, String::new(), String::new());
        self.objects
            .range(start..end)
            .filter(move |(k, _)| ns.is_none_or(|ns| k.1 == ns))
    }

    /// The object stored under `key`.
    pub fn by_key(&self, key: &Key) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    /// The object with this uid.
    pub fn by_uid(&self, uid: &str) -> Option<(&Key, &Arc<Value>)> {
        let key = self.uids.get(uid)?;
        self.objects.get_key_value(key)
    }

    /// A page of matching objects.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Page, ApiError> {
        let after = match &opts.continue_token {
            Some(token) => {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(token)
                    .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
                let (ns, name) = text
                    .split_once('/')
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                Some((ns.to_owned(), name.to_owned()))
            }
            None => None,
        };
        let mut items = Vec::new();
        let mut continue_token = None;
        for (key, obj) in self.all(rt, ns) {
            if after
                .as_ref()
                .is_some_and(|(ans, aname)| (&key.1, &key.2) <= (ans, aname))
            {
                continue;
            }
            if !opts.selectors.matches(obj) {
                continue;
            }
            if opts.limit > 0 && items.len() == opts.limit {
                let last: &Arc<Value> = &items[items.len() - 1];
                let token = format!(
                    "{}/{}",
                    meta_str(last, "namespace").unwrap_or_default(),
                    meta_str(last, "name").unwrap_or_default()
                );
                continue_token =
                    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
                break;
            }
            items.push(obj.clone());
        }
        Ok(Page {
            items,
            resource_version: self.rv,
            continue_token,
        })
    }

    fn random_uid(&mut self) -> String {
        let b: [u8; 16] = self.rng.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_be_bytes([b[4], b[5]]),
            u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
            (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
            u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }

    /// Stores `obj` under `key` with the next resourceVersion and records the event.
    fn commit(
        &mut self,
        rt: &'static ResourceType,
        key: Key,
        mut obj: Value,
        kind: EventKind,
    ) -> Arc<Value> {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let obj = Arc::new(obj);
        let prev = match kind {
            EventKind::Deleted => {
                self.objects.remove(&key);
                if let Some(uid) = meta_str(&obj, "uid") {
                    self.uids.remove(uid);
                }
                *self.counters.removed.entry(rt.plural).or_default() += 1;
                self.dirty = true;
                None
            }
            _ => {
                if let Some(uid) = meta_str(&obj, "uid") {
                    self.uids.insert(uid.to_owned(), key.clone());
                }
                if kind == EventKind::Added {
                    *self.counters.created.entry(rt.plural).or_default() += 1;
                }
                if obj.pointer("/metadata/ownerReferences").is_some() || is_deleting(&obj) {
                    self.dirty = true;
                }
                self.objects.insert(key.clone(), obj.clone())
            }
        };
        self.events.push_back(Event {
            rv: self.rv,
            rt: rt.id,
            namespace: key.1,
            kind,
            object: obj.clone(),
            prev,
        });
        while self.events.len() > self.history {
            if let Some(e) = self.events.pop_front() {
                self.compacted = e.rv;
            }
        }
        obj
    }

    /// Creates a namespace unless it exists.
    fn ensure_namespace(&mut self, ns: &str) {
        let key = Self::key(&resources::NAMESPACES, "", ns);
        if self.objects.contains_key(&key) {
            return;
        }
        let uid = self.random_uid();
        let mut obj = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": uid, "creationTimestamp": timestamp(Utc::now())},
            "status": {"phase": "Active"},
        });
        admission::apply_defaults(&resources::NAMESPACES, &mut obj);
        self.commit(&resources::NAMESPACES, key, obj, EventKind::Added);
    }

    fn check_namespace(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        match self.objects.get(&Self::key(&resources::NAMESPACES, "", ns)) {
            Some(n) if is_deleting(n) => Err(ApiError::forbidden(format!(
                "{} is forbidden: unable to create new content in namespace {ns} because it is \
                 being terminated",
                rt.qualified_plural()
            ))),
            Some(_) => Ok(()),
            None if self.create_namespaces && validation::is_dns_label(ns) => {
                if !dry_run {
                    self.ensure_namespace(ns);
                }
                Ok(())
            }
            None => Err(ApiError::not_found(&resources::NAMESPACES, ns)),
        }
    }

    /// `POST` of a new object.
    pub fn create(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        body: &Value,
        opts: WriteOptions,
    ) -> Result<(Arc<Value>, Vec<String>), ApiError> {
        let (mut obj, warnings) = admission::decode(rt, body, opts.validation)?;
        if let Some(body_ns) = meta_str(&obj, "namespace")
            && rt.namespaced
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the \
                 request",
            ));
        }
        let given = meta_str(&obj, "name").map(str::to_owned);
        let generate = meta_str(&obj, "generateName").map(str::to_owned);
        if given.is_none() && generate.is_none() {
            return Err(ApiError::invalid(
                rt,
                "",
                vec![Cause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        self.check_namespace(rt, ns, opts.dry_run)?;
        let name = match (given, generate) {
            (Some(name), _) => name,
            (None, Some(prefix)) => {
                // Like the API server, retry a few times when a generated name is taken.
                let mut name = String::new();
                for _ in 0..8 {
                    name = format!("{prefix}{}", self.random_suffix());
                    if !self.objects.contains_key(&Self::key(rt, ns, &name)) {
                        break;
                    }
                }
                name
            }
            (None, None) => unreachable!("checked above"),
        };
        let uid = self.random_uid();
        let now = timestamp(Utc::now());
        let meta = meta_mut(&mut obj);
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now));
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "generation",
        ] {
            meta.remove(field);
        }
        if rt.has_generation {
            meta.insert("generation".into(), json!(1));
        }
        if rt.has_status() {
            let status = match rt.plural {
                "pods" => json!({"phase": "Pending",
                    "qosClass": admission::qos_class(obj.get("spec").unwrap_or(&Value::Null))}),
                "namespaces" => json!({"phase": "Active"}),
                // As if a dynamic provisioner bound it at once (no PersistentVolumes here).
                "persistentvolumeclaims" => json!({
                    "phase": "Bound",
                    "accessModes": obj.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
                    "capacity": obj.pointer("/spec/resources/requests").cloned().unwrap_or(json!({})),
                }),
                _ => json!({}),
            };
            obj["status"] = status;
        }
        admission::normalize_on_write(rt, &mut obj);
        admission::apply_defaults(rt, &mut obj);
        let causes = validation::validate(rt, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, &name, causes));
        }
        let key = Self::key(rt, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        if opts.dry_run {
            return Ok((Arc::new(obj), warnings));
        }
        let stored = self.commit(rt, key, obj, EventKind::Added);
        if rt.plural == "pods" {
            self.create_ephemeral_claims(ns, &stored);
        }
        Ok((stored, warnings))
    }

    /// The ephemeral volume controller: for each generic ephemeral volume of a new pod, the
    /// claim `{pod}-{volume}` from its `volumeClaimTemplate` (labels and annotations, spec),
    /// owned by the pod (`controller: true`), so the garbage collector deletes it with the
    /// pod. A claim of that name that already exists is left alone.
    fn create_ephemeral_claims(&mut self, ns: &str, pod: &Value) {
        let (Some(pod_name), Some(uid)) = (meta_str(pod, "name"), meta_str(pod, "uid")) else {
            return;
        };
        let (pod_name, uid) = (pod_name.to_owned(), uid.to_owned());
        let volumes = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for volume in volumes {
            let (Some(name), Some(template)) = (
                volume.get("name").and_then(Value::as_str),
                volume.pointer("/ephemeral/volumeClaimTemplate"),
            ) else {
                continue;
            };
            let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
            metadata["name"] = json!(format!("{pod_name}-{name}"));
            metadata["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }]);
            let claim = json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata,
                "spec": template.get("spec").cloned().unwrap_or(json!({})),
            });
            // An invalid template is refused by the real controller too (an event on the pod).
            let _ = self.create(
                &resources::PERSISTENT_VOLUME_CLAIMS,
                ns,
                &claim,
                WriteOptions::default(),
            );
        }
    }

    /// `PUT` of the object or of its `status`.
    pub fn update(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        body: &Value,
        status_only: bool,
        opts: WriteOptions,
    ) -> Result<(Arc<Value>, Vec<String>), ApiError> {
        let current = self.get(rt, ns, name)?;
        let (body, warnings) = admission::decode(rt, body, opts.validation)?;
        if let Some(body_name) = meta_str(&body, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced
            && let Some(body_ns) = meta_str(&body, "namespace")
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the \
                 request",
            ));
        }
        if let Some(rv) = meta_str(&body, "resourceVersion") {
            let rv = parse_rv(rt, name, rv)?;
            if Some(rv.to_string().as_str()) != meta_str(&current, "resourceVersion") {
                return Err(ApiError::conflict(rt, name));
            }
        }
        if let Some(uid) = meta_str(&body, "uid")
            && Some(uid) != meta_str(&current, "uid")
        {
            return Err(ApiError::conflict_because(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&current, "uid").unwrap_or_default()
                ),
            ));
        }
        let mut new = if status_only {
            let mut new = (*current).clone();
            new["status"] = body.get("status").cloned().unwrap_or(json!({}));
            new
        } else {
            let mut new = body;
            if rt.has_status() {
                new["status"] = current.get("status").cloned().unwrap_or(json!({}));
            }
            new
        };
        // Fields only the server sets.
        let meta = meta_mut(&mut new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match current.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.remove("managedFields");
        admission::normalize_on_write(rt, &mut new);
        let mut causes = validation::validate(rt, &new);
        causes.extend(immutable_changes(rt, &current, &new));
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, name, causes));
        }
        if rt.has_generation && current.get("spec") != new.get("spec") {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        if new == *current {
            return Ok((current, warnings));
        }
        if opts.dry_run {
            return Ok((Arc::new(new), warnings));
        }
        let key = Self::key(rt, ns, name);
        let stored = self.commit(rt, key.clone(), new, EventKind::Modified);
        Ok((self.finalize_if_done(rt, key).unwrap_or(stored), warnings))
    }

    /// `PATCH` of the object or of its `status`. Server-side apply creates a missing object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        kind: PatchType,
        patch_body: &Value,
        status_only: bool,
        opts: WriteOptions,
    ) -> Result<(Arc<Value>, Vec<String>, bool), ApiError> {
        let current = match self.get(rt, ns, name) {
            Ok(c) => c,
            Err(_) if kind == PatchType::Apply && !status_only => {
                let mut body = patch_body.clone();
                if !body.is_object() {
                    return Err(ApiError::bad_request("an apply patch must be an object"));
                }
                meta_mut(&mut body).insert("name".into(), json!(name));
                let (obj, warnings) = self.create(rt, ns, &body, opts)?;
                return Ok((obj, warnings, true));
            }
            Err(e) => return Err(e),
        };
        let mut doc = (*current).clone();
        let applied = match kind {
            PatchType::Merge => {
                patch::merge_patch(&mut doc, patch_body);
                Ok(())
            }
            PatchType::Strategic | PatchType::Apply => patch::strategic_merge(&mut doc, patch_body),
            PatchType::Json => patch::json_patch(&mut doc, patch_body),
        };
        if let Err(message) = applied {
            return Err(ApiError::invalid(
                rt,
                name,
                vec![Cause {
                    reason: "FieldValueInvalid",
                    field: String::new(),
                    message,
                }],
            ));
        }
        // A patch without a resourceVersion is unconditional.
        if meta_str(&doc, "resourceVersion").is_none()
            && let Some(rv) = meta_str(&current, "resourceVersion")
        {
            meta_mut(&mut doc).insert("resourceVersion".into(), json!(rv));
        }
        let (obj, warnings) = self.update(rt, ns, name, &doc, status_only, opts)?;
        Ok((obj, warnings, false))
    }

    /// Replaces an object's stored state without the API rules (the kubelet's status
    /// writes). Returns the stored object, or `None` when nothing changed or it is gone.
    pub fn write_internal(
        &mut self,
        rt: &'static ResourceType,
        key: &Key,
        f: impl FnOnce(&mut Value),
    ) -> Option<Arc<Value>> {
        let current = self.objects.get(key)?.clone();
        let mut new = (*current).clone();
        f(&mut new);
        if new == *current {
            return None;
        }
        Some(self.commit(rt, key.clone(), new, EventKind::Modified))
    }

    /// Removes an object now (no grace, no finalizers): the kubelet's last word on a pod.
    pub fn remove_now(&mut self, rt: &'static ResourceType, key: &Key) -> Option<Arc<Value>> {
        let current = self.objects.get(key)?.clone();
        Some(self.commit(rt, key.clone(), (*current).clone(), EventKind::Deleted))
    }

    /// Removes an object whose deletion is pending once its finalizers are gone and its
    /// grace period is over (`deletionGracePeriodSeconds: 0`). Returns the removed object.
    pub fn finalize_if_done(&mut self, rt: &'static ResourceType, key: Key) -> Option<Arc<Value>> {
        let obj = self.objects.get(&key)?;
        let grace = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if is_deleting(obj) && finalizers(obj).is_empty() && grace == 0 && rt.plural != "namespaces"
        {
            let obj = (**obj).clone();
            return Some(self.commit(rt, key, obj, EventKind::Deleted));
        }
        None
    }

    /// `DELETE` of one object.
    pub fn delete(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let current = self.get(rt, ns, name)?;
        let uid = meta_str(&current, "uid").unwrap_or_default().to_owned();
        if let Some(want) = &opts.uid
            && *want != uid
        {
            return Err(ApiError::conflict_because(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        if let Some(want) = &opts.resource_version
            && Some(want.as_str()) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::conflict_because(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, \
                     ResourceVersion in object meta: {}",
                    meta_str(&current, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        let answer = |obj: Value| {
            if rt.plural == "pods" || is_deleting(&obj) {
                Deleted::Object(obj)
            } else {
                Deleted::Status(status::success(rt, name, &uid))
            }
        };
        if opts.dry_run {
            return Ok(answer((*current).clone()));
        }
        let key = Self::key(rt, ns, name);
        let propagation = opts.propagation.unwrap_or(if rt.plural == "jobs" {
            Propagation::Orphan
        } else {
            Propagation::Background
        });
        if propagation == Propagation::Orphan {
            self.orphan_dependents(&uid);
        }
        let grace = if rt.plural == "pods" {
            let spec_grace = current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30);
            let phase = current.pointer("/status/phase").and_then(Value::as_str);
            let unbound = current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if unbound || matches!(phase, Some("Succeeded" | "Failed")) {
                0
            } else {
                opts.grace.unwrap_or(spec_grace).max(0)
            }
        } else {
            0
        };
        let mut new_finalizers = finalizers(&current);
        if propagation == Propagation::Foreground
            && !new_finalizers.iter().any(|f| f == "foregroundDeletion")
        {
            new_finalizers.push("foregroundDeletion".into());
        }
        let pending = grace > 0 || !new_finalizers.is_empty() || rt.plural == "namespaces";
        if !pending {
            let removed = self.commit(rt, key, (*current).clone(), EventKind::Deleted);
            return Ok(answer((*removed).clone()));
        }
        let now = Utc::now();
        let mut new = (*current).clone();
        let existing_deadline = meta_str(&current, "deletionTimestamp")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let deadline = now + chrono::Duration::seconds(grace);
        // A second delete may shorten the grace period, never lengthen it.
        let deadline = existing_deadline.map_or(deadline, |d| d.min(deadline));
        let current_grace = current
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        let grace = current_grace.map_or(grace, |g| g.min(grace));
        let meta = meta_mut(&mut new);
        meta.insert("deletionTimestamp".into(), json!(timestamp(deadline)));
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        if !new_finalizers.is_empty() {
            meta.insert("finalizers".into(), json!(new_finalizers));
        }
        if rt.plural == "namespaces" {
            new["status"]["phase"] = json!("Terminating");
        }
        let stored = if new == *current {
            current
        } else {
            self.commit(rt, key.clone(), new, EventKind::Modified)
        };
        let stored = self.finalize_if_done(rt, key).unwrap_or(stored);
        Ok(answer((*stored).clone()))
    }

    /// Removes the owner reference to `uid` from every dependent.
    fn orphan_dependents(&mut self, uid: &str) {
        let dependents: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(_, o)| owner_uids(o).iter().any(|u| u == uid))
            .map(|(k, o)| (k.clone(), (**o).clone()))
            .collect();
        for (key, mut obj) in dependents {
            if let Some(refs) = obj
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            }
            if let Some(rt) = resource_of(&key) {
                self.commit(rt, key, obj, EventKind::Modified);
            }
        }
    }

    /// `DELETE` of a collection: every matching object, one by one.
    pub fn delete_collection(
        &mut self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        selectors: &Selectors,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let keys: Vec<Key> = self
            .all(rt, ns)
            .filter(|(_, o)| selectors.matches(o))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for (_, ns, name) in keys {
            match self.delete(rt, &ns, &name, opts)? {
                Deleted::Object(o) => out.push(o),
                Deleted::Status(_) => {}
            }
        }
        Ok(out)
    }

    /// Every object, for the garbage collector.
    pub fn objects(&self) -> impl Iterator<Item = (&Key, &Arc<Value>)> {
        self.objects.iter()
    }
}

/// The resource type of a store key.
pub(crate) fn resource_of(key: &Key) -> Option<&'static ResourceType> {
    resources::ALL.into_iter().find(|rt| rt.id == key.0)
}

/// The uids an object's owner references point to.
pub(crate) fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Changes an update may not make.
fn immutable_changes(rt: &ResourceType, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match rt.plural {
        "pods" => causes.extend(validation::validate_pod_update(old, new)),
        "secrets" => {
            if old.get("type") != new.get("type") {
                causes.push(Cause::invalid(
                    "type",
                    new.get("type").and_then(Value::as_str).unwrap_or_default(),
                    "field is immutable",
                ));
            }
            if old.get("immutable") == Some(&json!(true))
                && (old.get("data") != new.get("data")
                    || new.get("immutable") != Some(&json!(true)))
            {
                causes.push(Cause::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        "jobs" if old.pointer("/spec/selector") != new.pointer("/spec/selector") => {
            causes.push(Cause::invalid("spec.selector", "", "field is immutable"));
        }
        _ => {}
    }
    causes
}
