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

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use foldhash::HashMap as FastMap;

use crate::adapter::ProviderView;
use crate::forecast::DemandHistory;
use crate::model::{Instance, Observation, PoolSpec, RunnerState, Timestamp, WaitingJob, span};

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
/// One map holds what is known of each runner name (made by runscale, listed only when owned
/// by the pool: foldhash, names as `Box<str>`, two words, not three), updated in place from
/// view to view: a view costs one lookup per listed runner and per name an instance hosts, and
/// one walk over the map; a name is copied only when it is new. Job ids come from the CI
/// system: that map keeps std's SipHash.
#[derive(Default)]
pub struct PoolMemory {
    /// Runner name → what is known of it.
    runners: FastMap<Box<str>, Known>,
    /// Launch times within the rate-limit window.
    launches: VecDeque<Timestamp>,
    /// Jobs waiting at the last fresh view, when they were queued and the last view that
    /// listed them: new ones are arrivals for the demand history, and those gone have waited
    /// until about now.
    waiting: HashMap<String, (Timestamp, u64)>,
    /// The pool's arrivals and lead times, for `warm` (see [`crate::forecast`]).
    history: DemandHistory,
    /// Views seen: the number of the current one stamps what it lists and hosts.
    views: u64,
    /// Fresh views seen (the first one after a start cannot tell which jobs started).
    fresh_views: u64,
    /// When each job that left the queue, and whose start no view has matched yet, left it
    /// (oldest first). A job whose runner ran it between two views is seen to start only when
    /// the runner departs, some views later; a job cancelled while waiting never starts, so
    /// entries expire after [`UNMATCHED_FOR`].
    unmatched: VecDeque<Timestamp>,
}

/// How long a job that left the queue may wait for its start to be seen (see
/// [`PoolMemory::unmatched`]).
const UNMATCHED_FOR: Duration = Duration::from_secs(300);

/// What is remembered of one runner name.
#[derive(Clone, Copy, Debug, Default)]
struct Known {
    /// The last time it was seen busy, while it is listed.
    last_busy: Option<Timestamp>,
    /// Its presence in the listing, while one of the pool's instances hosts it and since the CI
    /// system listed it (it registered).
    presence: Option<Presence>,
    /// One of the pool's instances hosted it at the last fresh view, or it was launched since.
    was_hosted: bool,
    /// The last view that listed it, and its state there.
    listed: Option<(u64, RunnerState)>,
    /// The last view in which an instance hosted it, and that instance's index there.
    hosted: (u64, u32),
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
    /// Come back this soon ([`DEPARTURE_RECHECK`]) to confirm a departure, if one is pending.
    pub recheck_after: Option<Duration>,
}

/// What one walk over the runner names found.
#[derive(Default)]
struct Walk {
    departed: Vec<String>,
    never_registered: Vec<String>,
    /// Runners of the pool's instances missing from this fresh view whom one more view would
    /// make departed.
    leaving: Vec<String>,
    /// Runners departed in this view that were never seen online: registered, then gone, so
    /// they ran a job between two views (an ephemeral runner) or failed to start.
    ran_unseen: usize,
}

