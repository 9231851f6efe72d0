//! The owner side: the relay holding an agent's QUIC connection answers other relays' leases
//! on that agent's streams and publishes the batches they lease.

use super::*;

/// One agent served by this relay on the backplane.
#[derive(Debug)]
pub struct ServedAgent {
    pub(super) backplane: Backplane,
    pub(super) tokens: AgentTokens,
    pub(super) conn_epoch: u64,
    pub(super) state: Arc<Mutex<Served>>,
    pub(super) task: AbortHandle,
}

#[derive(Debug)]
pub(super) struct Served {
    pub(super) leases: Leases,
    pub(super) streams: HashMap<Token, Published>,
}

/// What was published of one stream.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Published {
    pub(super) pub_seq: u64,
    pub(super) bytes: u64,
    pub(super) top: Option<SeqPos>,
}

impl ServedAgent {
    /// The agent's tokens.
    pub fn tokens(&self) -> AgentTokens {
        self.tokens
    }

    /// Its connection epoch.
    pub fn conn_epoch(&self) -> u64 {
        self.conn_epoch
    }

    /// Whether some other relay leases `stream`.
    pub fn wanted(&self, stream: &Token) -> bool {
        self.state
            .lock()
            .expect("served lock")
            .leases
            .wanted(stream)
    }

    /// Called with every batch the agent sends for `stream` (lines `first..end_seq`): numbers
    /// it, records the stream's top, and publishes it if some other relay leases it. True if it
    /// was queued for NATS.
    pub fn publish(&self, stream: Token, first: SeqPos, end_seq: u64, batch: &[u8]) -> bool {
        let inner = &self.backplane.inner;
        let header = {
            let mut st = self.state.lock().expect("served lock");
            let wanted = st.leases.wanted(&stream);
            let p = st.streams.entry(stream).or_default();
            p.top = Some(SeqPos {
                epoch: first.epoch,
                seq: end_seq,
            });
            // Every batch is numbered, published or not: a relay whose lease lapsed (NATS was
            // away) and came back sees what it was not sent as an exact gap.
            p.pub_seq += 1;
            let header = DataHeader {
                relay: inner.relay,
                conn_epoch: self.conn_epoch,
                pub_seq: p.pub_seq,
                bytes_before: p.bytes,
                first,
                end_seq,
            };
            p.bytes += batch.len() as u64;
            if !wanted {
                return false;
            }
            header
        };
        if codec::DATA_HEADER_BYTES + batch.len() > self.backplane.max_message_bytes() {
            // Too large for NATS: its pub_seq is skipped, so receivers see an exact gap.
            inner.metrics.dropped_messages.inc();
            inner.metrics.dropped_bytes.inc_by(batch.len() as u64);
            return false;
        }
        let msg = codec::encode_data(&header, batch);
        self.backplane
            .send(inner.subjects.data(&self.tokens, stream), msg, true)
    }
}

impl Drop for ServedAgent {
    fn drop(&mut self) {
        self.task.abort();
        let n = self.state.lock().map(|s| s.leases.len()).unwrap_or(0);
        self.backplane
            .inner
            .metrics
            .remote_wants
            .dec_by(i64::try_from(n).unwrap_or(0));
        let entry = {
            let mut local = self.backplane.inner.local.lock().expect("local lock");
            match local.get(&self.tokens.agent) {
                Some(a) if a.conn_epoch == self.conn_epoch => local.remove(&self.tokens.agent),
                _ => None,
            }
        };
        if let Some(a) = entry {
            self.backplane.withdraw_agent_msg(&a);
        }
    }
}

/// Sends what is queued toward NATS, in order.
pub(super) async fn pump(inner: Arc<Inner>) {
    loop {
        let next = inner.out.lock().expect("out lock").pop();
        let Some(m) = next else {
            inner.metrics.queue_bytes.set(0);
            inner.wake.notified().await;
            continue;
        };
        inner
            .metrics
            .queue_bytes
            .set(i64::try_from(inner.out.lock().expect("out lock").bytes()).unwrap_or(i64::MAX));
        let len = m.payload.len();
        let kind = if m.data { "data" } else { "control" };
        match inner.client.publish(m.subject, m.payload).await {
            Ok(()) => inner.metrics.message_out(kind, len),
            Err(e) => {
                inner.metrics.dropped_messages.inc();
                inner.metrics.dropped_bytes.inc_by(len as u64);
                tracing::warn!(error = %e, "backplane: publish failed");
            }
        }
    }
}

