//! Configuration of the aws-ec2 backend: the backend-level [`Config`] (region, endpoint, owner
//! id, launch API, SSM prefix) and the per-pool [`PoolTemplate`] (launch template, instance
//! types, subnets, market), their pure validation, and the template hash.
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

/// Most instance types or subnets per pool: CreateFleet gets one override per (type, subnet)
/// pair and RunInstances tries them one by one, so the product is bounded too.
const MAX_LIST: usize = 20;
/// Most (instance type, subnet) overrides per pool.
pub(crate) const MAX_OVERRIDES: usize = 50;

/// Which EC2 call launches an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LaunchApi {
    /// `CreateFleet` of type `instant`: one call tries every (instance type, subnet) override
    /// and reports per-override errors.
    #[default]
    CreateFleet,
    /// `RunInstances`, one (instance type, subnet) override after the other until one has
    /// capacity.
    RunInstances,
}

/// Backend-level settings of the aws-ec2 backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who owns the instances: the value of the `runscale/owner` tag put on every instance
    /// and required on every instance listed or terminated. Unique per runscale deployment and
    /// backend sharing an account and region, as instances of pools this backend does not know
    /// are collected as orphans.
    pub owner: String,
    /// AWS region of the instances and parameters. Default: the SDK's (`AWS_REGION`, the
    /// profile, the instance metadata).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL for both EC2 and SSM (a VPC endpoint, or an emulator). Default: the
    /// region's public endpoints.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The launch call: `create-fleet` (type instant, default) or `run-instances`.
    #[serde(default)]
    pub api: LaunchApi,
    /// Root of runscale's SSM parameters: credentials are written to
    /// `{ssm_prefix}/{pool}/{instance-id}`.
    #[serde(default = "default_ssm_prefix")]
    pub ssm_prefix: String,
    /// An instance tagged with this backend's owner but with a pool this backend does not
    /// serve (a pool removed from the configuration) is terminated once it is this old, a
    /// duration such as "1h". Its runner cannot be checked for a job (the pool's CI side is
    /// gone), so keep this above the longest job. `0s` collects them at once.
    #[serde(default = "default_orphan_grace", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub orphan_grace: Duration,
    /// Attempts per AWS call (the SDK's standard retry mode with exponential backoff and
    /// jitter; throttling errors such as RequestLimitExceeded are retried). At least 1.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// The default [`Config::orphan_grace`]: 1 hour.
fn default_orphan_grace() -> Duration {
    Duration::from_secs(3600)
}

impl Config {
    /// Settings with defaults for everything but the owner id.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            region: None,
            endpoint_url: None,
            api: LaunchApi::default(),
            ssm_prefix: default_ssm_prefix(),
            orphan_grace: default_orphan_grace(),
            max_attempts: default_max_attempts(),
        }
    }
}

impl Validate for Config {
    /// Checks the settings without touching the network. Errors name the field (relative to
    /// this struct) and say what is wrong.
    fn validate(&self) -> Problems {
        let mut errors = Vec::new();
        errors.extend(runscale_core::adapter_type::at_most_a_day([(
            "orphan_grace",
            Some(self.orphan_grace),
        )]));
        if !tag_value_ok(&self.owner) {
            errors.push((
                "owner".to_owned(),
                "must be 1 to 128 letters, digits, spaces or _.:/=+-@".to_owned(),
            ));
        }
        errors.extend(common_problems(
            self.region.as_deref(),
            self.endpoint_url.as_deref(),
            &self.ssm_prefix,
            self.max_attempts,
        ));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Whether `v` is a valid EC2 tag value that is not empty.
fn tag_value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c))
}

/// Which capacity an instance is launched on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    /// Spot; when no override has spot capacity (InsufficientInstanceCapacity,
    /// MaxSpotInstanceCountExceeded, UnfulfillableCapacity, SpotMaxPriceTooLow, ...),
    /// on-demand. The fallback is logged and counted
    /// (`runscale_backend_events_total{event="spot_fallback_on_demand"}`).
    #[default]
    SpotFirst,
    /// Spot only: no capacity is an `insufficient_capacity` error.
    Spot,
    /// On-demand only.
    OnDemand,
}

