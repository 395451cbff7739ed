//! What the reconciler derives from successive views of one pool: [`PoolMemory`].
//!
//! A view (the CI system's [`ProviderView`] and the backend's instances) says what is there
//! now; some of what [`crate::plan`] reads can only be told from the views before it: when a
//! runner was last busy, which runners registered and have since departed, the launches of
//! the last minute, which waiting jobs are new (arrivals for the demand history) and which
//! left the queue, and the demand forecast. `PoolMemory` keeps that and turns each view into
//! the [`Observation`] `plan` reads. It is pure (no clock, no I/O): the reconciler and the
//! simulator (`runscale simulate`) feed it their views, so both plan on the same observation.
//!
//! Not here: the last fresh view kept for when a read fails (the reconciler's), and anything
//! about acting on a plan.
//!
//! Soft state: losing it (a restart) only makes the next decisions slightly less informed,
//! never unsafe.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::Duration;

use foldhash::{HashMap as FastMap, HashSet as FastSet};

use crate::adapter::ProviderView;
use crate::forecast::DemandHistory;
use crate::model::{Instance, Observation, PoolSpec, RunnerState, Timestamp, WaitingJob};

/// Launch times are remembered this long (the rate-limit window).
const LAUNCH_MEMORY: Duration = Duration::from_secs(60);

/// How long a runner that was online must stay listed offline before it counts as departed: a
/// runner whose connection hiccups (CI systems mark a runner offline after a few missed polls)
/// is not one that exited.
const OFFLINE_DEPARTED_AFTER: Duration = Duration::from_secs(60);

/// Fresh observations in a row without a runner that was listed before (or with it offline
/// after it was online) before it counts as departed: one missing listing may be a paging
/// race, not a departure.
const DEPARTED_AFTER: u32 = 2;

/// What is remembered of one pool between views. See the module docs.
///
/// The maps are updated in place from view to view (a name is copied only when it is new),
/// and those keyed by runner names (made by runscale, listed only when owned by the pool)
/// hash with foldhash and hold the names as `Box<str>` (two words, not three: at 10,000 pools
/// of ten runners that is 4 MB). Job ids come from the CI system: that map keeps std's
/// SipHash.
#[derive(Default)]
pub struct PoolMemory {
    /// Runner name → last time it was seen busy.
    last_busy: FastMap<Box<str>, Timestamp>,
    /// Launch times within the rate-limit window.
    launches: VecDeque<Timestamp>,
    /// Jobs waiting at the last fresh observation: new ones are arrivals for the demand
    /// history, and those gone have waited until about now.
    waiting: HashMap<String, Timestamp>,
    /// Runner names of the pool's instances seen listed by the CI system.
    registered: FastMap<Box<str>, Presence>,
    /// Runner names of the pool's instances at the last fresh observation, and of those
    /// launched since.
    hosted: FastSet<Box<str>>,
    /// The pool's arrivals and lead times, for `warm` (see [`crate::forecast`]).
    history: DemandHistory,
}

/// What is remembered of one runner of the pool's instances.
#[derive(Clone, Copy, Debug, Default)]
struct Presence {
    /// It was seen online (idle or busy) once.
    seen_online: bool,
    /// Fresh observations in a row that did not list it, or listed it offline after it had
    /// been online (0 while it is there).
    absent: u32,
    /// Since when it has been listed offline after it was online (a lingering record of a
    /// runner that exited, or a connection hiccup: only the first counts as departed, so the
    /// offline spell must last [`OFFLINE_DEPARTED_AFTER`]).
    offline_since: Option<Timestamp>,
}

/// One view turned into what `plan` reads, with what else the memory told from it.
#[derive(Debug)]
pub struct Observed {
    /// The observation: the view, with `last_busy` filled from memory, `departed`,
    /// `recent_launches` and (for a pool with `warm`) `forecast`.
    pub observation: Observation,
    /// Runner names whose instance has gone since the last fresh view without the runner
    /// ever being listed (their registrations can be released), sorted.
    pub never_registered: Vec<String>,
    /// Each runner's `last_busy` as the view gave it, in the observation's runner order.
    pub read_last_busy: Vec<Option<Timestamp>>,
    /// How long each job that left the queue since the last fresh view waited (until about
    /// now), in seconds.
    pub waited_secs: Vec<f64>,
}

