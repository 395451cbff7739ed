//! devjoes/github-runner-autoscaler ("github-action-autoscaler"), as its
//! published source behaves.
//!
//! - KEDA polls the metrics API every 30 s (`pollingInterval`). The API server serves the
//!   queue from a cache refreshed after 1 minute (30 s when the last value was empty).
//! - The metric counts workflow *runs* (not jobs) that are queued or in progress, among the
//!   100 most recent. Value: 0 runs → `minRunners` (the pool's `min_idle`); otherwise
//!   `round(Max / (1 + Max·2.718^(−0.8·runs)))` clamped to [min, max], at least 1.
//! - Forced scale-up: inside a 20-minute window starting at a random time in the first day,
//!   then every 20 days + up to a day, the metric is `Max` (to keep registrations alive).
//! - The HPA takes the value as the replica count: scale-up at once; scale-down after the
//!   default 300 s stabilization (the highest value of the last 5 minutes); KEDA's 300 s
//!   cooldown before scaling to zero.
//! - Runners are persistent pre-registered identities in a StatefulSet, one per pod, created
//!   in parallel (the pod management policy is not documented; the parallel policy is the
//!   charitable reading). Scale-down deletes the highest ordinals (the newest pods) whether
//!   or not they are running a job.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runscale_core::Timestamp;

use super::{MIN, Policy, SEC, Setup};
use crate::config::{SimPool, WorldParams};
use crate::engine::{Ms, World};

const POLL: Ms = 30 * SEC;
const CACHE: Ms = MIN;
const CACHE_EMPTY: Ms = 30 * SEC;
const RUNS_SEEN: usize = 100;
const K: f64 = 0.8;
/// The project hard-codes e as 2.718 (not `f64::consts::E`); kept for fidelity.
#[allow(clippy::approx_constant)] // deliberately the project's 2.718, not E
const E_AS_WRITTEN: f64 = 2.718;
const FORCE_WINDOW: Ms = 20 * MIN;
const FORCE_EVERY: Ms = 20 * 24 * 60 * MIN;
const DAY: Ms = 24 * 60 * MIN;
const STABILIZATION: Ms = 5 * MIN;
const COOLDOWN: Ms = 5 * MIN;

pub(crate) struct GithubActionAutoscaler {
    min: u32,
    max: u32,
    cache: Option<(Ms, u32)>,
    history: VecDeque<(Ms, u32)>,
    last_active: Option<Ms>,
    next_forced: Ms,
    rng: StdRng,
}

impl GithubActionAutoscaler {
    /// The policy's random source for `seed` (its pool's seed) and, drawn from it first, the
    /// start of its first forced scale-up window.
    fn rng_and_first_forced(seed: u64) -> (StdRng, Ms) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x00de_70e5);
        let first = rng.random_range(0..DAY);
        (rng, first)
    }

    /// When the first forced scale-up window of a pool with `seed` starts.
    pub(crate) fn first_forced(seed: u64) -> Ms {
        Self::rng_and_first_forced(seed).1
    }

    pub(crate) fn new(pool: &SimPool, seed: u64) -> Self {
        let (rng, next_forced) = Self::rng_and_first_forced(seed);
        Self {
            min: pool.spec.min_idle,
            max: pool.spec.max,
            cache: None,
            history: VecDeque::new(),
            last_active: None,
            next_forced,
            rng,
        }
    }

    /// The logistic output for `runs` queued or running runs.
    pub(crate) fn output(min: u32, max: u32, runs: u32) -> u32 {
        if runs == 0 {
            return min;
        }
        let m = f64::from(max);
        let v = m / (1.0 + m * E_AS_WRITTEN.powf(-K * f64::from(runs)));
        let v = v.clamp(f64::from(min), m).round() as u32;
        v.max(1)
    }
}

impl Policy for GithubActionAutoscaler {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.slots = 1;
        s.life.ephemeral = false;
        s.life.exit_when_empty = false;
        s
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let now = w.now();
        let stale = match self.cache {
            None => true,
            Some((at, v)) => now - at >= if v == 0 { CACHE_EMPTY } else { CACHE },
        };
        if stale {
            let runs = w.active_runs(p).len().min(RUNS_SEEN) as u32;
            self.cache = Some((now, runs));
        }
        let runs = self.cache.map_or(0, |c| c.1);
        if now > self.next_forced + FORCE_WINDOW {
            self.next_forced = now + FORCE_EVERY + self.rng.random_range(0..DAY);
        }
        let value = if now >= self.next_forced {
            self.max
        } else {
            Self::output(self.min, self.max, runs)
        };
        if value > 0 {
            self.last_active = Some(now);
        }
        self.history.push_back((now, value));
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| t + STABILIZATION <= now)
        {
            self.history.pop_front();
        }
        let mut desired = self.history.iter().map(|h| h.1).max().unwrap_or(0);
        if desired == 0 && self.last_active.is_some_and(|t| now - t < COOLDOWN) {
            desired = 1;
        }
        let current = w.pools[p].live.len() as u32;
        if desired > current {
            w.launch(p, desired - current, None);
        } else if desired < current {
            let mut pods = w.pools[p].live.clone();
            pods.sort_by_key(|&i| std::cmp::Reverse((w.insts[i as usize].launched, i)));
            for i in pods.into_iter().take((current - desired) as usize) {
                w.terminate(i, true);
            }
        }
        Some(now + POLL)
    }

    fn notes(&self) -> String {
        "devjoes github-runner-autoscaler: 30 s KEDA poll of a 1 min cached count of runs, logistic k=0.8, forced 20 min scale-ups, HPA 5 min stabilization, StatefulSet scale-down kills highest ordinals even if busy".to_owned()
    }
}
