//! The `kubernetes` backend: each instance is one pod hosting one runner (or one Job whose
//! pod hosts it), in one namespace.
//!
//! # Pods
//!
//! A runner pod is made from the pool's template, which comes from exactly one of:
//!
//! - an inline pod template in the configuration ([`PoolTemplate::pod`]);
//! - a suspended CronJob, by name or by the labels `resource-class-org` / `resource-class-name`
//!   (circleci-runner-autoscaler's templates work unchanged): its
//!   `spec.jobTemplate.spec.template`;
//! - a Job with `parallelism: 0`, by name or by the labels `app.elotl.co=buildscaler` and
//!   `buildscaler.elotl.co/queue` (Buildscaler's templates): its `spec.template`, without the
//!   labels the Job controller added (they would let it adopt the pods).
//!
//! The pod is named after its runner (`rs-{pool}-{10 chars}`, so a template that reads
//! `metadata.name` gets the runner name), gets `restartPolicy: Never`, the labels
//! `runscale/pool`, `runscale/runner-name` and `app.kubernetes.io/managed-by: runscale`, and
//! the annotations `runscale/template-hash` (the pool's hash at launch) and
//! `runscale/template-version` (`inline/{hash}`, `cronjob/{uid}/{hash}` or `job/{uid}`). A pod
//! whose template version is no longer the source's current one (an edited CronJob, a Job
//! deleted and recreated, a source that is gone) is listed with the template hash suffixed
//! `/outdated`, so the policy retires it once idle, as for a configuration change.
//!
//! # Jobs from a CronJob
//!
//! With a CronJob template, each runner is instead a batch/v1 **Job** made from the CronJob's
//! `jobTemplate`, as circleci-runner-autoscaler made them: named after the runner, owned by the
//! CronJob (a controller owner reference), annotated `cronjob.kubernetes.io/instantiate:
//! manual`, with the template's spec (restart policy, `backoffLimit`,
//! `ttlSecondsAfterFinished`) and one pod (`parallelism` and `completions` 1; other values
//! are refused). runscale's labels and annotations go on the Job and on its pod template, so
//! the pod the Job controller makes (`{job}-{5 chars}`) carries them. A template variable
//! read from `metadata.name` (the seed's `LAUNCH_AGENT_RUNNER_NAME`) is read from the
//! `runscale/runner-name` label instead, so the runner is still named after the instance.
//! The instance is the Job (its id is the Job's name); it is followed through its pod, or,
//! while it has none (not made yet, or refused by a quota or an admission webhook), through
//! the Job, listed every pass (`booting`, so `boot_timeout` retires it). `terminate` and the
//! clean-up of a finished runner delete the Job with background propagation (the pods go
//! with it; a Job's own default is to orphan them) and its pod with the grace period. Deleting
//! the CronJob deletes its Jobs and their pods through the garbage collector, busy or not, as
//! with the seed: retire a resource class with `--cascade=orphan`, or let its runners finish
//! first.
//!
//! # Credentials
//!
//! The runner's registration (variables and secrets) goes into a Secret
//! `{pod}-credentials` (`{job}-credentials`), one key per variable, created right after the pod
//! (Job) with an owner reference to it, so the garbage collector deletes it with its owner. Until it exists the
//! kubelet holds the container back (`CreateContainerConfigError`, retried). The credential
//! containers (the first container unless [`PoolTemplate::credentials_containers`] names
//! others) get it as:
//!
//! - `env` (default): `envFrom: secretRef`, after the template's own `envFrom` sources, so
//!   each credential is an environment variable; variables the template sets in `env` win;
//! - `volume`: a read-only secret volume at [`PoolTemplate::credentials_dir`] (mode 0400),
//!   one file per credential, named by `RUNSCALE_CREDENTIALS_DIR`.
//!
//! They also get `RUNSCALE_POOL` and `RUNSCALE_RUNNER_NAME`. No secret is ever in the pod
//! spec, a log line or an error message.
//!
//! # Inventory and lifecycle
//!
//! - Pods are listed from a reflector fed by a kube-runtime watcher on
//!   `runscale/pool in (pools)`, re-listed every [`Config::resync_period`] and after any
//!   watch failure or 410 Gone. Pods this process created or deleted are overlaid until the
//!   store has caught up. Pods that finish or disappear wake their pool.
//! - States: being deleted, `Succeeded` or `Failed` → `stopping`; `Running` or `Unknown` →
//!   `running`; otherwise `booting`. Finished pods are deleted at the next listing.
//! - `terminate` deletes the pod (runner Job: the Job, then its pod) with
//!   [`Config::grace_period`] and a uid precondition; 404 is success. The reconciler calls it only after the CI system confirmed the runner removed.
//!   Pending pods are not deleted on a timer here: the policy terminates them at
//!   `boot_timeout`, and the deletion is logged with the scheduler's reason (e.g.
//!   `Unschedulable: 0/3 nodes are available`). Why a pod is stuck is also logged once when
//!   first seen.
//! - Disruption: [`Backend::mark_busy`](runscale_core::Backend::mark_busy) annotates the pods
//!   of busy runners `karpenter.sh/do-not-disrupt: "true"` and
//!   `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`, and removes both when the
//!   runner is idle again. If the template sets either annotation itself, runscale leaves the
//!   pod's annotations alone (`runscale/disruption: template`).
//!
//! The backend connects on first use, so building it needs no cluster.

mod backend;
mod config;
mod convert;
mod errors;
mod inventory;
mod kind;
mod template;

pub use backend::Kubernetes;
pub use backend::TemplateJob;
pub use config::{
    Config, CredentialsDelivery, CronJobRef, JobRef, PoolTemplate, VolumeClaim, validate_pool,
};
pub use kind::KubernetesType;
