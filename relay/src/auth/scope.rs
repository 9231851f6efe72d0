//! Role bindings and what they let a session see: the platform's RBAC model.
//!
//! A token binds roles to scopes inside its org:
//!
//! | `scope` in the token            | [`Scope`]            | covers the streams labelled        |
//! | ------------------------------- | -------------------- | ---------------------------------- |
//! | absent or `null`                | [`Scope::Org`]       | anything in the org                |
//! | `{"domain":"d"}`                | [`Scope::Domain`]    | `domain = d`                       |
//! | `{"domain":"d","project":"p"}`  | [`Scope::Project`]   | `domain = d` and `project = p`     |
//!
//! A stream without a `domain` label is covered only by an org-wide binding; one with a domain
//! but no `project` by an org-wide or a domain binding. `viewer`, `contributor` and `admin` may
//! all read logs and metrics; a role this build does not know grants nothing. A scope with any
//! other member (or a project without its domain, or an empty value) makes the token malformed
//! rather than being ignored: an ignored member might have been meant to narrow the scope.

use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use serde::Deserialize;

use super::Claims;

/// A role of the platform's RBAC model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads logs and metrics.
    Viewer,
    /// Reads logs and metrics (and, elsewhere in the platform, launches work).
    Contributor,
    /// Reads logs and metrics (and, elsewhere in the platform, administers).
    Admin,
    /// A role this build does not know: grants nothing here.
    #[serde(other)]
    Unknown,
}

impl Role {
    /// True when the role may read logs and metrics.
    pub fn can_read(self) -> bool {
        matches!(self, Self::Viewer | Self::Contributor | Self::Admin)
    }
}

/// Where in the org a binding applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole org.
    Org,
    /// One domain.
    Domain {
        /// The domain.
        domain: String,
    },
    /// One project in one domain.
    Project {
        /// The domain.
        domain: String,
        /// The project.
        project: String,
    },
}

impl Scope {
    /// True when the scope covers a stream labelled with `domain` and `project`.
    pub fn covers(&self, domain: Option<&str>, project: Option<&str>) -> bool {
        match self {
            Self::Org => true,
            Self::Domain { domain: d } => domain == Some(d),
            Self::Project {
                domain: d,
                project: p,
            } => domain == Some(d) && project == Some(p),
        }
    }

    /// True when some stream both matches `domain`/`project` constraints (`None`: any value,
    /// absent included) and is covered by this scope.
    fn intersects(&self, domain: Option<&str>, project: Option<&str>) -> bool {
        match self {
            Self::Org => true,
            Self::Domain { domain: d } => domain.is_none_or(|want| want == d),
            Self::Project {
                domain: d,
                project: p,
            } => domain.is_none_or(|want| want == d) && project.is_none_or(|want| want == p),
        }
    }
}

/// One role bound to one scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleBinding {
    /// The role.
    pub role: Role,
    /// Where it applies.
    pub scope: Scope,
}

/// Reads the `roles` claim: a list of `{"role":..,"scope":{..}}` bindings.
pub(super) fn parse_roles(value: serde_json::Value) -> Result<Vec<RoleBinding>, &'static str> {
    const SHAPE: &str =
        "`roles` must be a list of {role, scope} bindings whose scope has only domain and project";
    // Objects only: serde would also fill a binding from an array, positionally.
    let objects = value.as_array().is_some_and(|all| {
        all.iter().all(|b| {
            b.as_object()
                .is_some_and(|b| b.get("scope").is_none_or(|s| s.is_object() || s.is_null()))
        })
    });
    if !objects {
        return Err(SHAPE);
    }
    let raw: Vec<RawBinding> = serde_json::from_value(value).map_err(|_| SHAPE)?;
    raw.into_iter().map(RoleBinding::try_from).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    role: Role,
    #[serde(default)]
    scope: Option<RawScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

impl TryFrom<RawBinding> for RoleBinding {
    type Error = &'static str;

    fn try_from(raw: RawBinding) -> Result<Self, Self::Error> {
        let nonempty = |v: String| {
            if v.is_empty() {
                Err("a role binding scope names an empty domain or project")
            } else {
                Ok(v)
            }
        };
        let scope = match raw.scope {
            None => Scope::Org,
            Some(RawScope {
                domain: Some(domain),
                project: None,
            }) => Scope::Domain {
                domain: nonempty(domain)?,
            },
            Some(RawScope {
                domain: Some(domain),
                project: Some(project),
            }) => Scope::Project {
                domain: nonempty(domain)?,
                project: nonempty(project)?,
            },
            Some(RawScope { domain: None, .. }) => {
                return Err("a role binding scope needs a domain (or no scope for the whole org)");
            }
        };
        Ok(Self {
            role: raw.role,
            scope,
        })
    }
}

/// Why a selector is refused before anything is looked up: it names a domain or project that
/// none of the token's bindings reaches, so it could never deliver a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no role binding of this token covers {}{}",
    domain.as_deref().map(|d| format!("domain {d:?}")).unwrap_or_else(|| "any domain".into()),
    project.as_deref().map(|p| format!(", project {p:?}")).unwrap_or_default(),
)]
pub struct Denial {
    /// The domain the selector named.
    pub domain: Option<String>,
    /// The project the selector named.
    pub project: Option<String>,
}

impl Denial {
    /// HTTP status for this denial (403: authenticated, not authorised).
    pub fn http_status(&self) -> u16 {
        403
    }

    /// WebSocket close code, when a denial closes the session.
    pub fn close_code(&self) -> u16 {
        logrelay_wire::session::close::FORBIDDEN
    }

    /// Error code for the session's `error` event.
    pub fn error_code(&self) -> logrelay_wire::control::ErrorCode {
        logrelay_wire::control::ErrorCode::Forbidden
    }

    /// Short machine-readable reason, for metrics labels and audit events.
    pub fn reason(&self) -> &'static str {
        "scope_not_covered"
    }
}

/// True when the session holding `claims` may see the stream labelled `labels`: same org, and
/// some readable binding covers the stream's `domain`/`project` labels. Default deny.
pub fn authorize(claims: &Claims, labels: &Labels) -> bool {
    !claims.org.is_empty()
        && claims.org == labels.org
        && claims.roles.iter().any(|b| {
            b.role.can_read()
                && b.scope
                    .covers(labels.domain.as_deref(), labels.project.as_deref())
        })
}

/// Checks a selector before subscribing: refused when no readable binding reaches the domain
/// and project it names — including when the token has no readable binding at all. Allowed
/// selectors are then filtered stream by stream with [`authorize`]: a selector naming neither
/// domain nor project is allowed, and shows only the streams the bindings cover.
///
/// A denial is never wrong: when this refuses, [`authorize`] refuses every stream the selector
/// matches (see the property test).
pub fn selector_allowed(claims: &Claims, selector: &Selector) -> Result<(), Denial> {
    let (domain, project) = (selector.domain.as_deref(), selector.project.as_deref());
    if !claims.org.is_empty()
        && claims
            .roles
            .iter()
            .any(|b| b.role.can_read() && b.scope.intersects(domain, project))
    {
        Ok(())
    } else {
        Err(Denial {
            domain: selector.domain.clone(),
            project: selector.project.clone(),
        })
    }
}
