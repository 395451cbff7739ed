//! The safety properties of `docs/architecture.md`, checked on random observations (proptest,
//! 2,000 cases each unless `PROPTEST_CASES` says otherwise).
//!
//! The checks recompute what they need from the observation independently of the policy's
//! own bookkeeping, so a bug in the policy's counting shows as a failure here.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::TimeZone;
use proptest::prelude::*;
use runscale_core::forecast::warm_slots;
use runscale_core::{
    Action, Forecast, Instance, InstanceId, InstanceState, Limit, Observation, Plan, PoolSpec,
    Reuse, Reused, Runner, RunnerId, RunnerState, Timestamp, WaitingJob, Warm, plan,
};

fn now() -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("valid")
}

fn ago(secs: u64) -> Timestamp {
    now() - chrono::Duration::seconds(secs as i64)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
        ..ProptestConfig::default()
    }
}

fn spec_strategy() -> impl Strategy<Value = PoolSpec> {
    (
        (0u32..5, 0u32..20, 0u32..20, 0u32..10),
        (
            1u64..600,
            0u64..600,
            proptest::option::of(60u64..3000),
            0u64..600,
        ),
        (1u32..4, any::<bool>()),
        proptest::option::weighted(0.4, (2u32..5, 60u64..3000)),
    )
        .prop_map(
            |(
                (min_idle, max, max_booting, lpm),
                (boot, idle, life, delay),
                (slots, eph),
                reuse,
            )| {
                let mut s = PoolSpec::test("p");
                s.min_idle = min_idle;
                s.max = max;
                s.max_booting = max_booting;
                s.launches_per_minute = lpm;
                s.boot_timeout = Duration::from_secs(boot);
                s.idle_timeout = Duration::from_secs(idle);
                s.max_lifetime = life.map(Duration::from_secs);
                s.scale_down_delay = Duration::from_secs(delay);
                s.runners_per_instance = slots;
                s.ephemeral = eph;
                s.reuse = reuse.map(|(max_uses, age)| Reuse {
                    max_uses,
                    max_age: Duration::from_secs(age),
                });
                s
            },
        )
}

/// One slot's runner: absent, or present in a state.
fn slot_strategy() -> impl Strategy<Value = Option<(RunnerState, bool, Option<u64>)>> {
    proptest::option::weighted(
        0.8,
        (
            prop_oneof![
                Just(RunnerState::Idle),
                Just(RunnerState::Busy),
                Just(RunnerState::Offline)
            ],
            proptest::bool::weighted(0.1),
            proptest::option::of(0u64..2000),
        ),
    )
}

type InstanceSeed = (u8, u64, bool, Vec<Option<(RunnerState, bool, Option<u64>)>>);

fn instance_strategy() -> impl Strategy<Value = InstanceSeed> {
    (
        0u8..3,
        0u64..2000,
        proptest::bool::weighted(0.15),
        proptest::collection::vec(slot_strategy(), 1..4),
    )
}

fn build(
    spec: &PoolSpec,
    seeds: Vec<InstanceSeed>,
    orphans: Vec<(RunnerState, bool)>,
    waiting: usize,
    recent: Vec<u64>,
) -> Observation {
    let mut obs = Observation::default();
    let k = spec.runners_per_instance as usize;
    for (i, (state, age, old_template, slots)) in seeds.into_iter().enumerate() {
        let names: Vec<String> = (0..k).map(|s| format!("rs-p-inst{i:05}-{s}")).collect();
        for (name, slot) in names.iter().zip(slots.iter()) {
            if let Some((rstate, draining, busy_ago)) = slot {
                obs.runners.push(Runner {
                    id: RunnerId::new(format!("id-{name}")),
                    name: name.clone(),
                    state: *rstate,
                    draining: *draining,
                    last_busy: busy_ago.map(ago),
                });
            }
        }
        obs.instances.push(Instance {
            id: InstanceId::new(format!("i-{i}")),
            state: match state {
                0 => InstanceState::Booting,
                1 => InstanceState::Running,
                _ => InstanceState::Stopping,
            },
            launched_at: ago(age),
            template_hash: if old_template {
                "t0".into()
            } else {
                spec.template_hash.clone()
            },
            runner_names: names,
            reused: None,
        });
    }
    for (j, (state, draining)) in orphans.into_iter().enumerate() {
        obs.runners.push(Runner {
            id: RunnerId::new(format!("orphan-{j}")),
            name: format!("rs-p-orphan{j:04}"),
            state,
            draining,
            last_busy: None,
        });
    }
    obs.demand.waiting = (0..waiting)
        .map(|j| WaitingJob {
            id: format!("job-{j}"),
            queued_at: ago(j as u64),
        })
        .collect();
    obs.recent_launches = recent.into_iter().map(ago).collect();
    obs
}