/// How one pool's instances are launched. The launch template holds the image, the security
/// groups, the instance profile and the user data that starts the runner
/// (`deploy/aws/runner-user-data.sh`); set its instance-initiated shutdown behaviour to
/// `terminate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolTemplate {
    /// The launch template's id (`lt-...`). Exactly one of this and `launch_template_name`.
    #[serde(default)]
    pub launch_template_id: Option<String>,
    /// The launch template's name.
    #[serde(default)]
    pub launch_template_name: Option<String>,
    /// The template version: a number, `$Default` (default) or `$Latest`. With `$Default` or
    /// `$Latest`, a new template version does not change the pool's template hash, so running
    /// instances are not replaced; pin a number to roll out versions.
    #[serde(default = "default_version")]
    pub version: String,
    /// Instance types to launch, in order of preference (overrides of the template's). Empty:
    /// the template's.
    #[serde(default)]
    pub instance_types: Vec<String>,
    /// Subnets to launch into (`subnet-...`; overrides of the template's). Empty: the
    /// template's.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// `spot-first` (default), `spot` or `on-demand`.
    #[serde(default)]
    pub market: Market,
}

/// The default [`PoolTemplate::version`]: `$Default`.
fn default_version() -> String {
    "$Default".to_owned()
}

impl PoolTemplate {
    /// A template naming a launch template, with defaults for the rest.
    pub fn named(launch_template_name: impl Into<String>) -> Self {
        Self {
            launch_template_id: None,
            launch_template_name: Some(launch_template_name.into()),
            version: default_version(),
            instance_types: Vec::new(),
            subnets: Vec::new(),
            market: Market::default(),
        }
    }

    /// The (instance type, subnet) overrides, in order of preference (types first).
    pub(crate) fn overrides(&self) -> Vec<(Option<String>, Option<String>)> {
        let types: Vec<Option<String>> = if self.instance_types.is_empty() {
            vec![None]
        } else {
            self.instance_types.iter().cloned().map(Some).collect()
        };
        let subnets: Vec<Option<String>> = if self.subnets.is_empty() {
            vec![None]
        } else {
            self.subnets.iter().cloned().map(Some).collect()
        };
        types
            .iter()
            .flat_map(|t| subnets.iter().map(move |s| (t.clone(), s.clone())))
            .collect()
    }

    /// How the launch template is named in messages.
    pub(crate) fn describe(&self) -> String {
        match (&self.launch_template_id, &self.launch_template_name) {
            (Some(id), _) => format!("launch template {id} version {}", self.version),
            (None, Some(n)) => format!("launch template {n} version {}", self.version),
            (None, None) => "no launch template".to_owned(),
        }
    }
}

