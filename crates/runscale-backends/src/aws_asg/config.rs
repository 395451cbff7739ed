//! Configuration of the aws-asg backend: the backend-level [`Config`] (region, endpoint, SSM
//! prefix, timings) and the per-pool [`PoolTemplate`] (which Auto Scaling group), their pure
//! validation, and the template hash.
//!
//! Nothing here opens a connection.

use std::time::Duration;

use runscale_core::adapter_type::{PoolContext, Problems, Template, Validate};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aws_common::{
    common_problems, default_max_attempts, default_ssm_prefix, pool_name_problem,
};

/// Backend-level settings of the aws-asg backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// AWS region of the groups and parameters. Default: the SDK's (`AWS_REGION`, the
    /// profile, the instance metadata).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL for both Auto Scaling and SSM (a VPC endpoint, or an emulator). Default:
    /// the region's public endpoints.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Root of runscale's SSM parameters: credentials are written to
    /// `{ssm_prefix}/{pool}/{instance-id}` and bindings to
    /// `{ssm_prefix}/{pool}/binding/{instance-id}`.
    #[serde(default = "default_ssm_prefix")]
    pub ssm_prefix: String,
    /// How long a launch waits for the group to show the instance it asked for, a duration
    /// such as "5m".
    #[serde(default = "default_claim_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub claim_timeout: Duration,
    /// How often a launch re-reads the group while it waits for the new instance.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Attempts per AWS call (the SDK's standard retry mode with exponential backoff and
    /// jitter; throttling errors are retried). At least 1.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// The default [`Config::claim_timeout`]: 5 minutes.
fn default_claim_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The default [`Config::poll_interval`]: 2 seconds.
fn default_poll_interval() -> Duration {
    Duration::from_secs(2)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            ssm_prefix: default_ssm_prefix(),
            claim_timeout: default_claim_timeout(),
            poll_interval: default_poll_interval(),
            max_attempts: default_max_attempts(),
        }
    }
}

impl Validate for Config {
    /// Checks the settings without touching the network. Errors name the field (relative to
    /// this struct) and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = common_problems(
            self.region.as_deref(),
            self.endpoint_url.as_deref(),
            &self.ssm_prefix,
            self.max_attempts,
        );
        errors.extend(runscale_core::adapter_type::at_most_a_day([
            ("claim_timeout", Some(self.claim_timeout)),
            ("poll_interval", Some(self.poll_interval)),
        ]));
        if self.claim_timeout < Duration::from_secs(1) {
            errors.push(("claim_timeout".to_owned(), "must be at least 1s".to_owned()));
        }
        if self.poll_interval < Duration::from_millis(10) || self.poll_interval > self.claim_timeout
        {
            errors.push((
                "poll_interval".to_owned(),
                "must be at least 10ms and at most claim_timeout".to_owned(),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Which Auto Scaling group hosts one pool's runners. Exactly one of the fields.
///
/// The group must have `MinSize` 0 (runscale scales in by terminating single instances with
/// the desired capacity decremented, which AWS refuses below `MinSize`), and its launch
/// template's user data must start the runner from the pool's SSM parameter (see
/// `deploy/aws/runner-user-data.sh`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolTemplate {
    /// The group's name.
    #[serde(default)]
    pub group: Option<String>,
    /// A CircleCI resource class (`org/name`): the one group tagged `resource-class` with
    /// this value (circleci-runner-autoscaler's convention; the group's name may differ).
    #[serde(default)]
    pub resource_class: Option<String>,
    /// `true`: the one group tagged `runscale/pool` with the pool's name.
    #[serde(default)]
    pub pool_tag: bool,
    /// How the runner on an instance is named: `runscale` (default: the name runscale
    /// registered, tied to the instance by a binding parameter) or `instance-id` (the runner is
    /// named by its EC2 instance id, circleci-runner-autoscaler's convention: every credential
    /// variable holding the registered name carries the instance id instead, and members of
    /// the group without a binding — instances that were there before runscale — are the
    /// pool's, hosting the runner named by their id). `instance-id` suits providers whose
    /// registration creates nothing CI-side (CircleCI); a GitHub JIT config has the name
    /// sealed inside.
    #[serde(default, skip_serializing_if = "RunnerName::is_runscale")]
    pub runner_name: RunnerName,
    /// Keep the group's `MinSize` at 0 and its `MaxSize` at this value, as CircleCI's
    /// simple-Lambda example does on every run (`UpdateAutoScalingGroup`, only when they
    /// differ: before a launch and after every pass; needs
    /// `autoscaling:UpdateAutoScalingGroup`). `MaxSize` is never set below the group's desired
    /// capacity, as AWS would then lower the desired capacity too and remove unprotected
    /// instances. Default: the group's limits are left alone (its `MinSize` must be 0, and
    /// nothing is launched beyond its `MaxSize`). Not part of the template hash: changing it
    /// replaces no instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u32>,
}

/// How the runner on an Auto Scaling instance is named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerName {
    /// The name runscale registered.
    #[default]
    Runscale,
    /// The instance id.
    InstanceId,
    /// Whatever the launch template's own start-up script names it (CircleCI's simple-Lambda
    /// example: `$RUNNER_NAME-<time>`, or one fixed name): which runner runs on which
    /// instance cannot be known. runscale writes no credentials parameter (the launch
    /// template carries what its runner needs), lists every member with no runner, keeps them
    /// protected from scale-in, and plans the pool from counts alone: an instance is
    /// terminated only when no job of the pool waits or runs, and the group's desired
    /// capacity is lowered to what the pool wants, so instances that end by themselves (a
    /// single-task runner that shuts its machine down) are not replaced.
    Unknown,
}

impl RunnerName {
    fn is_runscale(&self) -> bool {
        *self == RunnerName::Runscale
    }
}

/// The most `max_size` can be (AWS's sizes are 32-bit signed).
const MAX_SIZE_LIMIT: u32 = i32::MAX as u32;

/// How a pool's group is found, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GroupSelector {
    /// By name.
    Name(String),
    /// The one group with this tag key and value.
    Tag { key: &'static str, value: String },
}

impl std::fmt::Display for GroupSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupSelector::Name(n) => write!(f, "group {n}"),
            GroupSelector::Tag { key, value } => write!(f, "the group tagged {key}={value}"),
        }
    }
}

