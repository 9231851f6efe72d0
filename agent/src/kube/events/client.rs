//! Serving an events demand from the API (feature `k8s`): list, then watch, into the pod's
//! [`EventLog`], and from it to the demand's sink.

use std::time::Duration;

use futures_util::{AsyncBufRead, AsyncBufReadExt};
use logrelay_wire::control::Demand;

use super::{EventFilter, EventLog, EventRecord, Malformed, PodEvents, WatchLine, encode};
use crate::metrics::AgentMetrics;
use crate::sink::{BatchSink, SinkClosed};

/// Why an events demand ended early.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The relay side went away.
    #[error("receiver closed")]
    Closed(#[from] SinkClosed),
    /// The demand's `matches` does not compile.
    #[error("line filter: {0}")]
    Filter(#[from] logrelay_wire::pattern::PatternError),
    /// The agent has no Kubernetes client.
    #[error("no Kubernetes API client")]
    NoClient,
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn url(pod: &PodEvents, watch: Option<&str>) -> String {
    let mut u = format!(
        "/api/v1/namespaces/{}/events?fieldSelector={}",
        encode_component(&pod.namespace),
        encode_component(&format!("involvedObject.uid={}", pod.uid)),
    );
    if let Some(rv) = watch {
        u.push_str(&format!(
            "&watch=true&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion={}",
            encode_component(rv)
        ));
    }
    u
}

async fn get(
    client: &kube::Client,
    url: &str,
) -> Result<impl AsyncBufRead + Unpin + use<>, kube::Error> {
    let req = axum::http::Request::get(url)
        .header(axum::http::header::ACCEPT_ENCODING, "identity")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    Ok(Box::pin(client.request_stream(req).await?))
}

/// Reads the next line into `buf` (without its LF), at most `max` bytes; `Ok(false)` at the
/// end. A longer line is consumed and reported as [`Malformed::TooLarge`].
async fn next_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<Result<(), Malformed>>> {
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok((!buf.is_empty() || too_long).then_some(if too_long {
                Err(Malformed::TooLarge)
            } else {
                Ok(())
            }));
        }
        let (take, done) = match memchr::memchr(b'\n', avail) {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if !too_long && buf.len() + take <= max {
            buf.extend_from_slice(&avail[..take]);
        } else {
            too_long = true;
            buf.clear();
        }
        r.consume_unpin(take + usize::from(done));
        if done {
            return Ok(Some(if too_long {
                Err(Malformed::TooLarge)
            } else {
                Ok(())
            }));
        }
    }
}

fn absorb(
    log: &EventLog,
    records: impl IntoIterator<Item = Result<EventRecord, Malformed>>,
    metrics: &AgentMetrics,
) {
    let mut good = Vec::new();
    for r in records {
        match r {
            Ok(r) => {
                metrics.kube_events.inc();
                good.push(r);
            }
            Err(e) => {
                metrics.kube_events_malformed.inc();
                tracing::debug!(error = %e, "Kubernetes event skipped");
            }
        }
    }
    log.absorb(good);
}

/// Lists the pod's events into its log; returns the list's resourceVersion.
async fn list_into(
    client: &kube::Client,
    pod: &PodEvents,
    metrics: &AgentMetrics,
) -> Result<String, String> {
    let mut body = get(client, &url(pod, None))
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    loop {
        let avail = body.fill_buf().await.map_err(|e| e.to_string())?;
        if avail.is_empty() {
            break;
        }
        if bytes.len() + avail.len() > super::MAX_LIST_BYTES {
            metrics.kube_events_malformed.inc();
            return Err(format!("event list over {} bytes", super::MAX_LIST_BYTES));
        }
        bytes.extend_from_slice(avail);
        let n = avail.len();
        body.consume_unpin(n);
    }
    match super::list(&bytes, &pod.uid) {
        Ok((rv, records)) => {
            absorb(&pod.log, records, metrics);
            Ok(rv)
        }
        Err(e) => {
            metrics.kube_events_malformed.inc();
            Err(e.to_string())
        }
    }
}

/// Sends what the demand at `cursor` has not read yet.
async fn flush<S: BatchSink>(
    pod: &PodEvents,
    cursor: &mut u64,
    until: Option<u64>,
    ctx: &Ctx<'_>,
    sink: &mut S,
) -> Result<(), SinkClosed> {
    let reads = pod.log.read(cursor, until);
    let (batches, _) = encode(
        reads,
        ctx.stream_ref,
        pod.log.epoch(),
        !ctx.spec.follow,
        ctx.filter,
        ctx.max_batch_bytes,
    );
    for b in batches {
        sink.send(b).await?;
    }
    Ok(())
}

struct Ctx<'a> {
    spec: &'a Demand,
    stream_ref: u64,
    max_batch_bytes: usize,
    filter: &'a EventFilter,
}

