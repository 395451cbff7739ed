//! The conformance suite: the trait contracts of [`Backend`] and [`Provider`], checked on any
//! implementation. Each adapter's tests call these against its emulator or real dependency,
//! so every adapter is held to the same contract.

use crate::adapter::{Backend, LaunchRequest, Provider};
use crate::error::ErrorKind;
use crate::model::{InstanceId, InstanceState, PoolId};
use crate::naming;

/// Why a contract check failed.
pub type Failure = String;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failure> {
    if cond { Ok(()) } else { Err(what()) }
}

/// Checks the [`Backend`] contract for `pool` (and that `other_pool`'s instances stay apart):
/// launch is listed with its runner names and template hash; instances of other pools are not
/// listed; terminate is idempotent and `Ok` for unknown ids; a terminated instance is gone or
/// stopping. `registration` supplies a registration for a runner name (provider or fake).
pub async fn backend_contract(
    backend: &dyn Backend,
    pool: &PoolId,
    other_pool: &PoolId,
    registration: impl Fn(&str) -> crate::adapter::Registration,
) -> Result<(), Failure> {
    let (_, names) = naming::generate(pool.as_str(), 1, &mut rand::rng());
    let launched = backend
        .launch(LaunchRequest {
            pool: pool.clone(),
            runners: vec![registration(&names[0])],
            template_hash: "conformance".to_owned(),
        })
        .await
        .map_err(|e| format!("launch failed: {e}"))?;
    check(launched.runner_names == names, || {
        format!(
            "launched instance names {:?}, expected {names:?}",
            launched.runner_names
        )
    })?;
    let listed = backend
        .instances(&[pool.clone(), other_pool.clone()])
        .await
        .map_err(|e| format!("instances failed: {e}"))?;
    let mine = listed.get(pool).cloned().unwrap_or_default();
    let found = mine.iter().find(|i| i.id == launched.id);
    check(found.is_some(), || {
        format!("launched {} not listed", launched.id)
    })?;
    if let Some(i) = found {
        check(i.template_hash == "conformance", || {
            format!("template hash {:?} not recorded", i.template_hash)
        })?;
        check(i.runner_names == names, || {
            "runner names not recorded".to_owned()
        })?;
    }
    let theirs = listed.get(other_pool).cloned().unwrap_or_default();
    check(theirs.iter().all(|i| i.id != launched.id), || {
        "instance listed under another pool".to_owned()
    })?;

    backend
        .terminate(pool, &launched.id)
        .await
        .map_err(|e| format!("terminate failed: {e}"))?;
    backend
        .terminate(pool, &launched.id)
        .await
        .map_err(|e| format!("second terminate must be Ok (idempotent): {e}"))?;
    backend
        .terminate(pool, &InstanceId::new("never-existed"))
        .await
        .map_err(|e| format!("terminating an unknown id must be Ok: {e}"))?;
    let after = backend
        .instances(std::slice::from_ref(pool))
        .await
        .map_err(|e| format!("instances failed: {e}"))?;
    let left = after
        .get(pool)
        .into_iter()
        .flatten()
        .find(|i| i.id == launched.id);
    check(
        left.is_none_or(|i| i.state == InstanceState::Stopping),
        || format!("terminated instance still {:?}", left.map(|i| i.state)),
    )?;
    backend
        .probe()
        .await
        .map_err(|e| format!("probe failed: {e}"))?;
    Ok(())
}

/// Checks the [`Provider`] contract for `pool`: observe answers every pool asked; a registered
/// runner is observed under its pool (possibly offline) and only there; removing it is `Ok`
/// and it is then gone; removing it again is `Ok`.
pub async fn provider_contract(
    provider: &dyn Provider,
    pool: &PoolId,
    other_pool: &PoolId,
) -> Result<(), Failure> {
    let pools = [pool.clone(), other_pool.clone()];
    let seen = provider.observe(&pools).await;
    check(
        seen.len() == 2 && pools.iter().all(|p| seen.contains_key(p)),
        || format!("observe answered {} of 2 pools", seen.len()),
    )?;
    let (_, names) = naming::generate(pool.as_str(), 1, &mut rand::rng());
    let reg = provider
        .register(pool, &names[0])
        .await
        .map_err(|e| format!("register failed: {e}"))?;
    check(reg.runner_name == names[0], || {
        "registration renamed the runner".to_owned()
    })?;
    let debug = format!("{reg:?}");
    for secret in reg.credentials.secrets.values() {
        use secrecy::ExposeSecret;
        let s = secret.expose_secret();
        check(s.is_empty() || !debug.contains(s), || {
            "a secret shows in Debug output".to_owned()
        })?;
    }
    let seen = provider.observe(&pools).await;
    let view = seen
        .get(pool)
        .cloned()
        .ok_or("pool missing")?
        .map_err(|e| format!("observe failed: {e}"))?;
    let runner = view.runners.iter().find(|r| r.name == names[0]).cloned();
    if let Some(other) = seen.get(other_pool).and_then(|r| r.as_ref().ok()) {
        check(other.runners.iter().all(|r| r.name != names[0]), || {
            "runner observed under another pool".to_owned()
        })?;
    }
    // Providers whose runners appear only once the agent connects may not list it yet; when
    // listed (or its id is known), removal must work.
    let id = runner.map(|r| r.id).or(reg.runner_id);
    if let Some(id) = id {
        provider
            .remove(pool, &id)
            .await
            .map_err(|e| format!("remove of an idle runner failed: {e}"))?;
        match provider.remove(pool, &id).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err("removing a gone runner must be Ok, not NotFound".to_owned());
            }
            Err(e) => return Err(format!("second remove failed: {e}")),
        }
        let seen = provider.observe(std::slice::from_ref(pool)).await;
        if let Some(Ok(view)) = seen.get(pool) {
            check(view.runners.iter().all(|r| r.id != id), || {
                "removed runner still observed".to_owned()
            })?;
        }
    }
    provider
        .probe()
        .await
        .map_err(|e| format!("probe failed: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::adapter::{Credentials, Registration};
    use crate::clock::ManualClock;
    use crate::testing::{World, WorldConfig};

    #[tokio::test]
    async fn memory_adapters_conform() {
        let world = World::new(
            Arc::new(ManualClock::new(chrono::Utc::now())),
            WorldConfig::default(),
        );
        let (a, b) = (PoolId::new("a"), PoolId::new("b"));
        provider_contract(world.provider().as_ref(), &a, &b)
            .await
            .expect("provider contract");
        backend_contract(world.backend().as_ref(), &a, &b, |name| Registration {
            runner_name: name.to_owned(),
            runner_id: None,
            credentials: Credentials::default(),
        })
        .await
        .expect("backend contract");
    }
}
