//! sio/gitlab-runners-fleet, terraform branch (HEAD), as its published
//! source behaves.
//!
//! - A loop: `scale`, `terraform apply`, sleep 1 minute (modelled as one pass a minute; the
//!   apply time is part of the boot time).
//! - Host status from its metrics endpoint: unreachable and younger than the provision time
//!   (10 min) → Provisioning, older → Error; running a job → Busy; older than 24 h → OldAge;
//!   new jobs since the last look → Ready (idle since now); idle longer than 40 minutes →
//!   Idle; otherwise Ready.
//! - `capacity = Σ(runner_max_jobs − running)` over healthy hosts (Provisioning, Ready,
//!   Busy), `runner_max_jobs` = the pool's runners per instance. While capacity < pending
//!   jobs, fewer than 3 hosts provisioning and fewer than max healthy hosts: add a host.
//! - Idle, OldAge and Error hosts are unregistered and destroyed by the next apply — without a
//!   busy check (an Error host is destroyed even if it runs a job).
//! - Runners are persistent (hosts run `gitlab-runner` with `concurrent` = slots).
//! - Not modelled: the gateway VM created while any runner exists (not a runner), the
//!   sidekick restarts.

use runscale_core::Timestamp;

use super::{MIN, Policy, Setup};
use crate::config::{SimPool, WorldParams};
use crate::engine::{Ms, World};

const LOOP: Ms = MIN;
const PROVISION_TIME: Ms = 10 * MIN;
const MAX_AGE: Ms = 24 * 60 * MIN;
const MAX_IDLE: Ms = 40 * MIN;
const GROW_MAX: u32 = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Provisioning,
    Ready,
    Busy,
    OldAge,
    Idle,
    Error,
}

pub(crate) struct GitlabFleet {
    max: u32,
}

impl GitlabFleet {
    pub(crate) fn new(pool: &SimPool) -> Self {
        Self { max: pool.spec.max }
    }
}

impl Policy for GitlabFleet {
    fn setup(&self, pool: &SimPool, params: &WorldParams, _t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.life.ephemeral = false;
        s.life.exit_when_empty = false;
        s
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let now = w.now();
        let slots = w.pools[p].slots;
        let live = w.pools[p].live.clone();
        let mut hosts: Vec<(u32, Status, u32)> = Vec::with_capacity(live.len());
        for i in live {
            let age = now - w.insts[i as usize].launched;
            let running = w.inst_busy(i);
            let started = w.insts[i as usize].jobs_started;
            let online = w.inst_online(i);
            let inst = &mut w.insts[i as usize];
            let status = if !online {
                if age < PROVISION_TIME {
                    Status::Provisioning
                } else {
                    Status::Error
                }
            } else if running > 0 {
                inst.mark = -1;
                Status::Busy
            } else if age > MAX_AGE {
                Status::OldAge
            } else if started > inst.tag {
                inst.tag = started;
                inst.mark = now;
                Status::Ready
            } else if inst.mark >= 0 && now - inst.mark > MAX_IDLE {
                Status::Idle
            } else {
                if inst.mark < 0 {
                    inst.mark = now;
                }
                Status::Ready
            };
            hosts.push((i, status, running));
        }
        let healthy_of =
            |s: Status| matches!(s, Status::Provisioning | Status::Ready | Status::Busy);
        let mut healthy = hosts.iter().filter(|h| healthy_of(h.1)).count() as u32;
        let mut capacity: u32 = hosts
            .iter()
            .filter(|h| healthy_of(h.1))
            .map(|h| slots.saturating_sub(h.2))
            .sum();
        for h in hosts.iter_mut() {
            if healthy <= self.max {
                break;
            }
            if matches!(h.1, Status::Provisioning | Status::Ready) {
                h.1 = Status::Idle;
                healthy -= 1;
                capacity = capacity.saturating_sub(slots);
            }
        }
        let pending = w.pools[p].waiting();
        let mut provisioning = hosts.iter().filter(|h| h.1 == Status::Provisioning).count() as u32;
        let mut add = 0;
        while capacity < pending && provisioning < GROW_MAX && healthy < self.max {
            add += 1;
            capacity += slots;
            provisioning += 1;
            healthy += 1;
        }
        for (i, status, _) in hosts {
            if matches!(status, Status::Idle | Status::OldAge | Status::Error) {
                w.terminate(i, true);
            }
        }
        if add > 0 {
            w.launch(p, add, None);
        }
        Some(now + LOOP)
    }

    fn notes(&self) -> String {
        "gitlab-runners-fleet (terraform): 1 min loop, add hosts while capacity < pending (≤3 provisioning), destroy hosts idle 40 min, older than 24 h, or unreachable after 10 min".to_owned()
    }
}
