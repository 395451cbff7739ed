//! The narrow interface to AWS the backend uses: the Auto Scaling and SSM calls, with SDK
//! types converted to plain structs at this edge and every failure mapped through
//! [`super::errors`] with the IAM action it needs.

use aws_sdk_autoscaling::types::Filter;
use aws_sdk_ssm::types::ParameterType;
use runscale_core::{Error, Result};

use super::errors::{Failure, aws_error, secret_error};

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
    pub(crate) const PUT_PARAMETER: &str = "ssm:PutParameter";
    pub(crate) const GET_PARAMETER: &str = "ssm:GetParameter";
    pub(crate) const DELETE_PARAMETER: &str = "ssm:DeleteParameter";
    pub(crate) const PARAMETERS_BY_PATH: &str = "ssm:GetParametersByPath";
    /// SecureString parameters are encrypted with a KMS key (`alias/aws/ssm` by default).
    pub(crate) const KMS_ENCRYPT: &str = "kms:Encrypt";
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
    ssm: aws_sdk_ssm::Client,
}

impl Aws {
    /// Clients from a loaded SDK configuration, with `max_attempts` per call.
    pub(crate) fn new(sdk: &aws_config::SdkConfig, max_attempts: u32) -> Self {
        let retry = aws_sdk_autoscaling::config::retry::RetryConfig::standard()
            .with_max_attempts(max_attempts);
        let asg = aws_sdk_autoscaling::config::Builder::from(sdk)
            .retry_config(retry.clone())
            .build();
        let ssm = aws_sdk_ssm::config::Builder::from(sdk)
            .retry_config(retry)
            .build();
        Self {
            asg: aws_sdk_autoscaling::Client::from_conf(asg),
            ssm: aws_sdk_ssm::Client::from_conf(ssm),
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

    /// Terminates an instance of a group, decrementing its desired capacity.
    pub(crate) async fn terminate(&self, op: &'static str, group: &str, id: &str) -> Result<()> {
        self.asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(true)
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

    /// Writes a parameter (overwriting). `secure` makes it a SecureString, whose value never
    /// appears in an error.
    pub(crate) async fn put_parameter(
        &self,
        op: &'static str,
        name: &str,
        value: String,
        secure: bool,
    ) -> Result<()> {
        self.ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(if secure {
                ParameterType::SecureString
            } else {
                ParameterType::String
            })
            .overwrite(true)
            .send()
            .await
            .map_err(|e| {
                let f = Failure::of(&e);
                let what = format!("writing parameter {name}");
                match (secure, f.is_access_denied()) {
                    // SecureString needs KMS too; say both.
                    (true, true) => Error::new(
                        op,
                        f.kind(),
                        format!(
                            "{what}: access denied: the IAM policy must allow {} and {} (see deploy/aws/iam-policy.json)",
                            action::PUT_PARAMETER,
                            action::KMS_ENCRYPT
                        ),
                    ),
                    (true, false) => secret_error(op, action::PUT_PARAMETER, what, &f),
                    (false, _) => aws_error(op, action::PUT_PARAMETER, what, &f),
                }
            })?;
        Ok(())
    }

    /// Reads a String parameter; `None` if it does not exist.
    pub(crate) async fn get_parameter(
        &self,
        op: &'static str,
        name: &str,
    ) -> Result<Option<String>> {
        match self.ssm.get_parameter().name(name).send().await {
            Ok(resp) => Ok(resp.parameter().and_then(|p| p.value()).map(str::to_owned)),
            Err(e) => {
                let f = Failure::of(&e);
                if f.is_not_found() {
                    Ok(None)
                } else {
                    Err(aws_error(
                        op,
                        action::GET_PARAMETER,
                        format!("reading parameter {name}"),
                        &f,
                    ))
                }
            }
        }
    }

    /// Deletes a parameter; `Ok` if it did not exist.
    pub(crate) async fn delete_parameter(&self, op: &'static str, name: &str) -> Result<()> {
        match self.ssm.delete_parameter().name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = Failure::of(&e);
                if f.is_not_found() {
                    Ok(())
                } else {
                    Err(aws_error(
                        op,
                        action::DELETE_PARAMETER,
                        format!("deleting parameter {name}"),
                        &f,
                    ))
                }
            }
        }
    }

    /// Names of every parameter under `path` (recursively, all pages), with the values of
    /// String parameters (SecureString values are not decrypted and come back `None`).
    pub(crate) async fn parameters_under(
        &self,
        op: &'static str,
        path: &str,
    ) -> Result<Vec<(String, Option<String>)>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let resp = self
                .ssm
                .get_parameters_by_path()
                .path(path)
                .recursive(true)
                .with_decryption(false)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        op,
                        action::PARAMETERS_BY_PATH,
                        format!("listing parameters under {path}"),
                        &Failure::of(&e),
                    )
                })?;
            for p in resp.parameters() {
                let Some(name) = p.name() else { continue };
                let value = match p.r#type() {
                    Some(ParameterType::String) => p.value().map(str::to_owned),
                    _ => None,
                };
                out.push((name.to_owned(), value));
            }
            token = resp.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::action;

    /// `deploy/aws/iam-policy.json` allows exactly the actions the backend calls.
    #[test]
    fn iam_policy_lists_exactly_the_calls_made() {
        let policy: serde_json::Value =
            serde_json::from_str(include_str!("../../../../deploy/aws/iam-policy.json"))
                .expect("policy is JSON");
        let mut allowed: Vec<String> = policy["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        allowed.sort_unstable();
        let mut used = vec![
            action::DESCRIBE_GROUPS,
            action::DESCRIBE_INSTANCES,
            action::SET_DESIRED,
            action::SET_PROTECTION,
            action::TERMINATE,
            action::PUT_PARAMETER,
            action::GET_PARAMETER,
            action::DELETE_PARAMETER,
            action::PARAMETERS_BY_PATH,
            action::KMS_ENCRYPT,
        ];
        used.sort_unstable();
        assert_eq!(allowed, used);
    }
}
