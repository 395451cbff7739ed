//! The view of a pool runscale's reconciler reads (the CI system's [`ProviderView`] and the
//! backend's instances), kept up to date incrementally as the world changes (O(1) per
//! change): no view is rebuilt, however long the queue. A pass turns it into the
//! [`runscale_core::Observation`] `plan` reads through the reconciler's own
//! [`PoolMemory`] (last busy times, departures, launches, arrivals and lead times), so the
//! simulated policy plans on what the daemon would.
//!
//! Runner ids are `r{index}`, instance ids `i{index}`, runner names `{index}` (short: `plan`
//! hashes every name on every call);
//! the policy only needs them unique and consistent between runners and instances.

use runscale_core::{
    Instance, InstanceId, InstanceState, Observation, PoolMemory, PoolSpec, ProviderView, Runner,
    RunnerId, RunnerState, Timestamp, WaitingJob,
};

use super::world::{IState, RState, World};

const NONE: u32 = u32::MAX;

pub(crate) struct Mirror {
    /// What the CI system lists: waiting and running jobs, runners.
    pub view: ProviderView,
    /// What the backend lists.
    pub instances: Vec<Instance>,
    runner_of: Vec<u32>,
    inst_of: Vec<u32>,
    job_of: Vec<u32>,
    /// What the reconciler remembers between passes.
    pub memory: PoolMemory,
    /// Bumped on every change of the view.
    pub version: u64,
    template: String,
}

impl Mirror {
    pub(crate) fn new(spec: &PoolSpec, _index: usize) -> Self {
        Mirror {
            view: ProviderView::default(),
            instances: Vec::new(),
            runner_of: Vec::new(),
            inst_of: Vec::new(),
            job_of: Vec::new(),
            memory: PoolMemory::default(),
            version: 0,
            template: spec.template_hash.clone(),
        }
    }
}

impl Mirror {
    /// What a pass of the reconciler plans on at `now`: the view through the memory; with the
    /// runners' `last_busy` as listed, for [`Mirror::restore`], and how soon the memory wants
    /// a pass back (a departure to confirm).
    pub(crate) fn observe(
        &mut self,
        spec: &PoolSpec,
        now: Timestamp,
    ) -> (
        Observation,
        Vec<Option<Timestamp>>,
        Option<std::time::Duration>,
    ) {
        let view = std::mem::take(&mut self.view);
        let instances = std::mem::take(&mut self.instances);
        let observed = self.memory.observe(spec, view, instances, now);
        (
            observed.observation,
            observed.read_last_busy,
            observed.recheck_after,
        )
    }

    /// Takes the view back from an observation made by [`Mirror::observe`].
    pub(crate) fn restore(&mut self, obs: Observation, read_last_busy: Vec<Option<Timestamp>>) {
        let Observation {
            demand,
            mut runners,
            instances,
            ..
        } = obs;
        for (r, t) in runners.iter_mut().zip(read_last_busy) {
            r.last_busy = t;
        }
        self.view.demand = demand;
        self.view.runners = runners;
        self.instances = instances;
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
        self.job_mpos[j as usize] = m.view.demand.waiting.len() as u32;
        m.view.demand.waiting.push(WaitingJob {
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
        m.view.demand.waiting.swap_remove(pos);
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
            self.runners[r as usize].mpos = m.view.runners.len() as u32;
            m.view.runners.push(Runner {
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

    /// An instance reused: its fresh runners listed and hosted from now on.
    pub(super) fn mirror_instance_reused(&mut self, i: u32, uses: u32) {
        let at = self.ts(self.now());
        let names = self.mirror_runners_added(i);
        let inst = &self.insts[i as usize];
        let pos = inst.mpos;
        let Some(m) = &mut self.pools[inst.pool as usize].mirror else {
            return;
        };
        m.memory.hosts(names.iter().cloned());
        if let Some(x) = m.instances.get_mut(pos as usize) {
            x.runner_names = names;
            x.reused = Some(runscale_core::Reused { uses, at });
        }
    }

    pub(super) fn mirror_instance_added(&mut self, i: u32) {
        let at = self.ts(self.now());
        let names = self.mirror_runners_added(i);
        let p = self.insts[i as usize].pool as usize;
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        m.memory.launched(at, names.iter().cloned());
        self.insts[i as usize].mpos = m.instances.len() as u32;
        m.instances.push(Instance {
            id: InstanceId::new(format!("i{i}")),
            state: InstanceState::Booting,
            launched_at: at,
            template_hash: m.template.clone(),
            runner_names: names,
            reused: None,
        });
        m.inst_of.push(i);
    }

    pub(super) fn mirror_instance_running(&mut self, i: u32) {
        let inst = &self.insts[i as usize];
        let pos = inst.mpos;
        if let Some(m) = &mut self.pools[inst.pool as usize].mirror
            && let Some(x) = m.instances.get_mut(pos as usize)
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
        m.instances.swap_remove(pos);
        m.inst_of.swap_remove(pos);
        if let Some(&moved) = m.inst_of.get(pos) {
            self.insts[moved as usize].mpos = pos as u32;
        }
    }

    pub(super) fn mirror_runner_changed(&mut self, r: u32) {
        let run = &self.runners[r as usize];
        let p = self.insts[run.inst as usize].pool as usize;
        let last_busy = (run.last_busy >= 0).then(|| self.ts(run.last_busy));
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        m.version += 1;
        let Some(x) = m.view.runners.get_mut(run.mpos as usize) else {
            return;
        };
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
        let p = self.insts[run.inst as usize].pool as usize;
        let pos = run.mpos;
        let Some(m) = &mut self.pools[p].mirror else {
            return;
        };
        m.version += 1;
        if pos == NONE {
            return;
        }
        let pos = pos as usize;
        self.runners[r as usize].mpos = NONE;
        m.view.runners.swap_remove(pos);
        m.runner_of.swap_remove(pos);
        if let Some(&moved) = m.runner_of.get(pos) {
            self.runners[moved as usize].mpos = pos as u32;
        }
    }
}
