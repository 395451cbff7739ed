//! Watches on the fake kube-apiserver with the real kube-rs client: event order, bookmarks,
//! selector transitions, `410 Gone` after compaction, and `kube::runtime` watchers and
//! reflectors converging (list-then-watch and streaming lists, through compactions and cut
//! connections).

#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod kube_support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_support::{eventually, pod, relabel, start};
use runscale_emulator::kube::{KubeConfig, KubeFaults};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

fn fast_bookmarks() -> KubeConfig {
    KubeConfig {
        bookmark_interval: Duration::from_millis(100),
        ..KubeConfig::default()
    }
}

/// The next event of a raw watch, within 5 s.
async fn next<S>(stream: &mut S) -> WatchEvent<Pod>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("a well-formed event")
}

/// The next event that is not a bookmark.
async fn next_change<S>(stream: &mut S) -> WatchEvent<Pod>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin,
{
    loop {
        match next(stream).await {
            WatchEvent::Bookmark(_) => continue,
            other => return other,
        }
    }
}

fn name_of(event: &WatchEvent<Pod>) -> (&'static str, String) {
    match event {
        WatchEvent::Added(p) => ("ADDED", p.metadata.name.clone().unwrap()),
        WatchEvent::Modified(p) => ("MODIFIED", p.metadata.name.clone().unwrap()),
        WatchEvent::Deleted(p) => ("DELETED", p.metadata.name.clone().unwrap()),
        WatchEvent::Bookmark(_) => ("BOOKMARK", String::new()),
        WatchEvent::Error(e) => panic!("watch error: {e:?}"),
    }
}

#[tokio::test]
async fn watch_from_a_list_sees_changes_in_order_with_bookmarks() {
    let f = start(fast_bookmarks()).await;
    let pods = f.pods("default");
    pods.create(
        &PostParams::default(),
        &pod("before", json!({}), "x:1", &["x"]),
    )
    .await
    .unwrap();
    let list = pods.list(&Default::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let params = WatchParams::default().timeout(10);
    let mut stream = pods.watch(&params, &rv).await.unwrap().boxed();
    pods.create(&PostParams::default(), &pod("w", json!({}), "x:1", &["x"]))
        .await
        .unwrap();
    relabel(&pods, "w", json!({"a": "b"})).await;
    pods.delete("w", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        name_of(&next_change(&mut stream).await),
        ("ADDED", "w".into())
    );
    let modified = next_change(&mut stream).await;
    assert_eq!(name_of(&modified), ("MODIFIED", "w".into()));
    let WatchEvent::Modified(m) = &modified else {
        unreachable!()
    };
    assert_eq!(m.metadata.labels.as_ref().unwrap()["a"], "b");
    assert_eq!(
        name_of(&next_change(&mut stream).await),
        ("DELETED", "w".into())
    );
    // Then, with nothing happening, bookmarks at the latest resourceVersion.
    let latest = f.emu.resource_version().to_string();
    let bookmark = loop {
        if let WatchEvent::Bookmark(b) = next(&mut stream).await {
            break b;
        }
    };
    assert_eq!(bookmark.metadata.resource_version, latest);
    assert!(f.emu.stats().watches >= 1);
    f.emu.shutdown().await;
}

#[tokio::test]
async fn watch_without_a_version_starts_with_the_current_state_and_honours_selectors() {
    let f = start(fast_bookmarks()).await;
    let pods = f.pods("default");
    for (name, pool) in [("a", "small"), ("b", "large")] {
        pods.create(
            &PostParams::default(),
            &pod(name, json!({"pool": pool}), "x:1", &["x"]),
        )
        .await
        .unwrap();
    }
    let params = WatchParams::default().labels("pool=small").timeout(10);
    let mut stream = pods.watch(&params, "0").await.unwrap().boxed();
    assert_eq!(
        name_of(&next_change(&mut stream).await),
        ("ADDED", "a".into())
    );
    // b enters the selector: ADDED; a leaves it: DELETED.
    relabel(&pods, "b", json!({"pool": "small"})).await;
    assert_eq!(
        name_of(&next_change(&mut stream).await),
        ("ADDED", "b".into())
    );
    relabel(&pods, "a", json!({"pool": "large"})).await;
    assert_eq!(
        name_of(&next_change(&mut stream).await),
        ("DELETED", "a".into())
    );
    f.emu.shutdown().await;
}

#[tokio::test]
async fn watches_from_compacted_versions_are_gone_and_timeouts_end_streams() {
    let f = start(KubeConfig {
        watch_history: 5,
        ..KubeConfig::default()
    })
    .await;
    let pods = f.pods("default");
    pods.create(&PostParams::default(), &pod("p0", json!({}), "x:1", &["x"]))
        .await
        .unwrap();
    let old = pods
        .get("p0")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for i in 1..=10 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i}"), json!({}), "x:1", &["x"]),
        )
        .await
        .unwrap();
    }
    let mut stream = pods
        .watch(&WatchParams::default().timeout(5), &old)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 410 Gone, got {:?}", name_of(&other)),
    }
    // A recent version works; once compacted away, it is gone too.
    let recent = f.emu.resource_version().to_string();
    let mut ok = pods
        .watch(&WatchParams::default().timeout(5), &recent)
        .await
        .unwrap()
        .boxed();
    pods.create(
        &PostParams::default(),
        &pod("late", json!({}), "x:1", &["x"]),
    )
    .await
    .unwrap();
    assert_eq!(
        name_of(&next_change(&mut ok).await),
        ("ADDED", "late".into())
    );
    f.emu.compact();
    let mut again = pods
        .watch(&WatchParams::default().timeout(5), &recent)
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next(&mut again).await, WatchEvent::Error(s) if s.code == 410));
    // timeoutSeconds ends the stream.
    let mut short = pods
        .watch(
            &WatchParams::default().timeout(1),
            &f.emu.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = short.next().await {
            event.unwrap();
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch ended after its timeout");
    f.emu.shutdown().await;
}

/// Names in a reflector store, sorted.
fn names(store: &reflector::Store<Pod>) -> Vec<String> {
    let mut names: Vec<String> = store
        .state()
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    names
}

async fn reflector_converges(config: KubeConfig, watcher_config: watcher::Config) {
    let f = start(config).await;
    let pods = f.pods("default");
    for name in ["a", "b", "c"] {
        pods.create(
            &PostParams::default(),
            &pod(name, json!({"app": "r"}), "x:1", &["x"]),
        )
        .await
        .unwrap();
    }
    pods.create(
        &PostParams::default(),
        &pod("other", json!({}), "x:1", &["x"]),
    )
    .await
    .unwrap();
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(pods.clone(), watcher_config.labels("app=r")),
    )
    .default_backoff()
    .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            // Errors (410s, cut connections) are retried by the watcher.
            let _ = item;
        }
    });
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    eventually(WAIT, "the initial three", || async {
        (names(&reader) == ["a", "b", "c"]).then_some(())
    })
    .await;
    pods.delete("b", &DeleteParams::default()).await.unwrap();
    pods.create(
        &PostParams::default(),
        &pod("d", json!({"app": "r"}), "x:1", &["x"]),
    )
    .await
    .unwrap();
    eventually(WAIT, "b gone and d there", || async {
        (names(&reader) == ["a", "c", "d"]).then_some(())
    })
    .await;
    // History lost under the watcher: it relists (410) and still converges.
    f.emu.compact();
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    pods.create(
        &PostParams::default(),
        &pod("e", json!({"app": "r"}), "x:1", &["x"]),
    )
    .await
    .unwrap();
    eventually(WAIT, "a gone and e there", || async {
        (names(&reader) == ["c", "d", "e"]).then_some(())
    })
    .await;
    task.abort();
    f.emu.shutdown().await;
}