/// How soon a pass should come back after a fresh view from which a registered runner of the
/// pool's instances went missing: the second view that makes it departed (an ephemeral runner
/// after its job). Without it the confirmation waited for the next trigger or the interval,
/// and a waiting job got a new launch meanwhile instead of the instance's reuse.
pub const DEPARTURE_RECHECK: Duration = Duration::from_secs(3);

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
        self.views += 1;
        let fresh = !view.stale;
        let warm = fresh && spec.warm.is_some();
        let mut runners = view.runners;
        let read_last_busy: Vec<Option<Timestamp>> = runners.iter().map(|r| r.last_busy).collect();
        self.host(&instances);
        let (online, started) = self.list(&mut runners, now, warm);
        if warm {
            self.lead_times(spec, &instances, online, now);
        }
        let walk = self.walk(fresh, now);
        if fresh {
            self.fresh_views += 1;
        }
        let window = chrono::Duration::from_std(LAUNCH_MEMORY).unwrap_or(chrono::Duration::MAX);
        while self
            .launches
            .front()
            .is_some_and(|t| span(*t, now) >= window)
        {
            self.launches.pop_front();
        }
        let waited_secs = if fresh {
            self.queue(&view.demand.waiting, now, warm)
        } else {
            Vec::new()
        };
        if warm && self.fresh_views > 1 {
            let unseen = self.unseen_arrivals(waited_secs.len(), started + walk.ran_unseen, now);
            for _ in 0..unseen {
                self.history.arrival(now);
            }
        }
        let observation = Observation {
            demand: view.demand,
            runners,
            instances,
            recent_launches: self.launches.iter().copied().collect(),
            stale: view.stale,
            departed: walk.departed,
            leaving: walk.leaving,
            forecast: spec.warm.and_then(|_| self.history.forecast(now)),
        };
        Observed {
            recheck_after: (!observation.leaving.is_empty()).then_some(DEPARTURE_RECHECK),
            observation,
            never_registered: walk.never_registered,
            read_last_busy,
            waited_secs,
        }
    }

    /// An instance was launched at `at` for these runner names: it counts against the launch
    /// rate, and its names are the pool's from now on, even if it dies before a view lists it.
    pub fn launched(&mut self, at: Timestamp, names: impl IntoIterator<Item = String>) {
        self.launches.push_back(at);
        self.hosts(names);
    }

    /// These runner names are the pool's from now on (an instance was launched or reused for
    /// them), even if their instance dies before a view lists them.
    pub fn hosts(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            match self.runners.get_mut(name.as_str()) {
                Some(k) => k.was_hosted = true,
                None => {
                    let k = Known {
                        was_hosted: true,
                        ..Known::default()
                    };
                    self.runners.insert(name.into_boxed_str(), k);
                }
            }
        }
    }

    /// Takes a demand history seeded from the CI system's past jobs (see
    /// [`DemandHistory::adopt`]).
    pub fn adopt_history(&mut self, seeded: DemandHistory) {
        self.history.adopt(seeded);
    }

    /// Runner names whose presence is tracked (for departures).
    pub fn tracked(&self) -> usize {
        self.runners
            .values()
            .filter(|k| k.presence.is_some())
            .count()
    }

    /// Stamps the names the instances host (stopping ones too) with this view.
    fn host(&mut self, instances: &[Instance]) {
        let v = self.views;
        for (i, inst) in instances.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            for n in &inst.runner_names {
                match self.runners.get_mut(n.as_str()) {
                    Some(k) => k.hosted = (v, i),
                    None => {
                        let k = Known {
                            hosted: (v, i),
                            ..Known::default()
                        };
                        self.runners.insert(n.as_str().into(), k);
                    }
                }
            }
        }
    }

    /// Stamps the listed runners with this view and their state, remembers which are busy and
    /// fills their `last_busy` from memory. With `lead_times`, returns the indices of the
    /// instances (sorted) one of whose runners is online for the first time; and how many
    /// runners are busy now that were not at their previous listing (jobs that started).
    fn list(
        &mut self,
        runners: &mut [crate::model::Runner],
        now: Timestamp,
        lead_times: bool,
    ) -> (Vec<u32>, usize) {
        let v = self.views;
        let mut online = Vec::new();
        let mut started = 0;
        for r in runners {
            let busy = r.state == RunnerState::Busy;
            let k = match self.runners.get_mut(r.name.as_str()) {
                Some(k) => k,
                None if busy => self.runners.entry(r.name.as_str().into()).or_default(),
                None => continue,
            };
            if busy && !k.listed.is_some_and(|(_, s)| s == RunnerState::Busy) {
                started += 1;
            }
            k.listed = Some((v, r.state));
            if busy {
                k.last_busy = Some(now);
            }
            r.last_busy = r.last_busy.max(k.last_busy);
            if lead_times
                && r.state != RunnerState::Offline
                && k.hosted.0 == v
                && !k.presence.is_some_and(|p| p.seen_online)
            {
                online.push(k.hosted.1);
            }
        }
        online.sort_unstable();
        online.dedup();
        (online, started)
    }

    /// A runner of the pool's instances listed online for the first time ends its launch's
    /// lead time (as this view sees it: up to one pass late; a reused instance's runners came
    /// without a launch). An instance older than
    /// `boot_timeout` is not taken for a lead time (after a restart every runner is new to
    /// this process).
    fn lead_times(
        &mut self,
        spec: &PoolSpec,
        instances: &[Instance],
        online: Vec<u32>,
        now: Timestamp,
    ) {
        let boot = chrono::Duration::from_std(spec.boot_timeout).unwrap_or(chrono::Duration::MAX);
        for i in online {
            // A reused instance's runners came without a launch: no lead time.
            let Some(inst) = instances.get(i as usize).filter(|i| i.reused.is_none()) else {
                continue;
            };
            let lead = span(inst.launched_at, now);
            if lead <= boot && lead >= chrono::Duration::zero() {
                self.history.lead_time(lead.to_std().unwrap_or_default());
            }
        }
    }

    /// One walk over the runner names after a view: forgets what no longer matters, counts
    /// the presence of the instances' runners (a fresh view only), and finds the departed and
    /// the never registered.
    fn walk(&mut self, fresh: bool, now: Timestamp) -> Walk {
        let v = self.views;
        let offline_for =
            chrono::Duration::from_std(OFFLINE_DEPARTED_AFTER).unwrap_or(chrono::Duration::MAX);
        let mut walk = Walk::default();
        self.runners.retain(|name, k| {
            let state = k.listed.filter(|l| l.0 == v).map(|l| l.1);
            let listed = state.is_some();
            let hosted = k.hosted.0 == v;
            if !listed {
                k.last_busy = None;
            }
            if fresh {
                if k.was_hosted && !hosted && k.presence.is_none() && !listed {
                    // Its instance is gone and it never registered.
                    walk.never_registered.push(name.to_string());
                }
                k.was_hosted = hosted;
            }
            if !hosted {
                k.presence = None;
            } else if fresh {
                count_presence(&mut k.presence, state, now);
            }
            if let Some(p) = k.presence {
                if departed(&p, listed, offline_for, now) {
                    if fresh && !listed && !p.seen_online && p.absent == DEPARTED_AFTER {
                        walk.ran_unseen += 1;
                    }
                    walk.departed.push(name.to_string());
                } else if !listed && p.absent > 0 {
                    walk.leaving.push(name.to_string());
                }
            }
            k.last_busy.is_some() || k.presence.is_some() || k.was_hosted
        });
        walk.departed.sort();
        walk.never_registered.sort();
        walk
    }

    /// Jobs that started without ever being seen waiting (a spare runner took them between two
    /// views): arrivals too, or the history would count only the jobs that had to wait, and
    /// keep too few spares. `left` jobs left the queue in this view, `started` starts were
    /// seen (runners busy that were not, runners that ran a job between views); each start is
    /// matched with a job that left the queue first.
    fn unseen_arrivals(&mut self, left: usize, started: usize, now: Timestamp) -> usize {
        let expiry = chrono::Duration::from_std(UNMATCHED_FOR).unwrap_or(chrono::Duration::MAX);
        while self
            .unmatched
            .front()
            .is_some_and(|t| span(*t, now) >= expiry)
        {
            self.unmatched.pop_front();
        }
        self.unmatched.extend(std::iter::repeat_n(now, left));
        let matched = started.min(self.unmatched.len());
        self.unmatched.drain(..matched);
        started - matched
    }

    /// Remembers a fresh view's queue: a job waiting for the first time is an arrival (for the
    /// demand history, with `arrivals`); returns how long each job that left the queue since
    /// the last fresh view waited (until about `now`).
    fn queue(&mut self, waiting: &[WaitingJob], now: Timestamp, arrivals: bool) -> Vec<f64> {
        let mut waited = Vec::new();
        if waiting.is_empty() && self.waiting.is_empty() {
            return waited;
        }
        let v = self.views;
        for j in waiting {
            match self.waiting.get_mut(&j.id) {
                Some(seen) => *seen = (j.queued_at, v),
                None => {
                    if arrivals {
                        self.history.arrival(j.queued_at.min(now));
                    }
                    self.waiting.insert(j.id.clone(), (j.queued_at, v));
                }
            }
        }
        self.waiting.retain(|_, (queued_at, seen)| {
            let still = *seen == v;
            if !still {
                waited.push(span(*queued_at, now).num_milliseconds().max(0) as f64 / 1000.0);
            }
            still
        });
        waited
    }
}

