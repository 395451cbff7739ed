//! The `aws-ec2` backend: each instance is one EC2 instance launched from a pool's launch
//! template, hosting one runner.
//!
//! # Launch
//!
//! `launch` calls CreateFleet of type `instant` (or RunInstances, [`Config::api`]) with the
//! pool's launch template and one override per (instance type, subnet) pair
//! ([`PoolTemplate`]). With [`Market::SpotFirst`] (the default) it asks for spot capacity
//! first; when no override has any (InsufficientInstanceCapacity,
//! MaxSpotInstanceCountExceeded, UnfulfillableCapacity, SpotMaxPriceTooLow, ... — per-override
//! errors in CreateFleet's answer, the call's error for RunInstances, which tries the
//! overrides one by one), it asks again for on-demand capacity. The fallback is logged (a
//! warning with the spot errors) and counted as a [`BackendEvent`](runscale_core::BackendEvent)
//! `spot_fallback_on_demand` (`runscale_backend_events_total`); every launch also counts
//! `launched_spot` or `launched_on_demand`, and a spot attempt without capacity
//! `spot_no_capacity`. When no capacity is found at all the launch fails with
//! [`InsufficientCapacity`](runscale_core::ErrorKind::InsufficientCapacity). Any other
//! per-override error (an unknown launch template, subnet or image) fails it as
//! [`Misconfigured`](runscale_core::ErrorKind::Misconfigured), naming the template. Each
//! request carries a client token derived from the runner name, so a retried call never
//! launches twice.
//!
//! # Identity and ownership
//!
//! Instances are tagged at launch (TagSpecifications): `runscale/owner` (the configured
//! [`Config::owner`]), `runscale/pool`, `runscale/runner-name`, `runscale/template-hash` and
//! `Name`. Everything the backend knows is in these tags, so a restarted runscale finds its
//! instances with one paginated DescribeInstances filtered by the owner tag.
//!
//! # Credentials
//!
//! As for `aws-asg`: the runner's registration goes into the SecureString parameter
//! `{ssm_prefix}/{pool}/{instance-id}` right after the launch (the instance waits for it, reads
//! it and deletes it: `deploy/aws/runner-user-data.sh`), never into user data (readable with
//! DescribeInstanceAttribute). runscale deletes it once the runner is busy, when it terminates
//! the instance, and in a sweep (at the first listing of a pool and every 10 minutes) for
//! instances that are gone. If the parameter cannot be written the new instance is
//! terminated at once.
//!
//! # Inventory and orphans
//!
//! `instances` lists every instance with this backend's owner tag: `pending` is booting,
//! `running` running, `shutting-down`, `stopping` and `stopped` stopping (a `stopped`
//! instance — its runner exited and it powered off — is terminated right away, as it can run
//! nothing), `terminated` is gone. Instances this process launched but DescribeInstances does
//! not show yet (it is eventually consistent) are listed as booting for two minutes. An
//! instance of a served pool without a runner tag is listed with no runner, so the core's
//! policy terminates it after `boot_timeout`. An instance whose pool this backend does not
//! serve (the pool was removed from the configuration) is an **orphan**: once older than
//! [`Config::orphan_grace`] it is listed, with no runner, under the first served pool (by
//! name), so that pool's pass terminates it (reason `template_changed`).
//!
//! # Terminate
//!
//! Only after the core drained the runner. TerminateInstances, idempotent: an unknown
//! instance (`InvalidInstanceID.NotFound`), or one already shutting down, is `Ok`. An
//! instance without this backend's owner tag, or of another served pool, is left alone.
//!
//! # Errors
//!
//! Every call names its IAM action: `AccessDenied`/`UnauthorizedOperation` says which
//! permission the policy lacks (`deploy/aws/iam-policy.json` lists exactly the calls made).
//! Throttling (`RequestLimitExceeded`, ...) is retried by the SDK (standard mode,
//! [`Config::max_attempts`]) and then reported as
//! [`RateLimited`](runscale_core::ErrorKind::RateLimited), so the pool backs off. `probe`
//! checks each pool's launch template and dry-runs (`DryRun=true`: `DryRunOperation` means
//! allowed) DescribeInstances, DescribeLaunchTemplates, TerminateInstances, CreateFleet and
//! RunInstances, then the SSM calls, listing every missing permission.
//!
//! Not done here: several runners per instance, attribute-based instance type selection,
//! spot interruption notices (an interrupted instance's runner goes offline and the policy
//! replaces it).

mod backend;
mod client;
mod config;
mod kind;

pub use backend::AwsEc2;
pub use config::{Config, LaunchApi, Market, PoolTemplate};
pub use kind::AwsEc2Type;

/// The EC2 and IAM actions this backend calls (besides the shared SSM ones).
#[cfg(test)]
pub(crate) const IAM_ACTIONS: &[&str] = client::action::ALL;
