//! The narrow interface to EC2 the backend uses (CreateFleet, RunInstances, DescribeInstances,
//! TerminateInstances, DescribeLaunchTemplates), with SDK types converted to plain structs at
//! this edge and every failure mapped through [`crate::aws_common::errors`] with the IAM action
//! it needs.

use std::collections::HashMap;

use aws_sdk_ec2::error::SdkError;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest, FleetType,
    InstanceMarketOptionsRequest, InstanceType, LaunchTemplateSpecification, MarketType,
    ResourceType, SpotAllocationStrategy, SpotOptionsRequest, Tag, TagSpecification,
    TargetCapacitySpecificationRequest,
};
use runscale_core::{Error, ErrorKind, Result, Timestamp};

use super::config::PoolTemplate;
use crate::aws_common::errors::{Failure, HasStatus, aws_error};
use crate::aws_common::ssm::retry;

/// IAM actions, as named in errors, `probe` and `deploy/aws/iam-policy.json`.
pub(crate) mod action {
    pub(crate) const CREATE_FLEET: &str = "ec2:CreateFleet";
    pub(crate) const RUN_INSTANCES: &str = "ec2:RunInstances";
    /// Tagging at launch (TagSpecifications) needs CreateTags on the new instance.
    pub(crate) const CREATE_TAGS: &str = "ec2:CreateTags";
    pub(crate) const DESCRIBE_INSTANCES: &str = "ec2:DescribeInstances";
    pub(crate) const TERMINATE: &str = "ec2:TerminateInstances";
    pub(crate) const DESCRIBE_TEMPLATES: &str = "ec2:DescribeLaunchTemplates";
    /// Launching with a template that names an instance profile passes its role.
    pub(crate) const PASS_ROLE: &str = "iam:PassRole";

    /// Every EC2 (and IAM) action of this backend.
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[
        CREATE_FLEET,
        RUN_INSTANCES,
        CREATE_TAGS,
        DESCRIBE_INSTANCES,
        TERMINATE,
        DESCRIBE_TEMPLATES,
        PASS_ROLE,
    ];
}

/// Tag naming the owner (the configured owner id).
pub(crate) const TAG_OWNER: &str = "runscale/owner";
/// Tag naming the pool.
pub(crate) const TAG_POOL: &str = "runscale/pool";
/// Tag naming the runner(s), comma-separated.
pub(crate) const TAG_RUNNER: &str = "runscale/runner-name";
/// Tag holding the template hash.
pub(crate) const TAG_HASH: &str = "runscale/template-hash";

/// An EC2 instance, as DescribeInstances reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ec2Instance {
    pub(crate) id: String,
    /// `pending`, `running`, `shutting-down`, `terminated`, `stopping`, `stopped`.
    pub(crate) state: String,
    pub(crate) launched_at: Option<Timestamp>,
    pub(crate) tags: HashMap<String, String>,
}

impl Ec2Instance {
    pub(crate) fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

fn instance_of(i: &aws_sdk_ec2::types::Instance) -> Option<Ec2Instance> {
    Some(Ec2Instance {
        id: i.instance_id()?.to_owned(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        launched_at: i
            .launch_time()
            .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                ))
            })
            .collect(),
    })
}

/// What one launch attempt on one market came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// An instance was launched.
    Launched(String),
    /// No override had capacity: `code: message` per override tried.
    NoCapacity(Vec<String>),
}

/// The result of a dry run: allowed, or the permission is missing.
#[derive(Clone, Debug)]
pub(crate) enum DryRun {
    Allowed,
    Denied,
    Failed(Error),
}

/// The EC2 client.
#[derive(Clone, Debug)]
pub(crate) struct Ec2 {
    client: aws_sdk_ec2::Client,
}

