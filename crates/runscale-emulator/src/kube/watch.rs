//! Watches: a chunked response of newline-delimited `{"type", "object"}` events (`ADDED`,
//! `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`) read from the store's event history.
//!
//! - without a resourceVersion (or with `0`), or with `sendInitialEvents=true`, the watch
//!   starts with an `ADDED` event per matching object; with `sendInitialEvents` and
//!   bookmarks, a bookmark annotated `k8s.io/initial-events-end` follows;
//! - from a resourceVersion older than the kept history, the only event is an `ERROR` with a
//!   `410 Expired` Status (as a real API server's watch cache answers); a watch that falls
//!   behind the history while running ends the same way;
//! - an object that enters or leaves the selector shows up as `ADDED` or `DELETED`;
//! - bookmarks come every `bookmark_interval`; the stream ends after `timeoutSeconds`, at
//!   shutdown, or when a fault cuts it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::resources::ResourceType;
use super::selectors::Selectors;
use super::server::Shared;
use super::status::ApiError;
use super::store::{Event, EventKind};
use super::table::TableRequest;

/// A parsed watch request.
pub(crate) struct WatchRequest {
    /// What is watched.
    pub rt: &'static ResourceType,
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// Label and field selectors.
    pub selectors: Selectors,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// Objects rendered as one-row Tables (kubectl `get -w`).
    pub table: Option<TableRequest>,
}

fn line(kind: &str, object: &Value) -> String {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    text
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta})
}

impl WatchRequest {
    fn in_scope(&self, event: &Event) -> bool {
        event.rt == self.rt.id
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == event.namespace)
    }

    /// The event a watcher sees for `event`, if any.
    fn translate(&self, event: &Event) -> Option<(&'static str, Arc<Value>)> {
        if !self.in_scope(event) {
            return None;
        }
        let now = self.selectors.matches(&event.object);
        match event.kind {
            EventKind::Added => now.then_some("ADDED"),
            EventKind::Deleted => now.then_some("DELETED"),
            EventKind::Modified => {
                let before = event
                    .prev
                    .as_ref()
                    .is_some_and(|p| self.selectors.matches(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
        .map(|kind| (kind, event.object.clone()))
    }

    fn render(&self, kind: &str, object: &Value) -> String {
        match &self.table {
            Some(t) => line(kind, &t.render_one(self.rt, object)),
            None => line(kind, object),
        }
    }
}

/// Starts a watch: checks the request, then streams events from a background task.
pub(crate) fn start(shared: Arc<Shared>, req: WatchRequest) -> Result<Response, ApiError> {
    let rv = match req.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}")))?,
        ),
    };
    let initial = req.send_initial_events || rv.is_none();
    let (tx, rx) = mpsc::channel::<String>(64);
    // Under one lock: the initial state and the position the stream continues from.
    let (first, pos) = shared.read(|store| {
        let mut first = Vec::new();
        let pos = store.resource_version();
        if initial {
            for (_, obj) in store.all(req.rt, req.namespace.as_deref()) {
                if req.selectors.matches(obj) {
                    first.push(req.render("ADDED", obj));
                }
            }
            if req.send_initial_events && req.bookmarks {
                first.push(line("BOOKMARK", &bookmark(req.rt, pos, true)));
            }
            return (first, Some(pos));
        }
        let from = rv.unwrap_or(pos);
        match store.check_watch_start(from) {
            Ok(()) => (first, Some(from)),
            Err(e) => {
                first.push(line("ERROR", &e.to_status()));
                (first, None)
            }
        }
    });
    let disconnect = shared.watch_disconnect_after();
    tokio::spawn(async move {
        for text in first {
            if tx.send(text).await.is_err() {
                return;
            }
        }
        if let Some(pos) = pos {
            stream(shared, req, pos, disconnect, tx).await;
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|text| (Ok::<_, Infallible>(text), rx))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

async fn stream(
    shared: Arc<Shared>,
    req: WatchRequest,
    mut pos: u64,
    disconnect: Option<Duration>,
    tx: mpsc::Sender<String>,
) {
    let mut changed = shared.changed.subscribe();
    let started = Instant::now();
    let deadline = [req.timeout, disconnect]
        .into_iter()
        .flatten()
        .min()
        .map(|d| started + d);
    let interval = shared.bookmark_interval;
    let mut next_bookmark = started + interval;
    let cancel = shared.cancel.clone();
    loop {
        let (lines, expired) = shared.read(|store| match store.events_after(pos) {
            Ok(events) => {
                let lines: Vec<String> = events
                    .filter_map(|e| req.translate(e))
                    .map(|(kind, obj)| req.render(kind, &obj))
                    .collect();
                pos = store.resource_version();
                (lines, None)
            }
            Err(compacted) => (
                Vec::new(),
                Some(ApiError::expired(format!(
                    "too old resource version: {pos} ({compacted})"
                ))),
            ),
        });
        for text in lines {
            if tx.send(text).await.is_err() {
                return;
            }
        }
        if let Some(e) = expired {
            let _ = tx.send(line("ERROR", &e.to_status())).await;
            return;
        }
        let sleep_until = deadline.map_or(next_bookmark, |d| d.min(next_bookmark));
        tokio::select! {
            _ = cancel.cancelled() => return,
            result = changed.changed() => if result.is_err() { return },
            _ = tokio::time::sleep_until(sleep_until) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                if Instant::now() >= next_bookmark {
                    next_bookmark = Instant::now() + interval;
                    if req.bookmarks
                        && tx.send(line("BOOKMARK", &bookmark(req.rt, pos, false))).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}
