//! The clairvoyant lower bound: it knows every arrival in advance, and the boot time of an
//! instance launched for each job (the per-job boot draw the overhead ratio also uses).
//!
//! It plans offline so that every job finds an online runner the moment it is queued, at the
//! least cost: jobs in arrival order; a job reuses the runner that became free most recently
//! if idling from then until the job costs less than booting a new one (boot + registration
//! delay), otherwise a new single-runner instance is launched exactly one boot time before the
//! job is queued. A runner no later job reuses is terminated when its last job ends. Runners
//! are therefore persistent whatever the pool says; idle runners are interchangeable, so at run
//! time it only keeps the counts of the plan (launch at the planned times, retire an idle
//! runner at each planned end).
//!
//! With no `max` binding, jobs wait zero and the cost is minimal for zero wait. When `max`
//! binds, launches wait for room (woken by job completions) and jobs wait: the plan then only
//! guides it, and it is a strong heuristic rather than a bound. It is not a realizable policy
//! (it needs the future): excluded from the Pareto front and marked `bound` in reports.

use std::collections::{BTreeMap, VecDeque};

use runscale_core::Timestamp;

use super::{Policy, Setup};
use crate::config::{SimPool, WorldParams};
use crate::engine::world::RState;
use crate::engine::{Compiled, Hook, Ms, World};

pub(crate) struct Clairvoyant {
    max: u32,
    /// (launch at, boot time), by launch time.
    launches: Vec<(Ms, Ms)>,
    next_launch: usize,
    /// Planned runner ends, ascending.
    ends: Vec<Ms>,
    next_end: usize,
    retire: u32,
    owed: VecDeque<Ms>,
}

/// Greedy offline plan: which jobs start a new runner, and when runners end.
fn plan(jobs: impl Iterator<Item = (Ms, Ms, Ms)>) -> (Vec<(Ms, Ms)>, Vec<Ms>) {
    // Free runners by the time they became free (several may share one time).
    let mut free: BTreeMap<Ms, u32> = BTreeMap::new();
    let mut launches = Vec::new();
    let mut ends = Vec::new();
    let mut max_ready = 0;
    let take = |free: &mut BTreeMap<Ms, u32>, f: Ms| {
        if let Some(n) = free.get_mut(&f) {
            *n -= 1;
            if *n == 0 {
                free.remove(&f);
            }
        }
    };
    for (queued, dur, ready) in jobs {
        max_ready = max_ready.max(ready);
        // Runners free for longer than any boot could justify will never be reused.
        while let Some((&f, &n)) = free.iter().next() {
            if f >= queued - max_ready {
                break;
            }
            ends.extend(std::iter::repeat_n(f, n as usize));
            free.remove(&f);
        }
        let reuse = free
            .range(..=queued)
            .next_back()
            .map(|(&f, _)| f)
            .filter(|&f| queued - f < ready);
        match reuse {
            Some(f) => take(&mut free, f),
            None => launches.push((queued - ready, ready)),
        }
        *free.entry(queued + dur).or_insert(0) += 1;
    }
    for (f, n) in free {
        ends.extend(std::iter::repeat_n(f, n as usize));
    }
    launches.sort_unstable();
    ends.sort_unstable();
    (launches, ends)
}

impl Clairvoyant {
    pub(crate) fn new(pool: &SimPool, index: usize, c: &Compiled, registration: Ms) -> Self {
        let (launches, ends) = plan(
            c.jobs
                .iter()
                .filter(|j| j.pool as usize == index)
                .map(|j| (j.queued, j.dur, j.boot_hint + registration)),
        );
        // `launches` holds (launch time, time to ready); the instance boots for the draw only.
        let launches = launches
            .into_iter()
            .map(|(at, ready)| (at, ready - registration))
            .collect();
        Self {
            max: pool.spec.max,
            launches,
            next_launch: 0,
            ends,
            next_end: 0,
            retire: 0,
            owed: VecDeque::new(),
        }
    }
}

impl Policy for Clairvoyant {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.slots = 1;
        s.life.ephemeral = false;
        s.life.exit_when_empty = true;
        s.hook_completed = Some(0);
        s.first_pass = self.launches.first().map_or(0, |x| x.0);
        // A bound: its passes take no time.
        s.pass_latency = 0;
        s
    }

    fn on_hook(&mut self, _w: &mut World<'_>, _p: usize, kind: Hook, _job: u32) -> bool {
        kind == Hook::Completed
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let now = w.now();
        while self.ends.get(self.next_end).is_some_and(|&e| e <= now) {
            self.retire += 1;
            self.next_end += 1;
        }
        if self.retire > 0 {
            let idle: Vec<u32> = w.pools[p]
                .live
                .iter()
                .copied()
                .filter(|&i| {
                    let r = w.runners_of(i).start;
                    w.runners[r as usize].state == RState::Idle
                })
                .take(self.retire as usize)
                .collect();
            for i in idle {
                if w.terminate(i, false) {
                    self.retire -= 1;
                }
            }
        }
        while let Some(&(at, boot)) = self.launches.get(self.next_launch) {
            if at > now {
                break;
            }
            self.owed.push_back(boot);
            self.next_launch += 1;
        }
        while let Some(&boot) = self.owed.front() {
            if w.pools[p].live.len() as u32 >= self.max {
                break;
            }
            w.launch(p, 1, Some(boot));
            self.owed.pop_front();
        }
        self.launches.get(self.next_launch).map(|x| x.0)
    }

    fn notes(&self) -> String {
        "clairvoyant bound: knows arrivals and boot times; a runner ready exactly when each job is queued, reused when idling is cheaper than a boot, retired after its last job".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn reuses_a_runner_only_when_idling_is_cheaper_than_booting() {
        // Boot (to ready) 50 s. Job A 0..100 s; job B at 120 s reuses A's runner (idle 20 s);
        // job C at 400 s needs a new runner (idle 280 s > 50 s).
        let (launches, ends) = plan(
            [
                (0, 100_000, 50_000),
                (120_000, 60_000, 50_000),
                (400_000, 10_000, 50_000),
            ]
            .into_iter(),
        );
        assert_eq!(launches, vec![(-50_000, 50_000), (350_000, 50_000)]);
        assert_eq!(ends, vec![180_000, 410_000]);
    }
}
