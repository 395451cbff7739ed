//! runscale's own policy: the real [`runscale_core::plan`], driven as the reconciler drives it.
//!
//! - A pass observes the pool as the reconciler does: the incrementally kept view (waiting
//!   jobs, runners with state / draining / last busy time, instances) through the reconciler's
//!   own [`runscale_core::PoolMemory`] (last busy times, departed runners, launches of the last
//!   minute, arrivals and lead times for the forecast), calls `plan`, and carries the plan out
//!   in the reconciler's order: launches
//!   first, then the other actions in plan order. `Terminate { instance, runners }` removes
//!   each listed runner first and stops at the first the CI system refuses (busy): the
//!   instance stays. `Deregister` is likewise refused for a busy runner. `Drain` marks the
//!   runner so it takes no new job.
//! - Passes: on a webhook (job queued, after the webhook latency; also job completed with
//!   `wake_on_completion`) unless detection is polling, and on the timer: `min(requeue_after, interval)`, at most 5 s when a launch was
//!   held back by a cap, at least 1 s, counted from the end of the pass (`pass_latency`).
//! - A pass whose observation has not changed since an empty plan (same view, departures and
//!   forecast), before that plan's `requeue_after` is due, reuses it instead of calling `plan`
//!   again (same result, less work). It still observes, as every pass of the reconciler does.

use std::time::Duration;

use runscale_core::{Action, PoolSpec, Timestamp};

use super::{Policy, SEC, Setup};
use crate::config::{Detection, SimPool, WorldParams};
use crate::engine::world::{Lifecycle, ms};
use crate::engine::{Ms, World};

const MIN_REQUEUE: Ms = SEC;
const HELD_BACK_REQUEUE: Ms = 5 * SEC;

pub(crate) struct Runscale {
    spec: PoolSpec,
    interval: Ms,
    latency: Ms,
    /// The last plan, when it was empty: what it was planned on, when its time-based due date
    /// falls, whether a cap held launches back. While nothing changed and nothing is due,
    /// `plan` would return the same empty plan, so the pass skips calling it.
    last_empty: Option<(Quiet, Ms, bool)>,
}

/// What an empty plan was planned on, besides time: the view's version and what the memory
/// added to it.
#[derive(PartialEq)]
struct Quiet {
    version: u64,
    departed: Vec<String>,
    forecast: Option<runscale_core::Forecast>,
}

impl Runscale {
    pub(crate) fn new(pool: &SimPool, params: &WorldParams) -> Self {
        Self {
            spec: pool.spec.clone(),
            interval: ms(params.pass_interval),
            latency: ms(params.pass_latency),
            last_empty: None,
        }
    }
}

fn index(id: &str) -> Option<u32> {
    crate::engine::mirror_index(id)
}

/// Removes runners as the reconciler does before terminating or reusing their instance:
/// false at the first the CI system refuses (busy).
fn remove_all(w: &mut World<'_>, runners: &[runscale_core::RunnerId]) -> bool {
    runners
        .iter()
        .filter_map(|r| index(r.as_str()))
        .all(|r| w.remove_runner(r))
}

impl Runscale {
    /// When the reconciler comes back: `min(requeue_after, interval)`, at most 5 s when a cap
    /// held launches back, at least 1 s, after the pass ends.
    fn next(&self, now: Ms, requeue: Option<Ms>, held_back: bool) -> Ms {
        let mut d = requeue.unwrap_or(self.interval).min(self.interval);
        if held_back {
            d = d.min(HELD_BACK_REQUEUE);
        }
        now + self.latency + d.max(MIN_REQUEUE)
    }
}

impl Policy for Runscale {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        Setup {
            slots: pool.spec.runners_per_instance.max(1),
            life: Lifecycle {
                ephemeral: pool.spec.ephemeral,
                idle_exit: None,
                // With `reuse`, an instance outlives its runners until reused or terminated.
                exit_when_empty: params.instance_exits_when_runners_leave
                    && pool.spec.reuse.is_none(),
                exit_decrements_desired: false,
            },
            asg: None,
            first_pass: 0,
            pass_latency: self.latency,
            hook_queued: match params.detection {
                Detection::Webhook { latency } => Some(ms(latency)),
                Detection::Poll => None,
            },
            hook_completed: match params.detection {
                Detection::Webhook { latency } if params.wake_on_completion => Some(ms(latency)),
                _ => None,
            },
            mirror: true,
        }
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let now = w.now();
        let ts = w.ts(now);
        let m = w.pools[p].mirror.as_mut()?;
        let (observed, read_last_busy, recheck) = m.observe(&self.spec, ts);
        let quiet = Quiet {
            version: m.version,
            departed: observed.departed.clone(),
            forecast: observed.forecast,
        };
        if let Some((last, due, held)) = &self.last_empty
            && *last == quiet
            && now < *due
        {
            let (mut due, held) = (*due, *held);
            if let Some(r) = recheck {
                due = due.min(now + ms(r));
            }
            m.restore(observed, read_last_busy);
            return Some(self.next(now, Some(due - now), held));
        }
        let mut plan = runscale_core::plan(&self.spec, &observed, ts);
        plan.requeue_soon(recheck);
        m.restore(observed, read_last_busy);
        for a in &plan.actions {
            if let Action::Launch { count } = a.action {
                w.launch(p, count, None);
            }
        }
        for a in &plan.actions {
            match &a.action {
                Action::Launch { .. } => {}
                Action::Drain { runner, .. } => {
                    if let Some(r) = index(runner.as_str()) {
                        w.drain(r);
                    }
                }
                Action::Deregister { runner, .. } => {
                    if let Some(r) = index(runner.as_str()) {
                        w.remove_runner(r);
                    }
                }
                Action::Terminate { instance, runners } => {
                    if remove_all(w, runners)
                        && let Some(i) = index(instance.as_str())
                    {
                        w.terminate(i, false);
                    }
                }
                Action::Reuse {
                    instance,
                    runners,
                    uses,
                } => {
                    if remove_all(w, runners)
                        && let Some(i) = index(instance.as_str())
                        && !w.reuse(i, *uses)
                    {
                        w.terminate(i, false);
                    }
                }
            }
        }
        let requeue = plan.requeue_after.map(|d: Duration| ms(d));
        let held = plan.held_back.is_some();
        self.last_empty = plan.actions.is_empty().then(|| {
            let version = w.pools[p].mirror.as_ref().map_or(0, |m| m.version);
            let quiet = Quiet { version, ..quiet };
            (quiet, requeue.map_or(Ms::MAX, |d| now + d), held)
        });
        Some(self.next(now, requeue, held))
    }

    fn notes(&self) -> String {
        "runscale_core::plan as the reconciler drives it: webhook wake-ups, requeue_after/interval timer, Terminate removes runners first and is refused for busy ones".to_owned()
    }
}
