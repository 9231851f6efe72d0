//! A session's requests (`subscribe`, `unsubscribe`, `list`): parsed, checked against the
//! session's credentials, rate limited, and handed to the hub. A bad request gets an `error`
//! event naming the problem; the session stays usable.

use std::sync::Arc;

use logrelay_wire::control::{Demand, ErrorCode};
use logrelay_wire::labels::StreamKind;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, MAX_SUB_ID_BYTES, Request};

use super::SessionIdentity;
use super::outbox::Outbox;
use crate::audit::{Actor, Auditor};
use crate::auth;
use crate::hub::{Hub, Refusal};
use crate::metrics::RelayMetrics;

/// Longest line filter a subscription may push down to the agent.
pub const MAX_FILTER_BYTES: usize = 1024;

/// Token bucket: `rate` tokens per second, holding at most `2 × rate`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Option<tokio::time::Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: 2.0 * rate,
            at: None,
        }
    }

    /// Takes a token at `now`; false when none is left.
    pub fn take(&mut self, now: tokio::time::Instant) -> bool {
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An `error` event.
pub fn error(code: ErrorCode, message: impl Into<String>, id: Option<String>) -> Event {
    Event::Error {
        code,
        message: message.into(),
        id,
    }
}

/// What handling a request needs.
#[derive(Debug)]
pub struct Requests<'a> {
    /// The hub.
    pub hub: &'a Hub,
    /// The session's outbox.
    pub session: &'a Arc<Outbox>,
    /// Who the session is.
    pub identity: &'a SessionIdentity,
    /// Metrics.
    pub metrics: &'a RelayMetrics,
    /// The audit trail.
    pub auditor: &'a Auditor,
    /// The session as the audit trail names it.
    pub actor: &'a Actor,
}

impl Requests<'_> {
    fn org(&self) -> &str {
        &self.identity.org
    }

    /// Answers `refusal` with an `error` event about `id`; a refused limit is audited.
    fn refused(&self, refusal: Refusal, id: String, selector: &Selector) {
        if refusal.code == ErrorCode::LimitExceeded {
            self.auditor.limit(
                self.actor,
                Some(self.org()),
                "subscriptions_per_session",
                Some(selector),
            );
        }
        self.session
            .queue_event(&error(refusal.code, refusal.message, Some(id)));
    }

    /// Answers a selector the session may not use (audited as a denial of `attempt`).
    fn permitted(&self, selector: &Selector, attempt: &'static str, id: Option<String>) -> bool {
        match selector_permitted(self.identity, selector) {
            Ok(()) => true,
            Err((reason, message)) => {
                self.auditor.deny(
                    self.actor,
                    Some(self.org()),
                    attempt,
                    Some(selector),
                    None,
                    reason,
                );
                self.session
                    .queue_event(&error(ErrorCode::Forbidden, message, id));
                false
            }
        }
    }

    /// Handles one text message of the session.
    pub fn handle(&self, text: &str) {
        let req: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.protocol_error("session");
                self.session.queue_event(&error(
                    ErrorCode::BadRequest,
                    format!("invalid request: {e}"),
                    None,
                ));
                return;
            }
        };
        match req {
            Request::Subscribe {
                id,
                selector,
                tail,
                since_ns,
                since_seq,
                follow,
                contains,
                matches,
            } => {
                let bad = |message: String, id: Option<String>| {
                    self.session
                        .queue_event(&error(ErrorCode::BadRequest, message, id));
                };
                if matches.is_some() && selector.kind == Some(StreamKind::Metrics) {
                    return bad(
                        "`matches` filters log lines; metrics streams take metric names in \
                         `contains`"
                            .into(),
                        Some(id),
                    );
                }
                if contains
                    .as_ref()
                    .is_some_and(|c| c.len() > MAX_FILTER_BYTES)
                {
                    return bad(
                        format!("`contains` is longer than {MAX_FILTER_BYTES} bytes"),
                        Some(id),
                    );
                }
                if id.is_empty() || id.len() > MAX_SUB_ID_BYTES {
                    return bad(
                        format!("subscription id must be 1 to {MAX_SUB_ID_BYTES} bytes"),
                        None,
                    );
                }
                if let Err(e) = selector.validate() {
                    return bad(e.to_string(), Some(id));
                }
                if !self.permitted(&selector, "subscribe", Some(id.clone())) {
                    return;
                }
                let demand = Demand {
                    tail: Some(tail.unwrap_or(logrelay_wire::DEFAULT_TAIL_LINES)),
                    since_ns,
                    since_seq,
                    until: None,
                    follow,
                    contains: contains.filter(|c| !c.is_empty()),
                    matches: matches
                        .map(|m| m.as_str().to_owned())
                        .filter(|m| !m.is_empty()),
                    after_line: None,
                };
                match self
                    .hub
                    .subscribe(self.session, &id, selector.clone(), demand)
                {
                    Ok(capped) => {
                        self.auditor
                            .subscribe(self.actor, self.org(), &id, &selector);
                        if let Some(limit) = capped {
                            self.auditor.limit(
                                self.actor,
                                Some(self.org()),
                                limit,
                                Some(&selector),
                            );
                        }
                    }
                    Err(r) => self.refused(r, id, &selector),
                }
            }
            Request::Unsubscribe { id } => {
                if !self.hub.unsubscribe(self.session, &id) {
                    self.session.queue_event(&error(
                        ErrorCode::BadRequest,
                        format!("no subscription `{id}`"),
                        Some(id),
                    ));
                }
            }
            Request::List {
                selector,
                id,
                watch,
            } => {
                if !self.permitted(&selector, "list", None) {
                    return;
                }
                if !watch {
                    let streams = self.hub.list(self.session, &selector);
                    self.session.queue_event(&Event::Streams { id, streams });
                    return;
                }
                let Some(id) = id.filter(|id| !id.is_empty() && id.len() <= MAX_SUB_ID_BYTES)
                else {
                    self.session.queue_event(&error(
                        ErrorCode::BadRequest,
                        format!("a watched list needs an `id` of 1 to {MAX_SUB_ID_BYTES} bytes"),
                        None,
                    ));
                    return;
                };
                match self.hub.watch_list(self.session, &id, selector.clone()) {
                    Ok(()) => self
                        .auditor
                        .subscribe(self.actor, self.org(), &id, &selector),
                    Err(r) => self.refused(r, id, &selector),
                }
            }
        }
    }
}

/// Up-front check of a selector against the session's credentials: never another org, and
/// (with a token) only domains and projects some role binding covers. Streams are filtered
/// again one by one.
fn selector_permitted(
    identity: &SessionIdentity,
    selector: &Selector,
) -> Result<(), (&'static str, String)> {
    if let Some(org) = &selector.org
        && *org != identity.org
    {
        return Err((
            "cross_org_selector",
            format!(
                "selector names org `{org}`; this session may read org `{}` only",
                identity.org
            ),
        ));
    }
    if let Some(claims) = &identity.claims {
        auth::selector_allowed(claims, selector).map_err(|d| (d.reason(), d.to_string()))?;
    }
    Ok(())
}
