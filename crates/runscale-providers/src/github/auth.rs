//! Credentials: a personal access token, or a GitHub App's RS256 JWT and the installation
//! access tokens it buys, and the expiring-token cache (installation and registration tokens).
//!
//! Fetching tokens is the client's job ([`super::client`]); this module signs JWTs and decides
//! when a cached token must be replaced. Nothing here prints a secret: `Debug` is redacted.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use runscale_core::{Error, ErrorKind};

/// How early an expiring token is replaced: 5 minutes before it expires.
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How far back a JWT's `iat` is set, for clock drift (GitHub's advice: 60 s).
const JWT_BACKDATE_SECS: i64 = 60;

/// How long a JWT is valid after `iat` (GitHub's maximum: 10 minutes).
const JWT_LIFETIME_SECS: i64 = 600;

/// The claims of a GitHub App JWT.
#[derive(Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct Claims {
    /// Issued at: now − 60 s.
    pub iat: i64,
    /// Expires: `iat` + 10 minutes, i.e. 9 minutes from now.
    pub exp: i64,
    /// The App id or client id.
    pub iss: String,
}

/// The claims of a JWT signed at `now` (epoch seconds) for `issuer`.
pub(crate) fn claims(issuer: &str, now: i64) -> Claims {
    let iat = now - JWT_BACKDATE_SECS;
    Claims {
        iat,
        exp: iat + JWT_LIFETIME_SECS,
        iss: issuer.to_owned(),
    }
}

/// A GitHub App's signing identity.
pub(crate) struct AppKey {
    issuer: String,
    key: EncodingKey,
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppKey")
            .field("issuer", &self.issuer)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl AppKey {
    /// Loads the App's PEM private key (PKCS#1 `RSA PRIVATE KEY`, as GitHub hands it out, or
    /// PKCS#8).
    pub(crate) fn new(issuer: String, pem: &SecretString) -> Result<Self, Error> {
        let key = EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes()).map_err(|e| {
            Error::new(
                "github.auth",
                ErrorKind::Misconfigured,
                format!("the App private key is not an RSA key in PEM form ({e})"),
            )
        })?;
        Ok(Self { issuer, key })
    }

    /// A JWT for the App's own endpoints, signed at `now`.
    pub(crate) fn jwt(&self, now: DateTime<Utc>) -> Result<SecretString, Error> {
        let c = claims(&self.issuer, now.timestamp());
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &c, &self.key)
            .map(SecretString::from)
            .map_err(|e| {
                Error::new(
                    "github.auth",
                    ErrorKind::Misconfigured,
                    format!("cannot sign the App JWT: {e}"),
                )
            })
    }
}

/// What authenticates requests.
#[derive(Debug)]
pub(crate) enum Credential {
    /// A personal access token.
    Token(SecretString),
    /// A GitHub App: JWT for `/app/...`, installation tokens for the rest.
    App(AppKey),
}

/// A token that expires, cached until [`REFRESH_MARGIN`] before that.
#[derive(Default)]
pub(crate) struct TokenCache {
    current: Option<(SecretString, DateTime<Utc>)>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("expires_at", &self.current.as_ref().map(|(_, e)| e))
            .finish()
    }
}

impl TokenCache {
    /// The cached token, if it is good for at least another [`REFRESH_MARGIN`] at `now`.
    pub(crate) fn get(&self, now: DateTime<Utc>) -> Option<SecretString> {
        let (token, expires_at) = self.current.as_ref()?;
        let margin = chrono::Duration::from_std(REFRESH_MARGIN).unwrap_or_default();
        (now + margin < *expires_at).then(|| token.clone())
    }

    /// Stores a fresh token.
    pub(crate) fn put(&mut self, token: SecretString, expires_at: DateTime<Utc>) {
        self.current = Some((token, expires_at));
    }

    /// Forgets the token (GitHub rejected it).
    pub(crate) fn clear(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_claims_follow_githubs_rules() {
        let now = 1_700_000_000;
        let c = claims("Iv1.abc", now);
        assert_eq!(c.iat, now - 60, "iat is backdated 60 s for clock drift");
        assert!(c.exp - now <= 600, "exp at most 10 minutes ahead");
        assert!(c.exp - c.iat <= 600, "lifetime at most 10 minutes");
        assert!(c.exp > now + 60, "valid for a while");
        assert_eq!(c.iss, "Iv1.abc");
    }

    #[test]
    fn tokens_are_replaced_five_minutes_before_expiry() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let mut cache = TokenCache::default();
        assert!(cache.get(now).is_none());
        cache.put(
            SecretString::from("t1".to_owned()),
            now + chrono::Duration::minutes(60),
        );
        assert_eq!(
            cache.get(now).map(|t| t.expose_secret().to_owned()),
            Some("t1".to_owned())
        );
        assert!(cache.get(now + chrono::Duration::minutes(54)).is_some());
        assert!(cache.get(now + chrono::Duration::minutes(55)).is_none());
        assert!(!format!("{cache:?}").contains("t1"));
        cache.clear();
        assert!(cache.get(now).is_none());
    }

    /// A fresh RSA key as PKCS#8 PEM, and its public key (PKCS#1 DER).
    pub(crate) fn test_key() -> (SecretString, Vec<u8>) {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        use base64::Engine;
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("generate");
        let der = pair.as_der().expect("der");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("ascii"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        (SecretString::from(pem), pair.public_key().as_ref().to_vec())
    }

    #[test]
    fn jwts_are_rs256_signed_with_the_claims() {
        let (pem, public) = test_key();
        let key = AppKey::new("Iv1.abc".into(), &pem).expect("key");
        assert!(!format!("{key:?}").contains("PRIVATE"));
        let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("time");
        let jwt = key.jwt(now).expect("jwt");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_issuer(&["Iv1.abc"]);
        let decoded = jsonwebtoken::decode::<Claims>(
            jwt.expose_secret(),
            &jsonwebtoken::DecodingKey::from_rsa_der(&public),
            &validation,
        )
        .expect("valid signature");
        assert_eq!(decoded.header.alg, Algorithm::RS256);
        assert_eq!(decoded.claims, claims("Iv1.abc", now.timestamp()));
        let (_, other_public) = test_key();
        assert!(
            jsonwebtoken::decode::<Claims>(
                jwt.expose_secret(),
                &jsonwebtoken::DecodingKey::from_rsa_der(&other_public),
                &validation,
            )
            .is_err(),
            "another key does not verify it"
        );
    }

    #[test]
    fn a_bad_key_is_a_configuration_error_without_the_key() {
        let pem = SecretString::from("-----BEGIN RSA PRIVATE KEY-----\nnope\n".to_owned());
        let e = AppKey::new("1".into(), &pem).expect_err("bad key");
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(!e.to_string().contains("nope"));
    }
}
