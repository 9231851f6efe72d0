//! Who a session is and what it may see. Pure: the current time is a parameter, keys are values.
//!
//! A session presents a bearer token ([`token_from_headers`]): in `Authorization: Bearer <jwt>`,
//! or — since browsers cannot set headers on a WebSocket — as an entry `bearer.<jwt>` of
//! `Sec-WebSocket-Protocol`, next to the subprotocol [`SUBPROTOCOL`], which is the one echoed
//! back. [`Verifier::verify`] checks it as a JWT signed with `EdDSA` or `ES256` by a key of the
//! configured key set ([`jwt`]; `HS256` only in development mode), then its claims ([`Claims`]):
//! expiry with clock skew, `nbf`/`iat`, issuer and audience when configured, `sub`, `org` and
//! the role bindings ([`scope`]).
//!
//! Every subscribe is then checked twice: up-front with [`selector_allowed`] (a selector naming
//! a domain or project no binding reaches is refused), and per stream with [`authorize`] (same
//! org, and a binding covering the stream). Default deny: a session only ever sees a stream for
//! which [`authorize`] says yes.
//!
//! Every failure is an [`AuthError`], which knows its HTTP status, WebSocket close code, wire
//! error code and a short reason for metrics and audit.

pub mod claims;
pub mod jwt;
pub mod scope;
/// Token signing for tests (of this crate and the end-to-end suite); never used by the relay.
#[doc(hidden)]
pub mod testkit;

use logrelay_wire::control::ErrorCode;
use logrelay_wire::session::close;
use serde::Deserialize;

pub use claims::Claims;
pub use jwt::{KeySet, KeySetError};
pub use scope::{Denial, Role, RoleBinding, Scope, authorize, selector_allowed};

/// WebSocket subprotocol of the session hop; echoed in the handshake response.
pub const SUBPROTOCOL: &str = "logrelay.v1";

/// Prefix of the `Sec-WebSocket-Protocol` entry carrying a bearer token (`bearer.<jwt>`).
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Longest token accepted by default (8 KiB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock difference tolerated by default, in seconds.
pub const DEFAULT_CLOCK_SKEW_SECS: u32 = 60;

/// Longest token lifetime accepted by default, in seconds (24 hours).
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 86_400;

/// Session token verification settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Issuer tokens must name in `iss`. Unset: `iss` is not checked.
    pub issuer: Option<String>,
    /// Audience tokens must name in `aud` (a string, or one of a list). Unset: `aud` is not
    /// checked.
    pub audience: Option<String>,
    /// Seconds of clock difference tolerated on `exp`, `nbf` and `iat` (default 60).
    pub clock_skew_secs: u32,
    /// Longest token accepted, in bytes (default 8 KiB); longer ones are refused unread.
    pub max_token_bytes: usize,
    /// Longest lifetime accepted, in seconds (default 24 h): a token whose `exp` lies further
    /// than this from now (plus the clock skew), or from its `iat`, is refused.
    pub max_lifetime_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            clock_skew_secs: DEFAULT_CLOCK_SKEW_SECS,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        }
    }
}

/// Why a session's credentials were refused. Caused by the session; a retry with the same token
/// never helps (with a fresh token it may, for [`AuthError::Expired`] and
/// [`AuthError::NotYetValid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither `Authorization: Bearer` nor a `bearer.` subprotocol entry carried a token (or
    /// they carried two different ones).
    #[error("no bearer token presented")]
    Missing,
    /// The token is longer than the configured `max_token_bytes`; refused before decoding.
    #[error("token of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Token length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// Not a JWS compact serialization, bad base64url or JSON, a `crit` header, or claims of
    /// the wrong types (including role bindings outside the RBAC model).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is `none`, unknown, `HS256` outside development mode, or does not fit
    /// the type of the key its `kid` names (algorithm confusion).
    #[error("token algorithm {0:?} is not allowed")]
    AlgNotAllowed(String),
    /// No configured key has the token's `kid`, or the token has no `kid` and not exactly one
    /// key fits its algorithm.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify with the selected key.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` plus the allowed clock skew is not after now.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `exp` lies further than `max_lifetime_secs` from now (plus the clock skew) or from
    /// `iat`: a token that would (nearly) never expire.
    #[error(
        "token lifetime too long: exp {exp} is more than {max_secs} s after {from} (the relay's \
         limit); mint tokens that expire sooner"
    )]
    LifetimeTooLong {
        /// The token's `exp`.
        exp: i64,
        /// The limit in force.
        max_secs: u64,
        /// `now` or `iat`: which the lifetime was measured from.
        from: &'static str,
    },
    /// `nbf` or `iat` is later than now plus the allowed clock skew.
    #[error("token not valid before {not_before} (now {now})")]
    NotYetValid {
        /// The token's `nbf` or `iat`.
        not_before: i64,
        /// The time of the check.
        now: i64,
    },
    /// An issuer is configured and `iss` is absent or another.
    #[error("token issued by an untrusted issuer")]
    WrongIssuer,
    /// An audience is configured and `aud` does not name it.
    #[error("token not intended for this audience")]
    WrongAudience,
    /// A required claim (`exp`, `sub`) is absent or empty.
    #[error("token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    /// The token is genuine but names no `org`: it grants access to no tenant.
    #[error("token names no org")]
    MissingOrg,
}