/// Answers leases on one served agent's demand subject, and expires them.
pub(super) async fn serve_demand(
    inner: Arc<Inner>,
    tokens: AgentTokens,
    conn_epoch: u64,
    state: Arc<Mutex<Served>>,
    owner: Arc<dyn Owner>,
    mut subscriber: async_nats::Subscriber,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        (inner.config.nats_lease_refresh_ms / 2).max(10),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max = inner.config.nats_max_message_bytes.max(64 * 1024);
    loop {
        let (changes, delta) = tokio::select! {
            msg = subscriber.next() => {
                let Some(msg) = msg else { return };
                inner.metrics.message_in("control", msg.payload.len());
                let lease = match codec::decode_control(&msg.payload, max) {
                    Ok(Control::Lease { relay, agent, streams, first, .. }) if agent == tokens.agent => (relay, streams, first),
                    Ok(Control::Backfill { agent, stream, ask, max_bytes, .. }) if agent == tokens.agent => {
                        answer_backfill(&inner, &tokens, conn_epoch, &owner, msg.reply, stream, &ask, max_bytes);
                        continue;
                    }
                    Ok(other) => {
                        tracing::debug!(?other, "backplane: unexpected message on a demand subject");
                        continue;
                    }
                    Err(e) => {
                        inner.metrics.decode_errors.inc();
                        tracing::warn!(error = %e, "backplane: unreadable lease");
                        continue;
                    }
                };
                let (relay, streams, first) = lease;
                // Stream ids are looked up only among this agent's announced streams: a lease
                // on anything else is answered `known: false` and holds nothing here.
                let known: Vec<bool> = {
                    let local = inner.local.lock().expect("local lock");
                    let announced: HashSet<Token> = local
                        .get(&tokens.agent)
                        .map(|a| a.streams.iter().map(|x| x.stream).collect())
                        .unwrap_or_default();
                    streams.iter().map(|s| announced.contains(s)).collect()
                };
                let leased: Vec<Token> = streams
                    .iter()
                    .zip(&known)
                    .filter_map(|(s, k)| k.then_some(*s))
                    .collect();
                let mut st = state.lock().expect("served lock");
                let before = st.leases.len();
                let changes = st.leases.lease(inner.clock.now_ms(), relay, tokens.agent, &leased);
                drop(st);
                // The hub takes the changes before the reply is made: a lease that needs a
                // new demand at the agent beyond a cap there is refused, holds nothing, and
                // the reply says so.
                let mut refused: HashMap<Token, &'static str> = HashMap::new();
                for c in changes {
                    let asked = match c {
                        Change::Publish(s) => first.iter().find(|b| b.stream == s).map(|b| &b.first),
                        Change::Stop(_) => None,
                    };
                    if let (Change::Publish(stream), Err(limit)) = (c, owner.changed(c, asked)) {
                        refused.insert(stream, limit);
                    }
                }
                let mut st = state.lock().expect("served lock");
                for stream in refused.keys() {
                    st.leases.refuse(relay, tokens.agent, *stream);
                }
                let delta = st.leases.len() as i64 - before as i64;
                let tops = streams
                    .iter()
                    .zip(known)
                    .map(|(s, known)| {
                        let p = st.streams.get(s).copied().unwrap_or_default();
                        StreamTop {
                            stream: *s,
                            known,
                            top: p.top,
                            pub_seq: p.pub_seq,
                            bytes: p.bytes,
                            refused: refused.get(s).map(|l| (*l).to_owned()),
                        }
                    })
                    .collect();
                drop(st);
                if let Some(reply) = msg.reply {
                    let answer = Control::LeaseReply {
                        v: u32::from(codec::VERSION),
                        relay: inner.relay,
                        conn_epoch,
                        streams: tops,
                    };
                    // Through the same queue as the data: a reply follows what was published
                    // before it.
                    send(&inner, reply.to_string(), codec::encode_control(&answer), false);
                }
                (Vec::new(), delta)
            }
            _ = tick.tick() => {
                let mut st = state.lock().expect("served lock");
                let before = st.leases.len();
                let changes = st.leases.expire(inner.clock.now_ms());
                (changes, st.leases.len() as i64 - before as i64)
            }
        };
        inner.metrics.remote_wants.inc_by(delta);
        for c in changes {
            // Expiries: only stops, which nothing refuses.
            let _ = owner.changed(c, None);
        }
    }
}

