//! One run: logrelay under the scenario, then (optionally) nats-server under the same one.
//!
//! For each system: start the server, the subscribers (and wait until every one is attached),
//! the load; sample every `sample_secs` (ingest, deliveries, latency, /proc of every process);
//! after the warm-up, the samples count towards the figures; then stop everything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use logrelay_tls::{AgentId, DevPki};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::children::{AgentAddrs, AgentSpec, ChildProc, IdentityDer, RelayAddrs, RelaySpec};
use crate::corpus::Corpus;
use crate::nats::{self, NatsServer, Publisher};
use crate::procstat::{self, Machine, ProcReading};
use crate::producer::{self, Producer};
use crate::progress::Progress;
use crate::report::{Figures, Ratio, Report, Sample, mib, si};
use crate::scenario::{Mode, Scenario};
use crate::scrape;
use crate::stats::{self, Latency, ProducerStats, SubStats, SubTotals};
use crate::subscriber::{self, Behaviour, Subscriber};
use crate::writer::{self, FileWriter};

/// Org of every agent and session of a run.
const ORG: &str = "load";
/// How long subscribers and streams have to come up.
const SETUP_DEADLINE: Duration = Duration::from_secs(90);

/// Options of a run besides the scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Also run the scenario through nats-server.
    pub baseline_nats: bool,
    /// Draw the progress bar.
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
    /// The preset name, if one was used.
    pub preset: Option<String>,
}

/// Runs the scenario (and the baseline) and assembles the report.
pub async fn run(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Report> {
    let started_unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let wall = Instant::now();
    let corpus = Arc::new(Corpus::loghub(scenario.line_bytes));
    let mut progress = Progress::new(opts.progress);
    let relay = run_relay(scenario, &corpus, &mut progress)
        .await
        .context("logrelay run")?;
    let baseline = if opts.baseline_nats {
        if scenario.subscribers.sessions == 0 {
            eprintln!(
                "loadtest: no subscribers in this scenario; the nats baseline does not apply"
            );
            None
        } else {
            Some(
                run_nats(scenario, &corpus, &mut progress)
                    .await
                    .context("nats-server baseline")?,
            )
        }
    } else {
        None
    };
    Ok(Report {
        preset: opts.preset.clone(),
        command: opts.command.clone(),
        scenario: scenario.clone(),
        machine: Machine::this(),
        started_unix_secs,
        wall_secs: wall.elapsed().as_secs_f64(),
        mean_line_bytes: corpus.mean_line_bytes(),
        ratio: baseline.as_ref().map(|b| Ratio::of(&relay, b)),
        baseline,
        relay,
    })
}

fn behaviour(scenario: &Scenario, session: u32) -> Behaviour {
    let (stalled, slow) = scenario.stalled_and_slow();
    if session < stalled {
        Behaviour::Stalled
    } else if session < stalled + slow {
        Behaviour::Slow(Duration::from_millis(scenario.subscribers.slow_delay_ms))
    } else {
        Behaviour::Normal
    }
}

fn pod_of(scenario: &Scenario, index: u32) -> String {
    producer::pod_name(
        index / scenario.streams_per_agent,
        index % scenario.streams_per_agent,
    )
}

/// The subscriber sessions of a run: their counters, how many streams each waits for, and the
/// channel on which they say they are attached (or failed).
struct Sessions {
    stats: Vec<Arc<SubStats>>,
    wants: Vec<u64>,
    ready: mpsc::Receiver<()>,
}

impl Sessions {
    /// Spawns one session per assignment of `scenario` into `tasks`;
    /// `session(index, streams, stats, ready, stop)` is its body.
    fn spawn<F>(
        scenario: &Scenario,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        stop: &watch::Receiver<bool>,
        mut session: impl FnMut(
            u32,
            &[u32],
            Arc<SubStats>,
            mpsc::Sender<()>,
            watch::Receiver<bool>,
        ) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (ready_tx, ready) = mpsc::channel(scenario.subscribers.sessions.max(1) as usize);
        let mut stats = Vec::new();
        let mut wants = Vec::new();
        for (i, streams) in scenario.assignments().into_iter().enumerate() {
            let s: Arc<SubStats> = Arc::default();
            stats.push(s.clone());
            wants.push(streams.len() as u64);
            let fut = session(i as u32, &streams, s, ready_tx.clone(), stop.clone());
            tasks.spawn(async move {
                fut.await;
                Ok(())
            });
        }
        Self {
            stats,
            wants,
            ready,
        }
    }

    /// Waits until every session is attached (or failed), woken by their `ready` messages.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETUP_DEADLINE;
        loop {
            let pending = self
                .stats
                .iter()
                .zip(&self.wants)
                .filter(|(s, w)| {
                    s.streams_ready.load(Ordering::Relaxed) < **w
                        && s.failure.lock().expect("failure lock").is_none()
                })
                .count();
            if pending == 0 {
                break;
            }
            match tokio::time::timeout_at(deadline, self.ready.recv()).await {
                Ok(Some(())) => {}
                Ok(None) => bail!("subscribers went away during set-up"),
                Err(_) => bail!("{pending} subscribers not attached after {SETUP_DEADLINE:?}"),
            }
        }
        let failed: Vec<String> = self
            .stats
            .iter()
            .filter_map(|s| s.failure.lock().expect("failure lock").clone())
            .collect();
        if failed.len() == self.stats.len() && !self.stats.is_empty() {
            bail!("every subscriber failed during set-up, e.g.: {}", failed[0]);
        }
        Ok(())
    }
}

