//! Each policy against small cases computed by hand (times in seconds after the first job is
//! queued; boot 45 s, registration 5 s, webhook 1 s, runscale pass latency 0.5 s).

mod common;

use std::time::Duration;

use common::{approx, sim, trace};
use runscale_sim::policies::github_action_autoscaler_first_forced_scale_up;
use runscale_sim::{PolicyName, PolicyReport, SimPool};

/// One job at 0 s running 120 s, on the default pool (max 50, ephemeral, idle 5 min).
fn one_job(policy: PolicyName) -> PolicyReport {
    sim(
        &trace(&[(0.0, 120.0, "a")]),
        SimPool::default_pool(),
        policy,
        1,
    )
}

fn check(r: &PolicyReport, wait: f64, paid: f64, idle: f64, launches: u64) {
    assert!(
        approx(r.wait.max_s, wait)
            && approx(r.paid_runner_s, paid)
            && approx(r.idle_runner_s, idle)
            && r.launches == launches,
        "{}: wait {} paid {} idle {} launches {}; expected {wait} {paid} {idle} {launches}",
        r.policy,
        r.wait.max_s,
        r.paid_runner_s,
        r.idle_runner_s,
        r.launches
    );
    assert_eq!(r.violations.total(), 0, "{}: {:?}", r.policy, r.violations);
    assert_eq!(r.jobs_run, 1);
}

#[test]
fn runscale_launches_on_the_webhook() {
    // Webhook at 1 → launch; booted 46, online 51 → job 51..171; ephemeral: gone at 171.
    check(&one_job(PolicyName::Runscale), 51.0, 170.0, 0.0, 1);
}

#[test]
fn arc_launches_on_the_job_message() {
    // Message at 1 → target 1 → pod at 1; online 51; pod gone with its job at 171.
    check(&one_job(PolicyName::Arc), 51.0, 170.0, 0.0, 1);
}

#[test]
fn terraform_aws_waits_for_the_sqs_delay() {
    // Webhook at 1, SQS delay 30 s → launch at 31; online 81; job 81..201.
    check(&one_job(PolicyName::TerraformAws), 81.0, 170.0, 0.0, 1);
}

#[test]
fn terraform_aws_retries_a_message_at_the_cap() {
    // max 1; jobs at 0 and 10 s (120 s each). Launch at 31 for the first message; the second
    // (due 41) finds the cap and comes back every 30 s: 71, ..., 191 (still full), 221:
    // launch; online 271. Job 1 runs 81..201, job 2 waits 261 s.
    let mut pool = SimPool::default_pool();
    pool.spec.max = 1;
    pool.spec.max_booting = 1;
    let r = sim(
        &trace(&[(0.0, 120.0, "a"), (10.0, 120.0, "b")]),
        pool,
        PolicyName::TerraformAws,
        1,
    );
    assert!(approx(r.wait.max_s, 261.0), "{:?}", r.wait);
    assert!(approx(r.wait.p50_s, 81.0), "{:?}", r.wait);
    assert_eq!(r.launches, 2);
    assert!(approx(r.paid_runner_s, 340.0), "{}", r.paid_runner_s);
    assert_eq!(r.violations.total(), 0);
}

#[test]
fn taskscaler_polls_every_three_seconds() {
    // Polls at 0 (nothing yet), 3 → launch; online 53; used-up instance deleted at 173.
    check(&one_job(PolicyName::Taskscaler), 53.0, 170.0, 0.0, 1);
}

#[test]
fn agent_scaler_keeps_the_agent_for_the_idle_period() {
    // Poll at 10 → desired 1; online 60; job 60..180; the bump to 2 while booting is held by
    // the 300 s scale-out cooldown; agent idle 600 s → instance gone at 780.
    check(&one_job(PolicyName::AgentScaler), 60.0, 770.0, 600.0, 1);
}

#[test]
fn vela_never_scales_in_and_relies_on_the_runner_timeout() {
    // Poll at 5 → desired 1; online 55; job 55..175; runner idle 300 s, detaches at 475.
    check(&one_job(PolicyName::Vela), 55.0, 470.0, 300.0, 1);
}

#[test]
fn circleci_lambda_replaces_self_terminated_instances() {
    // Runs on the minute: 0 (empty), 60 → desired 1; online 110; job 110..230; the
    // single-task instance shuts down at 230 and the group (desired still 1) replaces it; the
    // replacement is online at 280, idles 60 s and shuts down at 340; the 240 run set desired
    // to 0, so it is not replaced. Paid 170 + 110.
    check(&one_job(PolicyName::CircleciLambda), 110.0, 280.0, 60.0, 2);
}

#[test]
fn gitlab_fleet_keeps_a_host_forty_minutes() {
    // Loop at 0 (empty), 60 → add a host; online 110; job 110..230. The 240 loop sees a new
    // job done → idle since 240; Idle once idle > 40 min → destroyed at the 2700 loop.
    check(&one_job(PolicyName::GitlabFleet), 110.0, 2640.0, 2470.0, 1);
}

