//! A `moto_server` child process on a free loopback port ([`MotoServer`]), and SDK clients
//! pointed at it with dummy credentials ([`MotoClient`]) to set groups up and inspect what is
//! left: groups and their members, and parameters under a path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::{AutoScalingGroup, LifecycleState};

use super::AwsError;

/// The environment variable naming the `moto_server` executable (`scripts/test.sh` sets it).
pub const MOTO_SERVER_ENV: &str = "RUNSCALE_MOTO_SERVER";

/// The access key id and secret key moto accepts (it checks no signature).
pub const DUMMY_KEY: &str = "testing";

/// How long [`MotoServer::start`] waits for the server to listen (it takes ~1.6 s).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The `moto_server` named by [`MOTO_SERVER_ENV`], if set.
pub fn moto_server_from_env() -> Option<PathBuf> {
    std::env::var_os(MOTO_SERVER_ENV).map(PathBuf::from)
}

/// A running `moto_server`, bound to `127.0.0.1` on a port it was free to take. Dropping it
/// kills the process (by its PID) and reaps it.
///
/// moto's state is global to the process: give each test binary (or each test) its own server,
/// or reset it with [`MotoServer::reset`] between serialised tests.
pub struct MotoServer {
    child: Child,
    url: String,
}

impl MotoServer {
    /// Starts `bin` on a free loopback port and waits until it accepts connections. moto has
    /// no port-0 mode, so a port is picked first; if another process takes it in between, the
    /// server exits and another port is tried (three times).
    pub async fn start(bin: &Path) -> Result<Self, AwsError> {
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let child = Command::new(bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| AwsError::Spawn {
                    bin: bin.display().to_string(),
                    source,
                })?;
            let mut server = Self {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            match server.wait_ready(port).await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(AwsError::NotReady {
            url: String::new(),
            waited: READY_WITHIN,
        }))
    }

