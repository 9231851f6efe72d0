//! The session writer's drain, on a hub with real rings.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use bytes::Bytes;
use logrelay_wire::code::CloseCode;
use logrelay_wire::control::{Demand, RelayMsg, SeqPos, StreamInfo};
use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use tokio::sync::{Notify, mpsc};

use super::outbox::{Drained, Outbox};
use super::request::TokenBucket;
use super::*;
use crate::config::RelayConfig;
use crate::fanout::LiveStream;
use crate::hub::DemandSink;

fn config(policy: SlowConsumerPolicy) -> SessionConfig {
    SessionConfig {
        flush_bytes: 1 << 20,
        ping: Duration::from_secs(15),
        slow_consumer: policy,
        requests_per_sec: 20,
    }
}

/// What the session's writer takes in one pass.
fn drain(s: &Outbox, metrics: &RelayMetrics, config: SessionConfig) -> Drained {
    s.drain(metrics, config.flush_bytes, config.slow_consumer)
}

/// A hub with one announced stream, `n` sessions watching it, and its live ring.
fn watched(n: usize, ring_bytes: usize) -> (Vec<Arc<Outbox>>, Arc<LiveStream>, Arc<RelayMetrics>) {
    let demand = Demand {
        follow: true,
        ..Demand::default()
    };
    watched_with(n, ring_bytes, &demand)
}

/// [`watched`], every session subscribing with `demand`.
fn watched_with(
    n: usize,
    ring_bytes: usize,
    demand: &Demand,
) -> (Vec<Arc<Outbox>>, Arc<LiveStream>, Arc<RelayMetrics>) {
    let metrics = Arc::new(RelayMetrics::new());
    let mut hub_config = RelayConfig::loopback().hub();
    hub_config.ring_bytes = ring_bytes;
    hub_config.backfill_batches = 4;
    hub_config.memory_budget_bytes = 1 << 30;
    hub_config.core.max_sessions_per_org = 10_000;
    let hub = Hub::new(hub_config, metrics.clone());
    let (tx, mut rx) = mpsc::channel(16);
    let agent = hub.add_agent("acme", "c", tx, Arc::new(Notify::new()));
    hub.catalog_add(
        agent,
        vec![StreamInfo {
            id: 1,
            labels: Labels {
                pod: "p".into(),
                ..Labels::default()
            },
        }],
    );
    let sessions: Vec<_> = (0..n)
        .map(|i| {
            let s = hub.add_session("acme", None).unwrap();
            hub.subscribe(&s, &format!("s{i}"), Selector::default(), demand.clone())
                .unwrap();
            s
        })
        .collect();
    let Ok(RelayMsg::Open { demand, .. }) = rx.try_recv() else {
        panic!("the first watcher opens the stream")
    };
    let Ok((DemandSink::Live(live), _)) = hub.resolve(agent, demand.into()) else {
        panic!("live demand")
    };
    (sessions, live, metrics)
}