fn tag_spec(tags: &[(String, String)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .build()
}

/// The launch template of `t` for RunInstances.
fn template_spec(t: &PoolTemplate) -> LaunchTemplateSpecification {
    LaunchTemplateSpecification::builder()
        .set_launch_template_id(t.launch_template_id.clone())
        .set_launch_template_name(t.launch_template_name.clone())
        .version(&t.version)
        .build()
}

/// The launch template of `t` with `overrides`, for CreateFleet.
fn fleet_config(
    t: &PoolTemplate,
    overrides: Option<Vec<FleetLaunchTemplateOverridesRequest>>,
) -> FleetLaunchTemplateConfigRequest {
    FleetLaunchTemplateConfigRequest::builder()
        .launch_template_specification(
            FleetLaunchTemplateSpecificationRequest::builder()
                .set_launch_template_id(t.launch_template_id.clone())
                .set_launch_template_name(t.launch_template_name.clone())
                .version(&t.version)
                .build(),
        )
        .set_overrides(overrides)
        .build()
}

/// `code: message` of a failure, for the list of capacity errors.
fn code_and_message(f: &Failure) -> String {
    format!(
        "{}: {}",
        f.code.as_deref().unwrap_or("unknown"),
        f.message.as_deref().unwrap_or("")
    )
}

fn dry_run_of<O, E, R>(op: &'static str, act: &'static str, r: Result<O, SdkError<E, R>>) -> DryRun
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    match r {
        // An answer without the DryRunOperation error: the call was allowed (an emulator
        // may ignore DryRun on some calls).
        Ok(_) => DryRun::Allowed,
        Err(e) => {
            let f = Failure::of(&e);
            match f.code.as_deref() {
                Some("DryRunOperation") => DryRun::Allowed,
                // Permission is checked before existence: the probe ids never exist.
                Some(c) if c.starts_with("InvalidInstanceID.") => DryRun::Allowed,
                _ if f.is_access_denied() => DryRun::Denied,
                _ => DryRun::Failed(aws_error(op, act, "dry run", &f)),
            }
        }
    }
}