fn observation_strategy() -> impl Strategy<Value = (PoolSpec, Observation)> {
    spec_strategy().prop_flat_map(|spec| {
        (
            Just(spec),
            proptest::collection::vec(instance_strategy(), 0..16),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just(RunnerState::Idle),
                        Just(RunnerState::Busy),
                        Just(RunnerState::Offline)
                    ],
                    any::<bool>(),
                ),
                0..4,
            ),
            0usize..30,
            proptest::collection::vec(0u64..120, 0..8),
            proptest::bool::weighted(0.1),
            proptest::collection::vec(proptest::bool::weighted(0.3), 64),
            // Earlier reuses of each instance: (uses, seconds after launch of the last).
            proptest::collection::vec(proptest::option::weighted(0.3, (2u32..6, 0u64..2000)), 16),
            // `warm` and its forecast: (target wait, coverage), (rate, lead time, dispersion).
            proptest::option::weighted(
                0.4,
                (
                    (0u64..120, 0.05f64..0.999),
                    (0.0f64..1.0, 0u64..400, 1.0f64..8.0),
                ),
            ),
        )
            .prop_map(
                |(mut spec, seeds, orphans, waiting, recent, stale, departed, reused, warm)| {
                    if let Some(((wait, coverage), (rate, lead, dispersion))) = warm {
                        spec.warm = Some(Warm {
                            target_wait: Duration::from_secs(wait),
                            coverage,
                        });
                        let forecast = Forecast {
                            arrivals_per_sec: rate,
                            lead_time: Duration::from_secs(lead),
                            dispersion,
                        };
                        let mut obs = build(&spec, seeds, orphans, waiting, recent);
                        obs.forecast = Some(forecast);
                        mark_reused(&mut obs, &reused);
                        return finish(spec, obs, stale, departed);
                    }
                    let mut obs = build(&spec, seeds, orphans, waiting, recent);
                    mark_reused(&mut obs, &reused);
                    finish(spec, obs, stale, departed)
                },
            )
    })
}

/// Marks some instances as reused earlier: `uses` so far, the last hand-over some time after
/// the launch (not after now).
fn mark_reused(obs: &mut Observation, reused: &[Option<(u32, u64)>]) {
    for (i, r) in obs.instances.iter_mut().zip(reused) {
        if let Some((uses, after)) = r {
            let at = (i.launched_at + chrono::Duration::seconds(*after as i64)).min(now());
            i.reused = Some(Reused { uses: *uses, at });
        }
    }
}

/// Marks the observation stale or not, and some of its runners departed.
fn finish(
    spec: PoolSpec,
    mut obs: Observation,
    stale: bool,
    departed: Vec<bool>,
) -> (PoolSpec, Observation) {
    obs.stale = stale;
    // Runners the reconciler saw registered that have left. Mostly unlisted ones,
    // but a listed name may come too (the policy must trust the listing).
    let names: Vec<String> = obs
        .instances
        .iter()
        .flat_map(|i| i.runner_names.iter().cloned())
        .collect();
    obs.departed = names
        .into_iter()
        .zip(departed)
        .filter(|(_, d)| *d)
        .map(|(n, _)| n)
        .collect();
    (spec, obs)
}

fn runners_by_name(obs: &Observation) -> HashMap<&str, &Runner> {
    obs.runners.iter().map(|r| (r.name.as_str(), r)).collect()
}

/// A slot whose runner registered and left: departed, and not listed, or listed offline (and
/// not draining).
fn left(obs: &Observation, by_name: &HashMap<&str, &Runner>, name: &str) -> bool {
    obs.departed.iter().any(|d| d == name)
        && by_name
            .get(name)
            .is_none_or(|r| r.state == RunnerState::Offline && !r.draining)
}

/// The instances the plan reuses.
fn reused(p: &Plan) -> HashSet<&InstanceId> {
    p.actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::Reuse { instance, .. } => Some(instance),
            _ => None,
        })
        .collect()
}

fn terminated(p: &Plan) -> HashSet<&InstanceId> {
    p.actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::Terminate { instance, .. } => Some(instance),
            _ => None,
        })
        .collect()
}

fn elapsed(t: Timestamp) -> Duration {
    (now() - t).to_std().unwrap_or_default()
}

