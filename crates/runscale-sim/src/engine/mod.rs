//! The discrete-event engine: virtual time in milliseconds, an event queue (a binary heap,
//! merged with the sorted arrivals so the heap stays small), the simulated CI system and
//! backend ([`world`]), and the loop that runs one policy over one compiled trace.
//!
//! Pass scheduling is the same for every policy: a pass runs on its timer, or when woken (a
//! webhook, a message, a policy's own wake-up); wake-ups during a pass (`pass_latency`)
//! coalesce into one pass right after it, as runscale's reconciler does.

pub(crate) mod mirror;
pub(crate) mod world;

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use runscale_core::Timestamp;

pub(crate) use mirror::index_of as mirror_index;
pub(crate) use world::{Hook, Ms, World};

use crate::boot::BootSampler;
use crate::config::{SimPool, WorldParams};
use crate::policies::{self, PolicyName};
use crate::report::{PolicyReport, PoolSummary, TraceSummary};
use crate::trace::Trace;

/// A job as the engine sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SimJob {
    /// Queued, ms after the trace start.
    pub queued: Ms,
    /// Run time.
    pub dur: Ms,
    /// Index of the pool it is routed to.
    pub pool: u16,
    /// Interned workflow run (unique per job when the trace has none).
    pub run: u32,
    /// A boot time drawn for this job: the clairvoyant bound's instance for it boots this
    /// long, and the overhead ratio's denominator adds it.
    pub boot_hint: Ms,
}

/// A trace routed to pools, sorted by arrival, in engine units.
pub(crate) struct Compiled {
    pub t0: Timestamp,
    pub jobs: Vec<SimJob>,
    pub unmatched: usize,
    pub unmatched_examples: Vec<String>,
    pub per_pool: Vec<usize>,
    pub job_ms: i64,
    pub boot_ms: i64,
}

pub(crate) fn ms_of(d: std::time::Duration) -> Ms {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Routes and sorts a trace, and draws the per-job boot hints.
pub(crate) fn compile(trace: &Trace, pools: &[SimPool], boot: &BootSampler, seed: u64) -> Compiled {
    let mut order: Vec<usize> = (0..trace.jobs.len()).collect();
    order.sort_by_key(|&i| trace.jobs[i].queued_at);
    let t0 = order
        .first()
        .map(|&i| trace.jobs[i].queued_at)
        .unwrap_or_default();
    let by_name: HashMap<&str, usize> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| (p.spec.name.as_str(), i))
        .collect();
    let mut runs: HashMap<&str, u32> = HashMap::new();
    let mut next_run = 0u32;
    let mut rng = StdRng::seed_from_u64(seed ^ 0xb007_b007);
    let mut c = Compiled {
        t0,
        jobs: Vec::with_capacity(trace.jobs.len()),
        unmatched: 0,
        unmatched_examples: Vec::new(),
        per_pool: vec![0; pools.len()],
        job_ms: 0,
        boot_ms: 0,
    };
    for i in order {
        let j = &trace.jobs[i];
        let pool = match &j.pool {
            Some(name) => by_name.get(name.as_str()).copied(),
            None => pools.iter().position(|p| p.matches(&j.labels)),
        };
        let Some(pool) = pool else {
            c.unmatched += 1;
            if c.unmatched_examples.len() < 5 {
                c.unmatched_examples.push(match &j.pool {
                    Some(p) => format!("a job names pool `{p}`, which is not configured"),
                    None => format!("no pool matches labels [{}]", j.labels.join(", ")),
                });
            }
            continue;
        };
        let run = match &j.run {
            Some(r) => *runs.entry(r.as_str()).or_insert_with(|| {
                next_run += 1;
                next_run
            }),
            None => {
                next_run += 1;
                next_run
            }
        };
        let queued = (j.queued_at - t0).num_milliseconds().max(0);
        let dur = ms_of(j.duration);
        let boot_hint = boot.sample(&mut rng);
        c.job_ms += dur;
        c.boot_ms += boot_hint;
        c.per_pool[pool] += 1;
        c.jobs.push(SimJob {
            queued,
            dur,
            pool: pool as u16,
            run,
            boot_hint,
        });
    }
    c
}

impl Compiled {
    pub(crate) fn summary(&self, trace: &Trace, pools: &[SimPool]) -> TraceSummary {
        let span = self.jobs.last().map_or(0, |j| j.queued);
        TraceSummary {
            source: trace.source.clone(),
            start: self.t0,
            jobs: self.jobs.len(),
            unmatched_jobs: self.unmatched,
            unmatched_examples: self.unmatched_examples.clone(),
            skipped_records: trace.skipped,
            span_s: span as f64 / 1000.0,
            job_runner_s: self.job_ms as f64 / 1000.0,
            boot_s: self.boot_ms as f64 / 1000.0,
            pools: pools
                .iter()
                .zip(&self.per_pool)
                .map(|(p, &n)| PoolSummary {
                    name: p.spec.name.to_string(),
                    jobs: n,
                    max: p.spec.max,
                    min_idle: p.spec.min_idle,
                    runners_per_instance: p.spec.runners_per_instance,
                    ephemeral: p.spec.ephemeral,
                    idle_timeout_s: p.spec.idle_timeout.as_secs_f64(),
                    boot_timeout_s: p.spec.boot_timeout.as_secs_f64(),
                })
                .collect(),
        }
    }
}

/// Simulates one policy on a compiled trace.
pub(crate) fn simulate(
    c: &Compiled,
    pools: &[SimPool],
    name: PolicyName,
    boot: &BootSampler,
    params: &WorldParams,
    seed: u64,
) -> PolicyReport {
    let mut pols: Vec<Box<dyn policies::Policy>> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| policies::build(name, i, p, params, c, seed))
        .collect();
    let setups: Vec<policies::Setup> = pols
        .iter()
        .zip(pools)
        .map(|(pol, p)| pol.setup(p, params, c.t0))
        .collect();
    let mut w = World::new(c, pools, &setups, boot, params, seed);
    for (p, s) in setups.iter().enumerate() {
        w.schedule_timer(p, s.first_pass);
    }
    let n = c.jobs.len();
    let last_arrival = c.jobs.last().map_or(0, |j| j.queued);
    let mut end = last_arrival.saturating_add(world::ms(params.give_up_after));
    let drain = world::ms(params.drain_window);
    let mut next = 0usize;
    let mut finish_at = None;
    loop {
        let arr = c.jobs.get(next).map(|j| j.queued);
        let top = w.peek_time();
        let t = match (arr, top) {
            (Some(a), Some(h)) => a.min(h),
            (Some(a), None) => a,
            (None, Some(h)) => h,
            (None, None) => break,
        };
        if t > end {
            finish_at = Some(end);
            break;
        }
        w.advance(t);
        // On a tie, events already scheduled (a runner connecting, a pass) come first.
        if top == Some(t) {
            if let Some(ev) = w.pop() {
                w.dispatch(ev, &mut pols);
            }
        } else {
            w.arrive(next as u32);
            next += 1;
        }
        w.observe_series();
        if next == n && w.all_done() {
            end = end.min(w.last_done().saturating_add(drain));
            if w.fleet() == 0 {
                break;
            }
        }
    }
    let finish_at = finish_at.unwrap_or(w.now()).max(w.now());
    w.report(name, &pols, finish_at)
}
