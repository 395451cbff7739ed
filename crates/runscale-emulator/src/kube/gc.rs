//! The garbage collector and the namespace controller, run in the same lock as the change
//! that made them necessary (and on every resync):
//!
//! - an object whose owner references all point to uids that no longer exist is deleted
//!   (background propagation; a pod gets its grace period); dangling references next to a
//!   live owner are removed;
//! - an object deleted with `propagationPolicy: Foreground` keeps its `foregroundDeletion`
//!   finalizer until its dependents are gone;
//! - a terminating namespace has its contents deleted, then goes itself.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::resources::{self, ResourceType};
use super::store::{
    DeleteOptions, Key, Propagation, Store, finalizers, is_deleting, meta_str, owner_uids,
    resource_of,
};

enum Action {
    Delete(&'static ResourceType, Key),
    KeepOwners(&'static ResourceType, Key, HashSet<String>),
    DropForegroundFinalizer(&'static ResourceType, Key),
    RemoveNamespace(Key),
}

/// Passes per sweep before the rest is left to the next one (each pass can enable another:
/// an owner goes, then its dependents, then theirs).
const MAX_PASSES: usize = 8;

/// Runs the collectors until nothing changes (or [`MAX_PASSES`]).
pub(crate) fn sweep(store: &mut Store) {
    for _ in 0..MAX_PASSES {
        if !store.dirty {
            return;
        }
        store.dirty = false;
        let actions = plan(store);
        if actions.is_empty() {
            return;
        }
        for action in actions {
            apply(store, action);
        }
    }
}

fn plan(store: &Store) -> Vec<Action> {
    let mut dependents: HashMap<String, Vec<&Key>> = HashMap::new();
    let mut namespace_population: HashMap<&str, Vec<&Key>> = HashMap::new();
    for (key, obj) in store.objects() {
        for uid in owner_uids(obj) {
            dependents.entry(uid).or_default().push(key);
        }
        if !key.1.is_empty() {
            namespace_population.entry(&key.1).or_default().push(key);
        }
    }
    let mut actions = Vec::new();
    for (key, obj) in store.objects() {
        let Some(rt) = resource_of(key) else { continue };
        let deleting = is_deleting(obj);
        let owners = owner_uids(obj);
        if !owners.is_empty() {
            let live: HashSet<String> = owners
                .iter()
                .filter(|u| store.by_uid(u).is_some())
                .cloned()
                .collect();
            if live.is_empty() {
                if !deleting {
                    actions.push(Action::Delete(rt, key.clone()));
                }
            } else if live.len() < owners.len() {
                actions.push(Action::KeepOwners(rt, key.clone(), live));
            }
        }
        if deleting && finalizers(obj).iter().any(|f| f == "foregroundDeletion") {
            let uid = meta_str(obj, "uid").unwrap_or_default();
            let deps = dependents.get(uid).map(Vec::as_slice).unwrap_or(&[]);
            if deps.is_empty() {
                actions.push(Action::DropForegroundFinalizer(rt, key.clone()));
            }
            for dep in deps {
                if let (Some(drt), Some(d)) = (resource_of(dep), store.by_key(dep))
                    && !is_deleting(d)
                {
                    actions.push(Action::Delete(drt, (*dep).clone()));
                }
            }
        }
        if rt.plural == "namespaces" && deleting {
            let contents = namespace_population
                .get(key.2.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if contents.is_empty() {
                actions.push(Action::RemoveNamespace(key.clone()));
            }
            for item in contents {
                let live = store.by_key(item).is_some_and(|o| !is_deleting(o));
                if let (true, Some(irt)) = (live, resource_of(item)) {
                    actions.push(Action::Delete(irt, (*item).clone()));
                }
            }
        }
    }
    actions
}

fn apply(store: &mut Store, action: Action) {
    match action {
        Action::Delete(rt, (_, ns, name)) => {
            let opts = DeleteOptions {
                propagation: Some(Propagation::Background),
                ..DeleteOptions::default()
            };
            // The object may be gone already (deleted earlier in this sweep).
            let _ = store.delete(rt, &ns, &name, &opts);
        }
        Action::KeepOwners(rt, key, live) => {
            store.write_internal(rt, &key, |obj| {
                if let Some(refs) = obj
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| {
                        r.get("uid")
                            .and_then(Value::as_str)
                            .is_some_and(|u| live.contains(u))
                    });
                }
            });
        }
        Action::DropForegroundFinalizer(rt, key) => {
            store.write_internal(rt, &key, |obj| {
                let remaining: Vec<String> = finalizers(obj)
                    .into_iter()
                    .filter(|f| f != "foregroundDeletion")
                    .collect();
                obj["metadata"]["finalizers"] = json!(remaining);
                if remaining.is_empty()
                    && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    m.remove("finalizers");
                }
            });
            store.finalize_if_done(rt, key);
        }
        Action::RemoveNamespace(key) => {
            store.remove_now(&resources::NAMESPACES, &key);
        }
    }
}