/// Instances that are up and stay after the plan.
fn live_after<'a>(obs: &'a Observation, p: &Plan) -> Vec<&'a Instance> {
    let gone = terminated(p);
    obs.instances
        .iter()
        .filter(|i| i.state != InstanceState::Stopping && !gone.contains(&i.id))
        .collect()
}

/// An instance in service and idle: up, from the current template and within
/// `max_lifetime`, with an idle runner that is not draining and no busy one. Anything else
/// (booting with no runner yet, busy, offline, draining, runners not listed, so of unknown
/// state) is not idle.
fn idle_in_service(spec: &PoolSpec, by_name: &HashMap<&str, &Runner>, i: &Instance) -> bool {
    let regs: Vec<&&Runner> = i
        .runner_names
        .iter()
        .filter_map(|n| by_name.get(n.as_str()))
        .collect();
    i.state != InstanceState::Stopping
        && i.template_hash == spec.template_hash
        && spec
            .max_lifetime
            .is_none_or(|life| elapsed(i.launched_at) < life)
        && !regs.iter().any(|r| r.state == RunnerState::Busy)
        && regs
            .iter()
            .any(|r| r.state == RunnerState::Idle && !r.draining)
}

/// How long an instance has been idle: since its launch or the last job of any of its
/// runners, whichever is later.
fn idle_for(by_name: &HashMap<&str, &Runner>, i: &Instance) -> Duration {
    let since = i
        .runner_names
        .iter()
        .filter_map(|n| by_name.get(n.as_str()))
        .map(|r| r.last_busy.unwrap_or(i.armed_at()).max(i.armed_at()))
        .max()
        .unwrap_or(i.armed_at());
    elapsed(since)
}

/// The plan's launches keep within `launches_per_minute`, counting the launches of the last
/// minute that are known: those remembered, or the instances launched in it that stay,
/// whichever are more (the memory is lost on a restart; the instances are not).
fn within_launch_rate(spec: &PoolSpec, obs: &Observation, p: &Plan) -> bool {
    let minute = Duration::from_secs(60);
    let remembered = obs
        .recent_launches
        .iter()
        .filter(|t| elapsed(**t) < minute)
        .count() as u32;
    let young = live_after(obs, p)
        .iter()
        .filter(|i| elapsed(i.launched_at) < minute)
        .count() as u32;
    spec.launches_per_minute == 0
        || remembered.max(young) + p.launches() <= spec.launches_per_minute
}