#[tokio::test]
async fn reflector_converges_with_list_then_watch() {
    reflector_converges(fast_bookmarks(), watcher::Config::default().page_size(2)).await;
}

#[tokio::test]
async fn reflector_converges_with_streaming_lists() {
    reflector_converges(
        fast_bookmarks(),
        watcher::Config::default().streaming_lists(),
    )
    .await;
}

#[tokio::test]
async fn reflector_converges_while_watches_are_cut() {
    let mut config = fast_bookmarks();
    config.faults = KubeFaults {
        watch_disconnect_after: Some(Duration::from_millis(300)),
        ..KubeFaults::default()
    };
    reflector_converges(config, watcher::Config::default()).await;
}

#[tokio::test]
async fn watcher_survives_server_errors() {
    let f = start(fast_bookmarks()).await;
    let pods = f.pods("default");
    pods.create(&PostParams::default(), &pod("a", json!({}), "x:1", &["x"]))
        .await
        .unwrap();
    f.emu.set_faults(KubeFaults {
        error_rate: 0.5,
        seed: 7,
        ..KubeFaults::default()
    });
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(pods.clone(), watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(async move {
        // Errors are yielded, then retried with back-off.
        stream.for_each(|_| async {}).await;
    });
    let converged = tokio::time::timeout(WAIT, async {
        while names(&reader) != ["a"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if converged.is_err() {
        for r in f.emu.requests() {
            eprintln!("{} {}?{} {}", r.method, r.path, r.query, r.status);
        }
        panic!("the reflector did not converge");
    }
    assert!(f.emu.stats().faults > 0);
    task.abort();
    f.emu.shutdown().await;
}