/// Where ingest figures come from.
enum IngestSource {
    /// The relays' `lines_received_total` / `bytes_received_total` (from their own agents),
    /// summed.
    Relays(Vec<SocketAddr>),
    /// Publisher counters.
    Producers(Vec<Arc<ProducerStats>>),
}

#[derive(Debug, Clone, Default)]
struct Reading {
    secs: f64,
    ingest_lines: u64,
    ingest_bytes: u64,
    drops: BTreeMap<String, u64>,
    subs: SubTotals,
    server: ProcReading,
    agents: Vec<ProcReading>,
    harness: ProcReading,
}

struct Probe {
    ingest: IngestSource,
    /// Summed: a run's server may be several processes (relays and their nats-server).
    server_pids: Vec<u32>,
    agent_pids: Vec<u32>,
    subs: Vec<Arc<SubStats>>,
    t0: Instant,
}

impl Probe {
    async fn read(&self, latencies: &mut Histogram<u64>) -> Reading {
        let (ingest_lines, ingest_bytes, drops) = match &self.ingest {
            IngestSource::Relays(admins) => {
                let (mut lines, mut bytes) = (0, 0);
                let mut drops: BTreeMap<String, u64> = BTreeMap::new();
                for admin in admins {
                    let body = scrape::fetch(*admin).await.unwrap_or_default();
                    for (l, v) in scrape::series(&body, "logrelay_relay_dropped_lines_total") {
                        *drops.entry(scrape::reason(&l)).or_default() += v as u64;
                    }
                    lines += scrape::total(&body, "logrelay_relay_lines_received_total") as u64;
                    bytes += scrape::total(&body, "logrelay_relay_bytes_received_total") as u64;
                }
                (lines, bytes, drops)
            }
            IngestSource::Producers(p) => (
                p.iter().map(|s| s.lines.load(Ordering::Relaxed)).sum(),
                p.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum(),
                BTreeMap::new(),
            ),
        };
        Reading {
            secs: self.t0.elapsed().as_secs_f64(),
            ingest_lines,
            ingest_bytes,
            drops,
            subs: stats::collect(&self.subs, latencies),
            server: self
                .server_pids
                .iter()
                .filter_map(|p| procstat::read(&p.to_string()))
                .fold(ProcReading::default(), |a, b| ProcReading {
                    cpu_ticks: a.cpu_ticks + b.cpu_ticks,
                    rss_bytes: a.rss_bytes + b.rss_bytes,
                }),
            agents: self
                .agent_pids
                .iter()
                .map(|p| procstat::read(&p.to_string()).unwrap_or_default())
                .collect(),
            harness: procstat::read("self").unwrap_or_default(),
        }
    }
}

