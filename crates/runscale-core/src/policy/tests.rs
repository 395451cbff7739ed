//! One test per rule of the policy. The safety properties are property-tested in
//! `tests/policy_properties.rs`.

use std::time::Duration;

use chrono::TimeZone;

use super::plan;
use crate::model::*;
use crate::plan::{Action, Limit, Reason};
use crate::schedule::Schedule;

fn t0() -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("valid")
}

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

fn jobs(n: usize) -> Demand {
    Demand {
        waiting: (0..n)
            .map(|i| WaitingJob {
                id: format!("j{i}"),
                queued_at: t0(),
            })
            .collect(),
        running: 0,
    }
}

/// An instance launched `age` seconds before t0, hosting runner `name`.
fn inst(name: &str, age: i64) -> Instance {
    Instance {
        id: InstanceId::new(format!("i-{name}")),
        state: InstanceState::Running,
        launched_at: t0() - secs(age),
        template_hash: "t1".into(),
        runner_names: vec![name.to_owned()],
        reused: None,
    }
}

fn runner(name: &str, state: RunnerState) -> Runner {
    Runner {
        id: RunnerId::new(format!("id-{name}")),
        name: name.to_owned(),
        state,
        draining: false,
        last_busy: None,
    }
}

fn launches(p: &crate::plan::Plan) -> u32 {
    p.launches()
}

