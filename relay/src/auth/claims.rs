//! The claims of a verified token ([RFC 7519 §4]), checked against the configuration and the
//! current time.
//!
//! [RFC 7519 §4]: https://www.rfc-editor.org/rfc/rfc7519#section-4

use serde::Deserialize;

use super::scope::{self, RoleBinding};
use super::{AuthConfig, AuthError};

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Who: the token's subject (`sub`).
    pub sub: String,
    /// Tenant (`org`): the only org this session may see.
    pub org: String,
    /// Role bindings (`roles`) within the org.
    pub roles: Vec<RoleBinding>,
    /// Expiry (`exp`), Unix seconds.
    pub exp: i64,
}

/// A NumericDate: seconds since the epoch, an integer or (rarely) a fraction.
#[derive(Clone, Copy)]
struct NumericDate(i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        Ok(Self(if let Some(i) = n.as_i64() {
            i
        } else if n.as_u64().is_some() {
            i64::MAX
        } else {
            // `as` saturates; JSON has no NaN.
            n.as_f64().map_or(0, |f| f.floor() as i64)
        }))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Registered and logrelay claims; other members are ignored.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
    #[serde(default)]
    iat: Option<NumericDate>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    roles: Option<serde_json::Value>,
}

impl Claims {
    /// Parses and checks the payload of a token whose signature has been verified.
    ///
    /// Checks, in order: shape, `exp` present, `exp` (plus skew) not past, `nbf` and `iat` (minus
    /// skew) not in the future, `exp` within `max_lifetime_secs` of now (plus skew) and of
    /// `iat`, `iss` and `aud` when configured, `sub` present, `org` present.
    pub(super) fn from_payload(
        payload: &[u8],
        config: &AuthConfig,
        now_unix_secs: i64,
    ) -> Result<Self, AuthError> {
        let raw: RawClaims = super::jwt::json_object(payload).ok_or(AuthError::Malformed(
            "claims are not a JSON object with the registered claim types",
        ))?;
        let skew = i64::from(config.clock_skew_secs);
        let exp = raw.exp.ok_or(AuthError::MissingClaim("exp"))?.0;
        check_exp(exp, skew, now_unix_secs)?;
        for t in [raw.nbf, raw.iat].into_iter().flatten() {
            if now_unix_secs.saturating_add(skew) < t.0 {
                return Err(AuthError::NotYetValid {
                    not_before: t.0,
                    now: now_unix_secs,
                });
            }
        }
        check_lifetime(exp, raw.iat.map(|t| t.0), config, now_unix_secs)?;
        if let Some(want) = &config.issuer
            && raw.iss.as_ref() != Some(want)
        {
            return Err(AuthError::WrongIssuer);
        }
        if let Some(want) = &config.audience {
            let ok = match &raw.aud {
                Some(Audience::One(a)) => a == want,
                Some(Audience::Many(all)) => all.contains(want),
                None => false,
            };
            if !ok {
                return Err(AuthError::WrongAudience);
            }
        }
        let sub = raw
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingClaim("sub"))?;
        let org = raw
            .org
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingOrg)?;
        let roles = match raw.roles {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => scope::parse_roles(v).map_err(AuthError::Malformed)?,
        };
        Ok(Self {
            sub,
            org,
            roles,
            exp,
        })
    }
}

/// Refuses a token that would live longer than `max_lifetime_secs`: measured from now (the
/// clock skew allowed on top) and from its own `iat` when it has one.
fn check_lifetime(
    exp: i64,
    iat: Option<i64>,
    config: &AuthConfig,
    now_unix_secs: i64,
) -> Result<(), AuthError> {
    let max = i64::try_from(config.max_lifetime_secs).unwrap_or(i64::MAX);
    let skew = i64::from(config.clock_skew_secs);
    let too_long = |from: &'static str| AuthError::LifetimeTooLong {
        exp,
        max_secs: config.max_lifetime_secs,
        from,
    };
    if exp.saturating_sub(now_unix_secs) > max.saturating_add(skew) {
        return Err(too_long("now"));
    }
    if let Some(iat) = iat
        && exp.saturating_sub(iat) > max
    {
        return Err(too_long("iat"));
    }
    Ok(())
}

/// Refuses once `now` reaches `exp + skew` (RFC 7519 §4.1.4: "on or after").
pub(super) fn check_exp(exp: i64, skew: i64, now_unix_secs: i64) -> Result<(), AuthError> {
    if now_unix_secs >= exp.saturating_add(skew) {
        Err(AuthError::Expired {
            exp,
            now: now_unix_secs,
        })
    } else {
        Ok(())
    }
}