impl PoolMemory {
    /// Turns a view of the pool at `now` into the observation `plan` reads, and remembers what
    /// the next views need. A stale view (an old copy of the CI side) changes no departure,
    /// arrival or waiting-job memory; it still updates `last_busy`.
    pub fn observe(
        &mut self,
        spec: &PoolSpec,
        view: ProviderView,
        instances: Vec<Instance>,
        now: Timestamp,
    ) -> Observed {
        let mut runners = view.runners;
        let read_last_busy: Vec<Option<Timestamp>> = runners.iter().map(|r| r.last_busy).collect();
        for r in &mut runners {
            if r.state == RunnerState::Busy {
                match self.last_busy.get_mut(r.name.as_str()) {
                    Some(t) => *t = now,
                    None => {
                        self.last_busy.insert(r.name.as_str().into(), now);
                    }
                }
            }
            if let Some(t) = self.last_busy.get(r.name.as_str()) {
                r.last_busy = r.last_busy.max(Some(*t));
            }
        }
        let seen: FastMap<&str, RunnerState> =
            runners.iter().map(|r| (r.name.as_str(), r.state)).collect();
        self.last_busy.retain(|name, _| seen.contains_key(&**name));
        let hosted = hosted_names(&instances);
        let never_registered = if view.stale {
            // An old copy of the CI side cannot tell whether a runner registered meanwhile.
            Vec::new()
        } else {
            self.rehost(&hosted, &seen)
        };
        if !view.stale && spec.warm.is_some() {
            self.record_demand(spec, &view.demand.waiting, &seen, &instances, now);
        }
        let departed = departures(&mut self.registered, &seen, &hosted, view.stale, now);
        drop(seen);
        drop(hosted);
        let window = chrono::Duration::from_std(LAUNCH_MEMORY).unwrap_or(chrono::Duration::MAX);
        while self.launches.front().is_some_and(|t| *t + window <= now) {
            self.launches.pop_front();
        }
        let waited_secs = if view.stale {
            Vec::new()
        } else {
            self.left_queue(&view.demand.waiting, now)
        };
        let observation = Observation {
            demand: view.demand,
            runners,
            instances,
            recent_launches: self.launches.iter().copied().collect(),
            stale: view.stale,
            departed,
            forecast: spec.warm.and_then(|_| self.history.forecast(now)),
        };
        Observed {
            observation,
            never_registered,
            read_last_busy,
            waited_secs,
        }
    }

    /// An instance was launched at `at` for these runner names: it counts against the launch
    /// rate, and its names are the pool's from now on, even if it dies before a view lists it.
    pub fn launched(&mut self, at: Timestamp, names: impl IntoIterator<Item = String>) {
        self.launches.push_back(at);
        self.hosted
            .extend(names.into_iter().map(String::into_boxed_str));
    }

    /// Runner names whose presence is tracked (for departures).
    pub fn tracked(&self) -> usize {
        self.registered.len()
    }

    /// From a fresh view: the names hosted before that no instance hosts now and that were
    /// never listed (sorted); the hosted names become the current instances'.
    fn rehost(&mut self, hosted: &FastSet<&str>, seen: &FastMap<&str, RunnerState>) -> Vec<String> {
        let mut gone: Vec<String> = self
            .hosted
            .iter()
            .filter(|n| {
                let n: &str = n;
                !hosted.contains(n) && !self.registered.contains_key(n) && !seen.contains_key(n)
            })
            .map(|n| n.to_string())
            .collect();
        gone.sort();
        self.hosted.retain(|n| hosted.contains(&**n));
        for &n in hosted {
            if !self.hosted.contains(n) {
                self.hosted.insert(n.into());
            }
        }
        gone
    }

    /// Feeds the demand history: jobs waiting for the first time are arrivals, and a runner
    /// of the pool's instances listed online for the first time ends its launch's lead time
    /// (as this view sees it: up to one pass late). An instance older than `boot_timeout` is
    /// not taken for a lead time (after a restart every runner is new to this process).
    fn record_demand(
        &mut self,
        spec: &PoolSpec,
        waiting: &[WaitingJob],
        listed: &FastMap<&str, RunnerState>,
        instances: &[Instance],
        now: Timestamp,
    ) {
        // `self.waiting` still holds the last fresh view's queue.
        for job in waiting {
            if !self.waiting.contains_key(&job.id) {
                self.history.arrival(job.queued_at.min(now));
            }
        }
        let boot = chrono::Duration::from_std(spec.boot_timeout).unwrap_or(chrono::Duration::MAX);
        for inst in instances {
            let lead = now - inst.launched_at;
            if lead > boot || lead < chrono::Duration::zero() {
                continue;
            }
            let registered_now = inst.runner_names.iter().any(|n| {
                listed
                    .get(n.as_str())
                    .is_some_and(|s| *s != RunnerState::Offline)
                    && !self
                        .registered
                        .get(n.as_str())
                        .is_some_and(|p| p.seen_online)
            });
            if registered_now {
                self.history.lead_time(lead.to_std().unwrap_or_default());
            }
        }
    }

    /// Remembers a fresh view's queue; returns how long each job that left it since the last
    /// fresh view waited (until about `now`).
    fn left_queue(&mut self, waiting: &[WaitingJob], now: Timestamp) -> Vec<f64> {
        let mut waited = Vec::new();
        if waiting.is_empty() && self.waiting.is_empty() {
            return waited;
        }
        let current: HashSet<&str> = waiting.iter().map(|j| j.id.as_str()).collect();
        self.waiting.retain(|id, queued_at| {
            let still = current.contains(id.as_str());
            if !still {
                waited.push((now - *queued_at).num_milliseconds().max(0) as f64 / 1000.0);
            }
            still
        });
        for j in waiting {
            match self.waiting.get_mut(&j.id) {
                Some(queued_at) => *queued_at = j.queued_at,
                None => {
                    self.waiting.insert(j.id.clone(), j.queued_at);
                }
            }
        }
        waited
    }
}

