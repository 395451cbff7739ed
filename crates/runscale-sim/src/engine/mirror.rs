//! The [`Observation`] runscale's policy reads, kept up to date incrementally as the world
//! changes (O(1) per change), so a pass costs what `plan` costs and nothing more: no
//! observation is rebuilt, however long the queue.
//!
//! Runner ids are `r{index}`, instance ids `i{index}`, runner names `{index}` (short: `plan`
//! hashes every name on every call);
//! the policy only needs them unique and consistent between runners and instances.

use std::collections::VecDeque;

use runscale_core::{
    DemandHistory, Instance, InstanceId, InstanceState, Observation, PoolSpec, Runner, RunnerId,
    RunnerState, WaitingJob,
};

use super::world::{IState, Ms, RState, World};

const NONE: u32 = u32::MAX;

pub(crate) struct Mirror {
    pub obs: Observation,
    runner_of: Vec<u32>,
    inst_of: Vec<u32>,
    job_of: Vec<u32>,
    /// Launch times of the last minute (the reconciler's memory for the launch-rate cap).
    pub launches: VecDeque<Ms>,
    /// Bumped on every change of the observation.
    pub version: u64,
    template: String,
    /// The pool's arrivals and lead times, as the reconciler keeps them, for a pool with
    /// `warm` (none kept otherwise).
    pub history: Option<DemandHistory>,
    /// Whether runners that leave are reported as departed (pools with `reuse`).
    track_departed: bool,
}

impl Mirror {
    pub(crate) fn new(spec: &PoolSpec, _index: usize) -> Self {
        Mirror {
            obs: Observation::default(),
            runner_of: Vec::new(),
            inst_of: Vec::new(),
            job_of: Vec::new(),
            launches: VecDeque::new(),
            version: 0,
            template: spec.template_hash.clone(),
            history: spec.warm.map(|_| DemandHistory::default()),
            track_departed: spec.reuse.is_some(),
        }
    }
}

/// Parses `r{n}` / `i{n}` back into an index.
pub(crate) fn index_of(id: &str) -> Option<u32> {
    id.get(1..)?.parse().ok()
}

