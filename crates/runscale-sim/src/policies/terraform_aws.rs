//! terraform-aws-github-runner, from the reference notes (github.md §4).
//!
//! - Scale-up: each `workflow_job` `queued` webhook becomes an SQS message delivered after
//!   `delay_webhook_event` (30 s). Per message, when the job-queued check is on (the default
//!   for non-ephemeral runners) a job no longer queued is dropped; otherwise one runner is
//!   launched if the EC2 count is below the maximum. At the maximum the message goes back to
//!   the queue (retried 30 s later) — for ephemeral runners it still launches once there is
//!   room, even if the job ran meanwhile (the known over-provisioning).
//! - One runner per instance (`runners_per_instance` is ignored: two broke the runner/instance
//!   match, #3802). Ephemeral runners' instances terminate after their job.
//! - Scale-down Lambda every 5 minutes (on the wall clock): oldest first; a registered runner
//!   older than `minimum_running_time_in_minutes` (5) that is not busy is deleted, then its
//!   instance terminated; an instance not registered after `runner_boot_time_in_minutes` (5)
//!   is tagged orphan and terminated at the next run if still unregistered.
//! - Left out: pool Lambda, `idle_config` (default idle count 0), job retry, spot.

use std::collections::VecDeque;

use runscale_core::Timestamp;

use super::{MIN, Policy, SEC, Setup, aligned, webhook_latency};
use crate::config::{SimPool, WorldParams};
use crate::engine::{Hook, Ms, World};

const DELAY: Ms = 30 * SEC;
const SCALE_DOWN_EVERY: Ms = 5 * MIN;
const MIN_RUNNING: Ms = 5 * MIN;
const BOOT_TIME: Ms = 5 * MIN;
const ORPHAN: u32 = 1;

pub(crate) struct TerraformAws {
    max: u32,
    ephemeral: bool,
    messages: VecDeque<(Ms, u32)>,
    next_scale_down: Option<Ms>,
    t0: Option<Timestamp>,
}

impl TerraformAws {
    pub(crate) fn new(pool: &SimPool) -> Self {
        Self {
            max: pool.spec.max,
            ephemeral: pool.spec.ephemeral,
            messages: VecDeque::new(),
            next_scale_down: None,
            t0: None,
        }
    }

    fn scale_down(&mut self, w: &mut World<'_>, p: usize) {
        let now = w.now();
        let mut live = w.pools[p].live.clone();
        live.sort_by_key(|&i| (w.insts[i as usize].launched, i));
        for i in live {
            let age = now - w.insts[i as usize].launched;
            if w.inst_online(i) {
                if age >= MIN_RUNNING && w.inst_busy(i) == 0 {
                    w.terminate(i, false);
                }
            } else if age >= BOOT_TIME {
                if w.insts[i as usize].tag == ORPHAN {
                    w.terminate(i, false);
                } else {
                    w.insts[i as usize].tag = ORPHAN;
                }
            }
        }
    }
}

impl Policy for TerraformAws {
    fn setup(&self, pool: &SimPool, params: &WorldParams, t0: Timestamp) -> Setup {
        let mut s = Setup::plain(pool, params);
        s.slots = 1;
        s.life.exit_when_empty = self.ephemeral || params.instance_exits_when_runners_leave;
        s.hook_queued = Some(webhook_latency(params));
        s.first_pass = aligned(t0, 0, SCALE_DOWN_EVERY);
        s
    }

    fn on_hook(&mut self, w: &mut World<'_>, p: usize, kind: Hook, job: u32) -> bool {
        if kind == Hook::Queued {
            let due = w.now() + DELAY;
            self.messages.push_back((due, job));
            w.wake_at(p, due);
        }
        false
    }

    fn pass(&mut self, w: &mut World<'_>, p: usize) -> Option<Ms> {
        let now = w.now();
        let t0 = *self.t0.get_or_insert_with(|| w.ts(0));
        while self.messages.front().is_some_and(|&(due, _)| due <= now) {
            let Some((_, job)) = self.messages.pop_front() else {
                break;
            };
            if !self.ephemeral && !w.job_waiting(job) {
                continue; // job-queued check: already taken
            }
            if (w.pools[p].live.len() as u32) < self.max {
                w.launch(p, 1, None);
            } else {
                self.messages.push_back((now + DELAY, job));
                w.wake_at(p, now + DELAY);
            }
        }
        let next_down = *self
            .next_scale_down
            .get_or_insert_with(|| aligned(t0, 0, SCALE_DOWN_EVERY));
        if now >= next_down {
            self.scale_down(w, p);
            self.next_scale_down = Some(aligned(t0, now + 1, SCALE_DOWN_EVERY));
        }
        self.next_scale_down
    }

    fn notes(&self) -> String {
        "terraform-aws-github-runner: 1 runner per queued webhook after 30 s SQS delay (capped, retried), scale-down every 5 min of idle runners older than 5 min, orphan two-phase".to_owned()
    }
}
