//! The narrow interface to AWS the backend uses: the Auto Scaling and SSM calls, with SDK
//! types converted to plain structs at this edge and every failure mapped through
//! [`super::errors`] with the IAM action it needs.

use aws_sdk_autoscaling::types::Filter;
use runscale_core::Result;

use crate::aws_common::errors::{Failure, aws_error};
use crate::aws_common::ssm::{Ssm, retry};

/// Most group names per DescribeAutoScalingGroups request.
const NAMES_PER_DESCRIBE: usize = 50;
/// Most instance ids per SetInstanceProtection request.
const IDS_PER_PROTECTION: usize = 50;

/// IAM actions, as named in errors, `probe` and `deploy/aws/iam-policy.json`.
pub(crate) mod action {
    pub(crate) const DESCRIBE_GROUPS: &str = "autoscaling:DescribeAutoScalingGroups";
    pub(crate) const DESCRIBE_INSTANCES: &str = "autoscaling:DescribeAutoScalingInstances";
    pub(crate) const SET_DESIRED: &str = "autoscaling:SetDesiredCapacity";
    pub(crate) const SET_PROTECTION: &str = "autoscaling:SetInstanceProtection";
    pub(crate) const TERMINATE: &str = "autoscaling:TerminateInstanceInAutoScalingGroup";
    pub(crate) const UPDATE_GROUP: &str = "autoscaling:UpdateAutoScalingGroup";
    pub(crate) use crate::aws_common::ssm::action::{
        DELETE_PARAMETER, GET_PARAMETER, KMS_ENCRYPT, PARAMETERS_BY_PATH, PUT_PARAMETER,
    };

    /// The Auto Scaling actions (the SSM ones are listed with the SSM client).
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[
        DESCRIBE_GROUPS,
        DESCRIBE_INSTANCES,
        SET_DESIRED,
        SET_PROTECTION,
        TERMINATE,
        UPDATE_GROUP,
    ];
}

/// One instance of a group, as the group reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupInstance {
    pub(crate) id: String,
    /// `Pending`, `InService`, `Terminating`, ... (AWS's LifecycleState).
    pub(crate) lifecycle: String,
    pub(crate) protected: bool,
}

/// An Auto Scaling group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) min: i32,
    pub(crate) max: i32,
    pub(crate) desired: i32,
    pub(crate) instances: Vec<GroupInstance>,
}