/// Counts one fresh view for a runner one of the pool's instances hosts: listed for the first
/// time, it is registered; missing from the listing, or listed offline after it had been
/// online (a runner that exited and whose record lingers), it is absent once more.
fn count_presence(presence: &mut Option<Presence>, listed: Option<RunnerState>, now: Timestamp) {
    if listed.is_some() && presence.is_none() {
        *presence = Some(Presence::default());
    }
    let Some(p) = presence else {
        return;
    };
    if listed.is_none() {
        p.absent = p.absent.saturating_add(1);
    } else if listed == Some(RunnerState::Offline) {
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

/// A runner that registered has departed once it was absent for [`DEPARTED_AFTER`] fresh
/// views: gone from the listing, or listed offline for [`OFFLINE_DEPARTED_AFTER`] (a
/// connection hiccup is not a departure).
fn departed(p: &Presence, listed: bool, offline_for: chrono::Duration, now: Timestamp) -> bool {
    p.absent >= DEPARTED_AFTER
        && (!listed || p.offline_since.is_some_and(|t| span(t, now) >= offline_for))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceId, InstanceState, Runner, RunnerId};

    fn instance(names: &[&str]) -> Instance {
        Instance {
            id: InstanceId::new("i-1"),
            state: InstanceState::Running,
            launched_at: Timestamp::default(),
            template_hash: String::new(),
            runner_names: names.iter().map(|n| (*n).to_owned()).collect(),
            reused: None,
        }
    }

    fn view(runners: &[(&str, RunnerState)], stale: bool) -> ProviderView {
        ProviderView {
            demand: Default::default(),
            runners: runners
                .iter()
                .map(|&(name, state)| Runner {
                    id: RunnerId::new(name),
                    name: name.to_owned(),
                    state,
                    draining: false,
                    last_busy: None,
                })
                .collect(),
            stale,
        }
    }

    #[test]
    fn runners_depart_when_missing_or_long_offline_after_online_on_two_fresh_observations() {
        use RunnerState::{Busy, Idle, Offline};
        let spec = PoolSpec::test("p");
        let t0 = Timestamp::default();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let instances = vec![instance(&["jit", "slot", "late"])];
        let mut memory = PoolMemory::default();
        let mut step = |runners: &[(&str, RunnerState)], stale: bool, now: Timestamp| {
            let v = view(runners, stale);
            memory
                .observe(&spec, v, instances.clone(), now)
                .observation
                .departed
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
        let gone = memory.observe(&spec, view(&[], false), Vec::new(), at(66));
        assert!(gone.observation.departed.is_empty());
        assert_eq!(memory.tracked(), 0);
    }

    #[test]
    fn a_runner_missing_once_is_leaving_and_the_pass_comes_back_soon_to_confirm() {
        use RunnerState::Busy;
        let spec = PoolSpec::test("p");
        let t0 = Timestamp::default();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let instances = vec![instance(&["jit"])];
        let mut memory = PoolMemory::default();
        let mut step = |runners: &[(&str, RunnerState)], now: Timestamp| {
            let o = memory.observe(&spec, view(runners, false), instances.clone(), now);
            (
                o.observation.leaving,
                o.observation.departed,
                o.recheck_after,
            )
        };
        assert_eq!(step(&[("jit", Busy)], at(0)), (vec![], vec![], None));
        assert_eq!(
            step(&[], at(10)),
            (vec!["jit".to_owned()], vec![], Some(DEPARTURE_RECHECK))
        );
        assert_eq!(step(&[], at(13)), (vec![], vec!["jit".to_owned()], None));
    }

    #[test]
    fn starts_no_view_saw_waiting_are_arrivals_once_each() {
        let t0 = Timestamp::default();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let mut memory = PoolMemory::default();
        // Two jobs left the queue, one start seen: the other job's runner ran it between two
        // views and is seen when it departs, later: no arrival either time.
        assert_eq!(memory.unseen_arrivals(2, 1, at(0)), 0);
        assert_eq!(memory.unseen_arrivals(0, 1, at(10)), 0);
        // Three starts with no job seen leaving the queue: three jobs nobody saw waiting.
        assert_eq!(memory.unseen_arrivals(0, 3, at(20)), 3);
        // A job that left the queue and never started (cancelled) stops matching after
        // UNMATCHED_FOR.
        assert_eq!(memory.unseen_arrivals(1, 0, at(30)), 0);
        assert_eq!(memory.unseen_arrivals(0, 1, at(30 + 301)), 1);
    }

    #[test]
    fn names_launched_and_gone_without_registering_are_released_once() {
        let spec = PoolSpec::test("p");
        let t0 = Timestamp::default();
        let mut memory = PoolMemory::default();
        memory.launched(t0, ["a".to_owned(), "b".to_owned()]);
        // "a" registered; "b"'s instance is gone before a view listed it.
        let listed = view(&[("a", RunnerState::Idle)], false);
        let first = memory.observe(&spec, listed, vec![instance(&["a"])], t0);
        assert_eq!(first.never_registered, ["b"]);
        assert_eq!(first.observation.recent_launches, [t0]);
        // Once: then "a"'s instance goes too, but "a" had registered.
        let second = memory.observe(&spec, view(&[], false), Vec::new(), t0);
        assert!(second.never_registered.is_empty());
    }

    #[test]
    fn busy_runners_keep_their_last_busy_time_and_jobs_that_left_the_queue_report_their_wait() {
        let spec = PoolSpec::test("p");
        let t0 = Timestamp::default();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let mut memory = PoolMemory::default();
        let mut queued = view(&[("a", RunnerState::Busy)], false);
        queued.demand.waiting.push(WaitingJob {
            id: "j1".to_owned(),
            queued_at: t0,
        });
        let first = memory.observe(&spec, queued, vec![instance(&["a"])], at(10));
        assert_eq!(first.observation.runners[0].last_busy, Some(at(10)));
        assert_eq!(first.read_last_busy, [None]);
        assert!(first.waited_secs.is_empty());
        let idle = view(&[("a", RunnerState::Idle)], false);
        let second = memory.observe(&spec, idle, vec![instance(&["a"])], at(40));
        assert_eq!(second.observation.runners[0].last_busy, Some(at(10)));
        assert_eq!(second.waited_secs, [40.0]);
    }
}
