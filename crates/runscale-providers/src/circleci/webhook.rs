//! `/webhooks/circleci`: `circleci-signature` verification (HMAC-SHA256 of the raw body,
//! `v1=<hex>`, constant time, before anything is parsed), de-duplication by delivery id, and
//! the project a `job-completed` / `workflow-completed` event names.

use std::collections::{HashSet, VecDeque};

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::http;

/// Largest body accepted: 1 MiB.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Delivery ids remembered.
const SEEN_CAPACITY: usize = 10_000;

/// Checks `circleci-signature` against the body. The header may list several
/// comma-separated `version=value` pairs; only `v1` exists and is checked. The error says what
/// is wrong without quoting anything.
pub(crate) fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), &'static str> {
    let header = header.ok_or("circleci-signature header missing")?;
    let hex = header
        .split(',')
        .find_map(|p| p.trim().strip_prefix("v1="))
        .ok_or("circleci-signature has no v1=<hex> value")?;
    let tag =
        http::decode_sha256_hex(hex.trim()).ok_or("circleci-signature v1 is not 64 hex digits")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "unusable webhook secret")?;
    mac.update(body);
    mac.verify_slice(&tag)
        .map_err(|_| "circleci-signature does not match the body and the webhook secret")
}

/// Delivery ids seen recently; the oldest is forgotten first.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    /// Remembers `id`; false if it was seen already.
    pub(crate) fn first_time(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

/// The parts of an event runscale reads.
#[derive(Deserialize)]
pub(crate) struct Event {
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) project: Option<Project>,
}

/// The event's project.
#[derive(Deserialize)]
pub(crate) struct Project {
    #[serde(default)]
    pub(crate) slug: Option<String>,
}

/// A project slug in one spelling: CircleCI writes `github/org/repo` and `bitbucket/org/repo`
/// in webhooks (`gh/` and `bb/` in its API and URLs), and `circleci/<org-id>/<project-id>`
/// for projects of GitHub App and GitLab organisations (webhooks reference, samples).
/// Returns the slug with its first segment spelled out (`gh` → `github`, `bb` → `bitbucket`)
/// and lower-cased, or why it is not a project slug.
pub(crate) fn canonical_slug(slug: &str) -> Result<String, &'static str> {
    let parts: Vec<&str> = slug.split('/').collect();
    let [vcs, org, project] = parts.as_slice() else {
        return Err("is not a project slug like github/org/repo (three parts)");
    };
    if org.is_empty() || project.is_empty() {
        return Err("has an empty organisation or project");
    }
    let vcs = match vcs.to_ascii_lowercase().as_str() {
        "gh" | "github" => "github",
        "bb" | "bitbucket" => "bitbucket",
        "circleci" => {
            if !is_uuid(org) || !is_uuid(project) {
                return Err(
                    "is a circleci/ slug without two UUIDs (circleci/<org-id>/<project-id>)",
                );
            }
            "circleci"
        }
        _ => return Err("starts with neither github, gh, bitbucket, bb nor circleci"),
    };
    Ok(format!("{vcs}/{org}/{project}").to_ascii_lowercase())
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_of_every_documented_form_have_one_spelling() {
        for (a, b) in [
            ("gh/Org/Repo", "github/org/repo"),
            ("github/org/repo", "github/org/repo"),
            ("bb/org/repo", "bitbucket/org/repo"),
            ("Bitbucket/org/repo", "bitbucket/org/repo"),
            (
                "circleci/0D4C6AE4-1F0B-4F8A-9A8A-3B1C2D3E4F50/9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4",
                "circleci/0d4c6ae4-1f0b-4f8a-9a8a-3b1c2d3e4f50/9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4",
            ),
        ] {
            assert_eq!(canonical_slug(a).as_deref(), Ok(b), "{a}");
        }
        for bad in [
            "org/repo",
            "gh/org/repo/extra",
            "gh//repo",
            "gitlab/org/repo",
            "circleci/org/repo",
            "",
        ] {
            assert!(canonical_slug(bad).is_err(), "{bad:?} must be refused");
        }
    }

    use runscale_emulator::circleci::signature as sign;

    #[test]
    fn signature_is_checked_over_the_raw_body() {
        let body = br#"{"id":"1","type":"job-completed"}"#;
        let good = sign(b"s3cret", body);
        assert!(verify(b"s3cret", body, Some(&good)).is_ok());
        assert!(verify(b"s3cret", body, Some(&format!("v0=abc, {good}"))).is_ok());
        assert!(verify(b"other", body, Some(&good)).is_err());
        assert!(verify(b"s3cret", b"{}", Some(&good)).is_err());
        assert!(verify(b"s3cret", body, None).is_err());
        assert!(verify(b"s3cret", body, Some("v1=zz")).is_err());
        assert!(verify(b"s3cret", body, Some(&good.replace("v1=", "sha256="))).is_err());
    }

    #[test]
    fn seen_ids_are_bounded() {
        let mut seen = Seen::default();
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        for i in 0..SEEN_CAPACITY {
            seen.first_time(&i.to_string());
        }
        assert!(seen.ids.len() <= SEEN_CAPACITY);
        assert!(seen.first_time("a"), "the oldest id is forgotten first");
    }
}