fn group_of(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> Group {
    Group {
        name: g.auto_scaling_group_name().unwrap_or_default().to_owned(),
        min: g.min_size().unwrap_or(0),
        max: g.max_size().unwrap_or(0),
        desired: g.desired_capacity().unwrap_or(0),
        instances: g
            .instances()
            .iter()
            .filter_map(|i| {
                Some(GroupInstance {
                    id: i.instance_id()?.to_owned(),
                    lifecycle: i
                        .lifecycle_state()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                    protected: i.protected_from_scale_in().unwrap_or(false),
                })
            })
            .collect(),
    }
}

/// The Auto Scaling and SSM clients.
#[derive(Clone, Debug)]
pub(crate) struct Aws {
    asg: aws_sdk_autoscaling::Client,
    /// Parameters: bindings and credentials.
    pub(crate) ssm: Ssm,
}

impl Aws {
    /// Clients from a loaded SDK configuration, with `max_attempts` per call.
    pub(crate) fn new(sdk: &aws_config::SdkConfig, max_attempts: u32) -> Self {
        let asg = aws_sdk_autoscaling::config::Builder::from(sdk)
            .retry_config(retry(max_attempts))
            .build();
        Self {
            asg: aws_sdk_autoscaling::Client::from_conf(asg),
            ssm: Ssm::new(sdk, max_attempts),
        }
    }

    /// The named groups that exist (unknown names are simply absent).
    pub(crate) async fn describe_groups(
        &self,
        op: &'static str,
        names: &[String],
    ) -> Result<Vec<Group>> {
        let mut out = Vec::new();
        for chunk in names.chunks(NAMES_PER_DESCRIBE) {
            let what = format!("describing groups {}", chunk.join(", "));
            out.extend(self.groups(op, what, Some(chunk.to_vec()), None).await?);
        }
        Ok(out)
    }

    /// Every group tagged `key=value` (all pages).
    pub(crate) async fn groups_by_tag(
        &self,
        op: &'static str,
        key: &str,
        value: &str,
    ) -> Result<Vec<Group>> {
        let filter = Filter::builder()
            .name(format!("tag:{key}"))
            .values(value)
            .build();
        let what = format!("finding groups tagged {key}={value}");
        self.groups(op, what, None, Some(filter)).await
    }

    /// Every group carrying the tag `key`, as (group name, tag value), all pages.
    pub(crate) async fn groups_with_tag_key(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<Vec<(String, String)>> {
        let filter = Filter::builder().name("tag-key").values(key).build();
        let what = format!("finding groups tagged {key}");
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let resp = self
                .asg
                .describe_auto_scaling_groups()
                .filters(filter.clone())
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error(op, action::DESCRIBE_GROUPS, &what, &Failure::of(&e)))?;
            for g in resp.auto_scaling_groups() {
                let value = g
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(key))
                    .and_then(|t| t.value());
                if let (Some(name), Some(value)) = (g.auto_scaling_group_name(), value) {
                    out.push((name.to_owned(), value.to_owned()));
                }
            }
            token = resp.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Every page of one DescribeAutoScalingGroups query.
    async fn groups(
        &self,
        op: &'static str,
        what: String,
        names: Option<Vec<String>>,
        filter: Option<Filter>,
    ) -> Result<Vec<Group>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let resp = self
                .asg
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(names.clone())
                .set_filters(filter.clone().map(|f| vec![f]))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error(op, action::DESCRIBE_GROUPS, &what, &Failure::of(&e)))?;
            out.extend(resp.auto_scaling_groups().iter().map(group_of));
            token = resp.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// The group and lifecycle state of one instance, if it is in a group.
    pub(crate) async fn instance_group(
        &self,
        op: &'static str,
        id: &str,
    ) -> Result<Option<(String, String)>> {
        let resp = self
            .asg
            .describe_auto_scaling_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    op,
                    action::DESCRIBE_INSTANCES,
                    format!("describing instance {id}"),
                    &Failure::of(&e),
                )
            })?;
        Ok(resp.auto_scaling_instances().first().map(|i| {
            (
                i.auto_scaling_group_name().unwrap_or_default().to_owned(),
                i.lifecycle_state().unwrap_or_default().to_owned(),
            )
        }))
    }

    /// Sets a group's desired capacity (cooldowns ignored: runscale has its own limits).
    pub(crate) async fn set_desired(&self, op: &'static str, group: &str, n: i32) -> Result<()> {
        self.asg
            .set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(n)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    op,
                    action::SET_DESIRED,
                    format!("setting the desired capacity of group {group} to {n}"),
                    &Failure::of(&e),
                )
            })?;
        Ok(())
    }

    /// Sets a group's `MinSize` and `MaxSize` (its desired capacity is not passed, so AWS
    /// changes it only if it falls outside the new limits: callers keep `max` at or above it).
    pub(crate) async fn update_limits(
        &self,
        op: &'static str,
        group: &str,
        min: i32,
        max: i32,
    ) -> Result<()> {
        self.asg
            .update_auto_scaling_group()
            .auto_scaling_group_name(group)
            .min_size(min)
            .max_size(max)
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    op,
                    action::UPDATE_GROUP,
                    format!("setting MinSize {min} and MaxSize {max} on group {group}"),
                    &Failure::of(&e),
                )
            })?;
        Ok(())
    }

    /// Sets or clears scale-in protection of instances of a group.
    pub(crate) async fn set_protection(
        &self,
        op: &'static str,
        group: &str,
        ids: &[String],
        protected: bool,
    ) -> Result<()> {
        for chunk in ids.chunks(IDS_PER_PROTECTION) {
            self.asg
                .set_instance_protection()
                .auto_scaling_group_name(group)
                .set_instance_ids(Some(chunk.to_vec()))
                .protected_from_scale_in(protected)
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        op,
                        action::SET_PROTECTION,
                        format!(
                            "{} scale-in protection of {} in group {group}",
                            if protected { "setting" } else { "removing" },
                            chunk.join(", ")
                        ),
                        &Failure::of(&e),
                    )
                })?;
        }
        Ok(())
    }

    /// Terminates an instance of a group, decrementing its desired capacity (or not, when
    /// the desired capacity is already below the group's size and AWS would not replace it).
    pub(crate) async fn terminate(
        &self,
        op: &'static str,
        group: &str,
        id: &str,
        decrement: bool,
    ) -> Result<()> {
        self.asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(decrement)
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    op,
                    action::TERMINATE,
                    format!("terminating instance {id} of group {group}"),
                    &Failure::of(&e),
                )
            })?;
        Ok(())
    }
}
