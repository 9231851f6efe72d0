//! One agent's presence on the backplane: its demand subject served, its streams shared, other
//! relays' leases turned into hub inputs, and its batches handed to the backplane.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use logrelay_wire::control::{self, SeqPos};

use crate::backplane::lease::Change;
use crate::backplane::subject::Token;
use crate::backplane::{BackfillAsk, BackfillPart, Backplane, LeaseFirst, Owner, ServedAgent};
use crate::hub::{CapHit, CatalogRefusal, Hub};
use crate::ids::{AgentId, AgentStreamId};

/// The agent's shared streams: its own stream id → the stream's token.
type Tokens = Arc<Mutex<HashMap<u64, Token>>>;

/// One agent connection on the backplane. Dropping it unsubscribes the demand subject and
/// withdraws the agent from the shared catalog.
pub(super) struct SharedAgent {
    served: Arc<ServedAgent>,
    backplane: Backplane,
    tokens: Tokens,
    owner: Arc<Leases>,
}

/// Other relays' leases on the agent's streams, as hub inputs: the first lease opens the
/// stream's live demand at the agent (a watcher that is not a session), the last one ending
/// lets it linger.
#[derive(Debug)]
struct Leases {
    hub: Weak<Hub>,
    agent: AgentId,
    tokens: Tokens,
}

impl Leases {
    /// The leases on the agent's stream `local` ended without a `Stop` (its token was
    /// replaced): the hub lets its demand linger, as when the last lease ends.
    fn released(&self, local: u64) {
        if let Some(hub) = self.hub.upgrade() {
            let _ = hub.remote_lease(self.agent, AgentStreamId::from(local), false, None);
        }
    }

    /// The agent's own id of the stream it shared as `stream` (only this connection's).
    fn local_of(&self, stream: Token) -> Option<u64> {
        self.tokens
            .lock()
            .expect("tokens lock")
            .iter()
            .find_map(|(id, t)| (*t == stream).then_some(*id))
    }
}

impl Owner for Leases {
    fn changed(&self, change: Change, first: Option<&LeaseFirst>) -> Result<(), &'static str> {
        let (token, leased) = match change {
            Change::Publish(t) => (t, true),
            Change::Stop(t) => (t, false),
        };
        // Only the streams this connection shared (a lease is answered only for those).
        let local = self
            .tokens
            .lock()
            .expect("tokens lock")
            .iter()
            .find_map(|(id, t)| (*t == token).then_some(*id));
        tracing::debug!(agent = %self.agent, leased, known = local.is_some(), "backplane: remote lease changed");
        match (local, self.hub.upgrade()) {
            (Some(local), Some(hub)) => hub
                .remote_lease(self.agent, AgentStreamId::from(local), leased, first)
                .map_err(CapHit::limit),
            _ => Ok(()),
        }
    }

    fn backfill_from_agent(
        &self,
        stream: Token,
        ask: &BackfillAsk,
        budget: usize,
        deadline: std::time::Duration,
    ) -> Option<crate::backplane::LaterPart> {
        let local = self.local_of(stream)?;
        let later = self.hub.upgrade()?.backfill_from_agent(
            self.agent,
            AgentStreamId::from(local),
            ask,
            budget,
            deadline,
        )?;
        Some(Box::pin(async move {
            let sel = later.await;
            BackfillPart {
                batches: sel.batches,
                next: sel.next,
                more: sel.more,
            }
        }))
    }

    fn backfill(&self, stream: Token, ask: &BackfillAsk, budget: usize) -> Option<BackfillPart> {
        let local = self.local_of(stream)?;
        let sel = self.hub.upgrade()?.backfill_from_ring(
            self.agent,
            AgentStreamId::from(local),
            ask,
            budget,
        )?;
        Some(BackfillPart {
            batches: sel.batches,
            next: sel.next,
            more: sel.more,
        })
    }
}

/// Hands the batches of the agent's streams' live rings to the backplane.
#[derive(Debug, Clone)]
pub(super) struct Publisher {
    /// Weak: the connection's end withdraws the agent, whatever data stream is still going.
    served: Weak<ServedAgent>,
    tokens: Tokens,
}

