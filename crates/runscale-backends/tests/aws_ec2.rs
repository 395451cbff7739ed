//! The aws-ec2 backend against moto_server: the core conformance suite (CreateFleet and
//! RunInstances), tags and inventory after a restart, the spot -> on-demand fallback on
//! capacity errors (injected by a proxy answering spot launches as AWS does, as moto always
//! has capacity) and its metric, terminate idempotency and ownership, orphan collection
//! through the core's policy, throttling, missing permissions and an invalid launch template.
//! Each test uses its own owner id, so tests sharing the binary's moto_server never see each
//! other's instances.

#![cfg(feature = "aws-ec2")]

mod aws_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_support::{Ec2Inspect, Fault, FaultProxy, moto, parameters, registration, request, sdk};
use prometheus_client::registry::Registry;
use runscale_backends::aws_ec2::{AwsEc2, Config, LaunchApi, Market, PoolTemplate};
use runscale_core::instrument::InstrumentedBackend;
use runscale_core::metrics::{BackendEventLabels, Metrics};
use runscale_core::testing::conformance::backend_contract;
use runscale_core::{
    Action, Backend, ErrorKind, InstanceState, Observation, PoolId, PoolSpec, Reason,
};

fn config(owner: &str) -> Config {
    Config {
        max_attempts: 3,
        ..Config::new(owner)
    }
}

async fn backend(url: &str, config: Config, pools: &[(&str, PoolTemplate)]) -> AwsEc2 {
    let templates = pools
        .iter()
        .map(|(p, t)| (PoolId::new(p), t.clone()))
        .collect();
    AwsEc2::new(config, templates, &sdk(url).await).expect("backend")
}

