//! WebSocket subscribers of the relay (`/v1/subscribe`): subscribe to their streams with no
//! backlog, then count lines and record latencies. The batch bytes are read in place (header
//! and record lengths, plus the stamp of every sampled line), so that the subscriber costs as
//! little as possible of the CPU the relay shares with it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::corpus::{now_ns, observe_batch};
use crate::producer::NAMESPACE;
use crate::stats::{SubStats, record_ns};

/// How a subscriber consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads as fast as it can.
    Normal,
    /// Subscribes, then never reads again.
    Stalled,
    /// Pauses after every message.
    Slow(Duration),
}

/// One subscriber session.
#[derive(Debug)]
pub struct Subscriber {
    /// Where to connect (`ws://…` for the relay, `ws://…` of nats-server for the baseline).
    pub url: String,
    /// Pod names of the streams it watches.
    pub pods: Vec<String>,
    /// How it consumes.
    pub behaviour: Behaviour,
    /// Record the latency of every Nth line.
    pub every: u32,
    /// Its counters.
    pub stats: Arc<SubStats>,
}

/// Connects and subscribes; sends on `ready` once every stream is attached; consumes until
/// `stop`.
pub async fn run_relay(sub: Subscriber, ready: mpsc::Sender<()>, mut stop: watch::Receiver<bool>) {
    let (mut ws, _) =
        match tokio_tungstenite::connect_async_with_config(sub.url.as_str(), None, true).await {
            Ok(c) => c,
            Err(e) => {
                sub.stats.fail(format!("connect: {e}"));
                let _ = ready.send(()).await;
                return;
            }
        };
    for (i, pod) in sub.pods.iter().enumerate() {
        let req = Request::Subscribe {
            id: format!("s{i}"),
            selector: Selector {
                namespace: Some(NAMESPACE.into()),
                pod: Some(pod.clone()),
                container: Some("main".into()),
                ..Selector::default()
            },
            tail: Some(0),
            since_ns: None,
            since_seq: None,
            follow: true,
            contains: None,
            matches: None,
        };
        let text = serde_json::to_string(&req).expect("requests serialize");
        if let Err(e) = ws.send(Message::text(text)).await {
            sub.stats.fail(format!("subscribe: {e}"));
            let _ = ready.send(()).await;
            return;
        }
    }
    let want = sub.pods.len() as u64;
    let mut announced = false;
    loop {
        if announced && sub.behaviour == Behaviour::Stalled {
            let _ = stop.wait_for(|s| *s).await;
            break;
        }
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                sub.stats.fail(format!("websocket: {e}"));
                break;
            }
            None => {
                sub.stats.fail("relay closed the connection".into());
                break;
            }
        };
        match msg {
            Message::Binary(b) => {
                let now = now_ns();
                let seen = {
                    let mut h = sub.stats.latency.lock().expect("latency lock");
                    observe_batch(&b, sub.every, now, |ns| record_ns(&mut h, ns))
                };
                match seen {
                    Some(seen) => {
                        sub.stats
                            .lines
                            .fetch_add(u64::from(seen.lines), Ordering::Relaxed);
                        sub.stats.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        if seen.agent_gap_lines > 0 {
                            sub.stats.gap("agent_gap", u64::from(seen.agent_gap_lines));
                        }
                    }
                    None => sub.stats.fail("malformed batch from the relay".into()),
                }
                if let Behaviour::Slow(d) = sub.behaviour {
                    tokio::time::sleep(d).await;
                }
            }
            Message::Text(t) => match serde_json::from_str::<Event>(t.as_str()) {
                Ok(Event::Stream { .. }) => {
                    let n = sub.stats.streams_ready.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == want && !announced {
                        announced = true;
                        let _ = ready.send(()).await;
                    }
                }
                Ok(Event::Gap { lines, reason, .. }) => sub.stats.gap(reason.as_str(), lines),
                Ok(Event::Error { code, message, .. }) => {
                    sub.stats
                        .fail(format!("error event {}: {message}", code.as_str()));
                }
                Ok(_) => {}
                Err(e) => sub.stats.fail(format!("unreadable event: {e}")),
            },
            Message::Close(f) => {
                sub.stats.fail(format!(
                    "relay closed the session: {}",
                    f.map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default()
                ));
                break;
            }
            _ => {}
        }
    }
    if !announced {
        let _ = ready.send(()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}