struct LiveGuard<'a>(&'a EventLog);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.live_ended();
    }
}

/// Serves one demand for a pod's events: its backlog (the pod's events as listed now, and
/// those kept for other demands), then, when following, each new event as the watch brings it.
pub async fn serve<S: BatchSink>(
    pod: &PodEvents,
    spec: &Demand,
    stream_ref: u64,
    max_batch_bytes: usize,
    sink: &mut S,
    metrics: &AgentMetrics,
) -> Result<(), EventsError> {
    let client = pod.api.client.clone().ok_or(EventsError::NoClient)?;
    let filter = EventFilter::of(spec)?;
    let ctx = Ctx {
        spec,
        stream_ref,
        max_batch_bytes,
        filter: &filter,
    };
    pod.log.live_started();
    let _live = LiveGuard(&pod.log);
    let mut delay = Duration::from_millis(200);
    let mut rv = loop {
        match list_into(&client, pod, metrics).await {
            Ok(rv) => break rv,
            Err(e) => {
                tracing::warn!(error = %e, pod_uid = %pod.uid, "cannot list the pod's events; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let until = spec
        .until
        .filter(|u| u.epoch == pod.log.epoch())
        .map(|u| u.seq);
    let mut cursor = pod.log.start(spec);
    flush(pod, &mut cursor, until, &ctx, sink).await?;
    if !spec.follow {
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        let watched = async {
            let mut body = get(&client, &url(pod, Some(&rv)))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match next_line(&mut body, &mut buf, super::MAX_WATCH_LINE_BYTES).await {
                    Err(e) => return Err(e.to_string()),
                    // The watch ended (timeout): watch again from where it was.
                    Ok(None) => return Ok(()),
                    Ok(Some(Err(e))) => {
                        metrics.kube_events_malformed.inc();
                        tracing::debug!(error = %e, "watch line skipped");
                    }
                    Ok(Some(Ok(()))) => match super::watch_line(&buf, &pod.uid) {
                        Err(e) => {
                            metrics.kube_events_malformed.inc();
                            tracing::debug!(error = %e, "watch line skipped");
                        }
                        Ok(WatchLine::Event(record, version)) => {
                            if let Some(v) = version {
                                rv = v;
                            }
                            absorb(&pod.log, [record], metrics);
                            flush(pod, &mut cursor, None, &ctx, sink)
                                .await
                                .map_err(|_| "closed".to_owned())?;
                        }
                        Ok(WatchLine::Deleted(version)) => {
                            if let Some(v) = version {
                                rv = v;
                            }
                        }
                        Ok(WatchLine::Bookmark(v)) => rv = v,
                        Ok(WatchLine::Error(m)) => return Err(m),
                    },
                }
            }
        };
        match watched.await {
            Ok(()) => delay = Duration::from_millis(200),
            Err(e) if e == "closed" => return Err(SinkClosed.into()),
            Err(e) => {
                tracing::debug!(error = %e, pod_uid = %pod.uid, "events watch ended; listing again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                match list_into(&client, pod, metrics).await {
                    Ok(v) => rv = v,
                    Err(e) => {
                        tracing::warn!(error = %e, pod_uid = %pod.uid, "cannot list the pod's events")
                    }
                }
                flush(pod, &mut cursor, None, &ctx, sink).await?;
            }
        }
    }
}
