//! runscale's core: the domain model, the [`Provider`] and [`Backend`] traits, the pure scaling
//! [`policy`], the [`memory`] that turns successive views of a pool into what the policy reads,
//! and the [`reconciler`] that drives them.
//!
//! This crate has no HTTP, cloud or Kubernetes dependency; adapters live in
//! `runscale-providers` and `runscale-backends`, and convert their SDK types at their edge.

pub mod adapter;
pub mod adapter_type;
pub mod clock;
pub mod error;
pub mod forecast;
pub mod instrument;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod naming;
pub mod plan;
pub mod policy;
pub mod reconciler;
pub mod schedule;
pub mod secret;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use adapter::{
    Backend, BackendEvent, Credentials, HISTORY_MAX_JOBS, HISTORY_WINDOW, JobHistory,
    LaunchRequest, PastJob, Provider, ProviderView, Registration, ReuseRequest, WebhookRequest,
};
pub use adapter_type::{BackendType, PoolContext, ProviderType};
pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use error::{Error, ErrorKind, Result};
pub use forecast::{DemandHistory, Forecast, Warm};
pub use memory::{Observed, PoolMemory};
pub use model::{
    Demand, EffectiveLimits, Instance, InstanceId, InstanceState, Observation, PoolId, PoolSpec,
    Reuse, Reused, Runner, RunnerId, RunnerState, Timestamp, WaitingJob, template_hash,
};
pub use plan::{Action, Limit, Plan, Planned, Reason};
pub use policy::plan;
pub use schedule::{Schedule, ScheduleError};