impl Template for PoolTemplate {
    /// Checks the template of `pool` without touching the network. Errors name the field
    /// (relative to this struct) and say what is wrong.
    fn validate_for(&self, pool: PoolContext<'_>) -> Problems {
        let mut errors: Vec<(String, String)> = pool_name_problem(pool.name).into_iter().collect();
        match (&self.launch_template_id, &self.launch_template_name) {
            (Some(id), None) => {
                if !(id.starts_with("lt-") && id.len() <= 64 && ascii_word(&id[3..])) {
                    errors.push((
                        "launch_template_id".to_owned(),
                        format!("{id:?} is not a launch template id (lt-...)"),
                    ));
                }
            }
            (None, Some(name)) => {
                let ok = (3..=128).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"()./_-".contains(&b));
                if !ok {
                    errors.push((
                        "launch_template_name".to_owned(),
                        "must be 3 to 128 letters, digits or ()./_-".to_owned(),
                    ));
                }
            }
            _ => errors.push((
                "launch_template_id".to_owned(),
                "set exactly one of launch_template_id and launch_template_name".to_owned(),
            )),
        }
        let v = self.version.as_str();
        if !(v == "$Default"
            || v == "$Latest"
            || (!v.is_empty() && v.len() <= 18 && v.bytes().all(|b| b.is_ascii_digit())))
        {
            errors.push((
                "version".to_owned(),
                "must be a version number, $Default or $Latest".to_owned(),
            ));
        }
        for (field, list, check) in [
            (
                "instance_types",
                &self.instance_types,
                (|t: &str| {
                    t.contains('.')
                        && t.len() <= 64
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                }) as fn(&str) -> bool,
            ),
            ("subnets", &self.subnets, |s: &str| {
                s.starts_with("subnet-") && s.len() <= 64 && ascii_word(&s[7..])
            }),
        ] {
            if list.len() > MAX_LIST {
                errors.push((field.to_owned(), format!("at most {MAX_LIST} entries")));
            }
            for (i, item) in list.iter().enumerate() {
                if !check(item) {
                    errors.push((format!("{field}[{i}]"), format!("{item:?} is not valid")));
                }
            }
            let mut sorted: Vec<&String> = list.iter().collect();
            sorted.sort();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                errors.push((field.to_owned(), "lists an entry twice".to_owned()));
            }
        }
        if self.instance_types.len().max(1) * self.subnets.len().max(1) > MAX_OVERRIDES {
            errors.push((
                "subnets".to_owned(),
                format!("instance_types x subnets must be at most {MAX_OVERRIDES} combinations"),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// A short hash of the template (hex), for the pool's template hash.
    fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        hex::encode(&digest[..8])
    }
}

fn ascii_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runscale_core::adapter_type::PoolContext;

    #[test]
    fn defaults_are_valid_and_owner_is_required() {
        assert_eq!(Config::new("ci-prod").validate(), Ok(()));
        let c: Config = serde_json::from_str(r#"{"owner": "ci-prod"}"#).expect("config");
        assert_eq!(c, Config::new("ci-prod"));
        assert!(
            serde_json::from_str::<Config>("{}").is_err(),
            "owner required"
        );
        let c: Config =
            serde_json::from_str(r#"{"owner": "x", "api": "run-instances", "orphan_grace": "2h"}"#)
                .expect("config");
        assert_eq!(c.api, LaunchApi::RunInstances);
        assert_eq!(c.orphan_grace, Duration::from_secs(7200));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let c = Config {
            owner: String::new(),
            region: Some("US East".to_owned()),
            max_attempts: 0,
            ..Config::new("x")
        };
        let fields: Vec<String> = c
            .validate()
            .expect_err("invalid")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["owner", "region", "max_attempts"]);
    }

    #[test]
    fn templates_are_checked_and_overrides_are_types_times_subnets() {
        let t = PoolTemplate {
            instance_types: vec!["m5.large".to_owned(), "m6i.large".to_owned()],
            subnets: vec!["subnet-0a1".to_owned(), "subnet-0b2".to_owned()],
            ..PoolTemplate::named("runners")
        };
        assert_eq!(t.validate_for(PoolContext::single("linux")), Ok(()));
        let o = t.overrides();
        assert_eq!(o.len(), 4);
        assert_eq!(
            o[1],
            (Some("m5.large".to_owned()), Some("subnet-0b2".to_owned()))
        );
        assert_eq!(PoolTemplate::named("runners").overrides(), [(None, None)]);

        let both = PoolTemplate {
            launch_template_id: Some("lt-0abc".to_owned()),
            ..PoolTemplate::named("runners")
        };
        assert_eq!(
            both.validate_for(PoolContext::single("p"))
                .expect_err("two")[0]
                .0,
            "launch_template_id"
        );
        let bad = PoolTemplate {
            version: "latest".to_owned(),
            instance_types: vec!["large".to_owned(), "large".to_owned()],
            subnets: vec!["sn-1".to_owned()],
            ..PoolTemplate::named("runners")
        };
        let fields: Vec<String> = bad
            .validate_for(PoolContext::single("bad/pool"))
            .expect_err("invalid")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "pool",
                "version",
                "instance_types[0]",
                "instance_types[1]",
                "instance_types",
                "subnets[0]"
            ]
        );
        assert_ne!(t.hash(), PoolTemplate::named("runners").hash());
        let unknown = serde_json::from_str::<PoolTemplate>(r#"{"launch_template": "x"}"#);
        assert!(unknown.is_err());
    }
}