fn terminated(p: &crate::plan::Plan) -> Vec<(String, Reason)> {
    p.actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::Terminate { instance, .. } => Some((instance.to_string(), a.reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn launches_one_instance_per_waiting_job() {
    let spec = PoolSpec::test("p");
    let obs = Observation {
        demand: jobs(3),
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(launches(&p), 3);
    assert_eq!(p.actions[0].reason, Reason::Demand);
}

#[test]
fn idle_and_booting_capacity_is_counted_before_launching() {
    let spec = PoolSpec::test("p");
    let mut booting = inst("b", 1);
    booting.state = InstanceState::Booting;
    let obs = Observation {
        demand: jobs(3),
        runners: vec![runner("a", RunnerState::Idle)],
        instances: vec![inst("a", 100), booting],
        ..Default::default()
    };
    assert_eq!(launches(&plan(&spec, &obs, t0())), 1);
}

#[test]
fn min_idle_is_kept_on_top_of_demand() {
    let spec = PoolSpec::test("p").min_idle(2);
    let obs = Observation {
        demand: jobs(1),
        ..Default::default()
    };
    assert_eq!(launches(&plan(&spec, &obs, t0())), 3);
    let obs = Observation::default();
    let p = plan(&spec, &obs, t0());
    assert_eq!(launches(&p), 2);
    assert_eq!(p.actions[0].reason, Reason::MinIdle);
}

#[test]
fn warm_capacity_keeps_the_spares_the_forecast_calls_for_beyond_min_idle() {
    let warm = crate::forecast::Warm {
        target_wait: Duration::from_secs(10),
        coverage: 0.8,
    };
    let spec = PoolSpec::test("p").min_idle(1).warm(Some(warm));
    // 5 arrivals expected over the 50 s beyond the target wait: 7 spares (P(N ≤ 7) ≈ 0.87).
    let forecast = crate::forecast::Forecast {
        arrivals_per_sec: 0.1,
        lead_time: Duration::from_secs(60),
        dispersion: 1.0,
    };
    let obs = Observation {
        demand: jobs(2),
        forecast: Some(forecast),
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(launches(&p), 9);
    assert_eq!(p.actions[0].reason, Reason::Demand);
    // No job waiting: the spares alone, for the forecast; planned again within 30 s, as the
    // forecast fades between arrivals.
    let obs = Observation {
        forecast: Some(forecast),
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(launches(&p), 7);
    assert_eq!(p.actions[0].reason, Reason::Forecast);
    assert!(
        p.requeue_after
            .is_some_and(|d| d <= Duration::from_secs(30))
    );
    // Idle spares count: nothing more is launched, nothing is retired.
    let obs = Observation {
        instances: (0..7).map(|i| inst(&format!("w{i}"), 120)).collect(),
        runners: (0..7)
            .map(|i| runner(&format!("w{i}"), RunnerState::Idle))
            .collect(),
        forecast: Some(forecast),
        ..Default::default()
    };
    assert!(plan(&spec, &obs, t0()).actions.is_empty());
    // Without a forecast (no lead time seen yet), or with `warm` off: `min_idle` alone.
    let obs = Observation::default();
    assert_eq!(launches(&plan(&spec, &obs, t0())), 1);
    let obs = Observation {
        forecast: Some(forecast),
        ..Default::default()
    };
    assert_eq!(launches(&plan(&spec.clone().warm(None), &obs, t0())), 1);
}

#[test]
fn max_caps_the_fleet() {
    let spec = PoolSpec::test("p").max(4);
    let obs = Observation {
        demand: jobs(10),
        runners: vec![runner("a", RunnerState::Busy)],
        instances: vec![inst("a", 100)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(launches(&p), 3);
    assert_eq!(p.held_back, Some((7, Limit::Max)));
}

#[test]
fn max_booting_caps_launches() {
    let spec = PoolSpec::test("p").max(20).max_booting(2);
    let mut booting = inst("b", 1);
    booting.state = InstanceState::Booting;
    let obs = Observation {
        demand: jobs(10),
        instances: vec![booting],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(launches(&p), 1);
    assert_eq!(p.held_back.map(|h| h.1), Some(Limit::MaxBooting));
}

#[test]
fn launch_rate_counts_remembered_launches_and_young_instances() {
    let spec = PoolSpec::test("p")
        .max(50)
        .max_booting(50)
        .launches_per_minute(5);
    let obs = Observation {
        demand: jobs(10),
        recent_launches: vec![t0() - secs(10), t0() - secs(30), t0() - secs(70)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(
        launches(&p),
        3,
        "two launches in the window leave room for three"
    );
    assert_eq!(p.held_back.map(|h| h.1), Some(Limit::LaunchRate));
    // Comes back when the launch 30 s ago leaves the window.
    assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));

    // After a restart the remembered launches are gone, but three instances launched in the
    // last minute (their runners not registered yet) still count against the rate: room for
    // two, not five. When both are known, the larger count wins (3 young instances over 2
    // remembered launches).
    let young = vec![inst("a", 5), inst("b", 15), inst("c", 20)];
    for recent_launches in [vec![], vec![t0() - secs(10), t0() - secs(30)]] {
        let obs = Observation {
            demand: jobs(10),
            instances: young.clone(),
            recent_launches,
            ..Default::default()
        };
        let p = plan(&spec, &obs, t0());
        assert_eq!(launches(&p), 2, "{p:?}");
        assert_eq!(p.held_back, Some((5, Limit::LaunchRate)));
    }
}

#[test]
fn schedules_override_min_idle_and_max_last_match_wins() {
    let mut spec = PoolSpec::test("p").max(10);
    spec.schedules = vec![
        Schedule::new("* * * * *", "UTC", Some(4), Some(6)).expect("cron"),
        Schedule::new("* 12 * * *", "UTC", Some(2), None).expect("cron"),
        Schedule::new("* 3 * * *", "UTC", Some(9), Some(9)).expect("cron"),
    ];
    let p = plan(&spec, &Observation::default(), t0());
    assert_eq!(p.limits.min_idle, 2);
    assert_eq!(p.limits.max, 6);
    assert_eq!(p.limits.schedule, Some(1));
    assert_eq!(launches(&p), 2);
}

#[test]
fn runners_per_instance_launches_by_slots() {
    let spec = PoolSpec::test("p").slots(4);
    let obs = Observation {
        demand: jobs(9),
        ..Default::default()
    };
    assert_eq!(launches(&plan(&spec, &obs, t0())), 3);
    // A booting instance with 4 slots covers 4 jobs.
    let mut booting = inst("b", 1);
    booting.state = InstanceState::Booting;
    booting.runner_names = (1..=4).map(|i| format!("b-{i}")).collect();
    let obs = Observation {
        demand: jobs(9),
        instances: vec![booting],
        ..Default::default()
    };
    assert_eq!(launches(&plan(&spec, &obs, t0())), 2);
}

#[test]
fn idle_runners_are_removed_after_idle_timeout_oldest_first() {
    let spec = PoolSpec::test("p")
        .min_idle(1)
        .idle_timeout(Duration::from_secs(60));
    let mut a = runner("a", RunnerState::Idle);
    a.last_busy = Some(t0() - secs(300));
    let mut b = runner("b", RunnerState::Idle);
    b.last_busy = Some(t0() - secs(120));
    let mut c = runner("c", RunnerState::Idle);
    c.last_busy = Some(t0() - secs(30)); // not idle long enough
    let obs = Observation {
        runners: vec![b.clone(), a.clone(), c.clone()],
        instances: vec![inst("a", 1000), inst("b", 1000), inst("c", 1000)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    // Surplus is 2 (3 idle, min_idle 1): a and b go, oldest idle first; c is too fresh.
    assert_eq!(
        terminated(&p),
        vec![
            ("i-a".into(), Reason::IdleTimeout),
            ("i-b".into(), Reason::IdleTimeout)
        ]
    );
    match &p.actions[0].action {
        Action::Terminate { runners, .. } => assert_eq!(runners, &vec![a.id.clone()]),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn idle_scale_in_waits_for_scale_down_delay_after_a_launch() {
    let mut spec = PoolSpec::test("p").idle_timeout(Duration::from_secs(10));
    spec.scale_down_delay = Duration::from_secs(300);
    let mut a = runner("a", RunnerState::Idle);
    a.last_busy = Some(t0() - secs(500));
    let obs = Observation {
        runners: vec![a, runner("new", RunnerState::Busy)],
        instances: vec![inst("a", 1000), inst("new", 100)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert!(terminated(&p).is_empty(), "{p:?}");
    assert_eq!(p.requeue_after, Some(Duration::from_secs(200)));
}

#[test]
fn busy_runners_are_never_scaled_in() {
    let spec = PoolSpec::test("p").idle_timeout(Duration::ZERO);
    let obs = Observation {
        runners: vec![runner("a", RunnerState::Busy)],
        instances: vec![inst("a", 10_000)],
        ..Default::default()
    };
    assert!(plan(&spec, &obs, t0()).is_empty());
}

#[test]
fn instance_without_runner_after_boot_timeout_is_terminated() {
    let spec = PoolSpec::test("p").boot_timeout(Duration::from_secs(60));
    let obs = Observation {
        instances: vec![inst("late", 61), inst("young", 59)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(terminated(&p), vec![("i-late".into(), Reason::BootTimeout)]);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(1)));
}

#[test]
fn instance_whose_runner_left_is_retired_before_boot_timeout_and_not_counted() {
    let spec = PoolSpec::test("p").boot_timeout(Duration::from_secs(600));
    let obs = Observation {
        demand: jobs(1),
        instances: vec![inst("done", 30), inst("coming", 30)],
        departed: vec!["done".into()],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(terminated(&p), vec![("i-done".into(), Reason::RunnerLeft)]);
    // The waiting job is covered by the slot still coming up, not by the finished one.
    assert_eq!(launches(&p), 0);
    let obs = Observation {
        demand: jobs(2),
        ..obs
    };
    assert_eq!(launches(&plan(&spec, &obs, t0())), 1);
}

#[test]
fn runners_listed_offline_after_they_left_retire_their_instance() {
    let spec = PoolSpec::test("p")
        .slots(2)
        .boot_timeout(Duration::from_secs(600));
    let mut two = inst("a", 30);
    two.runner_names = vec!["a-0".into(), "a-1".into()];
    let mut back = inst("b", 30);
    back.runner_names = vec!["b-0".into(), "b-1".into()];
    let obs = Observation {
        runners: vec![
            runner("a-0", RunnerState::Offline),
            runner("a-1", RunnerState::Offline),
            runner("b-0", RunnerState::Offline),
            runner("b-1", RunnerState::Idle),
        ],
        instances: vec![two, back],
        departed: vec!["a-0".into(), "a-1".into(), "b-0".into(), "b-1".into()],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    // b-1 is online again: the listing wins, and b stays.
    assert_eq!(terminated(&p), vec![("i-a".into(), Reason::RunnerLeft)]);
}

#[test]
fn departed_slot_of_a_shared_instance_is_not_booting_capacity() {
    let spec = PoolSpec::test("p")
        .slots(2)
        .boot_timeout(Duration::from_secs(600));
    let mut two = inst("a", 30);
    two.runner_names = vec!["a-0".into(), "a-1".into()];
    let obs = Observation {
        demand: jobs(2),
        runners: vec![runner("a-1", RunnerState::Busy)],
        instances: vec![two],
        departed: vec!["a-0".into()],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert!(
        terminated(&p).is_empty(),
        "a busy runner keeps its instance"
    );
    assert_eq!(launches(&p), 1, "2 jobs need 2 slots: one instance of 2");
}

#[test]
fn runner_without_instance_is_deregistered_unless_busy() {
    let spec = PoolSpec::test("p");
    let obs = Observation {
        runners: vec![
            runner("ghost", RunnerState::Offline),
            runner("idle-ghost", RunnerState::Idle),
            runner("working", RunnerState::Busy),
        ],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    let deregistered: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::Deregister { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deregistered, vec!["ghost", "idle-ghost"]);
}

#[test]
fn old_template_is_replaced_when_idle_and_drained_when_busy() {
    let spec = PoolSpec::test("p").ephemeral(false);
    let mut idle_old = inst("a", 100);
    idle_old.template_hash = "t0".into();
    let mut busy_old = inst("b", 100);
    busy_old.template_hash = "t0".into();
    let obs = Observation {
        demand: jobs(0),
        runners: vec![
            runner("a", RunnerState::Idle),
            runner("b", RunnerState::Busy),
        ],
        instances: vec![idle_old, busy_old],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(
        terminated(&p),
        vec![("i-a".into(), Reason::TemplateChanged)]
    );
    assert!(p.actions.iter().any(|a| matches!(&a.action,
        Action::Drain { name, .. } if name == "b")
        && a.reason == Reason::TemplateChanged));
}

#[test]
fn max_lifetime_retires_idle_instances_and_replaces_capacity() {
    let mut spec = PoolSpec::test("p").min_idle(1);
    spec.max_lifetime = Some(Duration::from_secs(3600));
    let obs = Observation {
        runners: vec![runner("a", RunnerState::Idle)],
        instances: vec![inst("a", 3601)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(terminated(&p), vec![("i-a".into(), Reason::MaxLifetime)]);
    assert_eq!(
        launches(&p),
        1,
        "the warm runner is replaced in the same pass"
    );
}

#[test]
fn offline_runners_past_boot_timeout_are_retired() {
    let spec = PoolSpec::test("p");
    let obs = Observation {
        runners: vec![runner("a", RunnerState::Offline)],
        instances: vec![inst("a", 61)],
        ..Default::default()
    };
    assert_eq!(
        terminated(&plan(&spec, &obs, t0())),
        vec![("i-a".into(), Reason::RunnerOffline)]
    );
}

#[test]
fn schedule_lowering_max_sheds_idle_instances_immediately() {
    let mut spec = PoolSpec::test("p")
        .idle_timeout(Duration::from_secs(3600))
        .min_idle(3);
    spec.schedules = vec![Schedule::new("* * * * *", "UTC", Some(3), Some(1)).expect("cron")];
    let obs = Observation {
        runners: vec![
            runner("a", RunnerState::Idle),
            runner("b", RunnerState::Idle),
            runner("c", RunnerState::Busy),
        ],
        instances: vec![inst("a", 100), inst("b", 100), inst("c", 100)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    let t = terminated(&p);
    assert_eq!(t.len(), 2, "{p:?}");
    assert!(t.iter().all(|(_, r)| *r == Reason::OverMax));
    assert_eq!(launches(&p), 0);
}

#[test]
fn stopping_instances_do_not_count_and_keep_their_runners() {
    let spec = PoolSpec::test("p");
    let mut stopping = inst("a", 100);
    stopping.state = InstanceState::Stopping;
    let obs = Observation {
        demand: jobs(1),
        runners: vec![runner("a", RunnerState::Offline)],
        instances: vec![stopping],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(launches(&p), 1);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a.action, Action::Deregister { .. }))
    );
}

#[test]
fn draining_instances_with_nothing_running_are_terminated() {
    let spec = PoolSpec::test("p");
    let mut r = runner("a", RunnerState::Idle);
    r.draining = true;
    let obs = Observation {
        runners: vec![r],
        instances: vec![inst("a", 10)],
        ..Default::default()
    };
    assert_eq!(
        terminated(&plan(&spec, &obs, t0())),
        vec![("i-a".into(), Reason::Drained)]
    );
}

#[test]
fn requeue_points_at_the_next_idle_timeout() {
    let spec = PoolSpec::test("p").idle_timeout(Duration::from_secs(60));
    let mut a = runner("a", RunnerState::Idle);
    a.last_busy = Some(t0() - secs(45));
    let obs = Observation {
        runners: vec![a],
        instances: vec![inst("a", 1000)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert!(p.is_empty());
    assert_eq!(p.requeue_after, Some(Duration::from_secs(15)));
}

#[test]
fn stale_observation_launches_but_never_removes() {
    let spec = PoolSpec::test("p").max(3).idle_timeout(Duration::ZERO);
    let mut idle = runner("a", RunnerState::Idle);
    idle.last_busy = Some(t0() - secs(1000));
    let obs = Observation {
        demand: jobs(5),
        runners: vec![idle, runner("ghost", RunnerState::Offline)],
        instances: vec![inst("a", 1000), inst("late", 1000)],
        stale: true,
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert!(
        p.actions
            .iter()
            .all(|a| matches!(a.action, Action::Launch { .. })),
        "{p:?}"
    );
    // Two instances kept (one would have been a boot-timeout orphan) leave room for one.
    assert_eq!(launches(&p), 1);
}

#[test]
fn registered_but_not_yet_connected_runners_count_as_booting() {
    // GitHub lists a JIT runner (offline) as soon as its config exists; that slot is coming.
    let spec = PoolSpec::test("p");
    let obs = Observation {
        demand: jobs(2),
        runners: vec![runner("a", RunnerState::Offline)],
        instances: vec![inst("a", 5)],
        ..Default::default()
    };
    assert_eq!(launches(&plan(&spec, &obs, t0())), 1);
}

// Pools whose runners cannot be attributed to instances (`runners_unattributed`).

/// An instance of an unattributed pool: it names its runner itself, so it lists none.
fn anonymous(id: &str, age: i64) -> Instance {
    Instance {
        id: InstanceId::new(id),
        state: InstanceState::Running,
        launched_at: t0() - secs(age),
        template_hash: "t1".into(),
        runner_names: Vec::new(),
        reused: None,
    }
}

fn working(waiting: usize, running: u32) -> Demand {
    Demand {
        running,
        ..jobs(waiting)
    }
}

#[test]
fn seed_named_runner_never_seen_under_an_expected_name_keeps_its_busy_instance() {
    // Regression: CircleCI's simple-Lambda example names its runner `$RUNNER_NAME-<time>`;
    // its instance, long past boot_timeout, runs the pool's one task.
    let spec = PoolSpec::test("p").unattributed(true);
    let obs = Observation {
        demand: working(0, 1),
        runners: vec![runner("lambda-241207-120301-123", RunnerState::Busy)],
        instances: vec![anonymous("i-busy", 600)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(p.desired_instances, 1);
    // A fixed name shared by every instance, listed idle: still nothing goes while a job runs.
    let obs = Observation {
        demand: working(0, 1),
        runners: vec![runner("lambda", RunnerState::Idle)],
        instances: vec![anonymous("i-a", 600), anonymous("i-b", 900)],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0() + secs(3600));
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn unattributed_pools_launch_to_the_seed_formula() {
    // The Lambda: desired = min(unclaimed + running, max), running tasks on the group.
    let two_busy = Observation {
        demand: working(3, 2),
        instances: vec![anonymous("i-a", 600), anonymous("i-b", 600)],
        ..Default::default()
    };
    let p = plan(
        &PoolSpec::test("p").unattributed(true).max(4),
        &two_busy,
        t0(),
    );
    assert_eq!((launches(&p), p.desired_instances), (2, 4));
    assert_eq!(p.held_back, Some((1, Limit::Max)));
    let p = plan(
        &PoolSpec::test("p").unattributed(true).max(10),
        &two_busy,
        t0(),
    );
    assert_eq!((launches(&p), p.desired_instances), (3, 5));
    // Idle instances waiting to end by themselves are capacity; the target is below them.
    let idle = Observation {
        demand: working(1, 0),
        instances: vec![anonymous("i-a", 600), anonymous("i-b", 600)],
        ..Default::default()
    };
    let p = plan(&PoolSpec::test("p").unattributed(true), &idle, t0());
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(p.desired_instances, 1);
}

#[test]
fn unattributed_pools_retire_only_when_quiet_and_idle_long_enough() {
    let spec = PoolSpec::test("p")
        .unattributed(true)
        .min_idle(1)
        .idle_timeout(Duration::from_secs(60));
    let mut last = runner("lambda", RunnerState::Idle);
    last.last_busy = Some(t0() - secs(30));
    let fleet = vec![
        anonymous("i-new", 100),
        anonymous("i-old", 300),
        anonymous("i-mid", 200),
    ];
    // A waiting job: an idle runner may be about to take it, so nothing goes.
    let busy = Observation {
        demand: working(1, 0),
        runners: vec![last.clone()],
        instances: fleet.clone(),
        ..Default::default()
    };
    assert!(plan(&spec, &busy, t0() + secs(3600)).is_empty());
    // Quiet, but a job ended 30 s ago on some instance: come back when it is 60 s.
    let quiet = Observation {
        runners: vec![last],
        instances: fleet,
        ..Default::default()
    };
    let p = plan(&spec, &quiet, t0());
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));
    // Then the surplus above min_idle goes, oldest first.
    let p = plan(&spec, &quiet, t0() + secs(30));
    assert_eq!(
        terminated(&p),
        [
            ("i-old".to_owned(), Reason::IdleTimeout),
            ("i-mid".to_owned(), Reason::IdleTimeout)
        ]
    );
    assert!(p.actions.iter().all(|a| match &a.action {
        Action::Terminate { runners, .. } => runners.is_empty(),
        _ => false,
    }));
    // A stale view never retires anything.
    let stale = Observation {
        stale: true,
        ..quiet
    };
    assert!(plan(&spec, &stale, t0() + secs(3600)).is_empty());
}

#[test]
fn unattributed_old_templates_wait_for_quiet_and_runners_are_never_deregistered() {
    let spec = PoolSpec::test("p").unattributed(true);
    let mut old = anonymous("i-old", 10);
    old.template_hash = "t0".into();
    let running = Observation {
        demand: working(0, 1),
        runners: vec![
            runner("lambda-1", RunnerState::Busy),
            runner("lambda-2", RunnerState::Idle),
        ],
        instances: vec![old.clone()],
        ..Default::default()
    };
    assert!(plan(&spec, &running, t0()).is_empty());
    let quiet = Observation {
        runners: vec![runner("lambda-2", RunnerState::Idle)],
        instances: vec![old],
        ..Default::default()
    };
    let p = plan(&spec, &quiet, t0());
    assert_eq!(
        terminated(&p),
        [("i-old".to_owned(), Reason::TemplateChanged)]
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a.action, Action::Deregister { .. })),
        "{p:?}"
    );
}

const REUSE: Reuse = Reuse {
    max_uses: 3,
    max_age: Duration::from_secs(3600),
};

/// An instance `age` seconds old whose runner `name` finished its job and left.
fn finished(name: &str, age: i64) -> (Instance, Observation) {
    let obs = Observation {
        instances: vec![inst(name, age)],
        departed: vec![name.to_owned()],
        ..Default::default()
    };
    (inst(name, age), obs)
}

fn reused_ids(p: &crate::plan::Plan) -> Vec<(String, u32, Reason)> {
    p.actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::Reuse { instance, uses, .. } => Some((instance.to_string(), *uses, a.reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_instance_whose_runner_left_is_reused_for_a_waiting_job_instead_of_launching() {
    let spec = PoolSpec::test("p").reuse(Some(REUSE));
    let (_, mut obs) = finished("done", 600);
    obs.demand = jobs(2);
    let p = plan(&spec, &obs, t0());
    assert_eq!(
        reused_ids(&p),
        vec![("i-done".to_owned(), 2, Reason::Demand)]
    );
    assert_eq!(launches(&p), 1, "the second job gets a new instance");
    assert!(terminated(&p).is_empty());
    assert_eq!(p.desired_instances, 2);
}

#[test]
fn an_instance_whose_runner_left_is_terminated_when_no_capacity_is_wanted() {
    let spec = PoolSpec::test("p").reuse(Some(REUSE));
    let (_, obs) = finished("done", 600);
    let p = plan(&spec, &obs, t0());
    assert!(reused_ids(&p).is_empty());
    assert_eq!(
        terminated(&p),
        vec![("i-done".to_owned(), Reason::RunnerLeft)]
    );
}

#[test]
fn reuse_stops_at_max_uses_and_max_age() {
    let spec = PoolSpec::test("p").reuse(Some(REUSE));
    // Used up: 3 registrations served.
    let (mut worn, mut obs) = finished("worn", 600);
    worn.reused = Some(Reused {
        uses: 3,
        at: t0() - secs(30),
    });
    obs.instances = vec![worn];
    obs.demand = jobs(1);
    let p = plan(&spec, &obs, t0());
    assert!(reused_ids(&p).is_empty());
    assert_eq!(launches(&p), 1);
    assert_eq!(
        terminated(&p),
        vec![("i-worn".to_owned(), Reason::RunnerLeft)]
    );
    // Too old.
    let (_, mut obs) = finished("old", 3600);
    obs.demand = jobs(1);
    let p = plan(&spec, &obs, t0());
    assert!(reused_ids(&p).is_empty());
    assert_eq!(launches(&p), 1);
    // Without `reuse`, as before.
    let (_, mut obs) = finished("any", 30);
    obs.demand = jobs(1);
    let p = plan(&PoolSpec::test("p"), &obs, t0());
    assert!(reused_ids(&p).is_empty());
    assert_eq!(
        terminated(&p),
        vec![("i-any".to_owned(), Reason::RunnerLeft)]
    );
}

#[test]
fn nothing_is_reused_on_a_stale_observation_or_with_a_runner_still_listed_online() {
    let spec = PoolSpec::test("p").reuse(Some(REUSE));
    let (_, mut obs) = finished("done", 600);
    obs.demand = jobs(1);
    obs.stale = true;
    let p = plan(&spec, &obs, t0());
    assert!(reused_ids(&p).is_empty());
    assert!(terminated(&p).is_empty());
    // The listing has the last word: a departed name listed idle again is in service.
    obs.stale = false;
    obs.runners = vec![runner("done", RunnerState::Idle)];
    let p = plan(&spec, &obs, t0());
    assert!(reused_ids(&p).is_empty());
    assert_eq!(launches(&p), 0, "its idle runner takes the job");
}

#[test]
fn a_reused_instance_boots_from_its_hand_over_not_its_launch() {
    let spec = PoolSpec::test("p").reuse(Some(REUSE));
    let mut again = inst("fresh", 3000);
    again.reused = Some(Reused {
        uses: 2,
        at: t0() - secs(5),
    });
    let obs = Observation {
        demand: jobs(1),
        instances: vec![again.clone()],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(
        launches(&p),
        0,
        "its new runner is coming up: {:?}",
        p.actions
    );
    assert!(terminated(&p).is_empty());
    assert_eq!(p.requeue_after, Some(Duration::from_secs(55)));
    // Past `boot_timeout` since the hand-over with no runner registered: retired.
    let p = plan(&spec, &obs, t0() + secs(60));
    assert_eq!(
        terminated(&p),
        vec![("i-fresh".to_owned(), Reason::BootTimeout)]
    );
}

#[test]
fn reusable_instances_go_first_when_the_fleet_is_above_max() {
    let spec = PoolSpec::test("p").reuse(Some(REUSE)).max(1);
    let (_, mut obs) = finished("done", 600);
    obs.instances.push(inst("busy", 600));
    obs.runners.push(runner("busy", RunnerState::Busy));
    obs.demand = jobs(1);
    let p = plan(&spec, &obs, t0());
    assert!(reused_ids(&p).is_empty());
    assert_eq!(terminated(&p), vec![("i-done".to_owned(), Reason::OverMax)]);
    assert_eq!(launches(&p), 0);
    assert_eq!(p.held_back, Some((1, Limit::Max)));
}

#[test]
fn with_reuse_an_instance_whose_runner_went_missing_once_waits_for_the_confirmation() {
    let spec = PoolSpec::test("p").reuse(Some(REUSE));
    // Past boot_timeout, its runner missing from one fresh view: not yet departed.
    let obs = Observation {
        demand: jobs(1),
        instances: vec![inst("going", 600)],
        leaving: vec!["going".into()],
        ..Default::default()
    };
    let p = plan(&spec, &obs, t0());
    assert!(terminated(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(
        launches(&p),
        1,
        "no capacity meanwhile: the job gets a launch"
    );
    assert_eq!(p.desired_instances, 2);
    // Without reuse, retired at boot_timeout as before.
    let p = plan(&PoolSpec::test("p"), &obs, t0());
    assert_eq!(
        terminated(&p),
        vec![("i-going".to_owned(), Reason::BootTimeout)]
    );
    // Confirmed departed on the next view: reused for the waiting job.
    let obs = Observation {
        leaving: Vec::new(),
        departed: vec!["going".into()],
        ..obs
    };
    let p = plan(&spec, &obs, t0());
    assert_eq!(
        reused_ids(&p),
        vec![("i-going".to_owned(), 2, Reason::Demand)]
    );
    assert_eq!(launches(&p), 0);
}
