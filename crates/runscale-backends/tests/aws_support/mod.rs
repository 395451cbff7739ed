//! Test support for the AWS backends: one `moto_server` per test binary on a free loopback
//! port (killed by PID when the last test using it drops it), SDK clients pointed at it, group
//! and launch-template fixtures, a checker for what moto does not validate, and a
//! fault-injecting proxy speaking the AWS wire protocols (Query XML errors for Auto Scaling,
//! EC2's own XML errors, JSON errors for SSM) that also answers spot launches with AWS's
//! capacity errors (moto always has capacity).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

#[cfg(feature = "aws-asg")]
use aws_sdk_autoscaling::types::Tag;
use aws_sdk_ssm::config::Credentials;
use runscale_core::{Credentials as RunnerCredentials, LaunchRequest, PoolId, Registration};
use secrecy::SecretString;

/// A running moto_server (the emulator crate's launcher: free loopback port, readiness wait,
/// killed by PID on drop).
pub use runscale_emulator::aws::MotoServer as Moto;

static MOTO: tokio::sync::Mutex<Weak<Moto>> = tokio::sync::Mutex::const_new(Weak::new());

/// The moto_server of this test binary, started on first use and stopped when the last test
/// using it drops it. Without `RUNSCALE_MOTO_SERVER` the test fails, or skips under
/// `RUNSCALE_ALLOW_SKIP=1` (then this is `None`).
pub async fn moto() -> Option<Arc<Moto>> {
    let bin = runscale_emulator::aws::moto_server_from_env();
    let bin = runscale_core::testing::require(
        bin,
        "moto_server (RUNSCALE_MOTO_SERVER)",
        "scripts/test.sh installs moto[server] into a virtualenv and sets RUNSCALE_MOTO_SERVER",
    )?;
    let mut slot = MOTO.lock().await;
    if let Some(m) = slot.upgrade() {
        return Some(m);
    }
    let moto = Arc::new(
        Moto::start(&bin)
            .await
            .unwrap_or_else(|e| panic!("cannot start {bin:?}: {e}")),
    );
    *slot = Arc::downgrade(&moto);
    Some(moto)
}

/// A registration for runner `name`: a variable and a secret (`token-of-{name}`).
pub fn registration(name: &str) -> Registration {
    let mut credentials = RunnerCredentials::default();
    credentials
        .vars
        .insert("RUNNER_URL".to_owned(), "https://ci.example".to_owned());
    credentials.secrets.insert(
        "RUNNER_TOKEN".to_owned(),
        SecretString::from(format!("token-of-{name}")),
    );
    Registration {
        runner_name: name.to_owned(),
        runner_id: None,
        credentials,
    }
}

/// A launch request for one runner `name` of `pool`, template hash `h1`.
pub fn request(pool: &str, name: &str) -> LaunchRequest {
    LaunchRequest {
        pool: PoolId::new(pool),
        runners: vec![registration(name)],
        template_hash: "h1".to_owned(),
    }
}

/// An SDK configuration for `url` (moto or a proxy in front of it).
pub async fn sdk(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
        .load()
        .await
}

/// The test's own clients, to set up and inspect what the backend works on.
#[cfg(feature = "aws-asg")]
pub struct Inspect {
    pub asg: aws_sdk_autoscaling::Client,
    pub ssm: aws_sdk_ssm::Client,
}

#[cfg(feature = "aws-asg")]
impl Inspect {
    pub async fn new(url: &str) -> Self {
        let sdk = sdk(url).await;
        Self {
            asg: aws_sdk_autoscaling::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
        }
    }

    /// Creates a group (and its launch configuration) with min 0, desired 0 and `tags`.
    pub async fn create_group(&self, name: &str, max: i32, tags: &[(&str, &str)]) {
        let lc = format!("{name}-lc");
        self.asg
            .create_launch_configuration()
            .launch_configuration_name(&lc)
            .image_id("ami-12c6146b")
            .instance_type("t3.micro")
            .send()
            .await
            .expect("create launch configuration");
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| {
                Tag::builder()
                    .key(*k)
                    .value(*v)
                    .resource_id(name)
                    .resource_type("auto-scaling-group")
                    .propagate_at_launch(true)
                    .build()
            })
            .collect();
        self.asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_configuration_name(&lc)
            .min_size(0)
            .max_size(max)
            .desired_capacity(0)
            .availability_zones("us-east-1a")
            .set_tags(Some(tags))
            .send()
            .await
            .expect("create group");
    }

    /// The group as AWS reports it.
    pub async fn group(&self, name: &str) -> aws_sdk_autoscaling::types::AutoScalingGroup {
        self.asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .expect("describe group")
            .auto_scaling_groups()
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("group {name} missing"))
    }

    /// Live (not terminating) instance ids and whether each is protected.
    pub async fn live(&self, name: &str) -> HashMap<String, bool> {
        live_of(&self.group(name).await)
    }

    /// Names of every parameter under `path`.
    pub async fn parameters(&self, path: &str) -> Vec<String> {
        parameters(&self.ssm, path).await
    }

    /// What AWS would refuse and moto accepts: checked after every step of a test.
    /// min <= desired <= max, and as many live members as desired (moto launches at once).
    pub async fn check_group(&self, name: &str) {
        let g = self.group(name).await;
        let (min, desired, max) = (
            g.min_size().unwrap_or(0),
            g.desired_capacity().unwrap_or(0),
            g.max_size().unwrap_or(0),
        );
        assert!(
            min <= desired && desired <= max,
            "group {name}: min {min} <= desired {desired} <= max {max} violated"
        );
        let live = live_of(&g).len() as i32;
        assert_eq!(
            live, desired,
            "group {name}: {live} live members, desired {desired}"
        );
    }
}