impl World<'_> {
    pub(super) fn mirror_job_added(&mut self, p: usize, j: u32) {
        let queued = self.jobs[j as usize].queued;
        let at = self.ts(queued);
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        m.version += 1;
        if let Some(h) = &mut m.history {
            h.arrival(at);
        }
        self.job_mpos[j as usize] = m.obs.demand.waiting.len() as u32;
        m.obs.demand.waiting.push(WaitingJob {
            id: j.to_string(),
            queued_at: at,
        });
        m.job_of.push(j);
    }

    pub(super) fn mirror_job_removed(&mut self, p: usize, j: u32) {
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        m.version += 1;
        let pos = self.job_mpos[j as usize];
        if pos == NONE {
            return;
        }
        let pos = pos as usize;
        self.job_mpos[j as usize] = NONE;
        m.obs.demand.waiting.swap_remove(pos);
        m.job_of.swap_remove(pos);
        if let Some(&moved) = m.job_of.get(pos) {
            self.job_mpos[moved as usize] = pos as u32;
        }
    }

    /// Lists an instance's runners (registered, offline) and returns their names.
    fn mirror_runners_added(&mut self, i: u32) -> Vec<String> {
        let inst = &self.insts[i as usize];
        let (first, slots) = (inst.first, inst.slots);
        let Some(m) = &mut self.pools[inst.pool as usize].mirror else {
            return Vec::new();
        };
        m.version += 1;
        let mut names = Vec::with_capacity(slots as usize);
        for r in first..first + slots {
            let name = format!("{r}");
            self.runners[r as usize].mpos = m.obs.runners.len() as u32;
            m.obs.runners.push(Runner {
                id: RunnerId::new(format!("r{r}")),
                name: name.clone(),
                state: RunnerState::Offline,
                draining: false,
                last_busy: None,
            });
            m.runner_of.push(r);
            names.push(name);
        }
        names
    }

    /// An instance reused: its fresh runners listed, its old names no longer departed.
    pub(super) fn mirror_instance_reused(&mut self, i: u32, uses: u32) {
        let at = self.ts(self.now());
        let names = self.mirror_runners_added(i);
        let inst = &self.insts[i as usize];
        let pos = inst.mpos;
        let Some(m) = &mut self.pools[inst.pool as usize].mirror else {
            return;
        };
        if let Some(x) = m.obs.instances.get_mut(pos as usize) {
            let old = std::mem::replace(&mut x.runner_names, names);
            m.obs.departed.retain(|d| !old.contains(d));
            x.reused = Some(runscale_core::Reused { uses, at });
        }
    }

    pub(super) fn mirror_instance_added(&mut self, i: u32) {
        let now = self.now();
        let at = self.ts(now);
        let names = self.mirror_runners_added(i);
        let p = self.insts[i as usize].pool as usize;
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        self.insts[i as usize].mpos = m.obs.instances.len() as u32;
        m.obs.instances.push(Instance {
            id: InstanceId::new(format!("i{i}")),
            state: InstanceState::Booting,
            launched_at: at,
            template_hash: m.template.clone(),
            runner_names: names,
            reused: None,
        });
        m.inst_of.push(i);
        m.launches.push_back(now);
    }

    pub(super) fn mirror_instance_running(&mut self, i: u32) {
        let inst = &self.insts[i as usize];
        let pos = inst.mpos;
        if let Some(m) = &mut self.pools[inst.pool as usize].mirror
            && let Some(x) = m.obs.instances.get_mut(pos as usize)
            && inst.state == IState::Running
        {
            x.state = InstanceState::Running;
            m.version += 1;
        }
    }

    pub(super) fn mirror_instance_removed(&mut self, i: u32) {
        let inst = &self.insts[i as usize];
        let p = inst.pool as usize;
        let pos = inst.mpos;
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        m.version += 1;
        if pos == NONE {
            return;
        }
        let pos = pos as usize;
        self.insts[i as usize].mpos = NONE;
        if !m.obs.departed.is_empty() {
            let names = &m.obs.instances[pos].runner_names;
            m.obs.departed.retain(|d| !names.contains(d));
        }
        m.obs.instances.swap_remove(pos);
        m.inst_of.swap_remove(pos);
        if let Some(&moved) = m.inst_of.get(pos) {
            self.insts[moved as usize].mpos = pos as u32;
        }
    }

    pub(super) fn mirror_runner_changed(&mut self, r: u32) {
        let now = self.now();
        let run = &self.runners[r as usize];
        let inst = &self.insts[run.inst as usize];
        let p = inst.pool as usize;
        let launched = inst.launched;
        let inst_pos = inst.mpos as usize;
        let last_busy = (run.last_busy >= 0).then(|| self.ts(run.last_busy));
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        m.version += 1;
        // A runner a reuse handed over is no launch: its wait is no launch lead time.
        let reused = m
            .obs
            .instances
            .get(inst_pos)
            .is_some_and(|i| i.reused.is_some());
        let Some(x) = m.obs.runners.get_mut(run.mpos as usize) else {
            return;
        };
        if let Some(h) = &mut m.history
            && !reused
            && x.state == RunnerState::Offline
            && x.last_busy.is_none()
            && run.state == RState::Idle
        {
            // Registered: the launch's lead time.
            let lead = u64::try_from(now - launched).unwrap_or(0);
            h.lead_time(std::time::Duration::from_millis(lead));
        }
        x.state = match run.state {
            RState::Idle => RunnerState::Idle,
            RState::Busy => RunnerState::Busy,
            RState::Offline | RState::Gone => RunnerState::Offline,
        };
        x.draining = run.draining;
        x.last_busy = last_busy;
    }

    pub(super) fn mirror_runner_removed(&mut self, r: u32) {
        let run = &self.runners[r as usize];
        let inst = &self.insts[run.inst as usize];
        let p = inst.pool as usize;
        let live = inst.state != IState::Gone;
        let pos = run.mpos;
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        m.version += 1;
        if pos == NONE {
            return;
        }
        let pos = pos as usize;
        // A runner that was online and left while its instance lives: departed, as the
        // reconciler reports it (for `reuse`, which keeps such instances).
        if live && m.track_departed && m.obs.runners[pos].state != RunnerState::Offline {
            m.obs.departed.push(m.obs.runners[pos].name.clone());
        }
        self.runners[r as usize].mpos = NONE;
        m.obs.runners.swap_remove(pos);
        m.runner_of.swap_remove(pos);
        if let Some(&moved) = m.runner_of.get(pos) {
            self.runners[moved as usize].mpos = pos as u32;
        }
    }
}