/// A seed whose first forced scale-up (of the only pool) starts after `after_s`.
fn seed_forcing_after(after_s: u64) -> u64 {
    (1u64..)
        .find(|&s| {
            github_action_autoscaler_first_forced_scale_up(s, 0) > Duration::from_secs(after_s)
        })
        .expect("a seed")
}

#[test]
fn github_action_autoscaler_follows_the_logistic_curve() {
    // Polls every 30 s. 0: cache empty. 30: one run → round(50/(1+50·2.718^-0.8)) = 2 pods;
    // online 80; job 80..200. The cache (1 min, 30 s when empty) sees no run at 210; the HPA
    // keeps 2 for 300 s after the last 2 (at 180) and KEDA's cooldown ends at the same time:
    // both pods go at 480. Idle: 280 + 400.
    let seed = seed_forcing_after(3600);
    let r = sim(
        &trace(&[(0.0, 120.0, "a")]),
        SimPool::default_pool(),
        PolicyName::GithubActionAutoscaler,
        seed,
    );
    check(&r, 80.0, 900.0, 680.0, 2);
}

#[test]
fn github_action_autoscaler_kills_busy_pods_on_scale_down() {
    // Run S (1 short job) at 0, run R (10 jobs of 3000 s) at 5. At 30: 2 runs → 5 pods,
    // online at 80: S and R1–R4 start; S ends at 90 and R5 takes its pod. From 90 on one run
    // → value 2; the HPA's 5-minute window keeps 5 until 360, then deletes the three newest
    // pods, all busy.
    let seed = seed_forcing_after(8 * 3600);
    let mut jobs = vec![(0.0, 10.0, "s")];
    jobs.extend((0..10).map(|_| (5.0, 3000.0, "r")));
    let r = sim(
        &trace(&jobs),
        SimPool::default_pool(),
        PolicyName::GithubActionAutoscaler,
        seed,
    );
    assert_eq!(r.violations.busy_killed, 3, "{:?}", r.violations);
    assert_eq!(r.violations.never_run, 0);
    assert_eq!(r.jobs_run, 11);
}

#[test]
fn buildscaler_syncs_every_twenty_seconds() {
    // Sync at 0 (empty), 20 → 1 pod; online 70; ephemeral agent leaves after the job at 190.
    check(&one_job(PolicyName::Buildscaler), 70.0, 170.0, 0.0, 1);
}

#[test]
fn clairvoyant_has_a_runner_ready_on_time() {
    // Launched at -50 s (boot 45 + registration 5), online at 0, job 0..120, retired at 120.
    check(&one_job(PolicyName::Clairvoyant), 0.0, 170.0, 0.0, 1);
}

#[test]
fn runscale_reuses_a_persistent_runner_then_scales_in_after_idle_timeout() {
    // Persistent pool. Job 1 at 0 (60 s): launch at 1, runs 51..111. Job 2 at 200 takes the
    // idle runner at once. Idle from 260; idle_timeout 300 s → terminated by the first pass
    // at or after 560 (passes run on requeue_after, at most 0.5 s late).
    let mut pool = SimPool::default_pool();
    pool.spec.ephemeral = false;
    // Without warm capacity: two arrivals are enough for the forecast to keep a spare.
    pool.spec.warm = None;
    let r = sim(
        &trace(&[(0.0, 60.0, "a"), (200.0, 60.0, "b")]),
        pool,
        PolicyName::Runscale,
        1,
    );
    assert!(
        approx(r.wait.max_s, 51.0) && approx(r.wait.p50_s, 0.0),
        "{:?}",
        r.wait
    );
    assert_eq!(r.launches, 1);
    assert!(
        (559.0..=560.6).contains(&r.paid_runner_s),
        "paid {}",
        r.paid_runner_s
    );
    assert_eq!(r.violations.total(), 0);
}

#[test]
fn runscale_respects_max_and_launches_when_room_frees() {
    // max 1: job 2 (queued at 10) waits for job 1's instance to end at 171; the held-back
    // launch is retried within 5 s (no completion webhook by default): launch at most 5.5 s
    // after 171, online 50 s later.
    let mut pool = SimPool::default_pool();
    pool.spec.max = 1;
    pool.spec.max_booting = 1;
    let r = sim(
        &trace(&[(0.0, 120.0, "a"), (10.0, 120.0, "b")]),
        pool,
        PolicyName::Runscale,
        1,
    );
    assert_eq!(r.launches, 2);
    assert_eq!(r.violations.total(), 0);
    let second = r.wait.max_s; // queued at 10
    assert!(
        (211.0..=216.6).contains(&second),
        "second job waited {second}"
    );
}