/// Tag of a group found by CircleCI resource class.
pub(crate) const RESOURCE_CLASS_TAG: &str = "resource-class";
/// Tag of a group found by pool name.
pub(crate) const POOL_TAG: &str = "runscale/pool";

impl PoolTemplate {
    /// A template naming a group.
    pub fn group(name: impl Into<String>) -> Self {
        Self {
            group: Some(name.into()),
            resource_class: None,
            pool_tag: false,
            runner_name: RunnerName::Runscale,
            max_size: None,
        }
    }

    pub(crate) fn selector(&self, pool: &str) -> Result<GroupSelector, Vec<(String, String)>> {
        let mut errors: Vec<(String, String)> = pool_name_problem(pool).into_iter().collect();
        let chosen = usize::from(self.group.is_some())
            + usize::from(self.resource_class.is_some())
            + usize::from(self.pool_tag);
        if chosen != 1 {
            errors.push((
                "group".to_owned(),
                "set exactly one of group, resource_class and pool_tag".to_owned(),
            ));
        }
        if let Some(g) = &self.group
            && (g.is_empty() || g.len() > 255)
        {
            errors.push(("group".to_owned(), "must be 1 to 255 characters".to_owned()));
        }
        if let Some(rc) = &self.resource_class
            && (rc.is_empty() || rc.len() > 256)
        {
            errors.push((
                "resource_class".to_owned(),
                "must be 1 to 256 characters".to_owned(),
            ));
        }
        if self.max_size.is_some_and(|m| m > MAX_SIZE_LIMIT) {
            errors.push((
                "max_size".to_owned(),
                format!("must be at most {MAX_SIZE_LIMIT}"),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(match (&self.group, &self.resource_class) {
            (Some(g), _) => GroupSelector::Name(g.clone()),
            (None, Some(rc)) => GroupSelector::Tag {
                key: RESOURCE_CLASS_TAG,
                value: rc.clone(),
            },
            (None, None) => GroupSelector::Tag {
                key: POOL_TAG,
                value: pool.to_owned(),
            },
        })
    }
}

impl Template for PoolTemplate {
    /// Checks the template of `pool` without touching the network. Errors name the field
    /// (relative to this struct) and say what is wrong.
    fn validate_for(&self, pool: PoolContext<'_>) -> Problems {
        self.selector(pool.name).map(|_| ())
    }

    /// A short hash of the template (hex), for the pool's template hash. The launch template
    /// itself lives in AWS: a new launch template version is rolled out by the group's own
    /// instance refresh, not by runscale.
    fn hash(&self) -> String {
        // The group's size limits decide nothing about how an instance is started.
        let started = PoolTemplate {
            max_size: None,
            ..self.clone()
        };
        let json = serde_json::to_vec(&started).unwrap_or_default();
        let digest = Sha256::digest(&json);
        hex::encode(&digest[..8])
    }

    /// Whether runners cannot be attributed to instances (`runner_name: unknown`): the pool
    /// is then planned from counts alone.
    fn runners_unattributed(&self) -> bool {
        self.runner_name == RunnerName::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runscale_core::adapter_type::PoolContext;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c: Config = serde_json::from_str("{}").expect("empty config");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn bad_settings_name_their_field() {
        let c = Config {
            region: Some("US East".to_owned()),
            endpoint_url: Some("localhost:5000".to_owned()),
            ssm_prefix: "runscale/".to_owned(),
            claim_timeout: Duration::ZERO,
            poll_interval: Duration::from_secs(1),
            max_attempts: 0,
        };
        let fields: Vec<String> = c
            .validate()
            .expect_err("invalid")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "region",
                "endpoint_url",
                "ssm_prefix",
                "max_attempts",
                "claim_timeout",
                "poll_interval"
            ]
        );
        let unknown = serde_json::from_str::<Config>(r#"{"regio": "x"}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn the_default_runner_name_keeps_the_template_hash() {
        let before = PoolTemplate::group("g").hash();
        let text = serde_json::to_string(&PoolTemplate::group("g")).expect("json");
        assert!(!text.contains("runner_name"), "{text}");
        let by_id = PoolTemplate {
            runner_name: RunnerName::InstanceId,
            ..PoolTemplate::group("g")
        };
        assert_ne!(by_id.hash(), before, "a new naming replaces instances");
        let unknown = PoolTemplate {
            runner_name: RunnerName::Unknown,
            ..PoolTemplate::group("g")
        };
        assert!(unknown.runners_unattributed() && !by_id.runners_unattributed());
        assert_ne!(unknown.hash(), by_id.hash());
        let capped = PoolTemplate {
            max_size: Some(4),
            ..unknown.clone()
        };
        assert_eq!(capped.hash(), unknown.hash(), "size limits replace nothing");
        assert_eq!(capped.validate_for(PoolContext::single("p")), Ok(()));
        let huge = PoolTemplate {
            max_size: Some(u32::MAX),
            ..unknown
        };
        assert_eq!(
            huge.validate_for(PoolContext::single("p"))
                .expect_err("too big")[0]
                .0,
            "max_size"
        );
    }

    #[test]
    fn exactly_one_group_selector() {
        let t = PoolTemplate::group("g");
        assert_eq!(t.selector("p"), Ok(GroupSelector::Name("g".to_owned())));
        let rc = PoolTemplate {
            group: None,
            resource_class: Some("acme/large".to_owned()),
            pool_tag: false,
            runner_name: RunnerName::Runscale,
            max_size: None,
        };
        assert_eq!(
            rc.selector("p"),
            Ok(GroupSelector::Tag {
                key: "resource-class",
                value: "acme/large".to_owned()
            })
        );
        let tag = PoolTemplate {
            group: None,
            resource_class: None,
            pool_tag: true,
            runner_name: RunnerName::Runscale,
            max_size: None,
        };
        assert_eq!(
            tag.selector("linux"),
            Ok(GroupSelector::Tag {
                key: "runscale/pool",
                value: "linux".to_owned()
            })
        );
        let both = PoolTemplate {
            pool_tag: true,
            ..PoolTemplate::group("g")
        };
        let errs = both
            .validate_for(PoolContext::single("p"))
            .expect_err("two selectors");
        assert_eq!(errs[0].0, "group");
        let none = PoolTemplate {
            group: None,
            resource_class: None,
            pool_tag: false,
            runner_name: RunnerName::Runscale,
            max_size: None,
        };
        assert!(none.validate_for(PoolContext::single("p")).is_err());
        assert!(t.validate_for(PoolContext::single("bad/pool")).is_err());
        assert_ne!(t.hash(), PoolTemplate::group("h").hash());
        assert_eq!(t.hash().len(), 16);
    }
}
