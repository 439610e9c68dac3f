//! Bearer-token authentication, one middleware in front of every route.
//!
//! With an API token configured, every endpoint but the open ones ([`OPEN_PATHS`]: health,
//! readiness, metrics) needs `Authorization: Bearer TOKEN`: the API token for anything, the read
//! token for `GET` (and `HEAD`) only; without a token, or with a wrong one, 401 with
//! `WWW-Authenticate: Bearer`; the read token on another method, 403. Without an API token the
//! API is open, and a read token alone is refused at startup (it would protect nothing).
//!
//! Tokens are kept and compared as SHA-256 digests, in constant time: neither a token's content
//! nor its length shows through timing, and the process does not hold the tokens themselves.

use std::fmt;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use super::{ApiError, ApiState};

/// Paths served without a token (probes and scrapers carry none).
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// A token's SHA-256 digest.
type Digest = [u8; 32];

/// The configured tokens. `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    api: Option<Digest>,
    read: Option<Digest>,
}

/// A token configuration that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "a read token needs an API token: without PUBSUBPULL_API_TOKEN (--api-token) the API is \
         open to everyone, so a read token would protect nothing"
    )]
    ReadWithoutApi,
    #[error("the {0} is empty")]
    Empty(&'static str),
    #[error("the {0} must be printable ASCII without spaces (it is sent as `Authorization: Bearer TOKEN`)")]
    Invalid(&'static str),
    #[error("the read token must differ from the API token")]
    Same,
}

/// What a request's `Authorization` header grants.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    Full,
    Read,
    /// No bearer token.
    Missing,
    /// A bearer token that is neither.
    Invalid,
}

impl Auth {
    /// Tokens as configured: `api_token` for everything, `read_token` for reads only.
    pub fn new(api_token: Option<&str>, read_token: Option<&str>) -> Result<Auth, AuthError> {
        let check = |token: &str, which: &'static str| {
            if token.is_empty() {
                Err(AuthError::Empty(which))
            } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
                Err(AuthError::Invalid(which))
            } else {
                Ok(sha256(token.as_bytes()))
            }
        };
        let api = api_token.map(|token| check(token, "API token")).transpose()?;
        let read = read_token.map(|token| check(token, "read token")).transpose()?;
        match (api, read) {
            (None, Some(_)) => Err(AuthError::ReadWithoutApi),
            (Some(api), Some(read)) if api == read => Err(AuthError::Same),
            _ => Ok(Auth { api, read }),
        }
    }

    /// Whether requests need a token.
    pub fn is_enabled(&self) -> bool {
        self.api.is_some()
    }

    fn check(&self, authorization: Option<&HeaderValue>) -> Access {
        let Some(token) = authorization.and_then(|value| bearer_token(value.as_bytes())) else {
            return Access::Missing;
        };
        let presented = sha256(token);
        // Both compared, whatever the first gives.
        let is_api = self.api.map_or(0, |api| api.ct_eq(&presented).unwrap_u8());
        let is_read = self.read.map_or(0, |read| read.ct_eq(&presented).unwrap_u8());
        match (is_api, is_read) {
            (1, _) => Access::Full,
            (_, 1) => Access::Read,
            _ => Access::Invalid,
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |token: &Option<Digest>| token.map(|_| "<hidden>");
        f.debug_struct("Auth")
            .field("api_token", &shown(&self.api))
            .field("read_token", &shown(&self.read))
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// The token of `Bearer TOKEN` (the scheme is case-insensitive, as every HTTP auth scheme).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The middleware: lets a request through when its token allows it.
pub(super) async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let auth = &state.config.auth;
    if !auth.is_enabled() || OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match auth.check(request.headers().get(header::AUTHORIZATION)) {
        Access::Full => next.run(request).await,
        Access::Read if matches!(*request.method(), Method::GET | Method::HEAD) => next.run(request).await,
        Access::Read => ApiError::Forbidden.into_response(),
        Access::Missing => ApiError::Unauthorized { invalid: false }.into_response(),
        Access::Invalid => ApiError::Unauthorized { invalid: true }.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn grants_what_each_token_allows() {
        let auth = Auth::new(Some("full-secret"), Some("read-secret")).unwrap();
        assert!(auth.is_enabled());
        assert_eq!(auth.check(Some(&header("Bearer full-secret"))), Access::Full);
        assert_eq!(auth.check(Some(&header("bearer  full-secret "))), Access::Full);
        assert_eq!(auth.check(Some(&header("Bearer read-secret"))), Access::Read);
        for wrong in ["Bearer full-secre", "Bearer full-secret2", "Bearer FULL-SECRET", "Bearer x"] {
            assert_eq!(auth.check(Some(&header(wrong))), Access::Invalid, "{wrong}");
        }
        for missing in ["", "Bearer", "Bearer ", "Basic full-secret", "Bearerfull-secret", "full-secret"] {
            assert_eq!(auth.check(Some(&header(missing))), Access::Missing, "{missing:?}");
        }
        assert_eq!(auth.check(None), Access::Missing);
        let only_api = Auth::new(Some("full-secret"), None).unwrap();
        assert_eq!(only_api.check(Some(&header("Bearer read-secret"))), Access::Invalid);
    }

    #[test]
    fn refuses_configurations_that_would_mislead() {
        assert_eq!(Auth::new(None, Some("r")), Err(AuthError::ReadWithoutApi));
        assert_eq!(Auth::new(Some("same"), Some("same")), Err(AuthError::Same));
        assert_eq!(Auth::new(Some(""), None), Err(AuthError::Empty("API token")));
        assert_eq!(Auth::new(Some("a b"), None), Err(AuthError::Invalid("API token")));
        assert_eq!(Auth::new(Some("a"), Some("é")), Err(AuthError::Invalid("read token")));
        let open = Auth::new(None, None).unwrap();
        assert!(!open.is_enabled());
    }

    #[test]
    fn never_shows_the_tokens() {
        let auth = Auth::new(Some("full-secret"), Some("read-secret")).unwrap();
        let shown = format!("{auth:?}");
        assert_eq!(shown, "Auth { api_token: Some(\"<hidden>\"), read_token: Some(\"<hidden>\") }");
    }
}