/// Answers a backfill request for `stream` of the served agent from its ring, through the
/// queue toward NATS (after what was published before it); when the ring does not reach back
/// to what is asked, from the agent's files for the part before it and the ring for the rest,
/// once the agent has answered (within half the request timeout, so that the reply arrives
/// in time).
#[allow(clippy::too_many_arguments, reason = "one request's parts")]
fn answer_backfill(
    inner: &Arc<Inner>,
    tokens: &AgentTokens,
    conn_epoch: u64,
    owner: &Arc<dyn Owner>,
    reply: Option<async_nats::Subject>,
    stream: Token,
    ask: &BackfillAsk,
    max_bytes: u64,
) {
    let Some(reply) = reply else {
        return;
    };
    // The stream is looked up only among this agent's announced streams.
    let announced = inner
        .local
        .lock()
        .expect("local lock")
        .get(&tokens.agent)
        .is_some_and(|a| a.streams.iter().any(|s| s.stream == stream));
    let limit = usize::try_from(max_bytes)
        .unwrap_or(usize::MAX)
        .min(max_message_bytes(inner));
    let budget = limit.saturating_sub(codec::BACKFILL_HEADER_BYTES);
    let deadline = Duration::from_millis(inner.config.nats_request_timeout_ms.max(2) / 2);
    if announced && let Some(later) = owner.backfill_from_agent(stream, ask, budget, deadline) {
        let inner = inner.clone();
        tokio::spawn(async move {
            let part = later.await;
            reply_backfill(&inner, conn_epoch, reply, Some(part));
        });
        return;
    }
    let part = announced
        .then(|| owner.backfill(stream, ask, budget))
        .flatten();
    reply_backfill(inner, conn_epoch, reply, part);
}

/// Sends the reply to a backfill request: `part`, or that the stream is not held here.
fn reply_backfill(
    inner: &Inner,
    conn_epoch: u64,
    reply: async_nats::Subject,
    part: Option<BackfillPart>,
) {
    let answer = BackfillReply {
        relay: inner.relay,
        conn_epoch,
        known: part.is_some(),
        more: part.as_ref().is_some_and(|p| p.more),
        next: part.as_ref().and_then(|p| p.next),
        batches: part.map(|p| p.batches).unwrap_or_default(),
    };
    send(
        inner,
        reply.to_string(),
        codec::encode_backfill_reply(&answer),
        false,
    );
}

/// Receives one wanted stream's batches, finds holes, hands them on.
pub(super) async fn receive_data(
    inner: Arc<Inner>,
    stream: Token,
    mut subscriber: async_nats::Subscriber,
    tracker: Arc<Mutex<Tracker>>,
    sink: Arc<dyn RemoteSink>,
) {
    let mut slow_seen = inner.slow_events.load(Ordering::Relaxed);
    while let Some(msg) = subscriber.next().await {
        inner.metrics.message_in("data", msg.payload.len());
        let (header, batch) = match codec::decode_data(&msg.payload) {
            Ok(x) => x,
            Err(e) => {
                inner.metrics.decode_errors.inc();
                tracing::warn!(error = %e, "backplane: unreadable data message");
                continue;
            }
        };
        let seen = tracker
            .lock()
            .expect("tracker lock")
            .observe(&header, batch.len() as u64);
        match seen {
            Seen::InOrder => sink.batch(stream, &header, batch, 0),
            Seen::Overlap { repeated } => sink.batch(stream, &header, batch, repeated),
            Seen::AfterHole(hole) => {
                let slow = inner.slow_events.load(Ordering::Relaxed);
                let reason = if slow != slow_seen {
                    "backplane_slow_consumer"
                } else {
                    "backplane_lost"
                };
                slow_seen = slow;
                inner.metrics.gap(reason, hole.lines);
                sink.hole(stream, hole, reason);
                sink.batch(stream, &header, batch, 0);
            }
            Seen::Stale => {}
        }
    }
}

