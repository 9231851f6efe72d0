//! The QUIC producer: speaks the agent protocol directly (hello, catalog, then serves each
//! `open` with batches on its own unidirectional stream), over real QUIC with mutual TLS, but
//! with no files: it measures the relay, not the agent's tailing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use logrelay_wire::control::{self, AgentMsg, RelayMsg, StreamInfo};
use logrelay_wire::frame::{self, DataPreamble, FrameDecoder};
use logrelay_wire::labels::{Labels, StreamKind};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::corpus::{BatchMaker, Corpus, now_ns};
use crate::pace::Pacer;
use crate::stats::ProducerStats;

/// Namespace of every stream the harness creates.
pub const NAMESPACE: &str = "load";

/// Pod name of stream `local` of agent `agent` (also the NATS subject suffix).
pub fn pod_name(agent: u32, local: u32) -> String {
    format!("a{agent}-s{local}")
}

/// One producer: one QUIC connection, `streams` streams.
#[derive(Debug)]
pub struct Producer {
    /// Agent index (names its streams).
    pub agent: u32,
    /// Streams it announces.
    pub streams: u32,
    /// Relay QUIC address.
    pub relay: SocketAddr,
    /// Client TLS (agent certificate).
    pub tls: quinn::ClientConfig,
    /// Text of the lines.
    pub corpus: Arc<Corpus>,
    /// Lines per second per stream; `None`: unpaced.
    pub rate_per_stream: Option<f64>,
    /// Batch flush size.
    pub batch_bytes: usize,
    /// Counters.
    pub stats: Arc<ProducerStats>,
}

impl Producer {
    /// Connects and serves demands until `stop` turns true.
    pub async fn run(self, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let mut client = self.tls.clone();
        client.transport_config(Arc::new(logrelay_tls::quic_client_transport()));
        endpoint.set_default_client_config(client);
        let conn = endpoint
            .connect(self.relay, "localhost")?
            .await
            .context("QUIC handshake with the relay")?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut out = BytesMut::new();
        let mut decoder = FrameDecoder::new(frame::DEFAULT_MAX_FRAME_BYTES);
        write_msg(
            &mut send,
            &mut out,
            &AgentMsg::Hello {
                protocol: logrelay_wire::PROTOCOL_VERSION,
                node: format!("load-{}", self.agent),
                agent_version: "loadtest".into(),
                features: Vec::new(),
            },
        )
        .await?;
        let heartbeat_secs = match next_msg(&mut recv, &mut decoder).await? {
            Some(RelayMsg::Welcome { heartbeat_secs, .. }) => heartbeat_secs.max(1),
            other => bail!("expected welcome, got {other:?}"),
        };
        let streams = (0..self.streams)
            .map(|i| StreamInfo {
                id: u64::from(i),
                labels: Labels {
                    node: format!("load-{}", self.agent),
                    namespace: NAMESPACE.into(),
                    pod: pod_name(self.agent, i),
                    pod_uid: format!("00000000-0000-0000-{:04x}-{:012x}", self.agent, i),
                    container: "main".into(),
                    kind: StreamKind::Log,
                    ..Labels::default()
                },
            })
            .collect();
        write_msg(&mut send, &mut out, &AgentMsg::CatalogAdd { streams }).await?;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(heartbeat_secs)));
        let mut demands: HashMap<u64, AbortHandle> = HashMap::new();
        let mut stopped = stop.clone();
        let result = loop {
            tokio::select! {
                msg = next_msg(&mut recv, &mut decoder) => match msg {
                    Ok(Some(RelayMsg::Open { demand, stream, stream_ref, demand_spec, .. })) => {
                        let task = DataTask {
                            conn: conn.clone(),
                            demand,
                            stream_ref,
                            epoch: (u64::from(self.agent) << 32 | stream) + 1,
                            follow: demand_spec.follow,
                            corpus: self.corpus.clone(),
                            rate: self.rate_per_stream,
                            batch_bytes: self.batch_bytes,
                            stats: self.stats.clone(),
                        };
                        let h = tokio::spawn(task.run(stop.clone())).abort_handle();
                        if let Some(old) = demands.insert(demand, h) {
                            old.abort();
                        }
                    }
                    Ok(Some(RelayMsg::Cancel { demand })) => {
                        if let Some(h) = demands.remove(&demand) {
                            h.abort();
                        }
                    }
                    Ok(Some(RelayMsg::Error { code, message })) => break Err(anyhow::anyhow!("relay error {code:?}: {message}")),
                    Ok(Some(_)) => {}
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
                _ = heartbeat.tick() => write_msg(&mut send, &mut out, &AgentMsg::Heartbeat).await?,
                () = async { let _ = stopped.wait_for(|s| *s).await; } => break Ok(()),
            }
        };
        // Let data tasks see `stop` and finish their streams.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (_, h) in demands {
            h.abort();
        }
        conn.close(0u32.into(), b"loadtest done");
        endpoint.wait_idle().await;
        result
    }
}

struct DataTask {
    conn: quinn::Connection,
    demand: u64,
    stream_ref: u64,
    epoch: u64,
    follow: bool,
    corpus: Arc<Corpus>,
    rate: Option<f64>,
    batch_bytes: usize,
    stats: Arc<ProducerStats>,
}

impl DataTask {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let Ok(mut send) = self.conn.open_uni().await else {
            return;
        };
        if send
            .write_all(
                &DataPreamble {
                    demand: self.demand,
                }
                .encode(),
            )
            .await
            .is_err()
        {
            return;
        }
        if !self.follow {
            // A backfill request: the producer keeps no history.
            let _ = send.finish();
            return;
        }
        let mut maker = BatchMaker::new(self.stream_ref, self.epoch, self.batch_bytes);
        let mut pacer = Pacer::new(self.rate);
        loop {
            let stopped = *stop.borrow();
            if stopped {
                break;
            }
            let Some(due) = pacer.due(&mut stop).await else {
                break;
            };
            while pacer.owed(due) > 0 {
                let Some((batch, n)) = maker.make(&self.corpus, pacer.owed(due), now_ns()) else {
                    break;
                };
                let len = batch.len() as u64;
                let prefix = Bytes::copy_from_slice(&frame::prefix(batch.len()));
                if send.write_all_chunks(&mut [prefix, batch]).await.is_err() {
                    return;
                }
                pacer.sent(u64::from(n));
                self.stats.lines.fetch_add(u64::from(n), Ordering::Relaxed);
                self.stats.bytes.fetch_add(len, Ordering::Relaxed);
                if pacer.unpaced() {
                    break;
                }
            }
        }
        let _ = send.finish();
    }
}

async fn write_msg(
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    msg: &AgentMsg,
) -> anyhow::Result<()> {
    out.clear();
    frame::encode(&control::encode(msg), out);
    send.write_all(out).await?;
    Ok(())
}

async fn next_msg(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> anyhow::Result<Option<RelayMsg>> {
    loop {
        if let Some(body) = decoder.next_frame()? {
            return Ok(Some(control::decode(&body)?));
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(chunk) => decoder.extend(&chunk.bytes),
            None => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_indices() {
        assert_eq!(pod_name(3, 14), "a3-s14");
    }
}