fn binaries(d: &Drained) -> Vec<&Bytes> {
    d.messages
        .iter()
        .filter_map(|m| match m {
            Message::Binary(b) => Some(b),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn every_session_gets_the_very_bytes_the_agent_sent() {
    let (sessions, live, metrics) = watched(3, 1 << 20);
    let batch = Bytes::from(vec![b'x'; 4096]);
    live.push(batch.clone(), 10, SeqPos { epoch: 1, seq: 10 });
    for s in &sessions {
        let d = drain(s, &metrics, config(SlowConsumerPolicy::DropOldest));
        let got = binaries(&d);
        assert_eq!(got.len(), 1);
        // Pointer identity: no copy, no re-encode, whatever the number of sessions.
        assert_eq!(got[0].as_ptr(), batch.as_ptr());
        assert_eq!(got[0].len(), batch.len());
    }
}

#[tokio::test]
async fn a_lagging_session_gets_a_gap_or_is_closed_per_policy() {
    let (sessions, live, metrics) = watched(2, 1000);
    for i in 1..=10u64 {
        live.push(
            Bytes::from(vec![0u8; 400]),
            5,
            logrelay_wire::control::SeqPos {
                epoch: 1,
                seq: 5 * i,
            },
        );
    }
    let d = drain(
        &sessions[0],
        &metrics,
        config(SlowConsumerPolicy::DropOldest),
    );
    assert!(d.close.is_none());
    let gap = d
        .messages
        .iter()
        .find_map(|m| match m {
            Message::Text(t) if t.as_str().contains(r#""event":"gap""#) => Some(t.to_string()),
            _ => None,
        })
        .expect("a gap event");
    // 10 batches pushed, 2 still held (1000 bytes): 8 × 5 lines and 8 × 400 bytes missed.
    assert!(
        gap.contains(r#""lines":40"#) && gap.contains(r#""bytes":3200"#),
        "{gap}"
    );
    assert_eq!(binaries(&d).len(), 2);

    let d = drain(
        &sessions[1],
        &metrics,
        config(SlowConsumerPolicy::Disconnect),
    );
    let (code, reason) = d.close.expect("closed");
    assert_eq!(code, CloseCode::SlowConsumer.code());
    assert!(reason.contains("40 lines"), "{reason}");
}

#[test]
fn the_token_bucket_allows_a_burst_then_the_rate() {
    #[allow(clippy::disallowed_methods, reason = "a test measures time")]
    let start = tokio::time::Instant::now();
    let mut b = TokenBucket::new(10);
    assert!((0..20).all(|_| b.take(start)));
    assert!(!b.take(start));
    assert!(b.take(start + Duration::from_millis(150)));
    assert!(!b.take(start + Duration::from_millis(150)));
}

/// The text messages of a drain, and the position of each among all its messages.
fn texts(d: &Drained) -> Vec<(usize, String)> {
    d.messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            Message::Text(t) => Some((i, t.to_string())),
            _ => None,
        })
        .collect()
}

fn log_batch(stream: u64, epoch: u64, first_seq: u64) -> Bytes {
    flagged_batch(stream, epoch, first_seq, 0)
}

fn flagged_batch(stream: u64, epoch: u64, first_seq: u64, flags: u8) -> Bytes {
    let mut b = logrelay_wire::batch::BatchBuilder::new(stream, epoch, first_seq, flags, 64);
    b.push(0, logrelay_wire::batch::LineFlags(0), b"line\n");
    b.finish()
}

const EPOCH_LOST: &str = r#""reason":"epoch_lost","rest_of_epoch":true,"exact":false}"#;

#[tokio::test]
async fn a_watcher_learns_that_the_rest_of_its_epoch_is_lost_before_the_new_one() {
    let (sessions, live, metrics) = watched(1, 1 << 20);
    let cfg = config(SlowConsumerPolicy::DropOldest);
    live.push(
        log_batch(live.id().get(), 1, 9),
        1,
        SeqPos { epoch: 1, seq: 10 },
    );
    let d = drain(&sessions[0], &metrics, cfg);
    assert!(texts(&d).iter().all(|(_, t)| !t.contains("epoch_lost")));

    // The agent came back without that numbering: the ring goes on in epoch 2.
    live.push(
        log_batch(live.id().get(), 2, 100),
        1,
        SeqPos { epoch: 2, seq: 101 },
    );
    let d = drain(&sessions[0], &metrics, cfg);
    let want = format!(
        r#"{{"event":"gap","stream":{},"from":{{"epoch":1,"seq":10}},"lines":0,"bytes":0,{EPOCH_LOST}"#,
        live.id().get()
    );
    assert_eq!(texts(&d), vec![(0, want)]);
    assert_eq!(binaries(&d).len(), 1, "then the new epoch's batch");
    assert_eq!(metrics.epochs_lost.get(), 1);
}

#[tokio::test]
async fn a_new_epoch_that_continues_the_old_one_is_a_renumbering_not_a_loss() {
    let (sessions, live, metrics) = watched(1, 1 << 20);
    let cfg = config(SlowConsumerPolicy::DropOldest);
    live.push(
        log_batch(live.id().get(), 1, 9),
        1,
        SeqPos { epoch: 1, seq: 10 },
    );
    drain(&sessions[0], &metrics, cfg);
    // The agent restarted and picked up right after the last line the relay held.
    let first = flagged_batch(
        live.id().get(),
        2,
        100,
        logrelay_wire::batch::FLAG_CONTINUES,
    );
    live.push(first, 1, SeqPos { epoch: 2, seq: 101 });
    let d = drain(&sessions[0], &metrics, cfg);
    let want = format!(
        r#"{{"event":"renumbered","stream":{},"from":{{"epoch":1,"seq":10}},"to":{{"epoch":2,"seq":100}}}}"#,
        live.id().get()
    );
    assert_eq!(texts(&d), vec![(0, want)]);
    assert_eq!(binaries(&d).len(), 1);
    assert_eq!(
        (metrics.epochs_renumbered.get(), metrics.epochs_lost.get()),
        (1, 0)
    );
}

#[tokio::test]
async fn a_resume_into_an_epoch_the_agent_no_longer_holds_is_reported() {
    let since = SeqPos { epoch: 7, seq: 5 };
    let demand = Demand {
        since_seq: Some(since),
        follow: true,
        ..Demand::default()
    };
    let (sessions, live, metrics) = watched_with(1, 1 << 20, &demand);
    let cfg = config(SlowConsumerPolicy::DropOldest);
    // The agent answered in an epoch of its own.
    live.push(
        log_batch(live.id().get(), 8, 0),
        1,
        SeqPos { epoch: 8, seq: 1 },
    );
    live.push(
        log_batch(live.id().get(), 8, 1),
        1,
        SeqPos { epoch: 8, seq: 2 },
    );
    let d = drain(&sessions[0], &metrics, cfg);
    let gaps: Vec<(usize, String)> = texts(&d)
        .into_iter()
        .filter(|(_, t)| t.contains(r#""event":"gap""#))
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (at, gap) = &gaps[0];
    assert!(gap.contains(r#""from":{"epoch":7,"seq":5}"#) && gap.ends_with(EPOCH_LOST));
    assert!(
        d.messages[at + 1..]
            .iter()
            .all(|m| matches!(m, Message::Binary(_))),
        "before the new epoch's batches"
    );
    assert_eq!(binaries(&d).len(), 2);

    // A resume the agent could serve is not reported.
    let demand = Demand {
        since_seq: Some(SeqPos { epoch: 8, seq: 1 }),
        ..demand
    };
    let (sessions, live, metrics) = watched_with(1, 1 << 20, &demand);
    live.push(
        log_batch(live.id().get(), 8, 1),
        1,
        SeqPos { epoch: 8, seq: 2 },
    );
    let d = drain(&sessions[0], &metrics, cfg);
    assert!(texts(&d).iter().all(|(_, t)| !t.contains("gap")));
    assert_eq!(binaries(&d).len(), 1);
}

/// The relay's events about numbering (`gap`, `renumbered`) in a drain, and the number of
/// binary messages after the last of them.
fn numbering(d: &Drained) -> (Vec<String>, usize) {
    let all = texts(d);
    let kept: Vec<(usize, String)> = all
        .into_iter()
        .filter(|(_, t)| t.contains(r#""event":"gap""#) || t.contains(r#""event":"renumbered""#))
        .collect();
    let after = kept.last().map_or(0, |(at, _)| at + 1);
    let batches = d.messages[after..]
        .iter()
        .filter(|m| matches!(m, Message::Binary(_)))
        .count();
    (kept.into_iter().map(|(_, t)| t).collect(), batches)
}

#[tokio::test]
async fn a_resume_ahead_of_what_the_ring_holds_of_its_epoch_is_an_exact_gap() {
    let demand = Demand {
        since_seq: Some(SeqPos { epoch: 8, seq: 5 }),
        follow: true,
        ..Demand::default()
    };
    let (sessions, live, metrics) = watched_with(1, 1 << 20, &demand);
    let cfg = config(SlowConsumerPolicy::DropOldest);
    // The ring's first batch is in the resumed epoch, but starts 4 lines after `since_seq`.
    live.push(
        log_batch(live.id().get(), 8, 9),
        1,
        SeqPos { epoch: 8, seq: 10 },
    );
    let d = drain(&sessions[0], &metrics, cfg);
    let want = format!(
        r#"{{"event":"gap","stream":{},"from":{{"epoch":8,"seq":5}},"lines":4,"bytes":0,"reason":"backfill_lost","exact":true}}"#,
        live.id().get()
    );
    assert_eq!(numbering(&d), (vec![want], 1), "the gap, then the batch");
    let lost = metrics
        .dropped_lines
        .get_or_create(&crate::metrics::DropReason {
            reason: "backfill_lost",
        })
        .get();
    assert_eq!((lost, metrics.epochs_lost.get()), (4, 0));

    // A line filter leaves lines out of its batches: nothing can be told from the position.
    let demand = Demand {
        contains: Some("line".into()),
        ..demand
    };
    let (sessions, live, metrics) = watched_with(1, 1 << 20, &demand);
    live.push(
        log_batch(live.id().get(), 8, 9),
        1,
        SeqPos { epoch: 8, seq: 10 },
    );
    let d = drain(&sessions[0], &metrics, cfg);
    assert_eq!(numbering(&d), (vec![], 1));
}

/// A resume at `since` reaching the relay just as the stream's agent dies: its backfill is
/// asked of the dying connection and ends with nothing, the agent comes back and continues the
/// ring's epoch in a new one. What the resuming session is told.
fn resume_racing_an_agent_restart(since: u64) -> (Vec<String>, usize, u64) {
    let metrics = Arc::new(RelayMetrics::new());
    let mut hub_config = RelayConfig::loopback().hub();
    hub_config.backfill_batches = 4;
    let hub = Hub::new(hub_config, metrics.clone());
    let stream = StreamInfo {
        id: 1,
        labels: Labels {
            pod: "p".into(),
            ..Labels::default()
        },
    };
    let (tx, mut rx) = mpsc::channel(16);
    let agent = hub.add_agent("acme", "c", tx, Arc::new(Notify::new()));
    hub.catalog_add(agent, vec![stream.clone()]);
    let live_demand = Demand {
        follow: true,
        ..Demand::default()
    };
    let keeper = hub.add_session("acme", None).unwrap();
    hub.subscribe(&keeper, "k", Selector::default(), live_demand.clone())
        .unwrap();
    let Ok(RelayMsg::Open { demand, .. }) = rx.try_recv() else {
        panic!("the first watcher opens the stream")
    };
    let Ok((DemandSink::Live(live), _)) = hub.resolve(agent, demand.into()) else {
        panic!("live demand")
    };
    live.push(
        log_batch(live.id().get(), 1, 9),
        1,
        SeqPos { epoch: 1, seq: 10 },
    );
    // The resume: a backfill up to the ring's end is asked of the agent, which never answers.
    let resumer = hub.add_session("acme", None).unwrap();
    let resume = Demand {
        since_seq: Some(SeqPos {
            epoch: 1,
            seq: since,
        }),
        ..live_demand
    };
    hub.subscribe(&resumer, "r", Selector::default(), resume)
        .unwrap();
    let Ok(RelayMsg::Open { demand_spec, .. }) = rx.try_recv() else {
        panic!("a backfill")
    };
    assert_eq!(demand_spec.until, Some(SeqPos { epoch: 1, seq: 10 }));
    // The agent dies (its backfill with it) and comes back without the epoch.
    hub.remove_agent(agent);
    let (tx, mut rx) = mpsc::channel(16);
    let agent = hub.add_agent("acme", "c", tx, Arc::new(Notify::new()));
    hub.catalog_add(agent, vec![stream]);
    let Ok(RelayMsg::Open { demand, .. }) = rx.try_recv() else {
        panic!("the ring is opened again")
    };
    let Ok((DemandSink::Live(again), _)) = hub.resolve(agent, demand.into()) else {
        panic!("live demand")
    };
    assert!(Arc::ptr_eq(&live, &again), "the same ring");
    // It picked up right after the last line the ring held.
    let first = flagged_batch(
        live.id().get(),
        2,
        100,
        logrelay_wire::batch::FLAG_CONTINUES,
    );
    live.push(first, 1, SeqPos { epoch: 2, seq: 101 });
    let d = drain(&resumer, &metrics, config(SlowConsumerPolicy::DropOldest));
    let (events, batches) = numbering(&d);
    (events, batches, metrics.epochs_lost.get())
}

#[tokio::test]
async fn a_resume_racing_an_agent_restart_is_a_renumbering_where_the_new_epoch_continues() {
    let renumbered = r#""event":"renumbered","stream":"#;
    // The session had the whole ring: nothing lost.
    let (events, batches, lost) = resume_racing_an_agent_restart(10);
    assert_eq!((events.len(), batches, lost), (1, 1, 0), "{events:?}");
    assert!(
        events[0].contains(renumbered)
            && events[0].ends_with(r#""from":{"epoch":1,"seq":10},"to":{"epoch":2,"seq":100}}"#),
        "{events:?}"
    );
    // It had 3 lines less: those, which its backfill was to bring, are an exact gap.
    let (events, batches, lost) = resume_racing_an_agent_restart(7);
    assert_eq!((events.len(), batches, lost), (2, 1, 0), "{events:?}");
    assert!(
        events[0].contains(
            r#""from":{"epoch":1,"seq":7},"lines":3,"bytes":0,"reason":"backfill_lost","exact":true"#
        ),
        "{events:?}"
    );
    assert!(events[1].contains(renumbered), "{events:?}");
}

#[tokio::test]
async fn a_backfill_cut_short_by_its_agent_connection_is_an_exact_gap_before_the_ring() {
    let metrics = Arc::new(RelayMetrics::new());
    let mut hub_config = RelayConfig::loopback().hub();
    hub_config.backfill_batches = 4;
    let hub = Hub::new(hub_config, metrics.clone());
    let stream = StreamInfo {
        id: 1,
        labels: Labels {
            pod: "p".into(),
            ..Labels::default()
        },
    };
    let (tx, mut rx) = mpsc::channel(16);
    let agent = hub.add_agent("acme", "c", tx, Arc::new(Notify::new()));
    hub.catalog_add(agent, vec![stream]);
    let follow = Demand {
        follow: true,
        ..Demand::default()
    };
    let keeper = hub.add_session("acme", None).unwrap();
    hub.subscribe(&keeper, "k", Selector::default(), follow.clone())
        .unwrap();
    let Ok(RelayMsg::Open { demand, .. }) = rx.try_recv() else {
        panic!("the first watcher opens the stream")
    };
    let Ok((DemandSink::Live(live), _)) = hub.resolve(agent, demand.into()) else {
        panic!("live demand")
    };
    live.push(
        log_batch(live.id().get(), 1, 9),
        1,
        SeqPos { epoch: 1, seq: 10 },
    );
    // A late joiner asks for the last 10 lines: a backfill up to the ring's end (seq 10).
    let joiner = hub.add_session("acme", None).unwrap();
    let tail = Demand {
        tail: Some(10),
        ..follow
    };
    hub.subscribe(&joiner, "j", Selector::default(), tail)
        .unwrap();
    let Ok(RelayMsg::Open { demand, .. }) = rx.try_recv() else {
        panic!("a backfill")
    };
    let Ok((DemandSink::Backfill { tx, .. }, _)) = hub.resolve(agent, demand.into()) else {
        panic!("a backfill's sink")
    };
    // It brings lines 3 (one batch), then its agent connection ends.
    tx.send(log_batch(live.id().get(), 1, 3)).await.unwrap();
    drop(tx);
    hub.remove_agent(agent);
    live.push(
        log_batch(live.id().get(), 1, 10),
        1,
        SeqPos { epoch: 1, seq: 11 },
    );
    let d = drain(&joiner, &metrics, config(SlowConsumerPolicy::DropOldest));
    let want = format!(
        r#"{{"event":"gap","stream":{},"from":{{"epoch":1,"seq":4}},"lines":6,"bytes":0,"reason":"backfill_lost","exact":true}}"#,
        live.id().get()
    );
    let (events, _) = numbering(&d);
    assert_eq!(events, vec![want]);
    assert_eq!(
        binaries(&d).len(),
        2,
        "the backfill's batch, then the ring's"
    );
}