/// Sends the lease messages that are due, and hands the answers on.
pub(super) async fn leases(inner: Arc<Inner>) {
    let refresh = Duration::from_millis(inner.config.nats_lease_refresh_ms.max(10));
    loop {
        let due = {
            let mut w = inner.wanting.lock().expect("wanting lock");
            let due = w.wants.due(inner.clock.now_ms());
            due.into_iter()
                .filter_map(|(agent, streams)| w.agents.get(&agent).map(|t| (*t, streams)))
                .collect::<Vec<_>>()
        };
        for (agent, streams) in due {
            let inner = inner.clone();
            // Each agent's request on its own: a slow owner delays nobody else. One at a time
            // per agent (`Wants::due`): the next set goes once this one is answered.
            tokio::spawn(async move {
                lease_once(&inner, agent, streams).await;
                inner
                    .wanting
                    .lock()
                    .expect("wanting lock")
                    .wants
                    .answered(&agent.agent);
                inner.wants_wake.notify_one();
            });
        }
        tokio::select! {
            () = inner.wants_wake.notified() => {}
            () = tokio::time::sleep(refresh / 4) => {}
        }
    }
}

pub(super) async fn lease_once(inner: &Inner, agent: AgentTokens, streams: Vec<Token>) {
    // What the first watchers of streams the owner has not answered for yet bring.
    let first = {
        let w = inner.wanting.lock().expect("wanting lock");
        streams
            .iter()
            .filter_map(|s| {
                let first = w.streams.get(&(agent.agent, *s))?.first.clone()?;
                Some(codec::FirstLease { stream: *s, first })
            })
            .collect()
    };
    let msg = codec::encode_control(&Control::Lease {
        v: u32::from(codec::VERSION),
        relay: inner.relay,
        agent: agent.agent,
        streams: streams.clone(),
        first,
    });
    #[allow(clippy::disallowed_methods, reason = "the shell times a NATS request")]
    let started = tokio::time::Instant::now();
    inner.metrics.message_out("control", msg.len());
    let answer = inner
        .client
        .send_request(
            inner.subjects.demand(&agent),
            async_nats::Request::new()
                .payload(msg)
                .timeout(Some(Duration::from_millis(
                    inner.config.nats_request_timeout_ms.max(1),
                ))),
        )
        .await;
    inner
        .metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    let sinks = |w: &Wanting| {
        streams
            .iter()
            .filter_map(|s| {
                w.streams
                    .get(&(agent.agent, *s))
                    .map(|x| (*s, x.sink.clone(), x.tracker.clone()))
            })
            .collect::<Vec<_>>()
    };
    let targets = sinks(&inner.wanting.lock().expect("wanting lock"));
    match answer {
        Ok(reply) => {
            inner.metrics.message_in("control", reply.payload.len());
            let max = inner.config.nats_max_message_bytes.max(64 * 1024);
            match codec::decode_control(&reply.payload, max) {
                Ok(Control::LeaseReply {
                    relay,
                    conn_epoch,
                    streams: tops,
                    ..
                }) => {
                    for (stream, sink, tracker) in targets {
                        let Some(top) = tops.iter().find(|t| t.stream == stream) else {
                            continue;
                        };
                        if let Some(limit) = &top.refused {
                            sink.answer(stream, Answer::Refused(limit.clone()));
                            continue;
                        }
                        let hole = tracker.lock().expect("tracker lock").check_top(Top {
                            relay,
                            conn_epoch,
                            pub_seq: top.pub_seq,
                            bytes: top.bytes,
                            end: top.top,
                        });
                        if let Some(hole) = hole {
                            inner.metrics.gap("backplane_lost", hole.lines);
                            sink.hole(stream, hole, "backplane_lost");
                        }
                        // Answered: its live demand is open at the owner now (with the backlog
                        // if this lease opened it); later leases do not ask again.
                        if let Some(w) = inner
                            .wanting
                            .lock()
                            .expect("wanting lock")
                            .streams
                            .get_mut(&(agent.agent, stream))
                        {
                            w.first = None;
                        }
                        sink.answer(
                            stream,
                            Answer::Top {
                                relay,
                                conn_epoch,
                                top: top.clone(),
                            },
                        );
                    }
                }
                Ok(_) | Err(_) => {
                    inner.metrics.decode_errors.inc();
                }
            }
        }
        Err(e) => {
            let answer = match e.kind() {
                async_nats::RequestErrorKind::NoResponders => Answer::Away,
                _ => Answer::Unavailable,
            };
            if answer == Answer::Unavailable {
                tracing::debug!(error = %e, "backplane: lease request failed");
            }
            for (stream, sink, _) in targets {
                sink.answer(stream, answer.clone());
            }
        }
    }
}