/// The runner names the instances name (stopping ones too).
fn hosted_names(instances: &[Instance]) -> FastSet<&str> {
    instances
        .iter()
        .flat_map(|i| i.runner_names.iter().map(String::as_str))
        .collect()
}

/// Updates which runners of the pool's instances were seen listed and for how many fresh
/// observations they have been gone since — missing from the listing, or listed offline after
/// they had been online (a runner that exited and whose record lingers) — and returns those
/// gone for [`DEPARTED_AFTER`] observations or more. `hosted` are the names the instances
/// name. A stale view (an old copy) changes nothing. Only names of current instances are kept,
/// so the memory stays as small as the fleet.
fn departures<K, S>(
    registered: &mut HashMap<K, Presence, S>,
    listed: &FastMap<&str, RunnerState>,
    hosted: &FastSet<&str>,
    stale: bool,
    now: Timestamp,
) -> Vec<String>
where
    K: std::borrow::Borrow<str> + for<'n> From<&'n str> + std::hash::Hash + Eq,
    S: BuildHasher,
{
    registered.retain(|name, _| hosted.contains(name.borrow()));
    if !stale {
        for (&name, state) in listed {
            if hosted.contains(name) && !registered.contains_key(name) {
                registered.insert(K::from(name), Presence::default());
            }
            if let Some(p) = registered.get_mut(name) {
                if *state == RunnerState::Offline {
                    if p.seen_online {
                        p.absent = p.absent.saturating_add(1);
                        p.offline_since.get_or_insert(now);
                    }
                } else {
                    p.seen_online = true;
                    p.absent = 0;
                    p.offline_since = None;
                }
            }
        }
        for (name, p) in registered.iter_mut() {
            if !listed.contains_key(name.borrow()) {
                p.absent = p.absent.saturating_add(1);
            }
        }
    }
    let offline_for =
        chrono::Duration::from_std(OFFLINE_DEPARTED_AFTER).unwrap_or(chrono::Duration::MAX);
    let mut departed: Vec<String> = registered
        .iter()
        .filter(|(name, p)| {
            p.absent >= DEPARTED_AFTER
                && (!listed.contains_key((*name).borrow())
                    || p.offline_since.is_some_and(|t| now - t >= offline_for))
        })
        .map(|(name, _)| name.borrow().to_owned())
        .collect();
    departed.sort();
    departed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(names: &[&str]) -> Instance {
        Instance {
            id: crate::model::InstanceId::new("i-1"),
            state: crate::model::InstanceState::Running,
            launched_at: Timestamp::default(),
            template_hash: String::new(),
            runner_names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    /// [`departures`] from a listing of owned names.
    fn track_departures(
        registered: &mut HashMap<String, Presence>,
        listed: &[(&str, RunnerState)],
        instances: &[Instance],
        stale: bool,
        now: Timestamp,
    ) -> Vec<String> {
        let listed: FastMap<&str, RunnerState> = listed.iter().copied().collect();
        departures(registered, &listed, &hosted_names(instances), stale, now)
    }

    #[test]
    fn runners_depart_when_missing_or_long_offline_after_online_on_two_fresh_observations() {
        use RunnerState::{Busy, Idle, Offline};
        let t0 = Timestamp::default();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let instances = [instance(&["jit", "slot", "late"])];
        let mut memory = HashMap::new();
        let mut step = |runners: &[(&str, RunnerState)], stale: bool, now: Timestamp| {
            track_departures(&mut memory, runners, &instances, stale, now)
        };
        // Registered (a JIT runner is listed offline before it connects), then online.
        assert!(step(&[("jit", Offline), ("slot", Offline)], false, at(0)).is_empty());
        assert!(
            step(&[("jit", Offline), ("slot", Offline)], false, at(1)).is_empty(),
            "never online"
        );
        assert!(step(&[("jit", Busy), ("slot", Idle)], false, at(2)).is_empty());
        // jit finished and was deleted; slot exited and lingers offline.
        assert!(
            step(&[("slot", Offline)], false, at(3)).is_empty(),
            "one observation is not enough"
        );
        assert!(
            step(&[("slot", Offline)], true, at(4)).is_empty(),
            "a stale view changes nothing"
        );
        assert_eq!(
            step(&[("slot", Offline)], false, at(5)),
            ["jit"],
            "gone from the listing: departed; offline for 2 s: a hiccup so far"
        );
        assert_eq!(step(&[("slot", Offline)], false, at(64)), ["jit", "slot"]);
        // Back online: no longer departed. A never-listed name never departs.
        assert_eq!(step(&[("slot", Idle)], false, at(65)), ["jit"]);
        // Names of instances that are gone are forgotten.
        let mut memory2 = memory.clone();
        assert!(track_departures(&mut memory2, &[], &[], false, at(66)).is_empty());
        assert!(memory2.is_empty());
    }
}
