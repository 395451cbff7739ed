//! The aws-asg backend against moto_server: the core conformance suite, groups found by tag
//! (across pages), the MaxSize cap, throttling and missing permissions (through a fault proxy
//! speaking AWS's error formats), `probe`, and the reconciler scaling a group 0 -> N -> 0 with
//! an instance-side agent that reads and deletes each instance's credentials parameter.
//! After every step the groups are checked for what AWS would refuse and moto accepts.

#![cfg(feature = "aws-asg")]

mod aws_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_support::{Fault, FaultProxy, Inspect, moto, registration, request, sdk};
use prometheus_client::registry::Registry;
use runscale_backends::aws_asg::{AwsAsg, Config, PoolTemplate, RunnerName};
use runscale_core::metrics::Metrics;
use runscale_core::reconciler::{Options, PoolBinding, Reconciler};
use runscale_core::testing::conformance::backend_contract;
use runscale_core::testing::{World, WorldConfig};
use runscale_core::{Backend, ErrorKind, PoolId, PoolSpec, SystemClock};
use tokio_util::sync::CancellationToken;

fn config() -> Config {
    Config {
        claim_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(50),
        max_attempts: 3,
        ..Config::default()
    }
}

async fn backend(url: &str, config: Config, pools: &[(&str, PoolTemplate)]) -> AwsAsg {
    let templates = pools
        .iter()
        .map(|(p, t)| (PoolId::new(p), t.clone()))
        .collect();
    AwsAsg::new(config, templates, &sdk(url).await).expect("backend")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_and_leaves_no_parameter() {
    let Some(moto) = moto().await else { return };
    let aws = Inspect::new(moto.url()).await;
    aws.create_group("conf-a-group", 3, &[]).await;
    aws.create_group("conf-b-group", 3, &[]).await;
    let be = backend(
        moto.url(),
        config(),
        &[
            ("conf-a", PoolTemplate::group("conf-a-group")),
            ("conf-b", PoolTemplate::group("conf-b-group")),
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
    .expect("backend contract");
    aws.check_group("conf-a-group").await;
    assert_eq!(aws.group("conf-a-group").await.desired_capacity(), Some(0));
    assert!(aws.parameters("/runscale/conf-a").await.is_empty());

    // A launch: protected member, binding and credentials written; the credentials hold the
    // runner's settings one per line.
    let inst = be
        .launch(request("conf-a", "rs-conf-a-aaaaaaaaaa"))
        .await
        .expect("launch");
    aws.check_group("conf-a-group").await;
    assert_eq!(
        aws.live("conf-a-group").await.get(inst.id.as_str()),
        Some(&true)
    );
    let creds = aws
        .ssm
        .get_parameter()
        .name(format!("/runscale/conf-a/{}", inst.id))
        .with_decryption(true)
        .send()
        .await
        .expect("credentials parameter");
    let p = creds.parameter().expect("parameter");
    assert_eq!(p.r#type().map(|t| t.as_str()), Some("SecureString"));
    let text = p.value().unwrap_or_default();
    for line in [
        "RUNSCALE_POOL=conf-a",
        &format!("RUNSCALE_INSTANCE_ID={}", inst.id),
        "RUNSCALE_RUNNER_NAME=rs-conf-a-aaaaaaaaaa",
        "RUNNER_URL=https://ci.example",
        "RUNNER_TOKEN=token-of-rs-conf-a-aaaaaaaaaa",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }

    // A second backend (a restarted runscale) finds the binding.
    let again = backend(
        moto.url(),
        config(),
        &[("conf-a", PoolTemplate::group("conf-a-group"))],
    )
    .await;
    let listed = again
        .instances(&[PoolId::new("conf-a")])
        .await
        .expect("list");
    let found = &listed[&PoolId::new("conf-a")];
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].runner_names, ["rs-conf-a-aaaaaaaaaa"]);
    assert_eq!(found[0].template_hash, "h1");

    // Busy: credentials deleted (the runner registered), protection restored if lost.
    aws.asg
        .set_instance_protection()
        .auto_scaling_group_name("conf-a-group")
        .instance_ids(inst.id.as_str())
        .protected_from_scale_in(false)
        .send()
        .await
        .expect("unprotect");
    again
        .instances(&[PoolId::new("conf-a")])
        .await
        .expect("list");
    again
        .mark_busy(&PoolId::new("conf-a"), std::slice::from_ref(&inst.id))
        .await
        .expect("mark busy");
    assert_eq!(
        aws.live("conf-a-group").await.get(inst.id.as_str()),
        Some(&true)
    );
    assert_eq!(
        aws.parameters("/runscale/conf-a").await,
        [format!("/runscale/conf-a/binding/{}", inst.id)]
    );

    again
        .terminate(&PoolId::new("conf-a"), &inst.id)
        .await
        .expect("terminate");
    aws.check_group("conf-a-group").await;
    assert_eq!(aws.group("conf-a-group").await.desired_capacity(), Some(0));
    assert!(aws.parameters("/runscale/conf-a").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_found_by_tag_across_pages() {
    let Some(moto) = moto().await else { return };
    let aws = Inspect::new(moto.url()).await;
    aws.create_group("tag-circle", 2, &[("resource-class", "acme/large")])
        .await;
    aws.create_group("tag-pool", 2, &[("runscale/pool", "tagged")])
        .await;
    // More groups with one tag than fit on a page of DescribeAutoScalingGroups (50).
    for i in 0..51 {
        let class = format!("crowd/c{i:02}");
        aws.create_group(
            &format!("tag-crowd-{i}"),
            1,
            &[("runscale/pool", "crowd"), ("resource-class", &class)],
        )
        .await;
    }
    // circleci-runner-autoscaler's discovery: by namespace, across pages.
    let sdk = sdk(moto.url()).await;
    let found = AwsAsg::discover_resource_classes_with(&sdk, 3, "acme")
        .await
        .expect("discover");
    assert_eq!(found, [("acme/large".to_owned(), "tag-circle".to_owned())]);
    let crowd = AwsAsg::discover_resource_classes_with(&sdk, 3, "crowd")
        .await
        .expect("discover");
    assert_eq!(crowd.len(), 51, "{crowd:?}");
    assert_eq!(
        crowd[50],
        ("crowd/c50".to_owned(), "tag-crowd-50".to_owned())
    );
    let be = backend(
        moto.url(),
        config(),
        &[
            (
                "circle",
                PoolTemplate {
                    group: None,
                    resource_class: Some("acme/large".to_owned()),
                    pool_tag: false,
                    runner_name: RunnerName::Runscale,
                    max_size: None,
                },
            ),
            (
                "tagged",
                PoolTemplate {
                    group: None,
                    resource_class: None,
                    pool_tag: true,
                    runner_name: RunnerName::Runscale,
                    max_size: None,
                },
            ),
        ],
    )
    .await;
    let inst = be
        .launch(request("circle", "rs-circle-bbbbbbbbbb"))
        .await
        .expect("launch");
    assert!(aws.live("tag-circle").await.contains_key(inst.id.as_str()));
    let inst2 = be
        .launch(request("tagged", "rs-tagged-cccccccccc"))
        .await
        .expect("launch");
    assert!(aws.live("tag-pool").await.contains_key(inst2.id.as_str()));
    aws.check_group("tag-circle").await;
    aws.check_group("tag-pool").await;
    be.terminate(&PoolId::new("circle"), &inst.id)
        .await
        .expect("terminate");
    be.terminate(&PoolId::new("tagged"), &inst2.id)
        .await
        .expect("terminate");

    for (pool, wanted) in [
        (
            "crowd",
            "51 Auto Scaling groups are tagged runscale/pool=crowd",
        ),
        (
            "nobody",
            "no Auto Scaling group is tagged runscale/pool=nobody",
        ),
    ] {
        let tagged = PoolTemplate {
            group: None,
            resource_class: None,
            pool_tag: true,
            runner_name: RunnerName::Runscale,
            max_size: None,
        };
        let be = backend(moto.url(), config(), &[(pool, tagged)]).await;
        let e = be
            .instances(&[PoolId::new(pool)])
            .await
            .expect_err("ambiguous or missing");
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.to_string().contains(wanted), "{e}");
    }
    let be = backend(
        moto.url(),
        config(),
        &[("ghost", PoolTemplate::group("no-such-group"))],
    )
    .await;
    let e = be
        .instances(&[PoolId::new("ghost")])
        .await
        .expect_err("unknown group");
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(
        e.to_string().contains("group no-such-group does not exist"),
        "{e}"
    );
    let e = be.probe().await.expect_err("probe of an unknown group");
    assert!(e.to_string().contains("no-such-group"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_caps_launches() {
    let Some(moto) = moto().await else { return };
    let aws = Inspect::new(moto.url()).await;
    aws.create_group("cap-group", 2, &[]).await;
    let be = backend(
        moto.url(),
        config(),
        &[("cap", PoolTemplate::group("cap-group"))],
    )
    .await;
    let mut ids = Vec::new();
    for n in ["rs-cap-dddddddddd", "rs-cap-eeeeeeeeee"] {
        ids.push(be.launch(request("cap", n)).await.expect("launch").id);
        aws.check_group("cap-group").await;
    }
    let e = be
        .launch(request("cap", "rs-cap-ffffffffff"))
        .await
        .expect_err("capped");
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity);
    assert!(
        e.to_string()
            .contains("group cap-group is at its MaxSize 2"),
        "{e}"
    );
    aws.check_group("cap-group").await;
    assert_eq!(aws.group("cap-group").await.desired_capacity(), Some(2));
    for id in &ids {
        be.terminate(&PoolId::new("cap"), id)
            .await
            .expect("terminate");
        aws.check_group("cap-group").await;
    }
    assert!(aws.parameters("/runscale/cap").await.is_empty());
}

/// `runner_name: unknown` with `max_size`, on the group CircleCI's simple-Lambda README creates
/// (0/0/0): limits set before the first launch, members protected and handed nothing, the
/// desired capacity lowered below the members (never removing one) and launches counted from
/// the members, terminations that never push the desired capacity below the members' need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_named_by_the_instances_keep_the_seed_group_sized_and_protected() {
    let Some(moto) = moto().await else { return };
    const GROUP: &str = "seed-group";
    let aws = Inspect::new(moto.url()).await;
    aws.create_group(GROUP, 0, &[]).await;
    let template = PoolTemplate {
        runner_name: RunnerName::Unknown,
        max_size: Some(3),
        ..PoolTemplate::group(GROUP)
    };
    let be = backend(moto.url(), config(), &[("seed", template)]).await;
    let pool = PoolId::new("seed");
    let report = be.probe().await.expect("probe");
    for wanted in [
        "MaxSize 0 -> 3",
        "needs autoscaling:UpdateAutoScalingGroup",
        "runners named by the instances",
    ] {
        assert!(report.contains(wanted), "{wanted:?} missing: {report}");
    }
    let sizes = |g: &aws_sdk_autoscaling::types::AutoScalingGroup| {
        (
            g.min_size().unwrap_or(-1),
            g.desired_capacity().unwrap_or(-1),
            g.max_size().unwrap_or(-1),
        )
    };

    let a = be
        .launch(request("seed", "rs-seed-aaaaaaaaaa"))
        .await
        .expect("launch");
    let b = be
        .launch(request("seed", "rs-seed-bbbbbbbbbb"))
        .await
        .expect("launch");
    assert_eq!(sizes(&aws.group(GROUP).await), (0, 2, 3));
    assert!(a.runner_names.is_empty() && b.runner_names.is_empty());
    let live = aws.live(GROUP).await;
    assert_eq!(live.len(), 2);
    assert!(live.values().all(|p| *p), "{live:?}");
    let params = aws.parameters("/runscale/seed").await;
    assert_eq!(params.len(), 2, "{params:?}");
    assert!(params.iter().all(|p| p.contains("/binding/")), "{params:?}");
    let listed = be
        .instances(std::slice::from_ref(&pool))
        .await
        .expect("list");
    assert_eq!(listed[&pool].len(), 2);
    assert!(listed[&pool].iter().all(|i| i.runner_names.is_empty()));

    // Someone lifts a member's protection: it is protected again before the desired capacity
    // goes below the members, so AWS removes neither.
    aws.asg
        .set_instance_protection()
        .auto_scaling_group_name(GROUP)
        .instance_ids(a.id.as_str())
        .protected_from_scale_in(false)
        .send()
        .await
        .expect("unprotect");
    be.lower_target(&pool, 0).await.expect("lower");
    assert_eq!(sizes(&aws.group(GROUP).await), (0, 0, 3));
    let live = aws.live(GROUP).await;
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live.values().all(|p| *p), "{live:?}");
    // Never raised by lowering.
    be.lower_target(&pool, 2).await.expect("lower");
    assert_eq!(sizes(&aws.group(GROUP).await), (0, 0, 3));

    // A launch counts from the members, not from the lowered desired capacity.
    let c = be
        .launch(request("seed", "rs-seed-cccccccccc"))
        .await
        .expect("launch");
    assert_eq!(sizes(&aws.group(GROUP).await), (0, 3, 3));
    assert_eq!(aws.live(GROUP).await.len(), 3);
    let e = be
        .launch(request("seed", "rs-seed-dddddddddd"))
        .await
        .expect_err("at MaxSize");
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity);

    // With the desired capacity below the members, a termination does not decrement it.
    be.lower_target(&pool, 1).await.expect("lower");
    be.terminate(&pool, &a.id).await.expect("terminate");
    assert_eq!(sizes(&aws.group(GROUP).await), (0, 1, 3));
    be.terminate(&pool, &b.id).await.expect("terminate");
    assert_eq!(sizes(&aws.group(GROUP).await), (0, 1, 3));
    assert_eq!(aws.live(GROUP).await.len(), 1, "not replaced");
    // At the members' count it does (else AWS would replace it).
    be.terminate(&pool, &c.id).await.expect("terminate");
    assert_eq!(sizes(&aws.group(GROUP).await), (0, 0, 3));
    assert!(aws.live(GROUP).await.is_empty());
    be.instances(std::slice::from_ref(&pool))
        .await
        .expect("list");
    assert!(aws.parameters("/runscale/seed").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_then_reported_and_access_denied_names_the_permission() {
    let Some(moto) = moto().await else { return };
    let aws = Inspect::new(moto.url()).await;
    aws.create_group("fault-group", 3, &[]).await;
    let proxy = FaultProxy::start(moto.url()).await;
    let be = backend(
        &proxy.url,
        config(),
        &[("fault", PoolTemplate::group("fault-group"))],
    )
    .await;
    let pool = PoolId::new("fault");

    // Two throttled answers: the SDK retries (3 attempts) and the launch succeeds.
    proxy.fail("SetDesiredCapacity", Fault::Throttle, 2);
    let inst = be
        .launch(request("fault", "rs-fault-gggggggggg"))
        .await
        .expect("launch after retries");
    assert_eq!(proxy.seen("SetDesiredCapacity"), 3);
    aws.check_group("fault-group").await;

    // Throttled beyond the attempts: RateLimited, so the pool backs off; nothing changed.
    proxy.fail("SetDesiredCapacity", Fault::Throttle, 10);
    let e = be
        .launch(request("fault", "rs-fault-hhhhhhhhhh"))
        .await
        .expect_err("throttled");
    assert_eq!(e.kind(), ErrorKind::RateLimited { retry_after: None });
    assert_eq!(aws.group("fault-group").await.desired_capacity(), Some(1));
    proxy.fail("SetDesiredCapacity", Fault::Throttle, 0);
    proxy.fail("GetParametersByPath", Fault::Throttle, 10);
    let e = be
        .instances(std::slice::from_ref(&pool))
        .await
        .expect_err("ssm throttled");
    assert_eq!(e.kind(), ErrorKind::RateLimited { retry_after: None });
    proxy.fail("GetParametersByPath", Fault::Throttle, 0);

    // A missing permission is named, for Auto Scaling (XML) and SSM (JSON) alike.
    proxy.fail("SetDesiredCapacity", Fault::AccessDenied, 1);
    let e = be
        .launch(request("fault", "rs-fault-iiiiiiiiii"))
        .await
        .expect_err("denied");
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(
        e.to_string().contains("autoscaling:SetDesiredCapacity"),
        "{e}"
    );
    proxy.fail("DeleteParameter", Fault::AccessDenied, 1);
    let e = be.terminate(&pool, &inst.id).await.expect_err("denied");
    assert!(e.to_string().contains("ssm:DeleteParameter"), "{e}");
    // The instance went (terminate is idempotent); the retry cleans up.
    be.terminate(&pool, &inst.id)
        .await
        .expect("terminate again");
    assert!(aws.parameters("/runscale/fault").await.is_empty());

    // probe lists every missing permission it can detect.
    be.probe().await.expect("probe with every permission");
    proxy.fail("DescribeAutoScalingInstances", Fault::AccessDenied, 1);
    proxy.fail("GetParametersByPath", Fault::AccessDenied, 1);
    proxy.fail("DeleteParameter", Fault::AccessDenied, 1);
    let e = be.probe().await.expect_err("probe without permissions");
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(
        e.to_string().contains(
            "missing IAM permissions: ssm:GetParametersByPath, ssm:DeleteParameter, autoscaling:DescribeAutoScalingInstances"
        ),
        "{e}"
    );
    aws.check_group("fault-group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_scales_a_group_up_and_back_to_zero() {
    let Some(moto) = moto().await else { return };
    const POOL: &str = "scale";
    const GROUP: &str = "scale-group";
    let aws = Inspect::new(moto.url()).await;
    aws.create_group(GROUP, 4, &[]).await;
    let be = Arc::new(backend(moto.url(), config(), &[(POOL, PoolTemplate::group(GROUP))]).await);

    let world = World::new(
        Arc::new(SystemClock),
        WorldConfig {
            boot_delay: Duration::from_millis(300),
            auto_connect: true,
            ..WorldConfig::default()
        },
    );
    let spec = PoolSpec::test(POOL)
        .max(4)
        .boot_timeout(Duration::from_secs(20))
        .idle_timeout(Duration::from_secs(2));
    world.set_cap(POOL, 4);
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    let r = Reconciler::new(
        vec![PoolBinding {
            spec,
            provider_name: "memory".into(),
            provider: world.provider(),
            backend_name: "aws-asg".into(),
            backend: be.clone(),
        }],
        Arc::new(SystemClock),
        metrics,
        Options {
            interval: Duration::from_millis(300),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            ..Options::default()
        },
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));

    // The instance side, as deploy/aws/runner-user-data.sh does it: each new member reads and
    // deletes its credentials parameter, which names the runner its binding names.
    let mut started: HashSet<String> = HashSet::new();
    let mut peak = 0;
    world.enqueue(POOL, 6, Duration::from_millis(700));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out: {:?}",
            world.snapshot()
        );
        aws.check_group(GROUP).await;
        let live = aws.live(GROUP).await;
        peak = peak.max(live.len());
        for id in live.keys() {
            if started.contains(id) {
                continue;
            }
            let name = format!("/runscale/{POOL}/{id}");
            if let Ok(resp) = aws
                .ssm
                .get_parameter()
                .name(&name)
                .with_decryption(true)
                .send()
                .await
            {
                let text = resp
                    .parameter()
                    .and_then(|p| p.value())
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    text.contains(&format!("RUNSCALE_INSTANCE_ID={id}\n")),
                    "{text}"
                );
                aws.ssm
                    .delete_parameter()
                    .name(&name)
                    .send()
                    .await
                    .expect("delete");
                started.insert(id.clone());
            }
        }
        let s = world.snapshot();
        if s.completed.len() == 6 && live.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.expect("reconciler");
    let s = world.snapshot();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!((2..=4).contains(&peak), "peak {peak} within max 4");
    assert!(
        started.len() >= 2,
        "instances read their credentials: {started:?}"
    );
    let g = aws.group(GROUP).await;
    assert_eq!(g.desired_capacity(), Some(0));
    assert!(
        aws.parameters(&format!("/runscale/{POOL}"))
            .await
            .is_empty(),
        "parameters left"
    );
}