fn agents_cpu(before: &Reading, after: &Reading, secs: f64) -> Option<f64> {
    if after.agents.is_empty() {
        return None;
    }
    Some(
        before
            .agents
            .iter()
            .zip(&after.agents)
            .map(|(b, a)| procstat::cpu_percent(*b, *a, secs))
            .sum(),
    )
}

/// Samples until the warm-up and the measured window are over; returns the figures (without
/// system name, sessions and failures, which the caller knows).
async fn measure(
    label: &str,
    scenario: &Scenario,
    probe: &Probe,
    progress: &mut Progress,
) -> Figures {
    let interval = scenario.sample_secs;
    let total = scenario.warmup_secs + scenario.duration_secs;
    let ticks = (total / interval).ceil() as u32;
    let start = Instant::now();
    let mut scratch = stats::latency_histogram();
    let first = probe.read(&mut scratch).await;
    let mut window_start = first.clone();
    let mut prev = first;
    let mut window_latency = stats::latency_histogram();
    let mut samples = Vec::new();
    let mut rss_max = prev.server.rss_bytes;
    for k in 1..=ticks {
        tokio::time::sleep_until(start + Duration::from_secs_f64(interval * f64::from(k))).await;
        let mut h = stats::latency_histogram();
        let r = probe.read(&mut h).await;
        let dt = (r.secs - prev.secs).max(1e-6);
        let t = f64::from(k) * interval;
        let warmup = t <= scenario.warmup_secs + 1e-9;
        let lat = Latency::of(&h);
        let sample = Sample {
            t_secs: t,
            warmup,
            ingest_lines_per_sec: r.ingest_lines.saturating_sub(prev.ingest_lines) as f64 / dt,
            deliveries_per_sec: r.subs.lines.saturating_sub(prev.subs.lines) as f64 / dt,
            latency_p50_us: lat.p50,
            latency_p99_us: lat.p99,
            server_rss_bytes: r.server.rss_bytes,
            server_cpu_percent: procstat::cpu_percent(prev.server, r.server, dt),
            agent_cpu_percent: agents_cpu(&prev, &r, dt),
            harness_cpu_percent: procstat::cpu_percent(prev.harness, r.harness, dt),
        };
        rss_max = rss_max.max(r.server.rss_bytes);
        progress.update(
            label,
            t,
            total,
            &format!(
                "{}ingest {} lines/s  deliveries {}/s  p99 {} µs  server {} {:.0}% CPU",
                if warmup { "(warm-up) " } else { "" },
                si(sample.ingest_lines_per_sec),
                si(sample.deliveries_per_sec),
                lat.p99,
                mib(r.server.rss_bytes as f64),
                sample.server_cpu_percent,
            ),
        );
        samples.push(sample);
        if warmup {
            window_start = r.clone();
        } else {
            window_latency.add(&h).expect("same bounds");
        }
        prev = r;
    }
    progress.finish();
    let mut f = window(&window_start, &prev, &window_latency);
    f.relay_rss_bytes_max = rss_max;
    f.samples = samples;
    f
}

