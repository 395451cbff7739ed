//! The `aws-asg` backend: each instance is one EC2 instance of an AWS Auto Scaling group,
//! hosting one runner.
//!
//! # Groups
//!
//! A pool's group is named in its [`PoolTemplate`], or found by tag: `resource-class` with a
//! CircleCI resource class (circleci-runner-autoscaler's convention, but the group's name need
//! not equal the class), or `runscale/pool` with the pool's name. Exactly one group must carry
//! the tag (all pages of DescribeAutoScalingGroups are read). The group must have `MinSize` 0,
//! unless the template's `max_size` asks runscale to keep `MinSize` 0 and `MaxSize` at that
//! value (UpdateAutoScalingGroup whenever they differ, before a launch and after every pass;
//! `MaxSize` never below the desired capacity), as CircleCI's simple-Lambda example does on
//! every run. Its launch template's user data starts the runner
//! (`deploy/aws/runner-user-data.sh`).
//!
//! # Identity
//!
//! runscale's core registers the runner (and names it `rs-{pool}-{10 chars}`) *before* it asks
//! the backend for an instance, and the CI system binds the registration to that name (a
//! GitHub JIT config cannot be renamed). An Auto Scaling group, on the other hand, chooses the
//! instance and its id only after the desired capacity went up. So the runner name cannot
//! contain the instance id; instead the backend *binds* the two when the instance appears:
//!
//! 1. `launch` takes the pool's lock (launches, terminations and sweeps of one pool are
//!    serialised, as each reads the desired capacity or the member list and acts on it),
//!    reads the group, refuses if `DesiredCapacity` already equals `MaxSize` (an
//!    [`InsufficientCapacity`](runscale_core::ErrorKind::InsufficientCapacity) error and a
//!    warning that name the group and its MaxSize; the reconciler counts it under
//!    `runscale_pass_failures{kind="insufficient_capacity"}`), and sets the desired capacity
//!    one higher.
//! 2. It re-reads the group every [`Config::poll_interval`] until an instance appears that was
//!    not a member before (at most [`Config::claim_timeout`]) and claims it: scale-in protection
//!    on, then the **binding** — a String parameter `{ssm_prefix}/{pool}/binding/{instance-id}`
//!    holding the runner name, the template hash and the launch time (what the other backends
//!    keep in tags or labels; Auto Scaling has no per-instance tags and EC2's API is not used
//!    here) — then the **credentials** parameter.
//!    With `runner_name: unknown` the launch template's own script starts and names the runner
//!    (CircleCI's simple-Lambda example: `$RUNNER_NAME-<time>`, or one fixed name): the binding
//!    names no runner and no credentials parameter is written.
//! 3. `instances` lists the group's members with their bindings (loaded from SSM once, then
//!    kept in memory; a member without a known binding is looked up once per listing, so an
//!    instance claimed by another runscale is found). A member without a binding — a
//!    replacement the group launched by itself, or a claim that failed half-way — is listed
//!    with no runner, so the policy terminates it after `boot_timeout`. With `runner_name:
//!    unknown` every member is listed with no runner and the pool is planned from counts
//!    alone ([`PoolTemplate::runners_unattributed`]): no instance is taken for abandoned, and
//!    one is terminated only while no job of the pool waits or runs. A restarted runscale
//!    rebuilds everything from the group and the bindings.
//!
//! # Credentials
//!
//! The runner's registration goes into a SecureString parameter
//! `{ssm_prefix}/{pool}/{instance-id}`: one `NAME=value` line per variable and secret, plus
//! `RUNSCALE_POOL`, `RUNSCALE_INSTANCE_ID`, `RUNSCALE_RUNNER_NAME` and
//! `RUNSCALE_TEMPLATE_HASH`. The instance reads and deletes it before it starts the runner
//! (IMDSv2 gives it its id). runscale deletes it too once the runner is seen busy
//! ([`mark_busy`](runscale_core::Backend::mark_busy)), and deletes both parameters when it
//! terminates the instance or sees it gone from the group. A sweep at the first listing of a
//! pool and every 10 minutes deletes parameters of instances that are no longer members, so
//! none is left behind after a crash. Secrets never reach a log line or an error: errors about
//! the credentials parameter carry only the AWS error code.
//!
//! # Scale-in
//!
//! The core drains the runner through the CI system first; `terminate` then lifts the
//! instance's scale-in protection and calls TerminateInstanceInAutoScalingGroup with
//! `ShouldDecrementDesiredCapacity`, so the group does not replace it. It is idempotent: an
//! instance that is gone, terminating or not a member is `Ok`. `mark_busy` re-protects a busy
//! instance whose protection someone removed. The group's own scale-in (a lower desired
//! capacity set by someone else) skips protected instances.
//!
//! With `runner_name: unknown` the instances also end by themselves (a single-task runner
//! that powers its machine off; AWS then terminates the member and replaces it if the desired
//! capacity is still above the group's size). So after every pass `lower_target` lowers the
//! desired capacity to what the pool wants (`min(unclaimed + running, max)`, the seed's
//! formula), after protecting every member that is not: AWS cannot remove a protected member,
//! and the ones that end are not replaced. A launch then raises the desired capacity from the
//! number of members, not from the lowered value; a termination decrements it only if it is
//! not already below the members.
//!
//! # Errors
//!
//! Every call names its IAM action: an `AccessDenied` says which permission the policy lacks
//! (`deploy/aws/iam-policy.json` lists exactly the calls made). Throttling is retried by the
//! SDK (standard mode, [`Config::max_attempts`] with jittered exponential backoff) and then
//! reported as [`RateLimited`](runscale_core::ErrorKind::RateLimited), so the pool backs off.
//! An unknown group, a tag matching no or several groups, a `MinSize` above 0 and invalid
//! settings are [`Misconfigured`](runscale_core::ErrorKind::Misconfigured) errors naming the
//! group or field. `probe` (for `runscale check`) reads every pool's group, reports a `MinSize`
//! above 0 or a `MaxSize` of 0 (nothing could be launched) when `max_size` does not set them,
//! says which limits the first pass will change and that this needs
//! `autoscaling:UpdateAutoScalingGroup`, and checks the permissions it can check without side
//! effects, listing every missing one.
//!
//! Not done here: several runners per instance, warm pools, lifecycle hooks, instance
//! refresh on a new launch template version (the group's own instance refresh does that).

mod backend;
mod client;
mod config;
mod kind;

pub use backend::AwsAsg;
pub use config::{Config, PoolTemplate, RunnerName};
pub use kind::AwsAsgType;

/// The Auto Scaling IAM actions this backend calls (besides the shared SSM ones).
#[cfg(test)]
pub(crate) const IAM_ACTIONS: &[&str] = client::action::ALL;