impl Publisher {
    /// The token of the agent's stream `local`, if it was shared.
    pub(super) fn stream(&self, local: AgentStreamId) -> Option<Token> {
        self.tokens
            .lock()
            .expect("tokens lock")
            .get(&local.get())
            .copied()
    }

    /// A batch of `stream` (lines `first..end_seq`): numbered by the backplane, and published
    /// while another relay leases the stream ([`ServedAgent::publish`]).
    pub(super) fn publish(&self, stream: Token, first: SeqPos, end_seq: u64, batch: &[u8]) {
        if let Some(served) = self.served.upgrade() {
            served.publish(stream, first, end_seq, batch);
        }
    }
}

impl SharedAgent {
    /// Serves the agent `(org, cluster, node)`, hub connection `agent`, on the backplane;
    /// `None` (logged) if NATS refused the subscription: the agent is then served locally only.
    pub(super) async fn start(
        bp: &Backplane,
        hub: &Arc<Hub>,
        agent: AgentId,
        org: &str,
        cluster: &str,
        node: &str,
    ) -> Option<Self> {
        let agent_tokens = bp.subjects().agent(org, cluster, node);
        let epoch = bp.next_conn_epoch(&agent_tokens);
        let tokens = Tokens::default();
        let owner = Arc::new(Leases {
            hub: Arc::downgrade(hub),
            agent,
            tokens: tokens.clone(),
        });
        match bp
            .serve_agent(org, cluster, node, epoch, owner.clone())
            .await
        {
            Ok(served) => Some(Self {
                served: Arc::new(served),
                backplane: bp.clone(),
                tokens,
                owner,
            }),
            Err(e) => {
                tracing::warn!(error = %e, %org, %cluster, %node, "backplane: agent not shared");
                None
            }
        }
    }

    /// What the agent's data streams hand their batches to.
    pub(super) fn publisher(&self) -> Publisher {
        Publisher {
            served: Arc::downgrade(&self.served),
            tokens: self.tokens.clone(),
        }
    }

    /// Shares the streams the hub accepted, labelled with the certificate's org and cluster.
    pub(super) fn announce(
        &mut self,
        org: &str,
        cluster: &str,
        streams: Vec<control::StreamInfo>,
        refused: &[CatalogRefusal],
    ) {
        // An id announced again with other labels has another token (tokens hash the
        // labels): the old one is withdrawn, and a lease on it no longer holds the stream.
        let mut replaced = Vec::new();
        let added: Vec<_> = {
            let mut tokens = self.tokens.lock().expect("tokens lock");
            streams
                .into_iter()
                .filter(|s| !refused.iter().any(|r| r.streams.contains(&s.id)))
                .map(|s| {
                    let labels = logrelay_wire::labels::Labels {
                        org: org.to_owned(),
                        cluster: cluster.to_owned(),
                        ..s.labels
                    };
                    let token = self.backplane.subjects().stream(&labels);
                    if let Some(old) = tokens.insert(s.id, token)
                        && old != token
                    {
                        replaced.push((s.id, old));
                    }
                    (token, labels)
                })
                .collect()
        };
        if !replaced.is_empty() {
            for (id, old) in &replaced {
                if self.served.wanted(old) {
                    self.owner.released(*id);
                }
            }
            self.backplane
                .withdraw(&self.served, replaced.into_iter().map(|(_, t)| t).collect());
        }
        if !added.is_empty() {
            self.backplane.announce(&self.served, added);
        }
    }

    /// Withdraws streams the agent no longer has.
    pub(super) fn withdraw(&mut self, gone: &[control::StreamGone]) {
        let tokens: Vec<_> = {
            let mut map = self.tokens.lock().expect("tokens lock");
            gone.iter().filter_map(|g| map.remove(&g.id)).collect()
        };
        if !tokens.is_empty() {
            self.backplane.withdraw(&self.served, tokens);
        }
    }
}