proptest! {
    #![proptest_config(config())]

    /// 1. Never terminate an instance whose runner is busy; every registered runner of a
    /// terminated instance is listed for removal first (the reconciler terminates only after
    /// the CI system confirms each removal). Busy runners are never deregistered.
    #[test]
    fn p1_never_terminates_busy_or_unconfirmed((spec, obs) in observation_strategy()) {
        let p = plan(&spec, &obs, now());
        let by_name = runners_by_name(&obs);
        for a in &p.actions {
            match &a.action {
                Action::Terminate { instance, runners } => {
                    let inst = obs.instances.iter().find(|i| i.id == *instance).expect("planned for an observed instance");
                    let listed: HashSet<&RunnerId> = runners.iter().collect();
                    for name in &inst.runner_names {
                        if let Some(r) = by_name.get(name.as_str()) {
                            prop_assert_ne!(r.state, RunnerState::Busy, "terminating {} with busy runner {}", instance, name);
                            prop_assert!(listed.contains(&r.id), "runner {} of {} not removed first", name, instance);
                        }
                    }
                }
                Action::Deregister { name, .. } => {
                    prop_assert_ne!(by_name[name.as_str()].state, RunnerState::Busy);
                }
                _ => {}
            }
        }
        // No instance is terminated twice.
        let n = p.actions.iter().filter(|a| matches!(a.action, Action::Terminate { .. })).count();
        prop_assert_eq!(n, terminated(&p).len());
    }

    /// 2. Booting + running instances never exceed `max` because of a launch, counting those
    /// the plan terminates (still up while its launches start); launches never
    /// exceed `max_booting` (counting instances already booting) nor the launch rate (counting
    /// the instances launched in the last minute when more than the launches remembered).
    #[test]
    fn p2_launches_respect_every_cap((spec, obs) in observation_strategy()) {
        let p = plan(&spec, &obs, now());
        let launches = p.launches();
        if launches == 0 {
            return Ok(());
        }
        let live = live_after(&obs, &p);
        let up = obs.instances.iter().filter(|i| i.state != InstanceState::Stopping).count() as u32;
        prop_assert!(up + launches <= p.limits.max,
            "{} up + {} launches > max {}", up, launches, p.limits.max);
        let booting = live.iter().filter(|i| i.state == InstanceState::Booting).count() as u32;
        prop_assert!(booting + launches <= spec.max_booting);
        prop_assert!(within_launch_rate(&spec, &obs, &p));
    }

    /// 4. Unmet demand is launched in the same pass, unless a cap binds.
    #[test]
    fn p4_unmet_demand_is_launched_up_to_the_caps((spec, obs) in observation_strategy()) {
        let p = plan(&spec, &obs, now());
        let by_name = runners_by_name(&obs);
        let gone = terminated(&p);
        let reuses = reused(&p);
        let k = spec.runners_per_instance;
        // An upper bound on free capacity after the plan: idle runners and young empty slots
        // of instances that stay.
        let mut free = 0u32;
        for i in obs.instances.iter().filter(|i| i.state != InstanceState::Stopping && !gone.contains(&i.id)) {
            let regs: Vec<&&Runner> = i.runner_names.iter().filter_map(|n| by_name.get(n.as_str())).collect();
            free += regs.iter().filter(|r| r.state == RunnerState::Idle && !r.draining).count() as u32;
            if reuses.contains(&i.id) {
                free += k;
            } else if elapsed(i.armed_at()) < spec.boot_timeout {
                let online = regs.iter().filter(|r| r.state != RunnerState::Offline || r.draining).count() as u32;
                // A slot whose runner registered and left is not coming up.
                let left = i.runner_names.iter().filter(|n| left(&obs, &by_name, n)).count() as u32;
                free += (k - online).saturating_sub(left);
            }
        }
        // The spare slots asked for: `min_idle`, or what the forecast calls for if more.
        let warm = match (&spec.warm, &obs.forecast) {
            (Some(w), Some(f)) => warm_slots(w, f, p.limits.max.saturating_mul(k)),
            _ => 0,
        };
        let wanted = obs.demand.waiting.len() as u32 + p.limits.min_idle.max(warm);
        if p.launches() * k + free < wanted {
            let (_, limit) = p.held_back.expect("unmet demand must be explained by a cap");
            // Instances terminated by the plan count against `max` until gone.
            let up = obs.instances.iter()
                .filter(|i| i.state != InstanceState::Stopping).count() as u32;
            match limit {
                Limit::Max => prop_assert!(up + p.launches() >= p.limits.max),
                Limit::MaxBooting => {
                    let booting = obs.instances.iter().filter(|i| !gone.contains(&i.id)).filter(|i| i.state == InstanceState::Booting
                        || (i.state != InstanceState::Stopping && elapsed(i.armed_at()) < spec.boot_timeout
                            && i.runner_names.iter().any(|n| by_name.get(n.as_str()).is_none_or(|r| r.state == RunnerState::Offline && !r.draining)))).count() as u32;
                    prop_assert!(booting + p.launches() >= spec.max_booting);
                }
                // The rate binds: the launches known in the last minute (remembered, or
                // instances launched in it, whichever counts more: the memory is lost on a
                // restart) and this pass's reach `launches_per_minute`.
                Limit::LaunchRate => {
                    let minute = Duration::from_secs(60);
                    let remembered = obs.recent_launches.iter().filter(|t| elapsed(**t) < minute).count() as u32;
                    let young = obs.instances.iter()
                        .filter(|i| i.state != InstanceState::Stopping && elapsed(i.launched_at) < minute)
                        .count() as u32;
                    prop_assert!(remembered.max(young) + p.launches() >= spec.launches_per_minute,
                        "held back by the rate with {} + {} launched of {} a minute",
                        remembered.max(young), p.launches(), spec.launches_per_minute);
                }
            }
        }
    }

    /// 5. An instance with no registered runner after `boot_timeout` is terminated; a
    /// registered runner with no instance is deregistered (unless busy) — in the same pass.
    #[test]
    fn p5_orphans_in_both_directions_are_cleaned((spec, mut obs) in observation_strategy()) {
        obs.stale = false;
        let p = plan(&spec, &obs, now());
        let by_name = runners_by_name(&obs);
        let gone = terminated(&p);
        let reuses = reused(&p);
        for i in &obs.instances {
            let registered = i.runner_names.iter().any(|n| by_name.contains_key(n.as_str()));
            if i.state != InstanceState::Stopping && !registered && elapsed(i.armed_at()) >= spec.boot_timeout {
                prop_assert!(gone.contains(&i.id) || reuses.contains(&i.id), "{} has no runner after boot_timeout", i.id);
            }
        }
        let hosted: HashSet<&str> = obs.instances.iter().flat_map(|i| i.runner_names.iter().map(String::as_str)).collect();
        let deregistered: HashSet<&str> = p.actions.iter().filter_map(|a| match &a.action {
            Action::Deregister { name, .. } => Some(name.as_str()),
            _ => None,
        }).collect();
        for r in &obs.runners {
            if !hosted.contains(r.name.as_str()) && r.state != RunnerState::Busy {
                prop_assert!(deregistered.contains(r.name.as_str()), "{} has no instance", r.name);
            }
        }
    }

    /// 7. An instance whose every runner registered and left (gone from the listing, or
    /// listed offline after it was online) is retired in the same pass, whatever its age; a
    /// departed name listed online again (the listing is the truth) protects its instance as
    /// any listed runner does.
    #[test]
    fn p7_instances_whose_runners_all_left_are_retired((spec, mut obs) in observation_strategy()) {
        obs.stale = false;
        let p = plan(&spec, &obs, now());
        let by_name = runners_by_name(&obs);
        let gone = terminated(&p);
        let reuses = reused(&p);
        for i in obs.instances.iter().filter(|i| i.state != InstanceState::Stopping) {
            let all_left = i.runner_names.iter().all(|n| left(&obs, &by_name, n));
            if all_left {
                prop_assert!(gone.contains(&i.id) || reuses.contains(&i.id), "{} kept after its runners left", i.id);
            }
        }
    }

    /// 8. Above `max` (a schedule lowered it), idle instances are shed: on a fresh
    /// observation, if more than `max` instances stay after the plan, none of those that stay
    /// is idle in service (each is busy, booting, offline, draining, or of unknown state).
    #[test]
    fn p8_over_max_idle_instances_are_shed((spec, mut obs) in observation_strategy()) {
        obs.stale = false;
        let p = plan(&spec, &obs, now());
        let by_name = runners_by_name(&obs);
        let live = live_after(&obs, &p);
        if live.len() as u32 > p.limits.max {
            for i in &live {
                prop_assert!(!idle_in_service(&spec, &by_name, i),
                    "{} live > max {}, yet idle {} is kept", live.len(), p.limits.max, i.id);
            }
        }
    }

    /// 9. No instance idle in service is terminated before it has been idle for
    /// `idle_timeout`, except to bring the fleet down to `max`: those terminated early are at
    /// most as many as the instances above `max` before the plan (the instances that stay,
    /// plus the idle ones it terminates).
    #[test]
    fn p9_nothing_idle_is_terminated_before_idle_timeout_unless_over_max((spec, obs) in observation_strategy()) {
        let p = plan(&spec, &obs, now());
        let by_name = runners_by_name(&obs);
        let gone = terminated(&p);
        let idle_gone: Vec<&Instance> = obs.instances.iter()
            .filter(|i| gone.contains(&i.id) && idle_in_service(&spec, &by_name, i))
            .collect();
        let early: Vec<&InstanceId> = idle_gone.iter()
            .filter(|i| idle_for(&by_name, i) < spec.idle_timeout)
            .map(|i| &i.id)
            .collect();
        let above_max = (live_after(&obs, &p).len() + idle_gone.len()).saturating_sub(p.limits.max as usize);
        prop_assert!(early.len() <= above_max,
            "{:?} terminated before idle_timeout {:?}, {} above max", early, spec.idle_timeout, above_max);
    }

    /// 6. Instances from an old template are replaced when idle, never while busy.
    #[test]
    fn p6_old_templates_are_drained_only_when_idle((spec, mut obs) in observation_strategy()) {
        obs.stale = false;
        let p = plan(&spec, &obs, now());
        let by_name = runners_by_name(&obs);
        let gone = terminated(&p);
        for i in obs.instances.iter().filter(|i| i.template_hash != spec.template_hash && i.state != InstanceState::Stopping) {
            let regs: Vec<&&Runner> = i.runner_names.iter().filter_map(|n| by_name.get(n.as_str())).collect();
            let busy = regs.iter().any(|r| r.state == RunnerState::Busy);
            if busy {
                prop_assert!(!gone.contains(&i.id));
            } else {
                prop_assert!(gone.contains(&i.id), "idle instance {} from an old template kept", i.id);
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// R1. Reuse is as safe as termination: only an instance of a pool with `reuse`, on a
    /// fresh observation, from the current template and within `max_lifetime`, whose every
    /// runner registered and left (none listed busy or online), below `max_uses` and younger
    /// than `max_age`; its listed runners are removed first; it is not also terminated; its
    /// use count goes up by one.
    #[test]
    fn r1_only_instances_whose_runners_left_are_reused((spec, obs) in observation_strategy()) {
        let p = plan(&spec, &obs, now());
        let by_name = runners_by_name(&obs);
        let gone = terminated(&p);
        for a in &p.actions {
            let Action::Reuse { instance, runners, uses } = &a.action else { continue };
            let reuse = spec.reuse.expect("reuse planned for a pool without reuse");
            prop_assert!(!obs.stale);
            let i = obs.instances.iter().find(|i| i.id == *instance).expect("observed");
            prop_assert_ne!(i.state, InstanceState::Stopping);
            prop_assert_eq!(&i.template_hash, &spec.template_hash);
            prop_assert!(spec.max_lifetime.is_none_or(|l| elapsed(i.launched_at) < l));
            prop_assert!(i.runner_names.iter().all(|n| left(&obs, &by_name, n)), "{} has runners that did not leave", i.id);
            prop_assert!(i.uses() < reuse.max_uses && *uses == i.uses() + 1);
            prop_assert!(elapsed(i.launched_at) < reuse.max_age);
            prop_assert!(!gone.contains(instance));
            let listed: HashSet<&RunnerId> = runners.iter().collect();
            for n in &i.runner_names {
                if let Some(r) = by_name.get(n.as_str()) {
                    prop_assert!(listed.contains(&r.id), "runner {} of {} not removed first", n, i.id);
                }
            }
        }
        prop_assert_eq!(reused(&p).len(), p.reuses() as usize);
    }

    /// R2. Reuse comes before launching and only for wanted capacity: a plan that launches
    /// terminates no instance it could have reused, and a plan reuses no more instances than
    /// the slots it wants beyond what it has free.
    #[test]
    fn r2_reuse_is_preferred_to_launching_and_bounded_by_need((spec, mut obs) in observation_strategy()) {
        obs.stale = false;
        let p = plan(&spec, &obs, now());
        if spec.reuse.is_none() || p.reuses() == 0 && p.launches() == 0 {
            return Ok(());
        }
        let reuse = spec.reuse.expect("checked");
        let by_name = runners_by_name(&obs);
        let gone = terminated(&p);
        let reusable = |i: &&Instance| {
            i.state != InstanceState::Stopping
                && i.template_hash == spec.template_hash
                && spec.max_lifetime.is_none_or(|l| elapsed(i.launched_at) < l)
                && i.runner_names.iter().all(|n| left(&obs, &by_name, n))
                && i.uses() < reuse.max_uses
                && elapsed(i.launched_at) < reuse.max_age
        };
        if p.launches() > 0 {
            for i in obs.instances.iter().filter(reusable) {
                prop_assert!(!gone.contains(&i.id), "{} terminated while {} launches", i.id, p.launches());
            }
        }
        let k = spec.runners_per_instance;
        prop_assert!(p.reuses() * k <= p.desired_slots, "{} reuses for {} slots", p.reuses(), p.desired_slots);
    }

    /// A stale observation (provider throttled) never removes anything.
    #[test]
    fn stale_observations_only_launch((spec, mut obs) in observation_strategy()) {
        obs.stale = true;
        let p = plan(&spec, &obs, now());
        prop_assert!(p.actions.iter().all(|a| matches!(a.action, Action::Launch { .. })), "{:?}", p.actions);
    }
}

/// Executes a plan against a model world in which the CI system confirms every removal of a
/// non-busy runner.
fn apply(obs: &mut Observation, p: &Plan) {
    for a in &p.actions {
        match &a.action {
            Action::Terminate { instance, runners } => {
                obs.runners.retain(|r| !runners.contains(&r.id));
                obs.instances.retain(|i| i.id != *instance);
            }
            Action::Deregister { runner, .. } => obs.runners.retain(|r| r.id != *runner),
            Action::Reuse {
                instance,
                runners,
                uses,
            } => {
                obs.runners.retain(|r| !runners.contains(&r.id));
                if let Some(i) = obs.instances.iter_mut().find(|i| i.id == *instance) {
                    i.runner_names = i
                        .runner_names
                        .iter()
                        .map(|n| format!("{n}-again"))
                        .collect();
                    i.reused = Some(Reused {
                        uses: *uses,
                        at: now(),
                    });
                }
            }
            Action::Launch { .. } | Action::Drain { .. } => {}
        }
    }
}

/// Plans and applies a pass every `pass_secs` from now until `bound` plus one pass has gone
/// by, with no demand: nothing is launched, and no instance is left at the end.
fn drain_passes(
    spec: &PoolSpec,
    obs: &mut Observation,
    bound: Duration,
    pass_secs: u64,
) -> Result<(), TestCaseError> {
    let mut t = now();
    let end =
        now() + chrono::Duration::from_std(bound + Duration::from_secs(pass_secs)).expect("small");
    while t <= end {
        let p = plan(spec, obs, t);
        prop_assert_eq!(p.launches(), 0);
        apply(obs, &p);
        t += chrono::Duration::seconds(pass_secs as i64);
    }
    prop_assert!(
        obs.instances.is_empty(),
        "left: {:?}",
        obs.instances.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// 3. With no demand and `min_idle = 0`, the fleet reaches zero within
    /// max(`idle_timeout`, `scale_down_delay`, `boot_timeout`) plus one pass. (`boot_timeout`
    /// bounds instances whose runner never registered; `scale_down_delay` is validated to be
    /// at most `idle_timeout` in configuration, so in practice this is `idle_timeout`.)
    #[test]
    fn p3_no_demand_scales_to_zero(
        (spec, seeds) in spec_strategy().prop_flat_map(|s| (Just(s), proptest::collection::vec(instance_strategy(), 0..12))),
        pass_secs in 1u64..60,
        warm in any::<bool>(),
    ) {
        let mut spec = spec;
        spec.min_idle = 0;
        spec.max_lifetime = None;
        // A pool keeping warm capacity, when no arrival is expected, keeps none.
        if warm {
            spec.warm = Some(Warm::AUTO);
        }
        // No demand: nothing busy.
        let seeds: Vec<InstanceSeed> = seeds.into_iter().map(|(st, age, old, slots)| {
            let slots = slots.into_iter().map(|s| s.map(|(state, draining, last)| {
                let state = if state == RunnerState::Busy { RunnerState::Idle } else { state };
                (state, draining, last)
            })).collect();
            (st.min(1), age, old, slots)
        }).collect();
        let mut obs = build(&spec, seeds, vec![], 0, vec![]);
        if warm {
            obs.forecast = Some(Forecast {
                arrivals_per_sec: 0.0,
                lead_time: Duration::from_secs(60),
                dispersion: 1.0,
            });
        }
        let bound = spec.idle_timeout.max(spec.scale_down_delay).max(spec.boot_timeout);
        drain_passes(&spec, &mut obs, bound, pass_secs)?;
        prop_assert!(obs.runners.is_empty());
    }
}

/// A pool whose runners cannot be attributed to instances: instances name no runner; the
/// listing holds runners under names of their own (busy, idle or offline, with or without a
/// last job); jobs wait and run by count only.
fn unattributed_strategy() -> impl Strategy<Value = (PoolSpec, Observation)> {
    (
        spec_strategy(),
        proptest::collection::vec((0u8..3, 0u64..2000, proptest::bool::weighted(0.15)), 0..16),
        proptest::collection::vec(
            (
                prop_oneof![
                    Just(RunnerState::Idle),
                    Just(RunnerState::Busy),
                    Just(RunnerState::Offline)
                ],
                proptest::option::of(0u64..2000),
            ),
            0..6,
        ),
        (0usize..12, prop_oneof![Just(0u32), 0u32..12]),
        proptest::collection::vec(0u64..120, 0..8),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(spec, instances, runners, (waiting, running), recent, stale)| {
                let mut spec = spec;
                spec.runners_unattributed = true;
                let seeds = instances
                    .into_iter()
                    .map(|(state, age, old)| (state, age, old, Vec::new()))
                    .collect();
                let mut obs = build(&spec, seeds, vec![], waiting, recent);
                obs.demand.running = running;
                obs.stale = stale;
                for i in &mut obs.instances {
                    i.runner_names.clear();
                }
                for (j, (state, last)) in runners.into_iter().enumerate() {
                    obs.runners.push(Runner {
                        id: RunnerId::new(format!("seed-{j}")),
                        name: format!("lambda-{j}"),
                        state,
                        draining: false,
                        last_busy: last.map(ago),
                    });
                }
                (spec, obs)
            },
        )
}

proptest! {
    #![proptest_config(config())]

    /// U1. With runners that cannot be attributed, nothing is terminated while a job runs or
    /// waits (any instance may hold it, or be about to take it) or on a stale view; no runner
    /// is ever deregistered or drained; a termination names no runner to remove.
    #[test]
    fn u1_unattributed_pools_retire_nothing_unless_quiet((spec, obs) in unattributed_strategy()) {
        let p = plan(&spec, &obs, now());
        let quiet = !obs.stale && obs.demand.running == 0 && obs.demand.waiting.is_empty();
        for a in &p.actions {
            match &a.action {
                Action::Terminate { instance, runners } => {
                    prop_assert!(quiet, "terminating {} with {} running, {} waiting, stale {}",
                        instance, obs.demand.running, obs.demand.waiting.len(), obs.stale);
                    prop_assert!(runners.is_empty());
                    let i = obs.instances.iter().find(|i| i.id == *instance).expect("observed");
                    prop_assert_ne!(i.state, InstanceState::Stopping);
                }
                Action::Deregister { .. } | Action::Drain { .. } | Action::Reuse { .. } => {
                    prop_assert!(false, "{:?}", a);
                }
                Action::Launch { .. } => {}
            }
        }
        let n = p.actions.iter().filter(|a| matches!(a.action, Action::Terminate { .. })).count();
        prop_assert_eq!(n, terminated(&p).len());
    }

    /// U2. Launches respect `max`, `max_booting` (an instance younger than `boot_timeout`
    /// counts as booting) and the launch rate, and never go beyond the seed's desired count
    /// `min(ceil((running + waiting + min_idle) / slots), max)`, which is the plan's
    /// `desired_instances`.
    #[test]
    fn u2_unattributed_launches_respect_caps_and_the_seed_formula((spec, obs) in unattributed_strategy()) {
        let p = plan(&spec, &obs, now());
        let k = spec.runners_per_instance.max(1);
        let wanted = obs.demand.running + obs.demand.waiting.len() as u32 + p.limits.min_idle;
        prop_assert_eq!(p.desired_instances, wanted.div_ceil(k).min(p.limits.max));
        let launches = p.launches();
        if launches == 0 {
            return Ok(());
        }
        let live = live_after(&obs, &p);
        prop_assert!(live.len() as u32 + launches <= p.desired_instances,
            "{} live + {} launches above the seed's {}", live.len(), launches, p.desired_instances);
        let booting = live.iter()
            .filter(|i| i.state == InstanceState::Booting || elapsed(i.launched_at) < spec.boot_timeout)
            .count() as u32;
        prop_assert!(booting + launches <= spec.max_booting);
        prop_assert!(within_launch_rate(&spec, &obs, &p));
    }

    /// U3. Unmet demand is launched unless a cap binds: after the plan, the free slots cover
    /// waiting + `min_idle` (running jobs take slots of the instances kept; more running jobs
    /// than those slots run elsewhere and take none of the new ones).
    #[test]
    fn u3_unattributed_unmet_demand_is_launched_up_to_the_caps((spec, obs) in unattributed_strategy()) {
        let p = plan(&spec, &obs, now());
        let k = spec.runners_per_instance.max(1);
        let gone = terminated(&p);
        let kept = obs.instances.iter()
            .filter(|i| i.state != InstanceState::Stopping && !gone.contains(&i.id))
            .count() as u32;
        let slots = kept * k;
        let free = slots - obs.demand.running.min(slots) + p.launches() * k;
        let wanted = obs.demand.waiting.len() as u32 + p.limits.min_idle;
        if free < wanted {
            prop_assert!(p.held_back.is_some(), "{} free < {} wanted, nothing held back: {:?}", free, wanted, p);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// U4. With no job waiting or running and `min_idle = 0`, an unattributed fleet reaches
    /// zero within max(`idle_timeout`, `scale_down_delay`) plus one pass (idleness counts from
    /// each instance's launch and from the last job any runner was seen with).
    #[test]
    fn u4_unattributed_no_demand_scales_to_zero(
        (spec, obs) in unattributed_strategy(),
        pass_secs in 1u64..60,
    ) {
        let mut spec = spec;
        spec.min_idle = 0;
        spec.schedules.clear();
        let mut obs = obs;
        obs.demand.waiting.clear();
        obs.demand.running = 0;
        obs.stale = false;
        obs.instances.retain(|i| i.state != InstanceState::Stopping);
        drain_passes(&spec, &mut obs, spec.idle_timeout.max(spec.scale_down_delay), pass_secs)?;
    }
}