/// Live (not terminating) members of a group and whether each is protected.
#[cfg(feature = "aws-asg")]
pub fn live_of(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> HashMap<String, bool> {
    g.instances()
        .iter()
        .filter(|i| {
            i.lifecycle_state()
                .is_none_or(|s| !s.as_str().starts_with("Terminat"))
        })
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_owned(),
                i.protected_from_scale_in().unwrap_or(false),
            )
        })
        .collect()
}

/// The test's own EC2 and SSM clients, for launch templates, instances and parameters.
#[cfg(feature = "aws-ec2")]
pub struct Ec2Inspect {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
}

#[cfg(feature = "aws-ec2")]
impl Ec2Inspect {
    pub async fn new(url: &str) -> Self {
        let sdk = sdk(url).await;
        Self {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
        }
    }

    /// Creates a launch template (image and type only) and returns its id.
    pub async fn create_template(&self, name: &str) -> String {
        let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
            .image_id("ami-12c6146b")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .build();
        self.ec2
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(data)
            .send()
            .await
            .expect("create launch template")
            .launch_template()
            .and_then(|t| t.launch_template_id())
            .expect("template id")
            .to_owned()
    }

    /// Starts an instance from `template` with `tags` behind the backend's back.
    pub async fn run(&self, template: &str, tags: &[(&str, &str)]) -> String {
        let spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build())
                    .collect(),
            ))
            .build();
        self.ec2
            .run_instances()
            .launch_template(
                aws_sdk_ec2::types::LaunchTemplateSpecification::builder()
                    .launch_template_name(template)
                    .build(),
            )
            .min_count(1)
            .max_count(1)
            .tag_specifications(spec)
            .send()
            .await
            .expect("run instance")
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .expect("instance id")
            .to_owned()
    }

    /// An instance as EC2 reports it.
    pub async fn instance(&self, id: &str) -> aws_sdk_ec2::types::Instance {
        self.ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .expect("describe instance")
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .cloned()
            .unwrap_or_else(|| panic!("instance {id} missing"))
    }

    /// An instance's state name.
    pub async fn state(&self, id: &str) -> String {
        self.instance(id)
            .await
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default()
    }

    /// An instance's tags.
    pub async fn tags(&self, id: &str) -> HashMap<String, String> {
        self.instance(id)
            .await
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect()
    }

    /// Ids of instances tagged `runscale/owner={owner}` that are not terminated or going.
    pub async fn live(&self, owner: &str) -> Vec<String> {
        let filter = |name: &str, values: &[&str]| {
            aws_sdk_ec2::types::Filter::builder()
                .name(name)
                .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
                .build()
        };
        let mut ids: Vec<String> = self
            .ec2
            .describe_instances()
            .filters(filter("tag:runscale/owner", &[owner]))
            .filters(filter("instance-state-name", &["pending", "running"]))
            .send()
            .await
            .expect("describe instances")
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// A decrypted parameter, if it exists.
    pub async fn secret(&self, name: &str) -> Option<String> {
        self.ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .ok()
            .and_then(|r| r.parameter().and_then(|p| p.value()).map(str::to_owned))
    }
}