impl AuthError {
    /// Longest `alg` value quoted back in an error.
    const MAX_ALG_ECHO: usize = 32;

    pub(crate) fn alg_not_allowed(alg: &str) -> Self {
        let mut end = alg.len().min(Self::MAX_ALG_ECHO);
        while !alg.is_char_boundary(end) {
            end -= 1;
        }
        Self::AlgNotAllowed(alg[..end].to_owned())
    }

    /// HTTP status when refusing the WebSocket upgrade: 401 when the credentials are missing or
    /// not accepted, 403 when they are genuine but grant no tenant.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::MissingOrg => 403,
            _ => 401,
        }
    }

    /// WebSocket close code when refusing or ending a session.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Expired { .. } => close::TOKEN_EXPIRED,
            Self::MissingOrg => close::FORBIDDEN,
            _ => close::UNAUTHENTICATED,
        }
    }

    /// Error code for a session `error` event.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::MissingOrg => ErrorCode::Forbidden,
            _ => ErrorCode::Unauthenticated,
        }
    }

    /// Short machine-readable reason, for metric labels, close reasons and audit events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::TooLarge { .. } => "token_too_large",
            Self::Malformed(_) => "token_malformed",
            Self::AlgNotAllowed(_) => "alg_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired { .. } => "token_expired",
            Self::LifetimeTooLong { .. } => "token_lifetime_too_long",
            Self::NotYetValid { .. } => "token_not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "claim_missing",
            Self::MissingOrg => "org_missing",
        }
    }
}

/// Verifies session tokens against a key set. Immutable: to rotate keys, build a new one.
#[derive(Debug)]
pub struct Verifier {
    config: AuthConfig,
    keys: KeySet,
}

impl Verifier {
    /// A verifier with these settings and keys.
    pub fn new(config: AuthConfig, keys: KeySet) -> Self {
        Self { config, keys }
    }

    /// Its settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Verifies `token` at time `now_unix_secs` and returns its claims.
    pub fn verify(&self, token: &str, now_unix_secs: i64) -> Result<Claims, AuthError> {
        let payload = jwt::verify_compact(token, &self.keys, self.config.max_token_bytes)?;
        Claims::from_payload(&payload, &self.config, now_unix_secs)
    }

    /// Re-checks the expiry of already verified claims (before each subscribe, and when the
    /// timer set for [`Verifier::expires_at`] fires).
    pub fn check_not_expired(&self, claims: &Claims, now_unix_secs: i64) -> Result<(), AuthError> {
        claims::check_exp(
            claims.exp,
            i64::from(self.config.clock_skew_secs),
            now_unix_secs,
        )
    }

    /// First Unix second at which `claims` are refused: when to end the session's
    /// subscriptions with [`close::TOKEN_EXPIRED`].
    pub fn expires_at(&self, claims: &Claims) -> i64 {
        claims
            .exp
            .saturating_add(i64::from(self.config.clock_skew_secs))
    }
}

/// A bearer token found in a WebSocket upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BearerToken<'a> {
    /// The token (a JWT, not yet verified).
    pub token: &'a str,
    /// The subprotocol to echo in the response's `Sec-WebSocket-Protocol` ([`SUBPROTOCOL`]),
    /// when the client offered it. The `bearer.` entry is never echoed.
    pub subprotocol: Option<&'static str>,
}

/// Finds the session's bearer token in the upgrade request's `Authorization` header
/// (`Bearer <token>`, scheme case-insensitive) or `Sec-WebSocket-Protocol` header (a
/// comma-separated list such as `logrelay.v1, bearer.<token>`; join repeated headers with `,`).
///
/// `None` when there is no token, when the protocol list holds more than one `bearer.` entry,
/// when both headers carry different tokens, or when the token rides in the protocol list
/// without [`SUBPROTOCOL`] (the response would have to echo the token itself).
pub fn token_from_headers<'a>(
    authorization: Option<&'a str>,
    websocket_protocol: Option<&'a str>,
) -> Option<BearerToken<'a>> {
    let from_auth = authorization.and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        let token = token.trim_start_matches(' ');
        (scheme.eq_ignore_ascii_case("bearer")
            && !token.is_empty()
            && !token.contains(|c: char| c.is_ascii_whitespace()))
        .then_some(token)
    });
    let mut from_protocol = None;
    for entry in protocol_entries(websocket_protocol) {
        if let Some(token) = entry.strip_prefix(BEARER_PROTOCOL_PREFIX) {
            if from_protocol.is_some() || token.is_empty() {
                return None;
            }
            from_protocol = Some(token);
        }
    }
    let subprotocol = select_subprotocol(websocket_protocol);
    let token = match (from_auth, from_protocol) {
        (Some(a), Some(p)) if a != p => return None,
        (_, Some(_)) if subprotocol.is_none() => return None,
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return None,
    };
    Some(BearerToken { token, subprotocol })
}

/// The subprotocol to echo for a `Sec-WebSocket-Protocol` request header: [`SUBPROTOCOL`] when
/// offered, else none.
pub fn select_subprotocol(websocket_protocol: Option<&str>) -> Option<&'static str> {
    protocol_entries(websocket_protocol)
        .any(|e| e == SUBPROTOCOL)
        .then_some(SUBPROTOCOL)
}

fn protocol_entries(header: Option<&str>) -> impl Iterator<Item = &str> {
    header
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(|e| e.trim_matches([' ', '\t']))
        .filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests;