fn template(name: &str, types: &[&str], market: Market) -> PoolTemplate {
    PoolTemplate {
        instance_types: types.iter().map(|t| (*t).to_owned()).collect(),
        market,
        ..PoolTemplate::named(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_tags_instances_and_finds_them_after_a_restart() {
    let Some(moto) = moto().await else { return };
    let aws = Ec2Inspect::new(moto.url()).await;
    let lt_id = aws.create_template("conf-lt").await;
    for (owner, api) in [
        ("conf-fleet", LaunchApi::CreateFleet),
        ("conf-run", LaunchApi::RunInstances),
    ] {
        let be = backend(
            moto.url(),
            Config {
                api,
                ..config(owner)
            },
            &[
                (
                    "conf-a",
                    template("conf-lt", &["t3.micro"], Market::SpotFirst),
                ),
                ("conf-b", template("conf-lt", &[], Market::OnDemand)),
            ],
        )
        .await;
        backend_contract(
            &be,
            &PoolId::new("conf-a"),
            &PoolId::new("conf-b"),
            registration,
        )
        .await
        .unwrap_or_else(|e| panic!("backend contract with {api:?}: {e}"));
        assert!(aws.live(owner).await.is_empty(), "{api:?} left instances");
    }
    assert!(parameters(&aws.ssm, "/runscale/conf-a").await.is_empty());

    // A launch (template by id, two instance types): tagged at launch, credentials written as
    // a SecureString holding the runner's settings one per line.
    let by_id = PoolTemplate {
        launch_template_id: Some(lt_id),
        launch_template_name: None,
        version: "1".to_owned(),
        instance_types: vec!["t3.micro".to_owned(), "t3.small".to_owned()],
        subnets: Vec::new(),
        market: Market::SpotFirst,
    };
    let be = backend(moto.url(), config("tags"), &[("tags", by_id.clone())]).await;
    let inst = be
        .launch(request("tags", "rs-tags-aaaaaaaaaa"))
        .await
        .expect("launch");
    assert_eq!(inst.state, InstanceState::Booting);
    let tags = aws.tags(inst.id.as_str()).await;
    for (k, v) in [
        ("runscale/owner", "tags"),
        ("runscale/pool", "tags"),
        ("runscale/runner-name", "rs-tags-aaaaaaaaaa"),
        ("runscale/template-hash", "h1"),
        ("Name", "rs-tags-aaaaaaaaaa"),
    ] {
        assert_eq!(
            tags.get(k).map(String::as_str),
            Some(v),
            "tag {k}: {tags:?}"
        );
    }
    assert_eq!(
        aws.instance(inst.id.as_str())
            .await
            .instance_lifecycle()
            .map(|l| l.as_str().to_owned()),
        Some("spot".to_owned()),
        "spot first: moto has spot capacity"
    );
    let param = format!("/runscale/tags/{}", inst.id);
    let p = aws
        .ssm
        .get_parameter()
        .name(&param)
        .with_decryption(true)
        .send()
        .await
        .expect("credentials parameter");
    let p = p.parameter().expect("parameter");
    assert_eq!(p.r#type().map(|t| t.as_str()), Some("SecureString"));
    let text = p.value().unwrap_or_default();
    for line in [
        "RUNSCALE_POOL=tags",
        &format!("RUNSCALE_INSTANCE_ID={}", inst.id),
        "RUNSCALE_RUNNER_NAME=rs-tags-aaaaaaaaaa",
        "RUNSCALE_TEMPLATE_HASH=h1",
        "RUNNER_URL=https://ci.example",
        "RUNNER_TOKEN=token-of-rs-tags-aaaaaaaaaa",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }
    // The user data does not carry the secret (it is readable with DescribeInstanceAttribute).
    let user_data = aws
        .ec2
        .describe_instance_attribute()
        .instance_id(inst.id.as_str())
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user data");
    let ud = format!("{:?}", user_data.user_data());
    assert!(!ud.contains("token-of"), "{ud}");

    // A new backend object (a restarted runscale) finds the instance by its tags alone.
    let again = backend(moto.url(), config("tags"), &[("tags", by_id)]).await;
    let listed = again.instances(&[PoolId::new("tags")]).await.expect("list");
    let found = &listed[&PoolId::new("tags")];
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, inst.id);
    assert_eq!(found[0].runner_names, ["rs-tags-aaaaaaaaaa"]);
    assert_eq!(found[0].template_hash, "h1");
    assert_ne!(found[0].state, InstanceState::Stopping);

    // Busy: the runner registered, its credentials go.
    again
        .mark_busy(&PoolId::new("tags"), std::slice::from_ref(&inst.id))
        .await
        .expect("mark busy");
    assert!(aws.secret(&param).await.is_none());

    // Terminate is idempotent, also through a third object.
    again
        .terminate(&PoolId::new("tags"), &inst.id)
        .await
        .expect("terminate");
    let state = aws.state(inst.id.as_str()).await;
    assert!(
        state == "shutting-down" || state == "terminated",
        "state {state}"
    );
    be.terminate(&PoolId::new("tags"), &inst.id)
        .await
        .expect("terminate again (another object)");
    be.terminate(&PoolId::new("tags"), &"i-0123456789abcdef0".into())
        .await
        .expect("terminate an id EC2 never knew");
    let listed = again.instances(&[PoolId::new("tags")]).await.expect("list");
    assert!(
        listed[&PoolId::new("tags")]
            .iter()
            .all(|i| i.id != inst.id || i.state == InstanceState::Stopping),
        "{listed:?}"
    );
    assert!(parameters(&aws.ssm, "/runscale/tags").await.is_empty());
}

/// The count of one backend event.
fn events(metrics: &Metrics, pool: &str, event: &'static str) -> u64 {
    metrics
        .backend_events
        .get_or_create(&BackendEventLabels {
            account: "ec2".to_owned(),
            pool: pool.to_owned(),
            event,
        })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_capacity_errors_fall_back_to_on_demand_and_are_counted() {
    let Some(moto) = moto().await else { return };
    let aws = Ec2Inspect::new(moto.url()).await;
    aws.create_template("spot-lt").await;
    let proxy = FaultProxy::start(moto.url()).await;
    for (owner, api, fault, attempts) in [
        // CreateFleet: per-override errors in a 200 answer; one call per market.
        (
            "spot-fleet",
            LaunchApi::CreateFleet,
            "InsufficientInstanceCapacity",
            1,
        ),
        // RunInstances: the call's error, one call per instance type.
        (
            "spot-run",
            LaunchApi::RunInstances,
            "MaxSpotInstanceCountExceeded",
            2,
        ),
    ] {
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let raw = backend(
            &proxy.url,
            Config {
                api,
                ..config(owner)
            },
            &[
                (
                    "spot",
                    template("spot-lt", &["t3.micro", "t3.small"], Market::SpotFirst),
                ),
                (
                    "spot-only",
                    template("spot-lt", &["t3.micro"], Market::Spot),
                ),
            ],
        )
        .await;
        let be = InstrumentedBackend::new(Arc::new(raw), "ec2".to_owned(), metrics.clone());
        let action = match api {
            LaunchApi::CreateFleet => "CreateFleet",
            LaunchApi::RunInstances => "RunInstances",
        };

        // Spot available: a spot instance, counted as such.
        let spot = be
            .launch(request("spot", "rs-spot-bbbbbbbbbb"))
            .await
            .expect("spot launch");
        assert_eq!(
            aws.instance(spot.id.as_str())
                .await
                .instance_lifecycle()
                .map(|l| l.as_str().to_owned()),
            Some("spot".to_owned())
        );
        assert_eq!(events(&metrics, "spot", "launched_spot"), 1);

        // No spot capacity anywhere: on-demand, and the fallback shows in the metric.
        let before = proxy.seen(action);
        proxy.fail(action, Fault::Capacity(fault), 10);
        let od = be
            .launch(request("spot", "rs-spot-cccccccccc"))
            .await
            .expect("on-demand after the spot fallback");
        assert_eq!(
            aws.instance(od.id.as_str()).await.instance_lifecycle(),
            None,
            "{api:?}: on-demand instances have no lifecycle"
        );
        assert_eq!(
            proxy.seen(action) - before,
            attempts + 1,
            "{api:?}: spot attempts, then one on-demand"
        );
        assert_eq!(events(&metrics, "spot", "spot_fallback_on_demand"), 1);
        assert_eq!(events(&metrics, "spot", "spot_no_capacity"), 1);
        assert_eq!(events(&metrics, "spot", "launched_on_demand"), 1);
        assert_eq!(aws.tags(od.id.as_str()).await["runscale/pool"], "spot");

        // Spot only: no capacity is an insufficient_capacity error naming the codes, and
        // nothing was launched.
        let live = aws.live(owner).await.len();
        let e = be
            .launch(request("spot-only", "rs-spot-only-dddddddddd"))
            .await
            .expect_err("no spot capacity");
        assert_eq!(e.kind(), ErrorKind::InsufficientCapacity, "{e}");
        assert!(e.to_string().contains(fault), "{e}");
        assert_eq!(aws.live(owner).await.len(), live);
        assert_eq!(events(&metrics, "spot-only", "spot_fallback_on_demand"), 0);
        proxy.fail(action, Fault::Capacity(fault), 0);

        for i in [&spot, &od] {
            be.terminate(&PoolId::new("spot"), &i.id)
                .await
                .expect("terminate");
        }
        assert!(aws.live(owner).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_and_strays_are_collected_by_the_policy_and_others_left_alone() {
    let Some(moto) = moto().await else { return };
    let aws = Ec2Inspect::new(moto.url()).await;
    aws.create_template("orph-lt").await;
    let owner = "orph-owner";
    // An instance of a pool that was removed from the configuration, one of a served pool
    // without a runner tag, one with another owner, and one of the other served pool.
    let orphan = aws
        .run(
            "orph-lt",
            &[("runscale/owner", owner), ("runscale/pool", "removed")],
        )
        .await;
    let stray = aws
        .run(
            "orph-lt",
            &[("runscale/owner", owner), ("runscale/pool", "orph-a")],
        )
        .await;
    let foreign = aws
        .run(
            "orph-lt",
            &[
                ("runscale/owner", "someone-else"),
                ("runscale/pool", "orph-a"),
            ],
        )
        .await;
    let pools = [
        ("orph-a", template("orph-lt", &[], Market::OnDemand)),
        ("orph-b", template("orph-lt", &[], Market::OnDemand)),
    ];
    let sibling = backend(moto.url(), config(owner), &pools).await;
    let theirs = sibling
        .launch(request("orph-b", "rs-orph-b-eeeeeeeeee"))
        .await
        .expect("launch");

    // Within the grace an orphan is not listed; after it, it is, under the first pool.
    let patient = backend(moto.url(), config(owner), &pools).await;
    let listed = patient
        .instances(&[PoolId::new("orph-a"), PoolId::new("orph-b")])
        .await
        .expect("list");
    let ids = |p: &str| -> Vec<String> {
        listed[&PoolId::new(p)]
            .iter()
            .map(|i| i.id.to_string())
            .collect()
    };
    assert_eq!(ids("orph-a"), std::slice::from_ref(&stray));
    assert_eq!(ids("orph-b"), [theirs.id.to_string()]);

    let be = backend(
        moto.url(),
        Config {
            orphan_grace: Duration::ZERO,
            ..config(owner)
        },
        &pools,
    )
    .await;
    let listed = be
        .instances(&[PoolId::new("orph-a"), PoolId::new("orph-b")])
        .await
        .expect("list");
    let a: HashMap<String, Vec<String>> = listed[&PoolId::new("orph-a")]
        .iter()
        .map(|i| (i.id.to_string(), i.runner_names.clone()))
        .collect();
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a.get(&orphan), Some(&Vec::new()));
    assert_eq!(a.get(&stray), Some(&Vec::new()));
    assert!(!a.contains_key(&foreign));

    // The core's policy terminates both (nothing of theirs is registered), and only them.
    let spec = PoolSpec::test("orph-a");
    let obs = Observation {
        instances: listed[&PoolId::new("orph-a")].clone(),
        ..Observation::default()
    };
    let now = chrono::Utc::now() + chrono::Duration::seconds(120);
    let plan = runscale_core::plan(&spec, &obs, now);
    let mut doomed: Vec<String> = plan
        .actions
        .iter()
        .filter_map(|p| match &p.action {
            Action::Terminate { instance, runners } if runners.is_empty() => {
                assert!(
                    matches!(p.reason, Reason::TemplateChanged | Reason::BootTimeout),
                    "{:?}",
                    p.reason
                );
                Some(instance.to_string())
            }
            _ => None,
        })
        .collect();
    doomed.sort();
    let mut expected = vec![orphan.clone(), stray.clone()];
    expected.sort();
    assert_eq!(doomed, expected);
    // The orphan's credentials were written under its own (removed) pool: they go with it.
    aws.ssm
        .put_parameter()
        .name(format!("/runscale/removed/{orphan}"))
        .value("RUNSCALE_POOL=removed")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("orphan's parameter");
    for id in &doomed {
        be.terminate(&PoolId::new("orph-a"), &id.as_str().into())
            .await
            .expect("terminate");
    }

    assert!(parameters(&aws.ssm, "/runscale/removed").await.is_empty());

    // Not ours, or another served pool's: left alone (Ok, nothing done).
    be.terminate(&PoolId::new("orph-a"), &foreign.as_str().into())
        .await
        .expect("foreign");
    be.terminate(&PoolId::new("orph-a"), &theirs.id)
        .await
        .expect("another pool's");
    assert_eq!(aws.state(&foreign).await, "running");
    assert_eq!(aws.live(owner).await, [theirs.id.to_string()]);

    // An instance that stopped by itself (its runner exited) is terminated at the next
    // listing and listed as stopping.
    aws.ec2
        .stop_instances()
        .instance_ids(theirs.id.as_str())
        .send()
        .await
        .expect("stop");
    let listed = be.instances(&[PoolId::new("orph-b")]).await.expect("list");
    assert!(
        listed[&PoolId::new("orph-b")]
            .iter()
            .all(|i| i.state == InstanceState::Stopping),
        "{listed:?}"
    );
    let state = aws.state(theirs.id.as_str()).await;
    assert!(
        state == "shutting-down" || state == "terminated",
        "state {state}"
    );
    // Its credentials parameter goes with the next sweep of a new process.
    let fresh = backend(moto.url(), config(owner), &pools).await;
    fresh
        .instances(&[PoolId::new("orph-b")])
        .await
        .expect("list");
    assert!(parameters(&aws.ssm, "/runscale/orph-b").await.is_empty());
    aws.ec2
        .terminate_instances()
        .instance_ids(&foreign)
        .send()
        .await
        .expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_backs_off_and_errors_name_the_permission_or_template() {
    let Some(moto) = moto().await else { return };
    let aws = Ec2Inspect::new(moto.url()).await;
    aws.create_template("err-lt").await;
    let proxy = FaultProxy::start(moto.url()).await;
    let owner = "err-owner";
    let be = backend(
        &proxy.url,
        config(owner),
        &[("err", template("err-lt", &[], Market::SpotFirst))],
    )
    .await;
    let pool = PoolId::new("err");

    // RequestLimitExceeded twice: the SDK retries (3 attempts) and the listing succeeds.
    proxy.fail("DescribeInstances", Fault::Throttle, 2);
    let before = proxy.seen("DescribeInstances");
    be.instances(std::slice::from_ref(&pool))
        .await
        .expect("list after retries");
    assert_eq!(proxy.seen("DescribeInstances") - before, 3);
    // Beyond the attempts: RateLimited, so the pool backs off.
    proxy.fail("DescribeInstances", Fault::Throttle, 10);
    let e = be
        .instances(std::slice::from_ref(&pool))
        .await
        .expect_err("throttled");
    assert_eq!(e.kind(), ErrorKind::RateLimited { retry_after: None });
    proxy.fail("DescribeInstances", Fault::Throttle, 0);

    // A missing permission is named (EC2's UnauthorizedOperation, SSM's AccessDenied).
    proxy.fail("CreateFleet", Fault::AccessDenied, 1);
    let e = be
        .launch(request("err", "rs-err-ffffffffff"))
        .await
        .expect_err("denied");
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(
        e.to_string()
            .contains("the IAM policy must allow ec2:CreateFleet"),
        "{e}"
    );
    assert!(aws.live(owner).await.is_empty());
    // The credentials cannot be written: the new instance is not left behind.
    proxy.fail("PutParameter", Fault::AccessDenied, 1);
    let e = be
        .launch(request("err", "rs-err-gggggggggg"))
        .await
        .expect_err("denied");
    assert!(e.to_string().contains("ssm:PutParameter"), "{e}");
    assert!(!e.to_string().contains("token-of"), "{e}");
    assert!(aws.live(owner).await.is_empty());
    let inst = be
        .launch(request("err", "rs-err-hhhhhhhhhh"))
        .await
        .expect("launch");
    proxy.fail("TerminateInstances", Fault::AccessDenied, 1);
    let e = be.terminate(&pool, &inst.id).await.expect_err("denied");
    assert!(e.to_string().contains("ec2:TerminateInstances"), "{e}");
    be.terminate(&pool, &inst.id).await.expect("terminate");

    // probe: fine with every permission; lists the missing ones found by dry runs.
    be.probe().await.expect("probe with every permission");
    proxy.fail("TerminateInstances", Fault::AccessDenied, 1);
    proxy.fail("CreateFleet", Fault::AccessDenied, 1);
    proxy.fail("GetParametersByPath", Fault::AccessDenied, 1);
    let e = be.probe().await.expect_err("probe without permissions");
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(
        e.to_string().contains(
            "missing IAM permissions: ec2:TerminateInstances, ec2:CreateFleet, ssm:GetParametersByPath"
        ),
        "{e}"
    );

    // An unknown launch template: a configuration error naming it, from launch and probe.
    let ghost = backend(
        moto.url(),
        config("ghost-owner"),
        &[(
            "ghost",
            template("no-such-template", &[], Market::SpotFirst),
        )],
    )
    .await;
    let e = ghost
        .launch(request("ghost", "rs-ghost-iiiiiiiiii"))
        .await
        .expect_err("unknown template");
    assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
    assert!(
        e.to_string().contains("launch template no-such-template"),
        "{e}"
    );
    let e = ghost
        .probe()
        .await
        .expect_err("probe of an unknown template");
    assert!(e.to_string().contains("no-such-template"), "{e}");
}

/// The reconciler drives the aws-ec2 backend through a proxy that answers the first spot
/// launches with AWS's capacity error: 8 ephemeral jobs run on instances launched spot first
/// and on demand when spot had no capacity (visible in the backend events metric), and the
/// fleet returns to zero with no credentials parameter left and no job lost. The policy's cap
/// (max 4) is checked by the property tests; here the cloud may also list instances whose
/// terminate call is still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_launches_spot_then_on_demand_and_returns_to_zero() {
    use runscale_core::SystemClock;
    use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
    use runscale_core::testing::{World, WorldConfig};
    use std::time::Instant;
    use tokio_util::sync::CancellationToken;

    let Some(moto) = moto().await else { return };
    const POOL: &str = "fleet";
    const OWNER: &str = "e2e-fleet";
    let aws = Ec2Inspect::new(moto.url()).await;
    aws.create_template("e2e-lt").await;
    let proxy = FaultProxy::start(moto.url()).await;
    // The first three spot attempts find no capacity.
    proxy.fail(
        "CreateFleet",
        Fault::Capacity("InsufficientInstanceCapacity"),
        3,
    );
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    let be = backend(
        &proxy.url,
        config(OWNER),
        &[(
            POOL,
            template("e2e-lt", &["t3.micro", "t3.small"], Market::SpotFirst),
        )],
    )
    .await;
    let world = World::new(
        Arc::new(SystemClock),
        WorldConfig {
            boot_delay: Duration::from_millis(500),
            auto_connect: true,
            ..WorldConfig::default()
        },
    );
    world.set_cap(POOL, 4);
    let r = Reconciler::new(
        vec![PoolBinding {
            spec: PoolSpec::test(POOL)
                .max(4)
                .boot_timeout(Duration::from_secs(20))
                .idle_timeout(Duration::from_secs(2)),
            provider_name: "memory".into(),
            provider: world.provider(),
            backend_name: "ec2".into(),
            backend: Arc::new(be),
        }],
        Arc::new(SystemClock),
        metrics.clone(),
        Options {
            interval: Duration::from_millis(300),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            ..Options::default()
        },
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));
    // Jobs outlast a few passes, as real ones do, so runners are seen before they leave.
    world.enqueue(POOL, 8, Duration::from_secs(2));
    let started = Instant::now();
    let mut peak = 0;
    loop {
        let live = aws.live(OWNER).await;
        peak = peak.max(live.len());
        let s = world.snapshot();
        if s.completed.len() == 8 && live.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not done: {s:?}, {} live",
            live.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.expect("reconciler");
    let s = world.snapshot();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    // The policy counts an instance it retires as gone, and one pass's actions run
    // concurrently, so replacements may be launched while the retired instances' terminate
    // calls are still in flight: the cloud can list both for that moment, never more.
    assert!(
        (1..=8).contains(&peak),
        "peak {peak} within max 4 + 4 leaving"
    );
    let fallbacks = events(&metrics, POOL, "spot_fallback_on_demand");
    let on_demand = events(&metrics, POOL, "launched_on_demand");
    let spot = events(&metrics, POOL, "launched_spot");
    assert!(
        fallbacks >= 1 && on_demand >= 1,
        "fallback counted: {fallbacks}/{on_demand}"
    );
    assert!(spot >= 1, "spot again once capacity returned");
    assert!(
        parameters(&aws.ssm, "/runscale").await.is_empty(),
        "no credentials parameter left"
    );
    eprintln!(
        "aws-ec2 e2e: 8 jobs, {} launches ({spot} spot, {on_demand} on demand after {fallbacks} \
         fallbacks), peak {peak} instances, zero after {:?}",
        spot + on_demand,
        started.elapsed()
    );
}