impl Ec2 {
    /// A CreateFleet call of type instant for one instance of `template` (with `overrides`)
    /// on spot or on-demand capacity, tagged at launch.
    fn fleet_call(
        &self,
        template: &PoolTemplate,
        overrides: Option<Vec<FleetLaunchTemplateOverridesRequest>>,
        spot: bool,
        tags: &[(String, String)],
    ) -> aws_sdk_ec2::operation::create_fleet::builders::CreateFleetFluentBuilder {
        let capacity = TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(1)
            .default_target_capacity_type(if spot {
                DefaultTargetCapacityType::Spot
            } else {
                DefaultTargetCapacityType::OnDemand
            })
            .build();
        self.client
            .create_fleet()
            .r#type(FleetType::Instant)
            .launch_template_configs(fleet_config(template, overrides))
            .target_capacity_specification(capacity)
            .spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            )
            .tag_specifications(tag_spec(tags))
    }

    /// A RunInstances call for one instance of `template`, tagged at launch.
    fn run_call(
        &self,
        template: &PoolTemplate,
        tags: &[(String, String)],
    ) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
        self.client
            .run_instances()
            .launch_template(template_spec(template))
            .min_count(1)
            .max_count(1)
            .tag_specifications(tag_spec(tags))
    }

    /// A client from a loaded SDK configuration, with `max_attempts` per call.
    pub(crate) fn new(sdk: &aws_config::SdkConfig, max_attempts: u32) -> Self {
        let conf = aws_sdk_ec2::config::Builder::from(sdk)
            .retry_config(retry(max_attempts))
            .build();
        Self {
            client: aws_sdk_ec2::Client::from_conf(conf),
        }
    }

    /// Every instance matching all `filters` (name, values), all pages.
    pub(crate) async fn describe_instances(
        &self,
        op: &'static str,
        what: &str,
        filters: &[(&str, Vec<String>)],
    ) -> Result<Vec<Ec2Instance>> {
        let filters: Vec<aws_sdk_ec2::types::Filter> = filters
            .iter()
            .map(|(name, values)| {
                aws_sdk_ec2::types::Filter::builder()
                    .name(*name)
                    .set_values(Some(values.clone()))
                    .build()
            })
            .collect();
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let resp = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error(op, action::DESCRIBE_INSTANCES, what, &Failure::of(&e)))?;
            out.extend(
                resp.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(instance_of),
            );
            token = resp
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// One instance by id; `None` if EC2 does not know it (or the id is not an instance id).
    pub(crate) async fn describe_instance(
        &self,
        op: &'static str,
        id: &str,
    ) -> Result<Option<Ec2Instance>> {
        match self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(resp) => Ok(resp
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(instance_of)
                .find(|i| i.id == id)),
            Err(e) => {
                let f = Failure::of(&e);
                if is_unknown_instance(&f) {
                    Ok(None)
                } else {
                    Err(aws_error(
                        op,
                        action::DESCRIBE_INSTANCES,
                        format!("describing instance {id}"),
                        &f,
                    ))
                }
            }
        }
    }

    /// Launches one instance with CreateFleet (type instant) over every override, on spot or
    /// on-demand capacity. Per-override capacity errors are [`Attempt::NoCapacity`]; any
    /// other per-override error fails the launch with its code.
    pub(crate) async fn create_fleet(
        &self,
        op: &'static str,
        template: &PoolTemplate,
        spot: bool,
        tags: &[(String, String)],
        token: &str,
    ) -> Result<Attempt> {
        let overrides: Vec<FleetLaunchTemplateOverridesRequest> = template
            .overrides()
            .into_iter()
            .map(|(t, s)| {
                FleetLaunchTemplateOverridesRequest::builder()
                    .set_instance_type(t.map(|t| InstanceType::from(t.as_str())))
                    .set_subnet_id(s)
                    .build()
            })
            .collect();
        let market = if spot { "spot" } else { "on-demand" };
        let what = format!("launching a {market} instance from {}", template.describe());
        let resp = self
            .fleet_call(template, Some(overrides), spot, tags)
            .client_token(token)
            .send()
            .await
            .map_err(|e| aws_error(op, action::CREATE_FLEET, &what, &Failure::of(&e)))?;
        if let Some(id) = resp
            .instances()
            .iter()
            .flat_map(|i| i.instance_ids())
            .next()
        {
            return Ok(Attempt::Launched(id.clone()));
        }
        let mut capacity_errors = Vec::new();
        for e in resp.errors() {
            let f = Failure {
                code: e.error_code().map(str::to_owned),
                message: e.error_message().map(str::to_owned),
                status: None,
                transport: None,
            };
            if f.is_capacity() {
                capacity_errors.push(code_and_message(&f));
            } else {
                return Err(aws_error(op, action::CREATE_FLEET, &what, &f));
            }
        }
        if capacity_errors.is_empty() {
            return Err(Error::new(
                op,
                ErrorKind::Protocol,
                format!("{what}: CreateFleet answered neither an instance nor an error"),
            ));
        }
        Ok(Attempt::NoCapacity(capacity_errors))
    }

    /// Launches one instance with RunInstances, trying the overrides in order while they
    /// answer with capacity errors.
    pub(crate) async fn run_instances(
        &self,
        op: &'static str,
        template: &PoolTemplate,
        spot: bool,
        tags: &[(String, String)],
        token: &str,
    ) -> Result<Attempt> {
        let market = if spot { "spot" } else { "on-demand" };
        let mut capacity_errors = Vec::new();
        for (i, (instance_type, subnet)) in template.overrides().into_iter().enumerate() {
            let what = format!(
                "launching a {market} {} instance{} from {}",
                instance_type.as_deref().unwrap_or("(template's type)"),
                subnet
                    .as_deref()
                    .map(|s| format!(" in {s}"))
                    .unwrap_or_default(),
                template.describe()
            );
            let mut call = self
                .run_call(template, tags)
                .set_instance_type(instance_type.map(|t| InstanceType::from(t.as_str())))
                .set_subnet_id(subnet)
                .client_token(format!("{token}-{i}"));
            if spot {
                call = call.instance_market_options(
                    InstanceMarketOptionsRequest::builder()
                        .market_type(MarketType::Spot)
                        .build(),
                );
            }
            match call.send().await {
                Ok(resp) => {
                    return match resp.instances().iter().find_map(|i| i.instance_id()) {
                        Some(id) => Ok(Attempt::Launched(id.to_owned())),
                        None => Err(Error::new(
                            op,
                            ErrorKind::Protocol,
                            format!("{what}: RunInstances answered no instance"),
                        )),
                    };
                }
                Err(e) => {
                    let f = Failure::of(&e);
                    if !f.is_capacity() {
                        return Err(aws_error(op, action::RUN_INSTANCES, &what, &f));
                    }
                    capacity_errors.push(code_and_message(&f));
                }
            }
        }
        Ok(Attempt::NoCapacity(capacity_errors))
    }

    /// Terminates an instance; `Ok` if EC2 does not know it.
    pub(crate) async fn terminate(&self, op: &'static str, id: &str) -> Result<()> {
        match self
            .client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = Failure::of(&e);
                if is_unknown_instance(&f) {
                    Ok(())
                } else {
                    Err(aws_error(
                        op,
                        action::TERMINATE,
                        format!("terminating instance {id}"),
                        &f,
                    ))
                }
            }
        }
    }

    /// Checks that the pool's launch template exists; a clear configuration error if not.
    pub(crate) async fn check_template(&self, op: &'static str, t: &PoolTemplate) -> Result<()> {
        let what = format!("looking up {}", t.describe());
        let resp = self
            .client
            .describe_launch_templates()
            .set_launch_template_ids(t.launch_template_id.clone().map(|i| vec![i]))
            .set_launch_template_names(t.launch_template_name.clone().map(|n| vec![n]))
            .send()
            .await;
        match resp {
            Ok(r) if !r.launch_templates().is_empty() => Ok(()),
            Ok(_) => Err(Error::new(
                op,
                ErrorKind::Misconfigured,
                format!("{} does not exist", t.describe()),
            )),
            Err(e) => {
                let f = Failure::of(&e);
                let missing = f
                    .code
                    .as_deref()
                    .is_some_and(|c| c.starts_with("InvalidLaunchTemplate"));
                if missing {
                    Err(Error::new(
                        op,
                        ErrorKind::Misconfigured,
                        format!(
                            "{} does not exist ({})",
                            t.describe(),
                            f.code.as_deref().unwrap_or_default()
                        ),
                    ))
                } else {
                    Err(aws_error(op, action::DESCRIBE_TEMPLATES, what, &f))
                }
            }
        }
    }

    /// Dry runs of the calls the backend makes, for `probe`: (action, verdict).
    pub(crate) async fn dry_runs(
        &self,
        op: &'static str,
        template: &PoolTemplate,
        fleet: bool,
        probe_instance: &str,
        tags: &[(String, String)],
    ) -> Vec<(&'static str, DryRun)> {
        let mut out = Vec::new();
        let r = self.client.describe_instances().dry_run(true).send().await;
        out.push((
            action::DESCRIBE_INSTANCES,
            dry_run_of(op, action::DESCRIBE_INSTANCES, r),
        ));
        let r = self
            .client
            .describe_launch_templates()
            .dry_run(true)
            .send()
            .await;
        out.push((
            action::DESCRIBE_TEMPLATES,
            dry_run_of(op, action::DESCRIBE_TEMPLATES, r),
        ));
        let r = self
            .client
            .terminate_instances()
            .instance_ids(probe_instance)
            .dry_run(true)
            .send()
            .await;
        out.push((action::TERMINATE, dry_run_of(op, action::TERMINATE, r)));
        if fleet {
            let r = self
                .fleet_call(template, None, false, tags)
                .dry_run(true)
                .send()
                .await;
            out.push((
                action::CREATE_FLEET,
                dry_run_of(op, action::CREATE_FLEET, r),
            ));
        }
        // CreateFleet launches through RunInstances, so both need it.
        let r = self.run_call(template, tags).dry_run(true).send().await;
        out.push((
            action::RUN_INSTANCES,
            dry_run_of(op, action::RUN_INSTANCES, r),
        ));
        out
    }
}

/// EC2's answers for an instance id it does not know (or that is not an instance id at all).
fn is_unknown_instance(f: &Failure) -> bool {
    matches!(
        f.code.as_deref(),
        Some("InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed")
    )
}