/// Names of every parameter under `path`.
pub async fn parameters(ssm: &aws_sdk_ssm::Client, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let resp = ssm
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .set_next_token(token)
            .send()
            .await
            .expect("list parameters");
        out.extend(
            resp.parameters()
                .iter()
                .filter_map(|p| p.name().map(str::to_owned)),
        );
        token = resp.next_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

/// What the fault proxy answers instead of forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Throttle,
    AccessDenied,
    /// For CreateFleet and RunInstances: a *spot* request is answered with this capacity
    /// error code as AWS does (CreateFleet: HTTP 200 with one error per override and no
    /// instance; RunInstances: the call's error); on-demand requests are forwarded and do not
    /// use up the count.
    Capacity(&'static str),
}

#[derive(Default)]
struct ProxyState {
    /// Action name → (fault, remaining count).
    rules: HashMap<String, (Fault, usize)>,
    /// Action name → requests seen.
    seen: HashMap<String, usize>,
}

/// A loopback proxy in front of moto that answers chosen actions with AWS errors.
pub struct FaultProxy {
    pub url: String,
    state: Arc<Mutex<ProxyState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn action_of(headers: &axum::http::HeaderMap, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or_default().to_owned();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or_default()
        .to_owned()
}

/// CreateFleet's answer when no override had capacity: one error per override of the request
/// (`LaunchTemplateConfigs.1.Overrides.N.*`), no instance.
fn fleet_capacity_errors(request: &str, code: &str) -> String {
    let mut overrides: Vec<u32> = request
        .split('&')
        .filter_map(|kv| {
            let rest = kv.strip_prefix("LaunchTemplateConfigs.1.Overrides.")?;
            rest.split('.').next()?.parse().ok()
        })
        .collect();
    overrides.sort_unstable();
    overrides.dedup();
    let items: String = (0..overrides.len().max(1))
        .map(|_| {
            format!(
                "<item><lifecycle>spot</lifecycle><errorCode>{code}</errorCode><errorMessage>There is no Spot capacity available that matches your request.</errorMessage></item>"
            )
        })
        .collect();
    format!(
        r#"<CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>fault</requestId><fleetId>fleet-00000000-0000-0000-0000-000000000000</fleetId><errorSet>{items}</errorSet><fleetInstanceSet/></CreateFleetResponse>"#
    )
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        let state: Arc<Mutex<ProxyState>> = Arc::default();
        let client = reqwest::Client::new();
        let upstream = upstream.to_owned();
        let st = state.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (client, upstream, st) = (client.clone(), upstream.clone(), st.clone());
            async move {
                let action = action_of(&headers, &body);
                let json = headers.contains_key("x-amz-target");
                let text = String::from_utf8_lossy(&body).into_owned();
                // EC2 speaks its own Query dialect, with its own error document.
                let ec2 = text.contains("Version=2016-11-15");
                let spot = text.contains("DefaultTargetCapacityType=spot")
                    || text.contains("MarketType=spot");
                let fault = {
                    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                    *s.seen.entry(action.clone()).or_default() += 1;
                    match s.rules.get_mut(&action) {
                        Some((Fault::Capacity(_), _)) if !spot => None,
                        Some((f, n)) if *n > 0 => {
                            *n -= 1;
                            Some(*f)
                        }
                        _ => None,
                    }
                };
                if let Some(Fault::Capacity(code)) = fault
                    && action == "CreateFleet"
                {
                    return (
                        StatusCode::OK,
                        [("content-type", "text/xml")],
                        fleet_capacity_errors(&text, code),
                    )
                        .into_response();
                }
                if let Some(f) = fault {
                    let (status, code, msg) = match (f, json, ec2) {
                        // AWS answers an exhausted pool with a server error (retried by
                        // the SDK), a quota or price problem with a client error.
                        (Fault::Capacity(code), _, _) => (
                            if code == "InsufficientInstanceCapacity" {
                                500
                            } else {
                                400
                            },
                            code,
                            "There is no Spot capacity available that matches your request.",
                        ),
                        (Fault::Throttle, _, true) => {
                            (503, "RequestLimitExceeded", "Request limit exceeded.")
                        }
                        (Fault::AccessDenied, _, true) => (
                            403,
                            "UnauthorizedOperation",
                            "You are not authorized to perform this operation.",
                        ),
                        (Fault::Throttle, false, _) => (400, "Throttling", "Rate exceeded"),
                        (Fault::Throttle, true, _) => (400, "ThrottlingException", "Rate exceeded"),
                        (Fault::AccessDenied, false, _) => {
                            (403, "AccessDenied", "User is not authorized")
                        }
                        (Fault::AccessDenied, true, _) => {
                            (400, "AccessDeniedException", "User is not authorized")
                        }
                    };
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                    if ec2 {
                        return (
                            status,
                            [("content-type", "text/xml")],
                            format!(
                                "<Response><Errors><Error><Code>{code}</Code><Message>{msg}</Message></Error></Errors><RequestID>fault</RequestID></Response>"
                            ),
                        )
                            .into_response();
                    }
                    return if json {
                        (
                            status,
                            [("content-type", "application/x-amz-json-1.1")],
                            format!(r#"{{"__type":"{code}","message":"{msg}"}}"#),
                        )
                            .into_response()
                    } else {
                        (
                            status,
                            [("content-type", "text/xml")],
                            format!(
                                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{msg}</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
                            ),
                        )
                            .into_response()
                    };
                }
                let mut req = client.request(method, format!("{upstream}{uri}"));
                for (k, v) in &headers {
                    if k != "host" && k != "content-length" {
                        req = req.header(k, v);
                    }
                }
                match req.body(body).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let ct = resp
                            .headers()
                            .get("content-type")
                            .cloned()
                            .unwrap_or(axum::http::HeaderValue::from_static("text/xml"));
                        let bytes = resp.bytes().await.unwrap_or_default();
                        (status, [(axum::http::header::CONTENT_TYPE, ct)], bytes).into_response()
                    }
                    Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                }
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    /// Answers the next `n` requests of `action` (e.g. `SetDesiredCapacity`, `PutParameter`)
    /// with `fault`.
    pub fn fail(&self, action: &str, fault: Fault, n: usize) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rules
            .insert(action.to_owned(), (fault, n));
    }

    /// Requests of `action` seen so far (faulted or forwarded).
    pub fn seen(&self, action: &str) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .get(action)
            .copied()
            .unwrap_or(0)
    }
}
