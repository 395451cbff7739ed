//! Authentication of REST requests: bearer tokens from the `Authorization` header, and
//! GitHub App JWTs (RS256, checked against the App's public key: signature, `iat`, `exp`
//! at most 10 minutes after `iat`, `iss` = App id or client id).

use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, DOC_APPS};
use super::state::AppState;

/// The token of `Authorization: Bearer <t>` or `Authorization: token <t>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then_some(token)
        .filter(|t| !t.is_empty())
}

#[derive(Deserialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: Value,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message, DOC_APPS)
}

/// The longest lifetime GitHub accepts for an App JWT.
const MAX_JWT_LIFETIME_SECS: i64 = 600;
/// Clock drift tolerated on `iat`.
const IAT_DRIFT_SECS: i64 = 60;

/// Verifies an App JWT at `now` (Unix seconds).
pub(crate) fn verify_app_jwt(
    app: Option<&AppState>,
    token: &str,
    now: i64,
) -> Result<(), ApiError> {
    let app = app.ok_or_else(|| unauthorized("A JSON web token could not be decoded"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token, &app.decoding_key, &validation)
        .map_err(|_| unauthorized("A JSON web token could not be decoded"))?;
    let claims = data.claims;
    if claims.exp <= now {
        return Err(unauthorized(
            "'Expiration time' claim ('exp') must be a numeric value representing the future \
             time at which the assertion expires",
        ));
    }
    if claims.iat > now + IAT_DRIFT_SECS {
        return Err(unauthorized(
            "'Issued at' claim ('iat') must be an Integer representing the time that the \
             assertion was issued",
        ));
    }
    if claims.exp - claims.iat > MAX_JWT_LIFETIME_SECS {
        return Err(unauthorized(
            "'Expiration time' claim ('exp') is too far in the future",
        ));
    }
    let issuer_ok = match &claims.iss {
        Value::Number(n) => n.as_u64() == Some(app.app_id),
        Value::String(s) => {
            *s == app.app_id.to_string() || app.client_id.as_deref() == Some(s.as_str())
        }
        _ => false,
    };
    if !issuer_ok {
        return Err(unauthorized(
            "'Issuer' claim ('iss') does not name this App",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_accepts_both_schemes() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("token xyz"));
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
