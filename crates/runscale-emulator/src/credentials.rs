//! runscale's credentials file (`{"runners":[{"name","vars","secrets"}]}`) as the CircleCI
//! and GitLab fake runners read it: one configuration per entry, each setting looked up in
//! the entry's secrets, then its variables, then the environment.

use std::collections::BTreeMap;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Deserialize)]
struct CredentialsFile {
    runners: Vec<CredentialsEntry>,
}

#[derive(Deserialize)]
struct CredentialsEntry {
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretString>,
}

/// The configurations `from_vars` makes of the file's entries (entries it makes none of are
/// skipped). A file that cannot be read or parsed is a `config_error`.
pub(crate) fn configs<C, E>(
    path: &Path,
    from_vars: impl Fn(&dyn Fn(&str) -> Option<String>) -> Result<Option<C>, E>,
    config_error: impl Fn(String) -> E,
) -> Result<Vec<C>, E> {
    let bytes =
        std::fs::read(path).map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    let file: CredentialsFile = serde_json::from_slice(&bytes).map_err(|e| {
        config_error(format!(
            "{}: not the expected JSON (line {})",
            path.display(),
            e.line()
        ))
    })?;
    let mut out = Vec::new();
    for entry in file.runners {
        let lookup = |n: &str| {
            entry
                .secrets
                .get(n)
                .map(|s| s.expose_secret().to_owned())
                .or_else(|| entry.vars.get(n).cloned())
                .or_else(|| std::env::var(n).ok())
        };
        if let Some(c) = from_vars(&lookup)? {
            out.push(c);
        }
    }
    Ok(out)
}