    async fn wait_ready(&mut self, port: u16) -> Result<(), AwsError> {
        let start = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || start.elapsed() > READY_WITHIN {
                return Err(AwsError::NotReady {
                    url: self.url.clone(),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:{port}`: the endpoint URL of every service.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wipes every resource of every service and account (`POST /moto-api/reset`).
    pub async fn reset(&self) -> Result<(), AwsError> {
        let status = reqwest::Client::new()
            .post(format!("{}/moto-api/reset", self.url))
            .send()
            .await
            .map_err(|e| AwsError::call("moto-api/reset", e))?
            .status();
        if status.is_success() {
            Ok(())
        } else {
            Err(AwsError::call("moto-api/reset", format!("HTTP {status}")))
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // `Child::kill` signals exactly this process id.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, AwsError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(AwsError::Port)
}

/// One member of an Auto Scaling group, as DescribeAutoScalingGroups reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The EC2 instance id.
    pub instance_id: String,
    /// `InService`, `Terminating`, `Standby`, ... (moto has no `Pending` states).
    pub lifecycle_state: String,
    /// Protected from scale-in.
    pub protected: bool,
}

impl Member {
    /// `InService`: running and counted by the group.
    pub fn in_service(&self) -> bool {
        self.lifecycle_state == LifecycleState::InService.as_str()
    }
}

/// An Auto Scaling group's sizes and members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    /// `MinSize`.
    pub min: i32,
    /// `MaxSize`.
    pub max: i32,
    /// `DesiredCapacity`.
    pub desired: i32,
    /// Its instances, any lifecycle state.
    pub members: Vec<Member>,
}

impl GroupState {
    fn from_sdk(g: &AutoScalingGroup) -> Self {
        Self {
            min: g.min_size().unwrap_or(0),
            max: g.max_size().unwrap_or(0),
            desired: g.desired_capacity().unwrap_or(0),
            members: g
                .instances()
                .iter()
                .map(|i| Member {
                    instance_id: i.instance_id().unwrap_or_default().to_owned(),
                    lifecycle_state: i
                        .lifecycle_state()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                    protected: i.protected_from_scale_in().unwrap_or(false),
                })
                .collect(),
        }
    }

    /// The members that are `InService`.
    pub fn in_service(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.in_service())
    }
}

/// Auto Scaling and SSM clients for one endpoint (moto) and region, with the dummy
/// credentials [`DUMMY_KEY`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MotoClient {
    /// The Auto Scaling client.
    pub asg: aws_sdk_autoscaling::Client,
    /// The SSM client.
    pub ssm: aws_sdk_ssm::Client,
}

/// Every call gives up after this long (moto answers in milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

impl MotoClient {
    /// Clients for `endpoint_url` in `region`.
    pub fn new(endpoint_url: &str, region: &str) -> Self {
        let credentials = aws_sdk_ssm::config::Credentials::new(
            DUMMY_KEY,
            DUMMY_KEY,
            None,
            None,
            "runscale-emulator",
        );
        let region = aws_sdk_ssm::config::Region::new(region.to_owned());
        let timeouts = aws_sdk_ssm::config::timeout::TimeoutConfig::builder()
            .operation_timeout(CALL_TIMEOUT)
            .build();
        let asg = aws_sdk_autoscaling::Config::builder()
            .behavior_version(aws_sdk_autoscaling::config::BehaviorVersion::latest())
            .region(region.clone())
            .endpoint_url(endpoint_url)
            .credentials_provider(credentials.clone())
            .timeout_config(timeouts.clone())
            .build();
        let ssm = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(region)
            .endpoint_url(endpoint_url)
            .credentials_provider(credentials)
            .timeout_config(timeouts)
            .build();
        Self {
            asg: aws_sdk_autoscaling::Client::from_conf(asg),
            ssm: aws_sdk_ssm::Client::from_conf(ssm),
        }
    }

    /// Creates a launch configuration `{name}-lc` (an image and type moto accepts) and a group
    /// `name` in `us-east-1a`-style zone `{region}a` with `MinSize` 0, `DesiredCapacity` 0 and
    /// `MaxSize` `max`, as the aws-asg backend requires.
    pub async fn create_group(&self, name: &str, max: i32) -> Result<(), AwsError> {
        let lc = format!("{name}-lc");
        self.asg
            .create_launch_configuration()
            .launch_configuration_name(&lc)
            .image_id("ami-12c6146b")
            .instance_type("t3.micro")
            .send()
            .await
            .map_err(|e| AwsError::sdk("CreateLaunchConfiguration", e))?;
        let zone = format!(
            "{}a",
            self.asg
                .config()
                .region()
                .map(|r| r.as_ref())
                .unwrap_or("us-east-1")
        );
        self.asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_configuration_name(&lc)
            .min_size(0)
            .max_size(max)
            .desired_capacity(0)
            .availability_zones(zone)
            .send()
            .await
            .map_err(|e| AwsError::sdk("CreateAutoScalingGroup", e))?;
        Ok(())
    }

    /// Turns on the group's `NewInstancesProtectedFromScaleIn` ("Enable scale-in protection"
    /// in the console, as CircleCI's simple-Lambda example creates its group).
    pub async fn protect_new_instances(&self, name: &str) -> Result<(), AwsError> {
        self.asg
            .update_auto_scaling_group()
            .auto_scaling_group_name(name)
            .new_instances_protected_from_scale_in(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk("UpdateAutoScalingGroup", e))?;
        Ok(())
    }

    /// What AWS does to a member whose machine powered itself off (`shutdown -h` after its
    /// runner exits): the group terminates it without lowering its desired capacity, so a
    /// replacement is launched if the desired capacity is still above the group's size.
    pub async fn shut_down(&self, instance_id: &str) -> Result<(), AwsError> {
        self.asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(false)
            .send()
            .await
            .map_err(|e| AwsError::sdk("TerminateInstanceInAutoScalingGroup", e))?;
        Ok(())
    }

    /// Sets the group's desired capacity, as another tool (or an operator) would.
    pub async fn set_desired(&self, name: &str, desired: i32) -> Result<(), AwsError> {
        self.asg
            .set_desired_capacity()
            .auto_scaling_group_name(name)
            .desired_capacity(desired)
            .send()
            .await
            .map_err(|e| AwsError::sdk("SetDesiredCapacity", e))?;
        Ok(())
    }

    /// Tags the group `key=value` (circleci-runner-autoscaler finds groups by their
    /// `resource-class` tag).
    pub async fn tag_group(&self, name: &str, key: &str, value: &str) -> Result<(), AwsError> {
        let tag = aws_sdk_autoscaling::types::Tag::builder()
            .resource_id(name)
            .resource_type("auto-scaling-group")
            .key(key)
            .value(value)
            .propagate_at_launch(false)
            .build();
        self.asg
            .create_or_update_tags()
            .tags(tag)
            .send()
            .await
            .map_err(|e| AwsError::sdk("CreateOrUpdateTags", e))?;
        Ok(())
    }

    /// The group `name`, or `None` if it does not exist.
    pub async fn group(&self, name: &str) -> Result<Option<GroupState>, AwsError> {
        let resp = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DescribeAutoScalingGroups", e))?;
        Ok(resp
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(name))
            .map(GroupState::from_sdk))
    }

    /// The names of every parameter under `path` (recursively, all pages).
    pub async fn parameters(&self, path: &str) -> Result<Vec<String>, AwsError> {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let resp = self
                .ssm
                .get_parameters_by_path()
                .path(path)
                .recursive(true)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::sdk("GetParametersByPath", e))?;
            names.extend(
                resp.parameters()
                    .iter()
                    .filter_map(|p| p.name().map(str::to_owned)),
            );
            token = resp.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(names);
            }
        }
    }
}