/// The figures of the window between two readings (the warm-up's last, and the end).
fn window(start: &Reading, end: &Reading, latency: &Histogram<u64>) -> Figures {
    let secs = (end.secs - start.secs).max(1e-6);
    let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    let drops_by_reason: BTreeMap<String, u64> = end
        .drops
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(*start.drops.get(k).unwrap_or(&0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    Figures {
        ingest_lines_per_sec: per_sec(end.ingest_lines, start.ingest_lines),
        ingest_bytes_per_sec: per_sec(end.ingest_bytes, start.ingest_bytes),
        deliveries_per_sec: per_sec(end.subs.lines, start.subs.lines),
        delivered_bytes_per_sec: per_sec(end.subs.bytes, start.subs.bytes),
        latency_us: Latency::of(latency),
        dropped_lines: drops_by_reason.values().sum(),
        drops_by_reason,
        gap_lines_seen: end.subs.gap_lines.saturating_sub(start.subs.gap_lines),
        relay_cpu_percent: procstat::cpu_percent(start.server, end.server, secs),
        agent_cpu_percent: agents_cpu(start, end, secs),
        harness_cpu_percent: procstat::cpu_percent(start.harness, end.harness, secs),
        measured_secs: secs,
        ..Figures::default()
    }
}

fn gaps_and_failures(subs: &[Arc<SubStats>], f: &mut Figures) {
    for s in subs {
        for (k, v) in s.gaps_by_reason.lock().expect("gaps lock").iter() {
            *f.gaps_by_reason.entry(k.clone()).or_default() += v;
        }
        if let Some(why) = s.failure.lock().expect("failure lock").clone() {
            f.sessions_failed += 1;
            if f.failures.len() < 5 {
                f.failures.push(why);
            }
        }
    }
    f.sessions = subs.len() as u32;
}

async fn run_relay(
    scenario: &Scenario,
    corpus: &Arc<Corpus>,
    progress: &mut Progress,
) -> anyhow::Result<Figures> {
    logrelay_tls::install_provider();
    let exe = std::env::current_exe().context("locating the loadtest binary")?;
    let pki = DevPki::new()?;
    let ca = pki.ca().to_vec();
    let agent_identity = pki.agent(&AgentId {
        org: ORG.into(),
        cluster: "bench".into(),
    })?;
    // Several relays share a backplane: a nats-server of the harness's own.
    let backplane = if scenario.relays > 1 {
        Some(NatsServer::start().await.context("the relays' backplane")?)
    } else {
        None
    };
    let identity = IdentityDer::of(&pki.server(&["localhost", "127.0.0.1"])?);
    let mut relays: Vec<(ChildProc, RelayAddrs)> = Vec::new();
    for r in 0..scenario.relays {
        relays.push(
            ChildProc::spawn(
                "relay",
                &exe,
                &["serve-relay"],
                &RelaySpec {
                    identity: identity.clone(),
                    ca: ca.clone(),
                    org: ORG.into(),
                    ring_bytes: scenario.ring_bytes as usize,
                    backplane: backplane
                        .as_ref()
                        .map(|n| (format!("nats://{}", n.client), format!("load-{r}"))),
                },
            )
            .await?,
        );
    }
    let addrs_of = |r: u32| relays[r as usize].1;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let rate_per_stream = scenario
        .rate_lines_per_sec
        .map(|r| r as f64 / f64::from(scenario.streams()));

    // Load sources.
    let mut agents = Vec::new();
    let mut writers = Vec::new();
    let writer_stop = Arc::new(AtomicBool::new(false));
    let pods = tempfile::Builder::new()
        .prefix("loadtest-pods-")
        .tempdir()?;
    let producer_stats: Vec<Arc<ProducerStats>> =
        (0..scenario.agents).map(|_| Arc::default()).collect();
    match scenario.mode {
        Mode::QuicProducer => {
            let tls = logrelay_tls::quic_client(agent_identity.clone(), pki.roots())?;
            for a in 0..scenario.agents {
                let p = Producer {
                    agent: a,
                    streams: scenario.streams_per_agent,
                    relay: addrs_of(scenario.relay_of_agent(a)).quic,
                    tls: tls.clone(),
                    corpus: corpus.clone(),
                    rate_per_stream,
                    batch_bytes: scenario.batch_bytes as usize,
                    stats: producer_stats[a as usize].clone(),
                };
                tasks.spawn(p.run(stop_rx.clone()));
            }
        }
        Mode::Agent => {
            for a in 0..scenario.agents {
                let dir = pods.path().join(format!("agent-{a}"));
                let paths: Vec<_> = (0..scenario.streams_per_agent)
                    .map(|s| {
                        writer::log_path(
                            &dir,
                            producer::NAMESPACE,
                            &producer::pod_name(a, s),
                            "main",
                        )
                    })
                    .collect();
                writers.push(FileWriter::create(
                    &paths,
                    corpus.clone(),
                    rate_per_stream.unwrap_or(0.0),
                    producer_stats[a as usize].clone(),
                )?);
                let (child, _): (ChildProc, AgentAddrs) = ChildProc::spawn(
                    "agent",
                    &exe,
                    &["serve-agent"],
                    &AgentSpec {
                        identity: IdentityDer::of(&agent_identity),
                        ca: ca.clone(),
                        pods_dir: dir,
                        relay: addrs_of(scenario.relay_of_agent(a)).quic,
                        node: format!("load-{a}"),
                        max_batch_bytes: scenario.batch_bytes as usize,
                    },
                )
                .await?;
                agents.push(child);
            }
        }
    }

    // Subscribers.
    let mut sessions = Sessions::spawn(
        scenario,
        &mut tasks,
        &stop_rx,
        |i, streams, stats, ready, stop| {
            let relay = addrs_of(scenario.relay_of_session(i));
            let sub = Subscriber {
                url: format!("ws://{}/v1/subscribe", relay.http),
                pods: streams.iter().map(|s| pod_of(scenario, *s)).collect(),
                behaviour: behaviour(scenario, i),
                every: scenario.latency_sample_every,
                stats,
            };
            subscriber::run_relay(sub, ready, stop)
        },
    );
    let subs = sessions.stats.clone();
    let admins: Vec<SocketAddr> = relays.iter().map(|(_, a)| a.admin).collect();
    let setup = async {
        sessions.wait_ready().await?;
        if subs.is_empty() {
            wait_for_streams(&admins, u64::from(scenario.streams())).await?;
        }
        anyhow::Ok(())
    }
    .await;

    let figures = match setup {
        Ok(()) => {
            let threads: Vec<_> = writers
                .into_iter()
                .map(|w| {
                    let stop = writer_stop.clone();
                    std::thread::spawn(move || w.run(stop))
                })
                .collect();
            let probe = Probe {
                ingest: IngestSource::Relays(admins.clone()),
                // The server is every relay, and their backplane.
                server_pids: relays
                    .iter()
                    .map(|(p, _)| p.pid)
                    .chain(backplane.as_ref().map(|n| n.pid))
                    .collect(),
                agent_pids: agents.iter().map(|a| a.pid).collect(),
                subs: subs.clone(),
                t0: Instant::now(),
            };
            let f = measure("logrelay", scenario, &probe, progress).await;
            writer_stop.store(true, Ordering::Relaxed);
            for t in threads {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("loadtest: file writer failed: {e}"),
                    Err(_) => eprintln!("loadtest: file writer panicked"),
                }
            }
            Ok(f)
        }
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(true);
    drain(&mut tasks).await;
    for a in agents {
        a.stop().await;
    }
    for (relay, _) in relays {
        relay.stop().await;
    }
    drop(backplane);
    let mut figures = figures?;
    figures.system = "logrelay".into();
    figures.ingest_path = scenario.mode.as_str().into();
    gaps_and_failures(&subs, &mut figures);
    Ok(figures)
}

/// Idle scenarios have nobody to wait for: wait until a relay knows every stream (with
/// several, the shared catalog lists every relay's streams on each).
async fn wait_for_streams(admins: &[SocketAddr], want: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETUP_DEADLINE;
    loop {
        let mut have = 0;
        for admin in admins {
            let body = scrape::fetch(*admin).await.unwrap_or_default();
            have = have.max(scrape::total(&body, "logrelay_relay_streams") as u64);
        }
        if have >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the relay knows {have} of {want} streams after {SETUP_DEADLINE:?}");
        }
        // Polling a metric: there is no event to wait on across processes.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drain(tasks: &mut JoinSet<anyhow::Result<()>>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(Ok(())))) => {}
            Ok(Some(Ok(Err(e)))) => eprintln!("loadtest: load task failed: {e:#}"),
            Ok(Some(Err(e))) if e.is_cancelled() => {}
            Ok(Some(Err(e))) => eprintln!("loadtest: load task panicked: {e}"),
            Ok(None) => return,
            Err(_) => {
                eprintln!(
                    "loadtest: {} load tasks still running; aborting them",
                    tasks.len()
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

async fn run_nats(
    scenario: &Scenario,
    corpus: &Arc<Corpus>,
    progress: &mut Progress,
) -> anyhow::Result<Figures> {
    let server = NatsServer::start().await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let url = format!("ws://{}", server.ws);
    let mut sessions = Sessions::spawn(
        scenario,
        &mut tasks,
        &stop_rx,
        |i, streams, stats, ready, stop| {
            let subjects = streams
                .iter()
                .map(|s| nats::subject(&pod_of(scenario, *s)))
                .collect();
            nats::run_subscriber(
                url.clone(),
                subjects,
                behaviour(scenario, i),
                scenario.latency_sample_every,
                stats,
                ready,
                stop,
            )
        },
    );
    let subs = sessions.stats.clone();
    let setup = sessions.wait_ready().await;
    let rate = scenario
        .rate_lines_per_sec
        .map(|r| r as f64 / f64::from(scenario.streams()));
    let publisher_stats: Vec<Arc<ProducerStats>> =
        (0..scenario.streams()).map(|_| Arc::default()).collect();
    let figures = match setup {
        Ok(()) => {
            for s in 0..scenario.streams() {
                let p = Publisher {
                    addr: server.client,
                    subject: nats::subject(&pod_of(scenario, s)),
                    corpus: corpus.clone(),
                    rate,
                    batch_bytes: scenario.batch_bytes as usize,
                    stream: u64::from(s),
                    stats: publisher_stats[s as usize].clone(),
                };
                tasks.spawn(p.run(stop_rx.clone()));
            }
            let probe = Probe {
                ingest: IngestSource::Producers(publisher_stats.clone()),
                server_pids: vec![server.pid],
                agent_pids: Vec::new(),
                subs: subs.clone(),
                t0: Instant::now(),
            };
            Ok(measure("nats-server", scenario, &probe, progress).await)
        }
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(true);
    drain(&mut tasks).await;
    let slow = server.slow_consumers.load(Ordering::Relaxed);
    server.stop().await;
    let mut figures = figures?;
    figures.system = "nats-server".into();
    figures.ingest_path = "nats-publisher".into();
    gaps_and_failures(&subs, &mut figures);
    figures.dropped_lines = figures.gap_lines_seen;
    figures.drops_by_reason = figures
        .gaps_by_reason
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if slow > 0 {
        figures
            .drops_by_reason
            .insert("slow_consumer_events_in_server_log".into(), slow);
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(secs: f64, lines: u64, delivered: u64, dropped: u64, ticks: u64) -> Reading {
        Reading {
            secs,
            ingest_lines: lines,
            ingest_bytes: lines * 200,
            drops: BTreeMap::from([("slow_consumer".to_owned(), dropped)]),
            subs: SubTotals {
                lines: delivered,
                bytes: delivered * 200,
                gap_lines: dropped,
            },
            server: ProcReading {
                cpu_ticks: ticks,
                rss_bytes: 1 << 20,
            },
            agents: vec![ProcReading::default(); 2],
            harness: ProcReading::default(),
        }
    }

    #[test]
    fn the_window_counts_only_what_happened_in_it() {
        let start = reading(2.0, 1_000, 5_000, 7, 100);
        let end = reading(12.0, 2_001_000, 20_005_000, 1_007, 800);
        let mut h = stats::latency_histogram();
        stats::record_ns(&mut h, 2_000_000);
        let f = window(&start, &end, &h);
        assert_eq!(f.measured_secs, 10.0);
        assert_eq!(f.ingest_lines_per_sec, 200_000.0);
        assert_eq!(f.ingest_bytes_per_sec, 40_000_000.0);
        assert_eq!(f.deliveries_per_sec, 2_000_000.0);
        assert_eq!(f.dropped_lines, 1_000);
        assert_eq!(f.drops_by_reason["slow_consumer"], 1_000);
        assert_eq!(f.gap_lines_seen, 1_000);
        assert_eq!(f.relay_cpu_percent, 70.0);
        assert_eq!(f.agent_cpu_percent, Some(0.0));
        assert_eq!(f.latency_us.p50, 2_000);
    }

    #[test]
    fn sessions_are_given_streams_and_behaviours_by_index() {
        let s = Scenario::preset("slow-consumers").unwrap();
        assert_eq!(behaviour(&s, 0), Behaviour::Stalled);
        assert_eq!(behaviour(&s, 9), Behaviour::Stalled);
        assert_eq!(behaviour(&s, 10), Behaviour::Normal);
        let l = Scenario::preset("latency").unwrap();
        assert_eq!(pod_of(&l, 3), "a0-s3");
    }
}
