//! `loadtest chaos`: a soak that, for a set time, writes container logs with kubelet-style
//! rotation over several pods, churns sessions, SIGKILLs and restarts the agent and the relay
//! at random, and runs the fault proxy between them, while an invariant checker holds, per
//! stream: delivered lines + lines reported in exact gaps == lines written, in order, with no
//! duplicate; and samples the RSS of relay and agent, whose slope must stay flat.
//!
//! The relay and the agent are the production binaries ([`procs`]); the writers, the fault
//! proxy, the checkers and the churning sessions run in this process (`logrelay-chaos`). What
//! happens when is drawn from the seed ([`plan::schedule`]); see docs/benchmarks.md, "Chaos
//! soak".

pub mod plan;
pub mod procs;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use logrelay_chaos::ledger::{ResumingClient, Tally};
use logrelay_chaos::{FaultProxy, KubeletWriter, ProxyConfig, WriterConfig};
use logrelay_wire::selector::Selector;
use logrelay_wire::session::Event;
use tokio::time::Instant;

use crate::procstat::{self, Machine};
use crate::progress::Progress;
use logrelay_tls::DevPki;
use plan::{Action, Cadence, NetFault, RssSample, Target};
use procs::{Agent, Binaries, PkiFiles, Relay};
use report::{ChaosReport, Kill, LateJoiners, Memory, Network, Setup, StreamFigures};

/// Org of the agent's certificate and of the sessions.
const ORG: &str = "load";
/// Namespace of the pods.
const NAMESPACE: &str = "chaos";
/// Nothing is scheduled in the first and last this long of the soak.
const SETTLE: Duration = Duration::from_secs(10);
/// How long every stream has to recover after a restart, and the whole pipeline to drain at
/// the end.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
/// A kill comes at least this long after the streams recovered from the previous one (a
/// pipeline still catching up is not killed again at once).
const KILL_SPACING: Duration = Duration::from_secs(5);
/// RSS samples per life needed for it to count in the slope.
const MIN_LIFE_SAMPLES: usize = 10;

/// What `loadtest chaos` was asked.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Length of the chaos (drain excluded).
    pub duration: Duration,
    /// Length of the steady phase at its end, without kills (default: a third, 60 s to 10 min).
    pub steady: Option<Duration>,
    /// Seed of the schedule and of the fault proxy.
    pub seed: u64,
    /// Containers written and watched.
    pub pods: usize,
    /// Lines per second over all pods.
    pub rate_lines_per_sec: u32,
    /// `0.log` is rotated at this size.
    pub rotate_bytes: u64,
    /// Where the relay and agent binaries are (default: beside loadtest, built by cargo).
    pub bin_dir: Option<PathBuf>,
    /// Directory of the processes' logs.
    pub logs_dir: PathBuf,
    /// The largest RSS slope that passes, bytes per minute.
    pub max_rss_slope_bytes_per_min: f64,
    /// RSS samples left out at the start of each process life, seconds.
    pub rss_warmup_secs: f64,
    /// Draw the progress line.
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Flags the agent runs with besides certificates, addresses and the pods directory: quick
/// rescans so new rotations and pods are seen at once, and a reconnect backoff capped at 1 s
/// so a soak spends its time in faults, not in backoff.
const AGENT_FLAGS: [&str; 6] = [
    "--node-name",
    "chaos-node",
    "--rescan-ms",
    "200",
    "--reconnect-max-ms",
    "1000",
];

fn pod_name(i: usize) -> String {
    format!("chaos-{i}")
}

fn selector_of(pod: &str) -> Selector {
    Selector {
        namespace: Some(NAMESPACE.into()),
        pod: Some(pod.into()),
        container: Some("main".into()),
        ..Selector::default()
    }
}

/// The pids and lives of the two processes, for the sampler.
#[derive(Debug, Default, Clone, Copy)]
struct Lives {
    relay: Option<u32>,
    relay_life: u32,
    agent: Option<u32>,
    agent_life: u32,
}

/// Everything the concurrent parts of the soak share.
struct Soak {
    start: Instant,
    url: String,
    proxy: FaultProxy,
    writers: Mutex<Vec<KubeletWriter>>,
    checkers: Vec<ResumingClient>,
    lives: Mutex<Lives>,
    kills: Mutex<Vec<Kill>>,
    joiners: Mutex<LateJoiners>,
    episodes: Mutex<BTreeMap<String, u64>>,
    reconnects: Mutex<u64>,
    resubscribes: Mutex<u64>,
    failures: Mutex<Vec<String>>,
}

impl Soak {
    fn at(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn fail(&self, what: String) {
        eprintln!("loadtest chaos: {what}");
        self.failures.lock().expect("failures").push(what);
    }

    /// Lines written so far, per pod.
    fn written(&self) -> Vec<u64> {
        self.writers
            .lock()
            .expect("writers")
            .iter()
            .map(KubeletWriter::written)
            .collect()
    }

    /// Whether every checker got (or was told of) the lines up to `targets`.
    fn caught_up(&self, targets: &[u64]) -> bool {
        self.checkers
            .iter()
            .zip(targets)
            .all(|(c, &t)| c.with(|s| s.ledger.highest_line().is_some_and(|h| h + 1 >= t)))
    }

    /// Waits until every checker has lines written after now; how long it took.
    async fn recovered(&self) -> Option<f64> {
        let since = Instant::now();
        let targets = self.written();
        let deadline = since + RECOVERY_DEADLINE;
        loop {
            if self.caught_up(&targets) {
                return Some(since.elapsed().as_secs_f64());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs the soak and assembles the report (`passed` says whether every invariant held).
pub async fn run(opts: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    logrelay_tls::install_provider();
    let started_unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let wall = Instant::now();
    let bins = Binaries::locate(opts.bin_dir.as_deref())?;
    std::fs::create_dir_all(&opts.logs_dir)
        .with_context(|| format!("creating {}", opts.logs_dir.display()))?;
    let relay_log = opts.logs_dir.join("chaos-relay.log");
    let agent_log = opts.logs_dir.join("chaos-agent.log");
    for l in [&relay_log, &agent_log] {
        let _ = std::fs::remove_file(l);
    }
    let files = PkiFiles::write(&DevPki::new()?, ORG, "chaos", "loadtest-chaos-")?;
    let pods_dir = files.dir().join("pods");
    std::fs::create_dir_all(&pods_dir)?;
    let mut relay = Relay::start(
        &bins.relay,
        &files,
        ORG,
        &[],
        relay_log.clone(),
        procs::child_env(),
    )
    .await?;
    let proxy = FaultProxy::start(ProxyConfig::new(relay.quic, opts.seed))
        .await
        .context("starting the fault proxy")?;
    let pods = opts.pods.max(1);
    let url = relay.subscribe_url();
    // Checkers subscribe before the first line is written: they account for every line.
    let checkers: Vec<ResumingClient> = (0..pods)
        .map(|i| ResumingClient::start(url.clone(), selector_of(&pod_name(i)), 100_000_000))
        .collect();
    let per_pod = (opts.rate_lines_per_sec / pods as u32).max(1);
    let writer_config = WriterConfig {
        lines_per_sec: per_pod,
        rotate_bytes: opts.rotate_bytes,
        keep_rotated: 5,
        gzip: true,
    };
    let writers: Vec<KubeletWriter> = (0..pods)
        .map(|i| KubeletWriter::start(&pods_dir, NAMESPACE, &pod_name(i), "main", writer_config))
        .collect();
    let mut agent = Agent::start(
        &bins.agent,
        &files,
        &pods_dir,
        proxy.addr(),
        &AGENT_FLAGS,
        agent_log.clone(),
        procs::child_env(),
    )
    .await?;
    let soak = Arc::new(Soak {
        start: Instant::now(),
        url,
        proxy,
        writers: Mutex::new(writers),
        checkers,
        lives: Mutex::new(Lives {
            relay: relay.proc.pid(),
            relay_life: 0,
            agent: agent.proc.pid(),
            agent_life: 0,
        }),
        kills: Mutex::default(),
        joiners: Mutex::default(),
        episodes: Mutex::default(),
        reconnects: Mutex::default(),
        resubscribes: Mutex::default(),
        failures: Mutex::default(),
    });
    if soak.recovered().await.is_none() {
        soak.fail("the streams did not start within 60 s".into());
    }

    let cadence = Cadence::for_length(opts.duration, opts.steady);
    let schedule = plan::schedule(opts.seed, opts.duration, pods, &cadence, SETTLE);
    let (kills, rest): (Vec<_>, Vec<_>) = schedule
        .into_iter()
        .partition(|(_, a)| matches!(a, Action::Kill { .. }));
    let (nets, churn): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|(_, a)| matches!(a, Action::Net { .. }));

    let (rss_tx, rss_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_rss(
        soak.clone(),
        rss_rx,
        opts.duration,
        opts.progress,
    ));
    let churn_task = tokio::spawn(run_churn(soak.clone(), churn));
    let net_task = tokio::spawn(run_net(soak.clone(), nets));
    run_kills(&soak, &mut relay, &mut agent, kills).await;
    let joiner_tasks = churn_task.await.context("session churn")?;
    net_task.await.context("network faults")?;
    for t in joiner_tasks {
        let _ = t.await;
    }
    let until_end = opts.duration.saturating_sub(soak.start.elapsed());
    tokio::time::sleep(until_end).await;

    // Drain: no fault, nothing killed; what was written must arrive or be reported.
    soak.proxy.heal();
    let duration_secs = soak.start.elapsed().as_secs_f64();
    let writers = std::mem::take(&mut *soak.writers.lock().expect("writers"));
    let written: Vec<u64> = writers.into_iter().map(KubeletWriter::stop).collect();
    let checkers = &soak.checkers;
    let drained = drain(checkers, &written).await;
    let _ = rss_tx.send(true);
    let (relay_samples, agent_samples) = sampler.await.context("RSS sampler")?;
    let mut failures = std::mem::take(&mut *soak.failures.lock().expect("failures"));
    if !drained {
        failures.push(format!(
            "the checkers did not account for every line within {RECOVERY_DEADLINE:?} of the end"
        ));
    }

    // The invariants, per stream.
    let mut streams = Vec::new();
    let mut totals = StreamFigures {
        pod: "all".into(),
        ..StreamFigures::default()
    };
    let mut total_tally = Tally::empty();
    for (i, (c, &w)) in checkers.iter().zip(&written).enumerate() {
        let pod = pod_name(i);
        let (tally, mut figures) = c.with(|s| {
            let t = s.ledger.tally(w);
            let mut f = StreamFigures::of(&pod, &t);
            f.sessions = s.sessions;
            f.subscriptions = s.subscriptions;
            for (_, e) in &s.events {
                match e {
                    Event::Paused { .. } => f.paused += 1,
                    Event::Resumed { .. } => f.resumed += 1,
                    _ => {}
                }
            }
            f.gapped_by_reason = gapped_by_reason(&s.ledger);
            (t, f)
        });
        if !tally.is_exact() {
            failures.push(format!("{pod}: {tally:?}"));
            figures.notes = c.with(|s| s.ledger.notes.clone());
        }
        total_tally.add(&tally);
        for (k, v) in std::mem::take(&mut figures.gapped_by_reason) {
            *totals.gapped_by_reason.entry(k.clone()).or_default() += v;
            figures.gapped_by_reason.insert(k, v);
        }
        totals.paused += figures.paused;
        totals.resumed += figures.resumed;
        totals.sessions += figures.sessions;
        totals.subscriptions += figures.subscriptions;
        streams.push(figures);
    }
    let by_reason = std::mem::take(&mut totals.gapped_by_reason);
    let (paused, resumed, sessions, subscriptions) = (
        totals.paused,
        totals.resumed,
        totals.sessions,
        totals.subscriptions,
    );
    totals = StreamFigures {
        gapped_by_reason: by_reason,
        paused,
        resumed,
        sessions,
        subscriptions,
        ..StreamFigures::of("all", &total_tally)
    };
    let joiners = std::mem::take(&mut *soak.joiners.lock().expect("joiners"));
    if joiners.exact + joiners.empty != joiners.sessions {
        failures.push(format!(
            "{} of {} late joiners saw a window that was not exact: {:?}",
            joiners.sessions - joiners.exact - joiners.empty,
            joiners.sessions,
            joiners.failures
        ));
    }
    let kills = std::mem::take(&mut *soak.kills.lock().expect("kills"));
    for k in kills.iter().filter(|k| k.recovered_after_secs.is_none()) {
        failures.push(format!(
            "the {:?} killed at {:.0} s: the streams did not recover within {RECOVERY_DEADLINE:?}",
            k.target, k.at_secs
        ));
    }

    let steady_from_secs = cadence.steady_from_secs(opts.duration);
    let memory = |samples: Vec<RssSample>| Memory {
        steady: plan::pooled_slope(
            &plan::steady_samples(&samples, steady_from_secs),
            opts.rss_warmup_secs,
            MIN_LIFE_SAMPLES,
        ),
        across_lives: plan::level_trend(&samples, opts.rss_warmup_secs, MIN_LIFE_SAMPLES),
        within_lives: plan::pooled_slope(&samples, opts.rss_warmup_secs, MIN_LIFE_SAMPLES),
        max_rss_bytes: samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
        samples,
    };
    let (relay_memory, agent_memory) = (memory(relay_samples), memory(agent_samples));
    let tolerance = opts.max_rss_slope_bytes_per_min;
    let kib = |b: f64| b / 1024.0;
    for (name, m) in [("relay", &relay_memory), ("agent", &agent_memory)] {
        match &m.steady {
            Some(s) if s.bytes_per_min.abs() > tolerance => failures.push(format!(
                "{name} RSS is not flat in the steady phase (from {steady_from_secs:.0} s): \
                 {:+.0} KiB/min (± {:.0}), tolerance ±{:.0} KiB/min",
                kib(s.bytes_per_min),
                kib(s.stderr_bytes_per_min),
                kib(tolerance)
            )),
            Some(_) => {}
            None => failures.push(format!(
                "{name} RSS: too few samples in the steady phase for a slope ({MIN_LIFE_SAMPLES} \
                 needed after its first {:.0} s)",
                opts.rss_warmup_secs
            )),
        }
        if let Some(s) = m.across_lives.filter(|s| s.bytes_per_min.abs() > tolerance) {
            failures.push(format!(
                "{name} RSS climbs from life to life: {:+.0} KiB/min (± {:.0}) over {} lives, \
                 tolerance ±{:.0} KiB/min",
                kib(s.bytes_per_min),
                kib(s.stderr_bytes_per_min),
                s.lives,
                kib(tolerance)
            ));
        }
    }
    let stats = soak.proxy.stats();
    let relay_kills = kills.iter().filter(|k| k.target == Target::Relay).count() as u64;
    let agent_kills = kills.len() as u64 - relay_kills;
    relay.proc.terminate();
    agent.proc.terminate();
    Ok(ChaosReport {
        kind: "chaos".into(),
        command: opts.command.clone(),
        seed: opts.seed,
        duration_secs,
        started_unix_secs,
        wall_secs: wall.elapsed().as_secs_f64(),
        machine: Machine::this(),
        setup: Setup {
            pods,
            rate_lines_per_sec: per_pod * pods as u32,
            rotate_bytes: opts.rotate_bytes,
            keep_rotated: writer_config.keep_rotated,
            agent_flags: AGENT_FLAGS.map(String::from).to_vec(),
            cadence,
            rss_warmup_secs: opts.rss_warmup_secs,
            max_rss_slope_bytes_per_min: opts.max_rss_slope_bytes_per_min,
        },
        passed: failures.is_empty(),
        failures,
        delivered_lines_per_sec: totals.delivered as f64 / duration_secs.max(1.0),
        totals,
        streams,
        late_joiners: joiners,
        reconnects: *soak.reconnects.lock().expect("count"),
        resubscribes: *soak.resubscribes.lock().expect("count"),
        kills,
        relay_kills,
        agent_kills,
        network: Network {
            episodes: std::mem::take(&mut *soak.episodes.lock().expect("episodes")),
            up: stats.up.into(),
            down: stats.down.into(),
            rebinds: stats.rebinds,
        },
        relay_memory,
        agent_memory,
    })
}

/// Lines reported missing, by reason: `agent` for the agent's gap batches (exact ones), the
/// event's reason for the relay's `gap` events.
fn gapped_by_reason(l: &logrelay_chaos::Ledger) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for g in l.agent_gaps.iter().filter(|g| g.exact) {
        *out.entry("agent".to_owned()).or_default() += g.lines;
    }
    for e in &l.relay_gaps {
        if let Event::Gap { reason, lines, .. } = e {
            *out.entry(reason.to_string()).or_default() += lines;
        }
    }
    out.retain(|_, v| *v > 0);
    out
}

/// Waits until every checker accounts for every line written (delivered, or in a gap), at
/// most [`RECOVERY_DEADLINE`]; whether they all did.
async fn drain(checkers: &[ResumingClient], written: &[u64]) -> bool {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    for (c, &w) in checkers.iter().zip(written) {
        let left = deadline.saturating_duration_since(Instant::now());
        let done = c
            .until_within(left, |s| {
                let t = s.ledger.tally(w);
                t.missing == 0 && t.delivered + t.gapped >= w
            })
            .await;
        if !done {
            return false;
        }
    }
    true
}

/// Kills and restarts, one at a time: each waits until the streams recovered from the last,
/// and [`KILL_SPACING`] more.
async fn run_kills(
    soak: &Arc<Soak>,
    relay: &mut Relay,
    agent: &mut Agent,
    kills: Vec<(Duration, Action)>,
) {
    let mut not_before = soak.start;
    for (at, action) in kills {
        let Action::Kill { target, down } = action else {
            continue;
        };
        tokio::time::sleep_until((soak.start + at).max(not_before)).await;
        let at_secs = soak.at();
        match target {
            Target::Relay => {
                relay.proc.kill();
                soak.lives.lock().expect("lives").relay = None;
            }
            Target::Agent => {
                agent.proc.kill();
                soak.lives.lock().expect("lives").agent = None;
            }
        }
        // The time the process stays down is a step of the soak, not a synchronisation.
        tokio::time::sleep(down).await;
        let restarted = match target {
            Target::Relay => relay.start_again().await,
            Target::Agent => agent.start_again().await,
        };
        if let Err(e) = restarted {
            soak.fail(format!("restarting the {target:?} failed: {e:#}"));
            return;
        }
        {
            let mut l = soak.lives.lock().expect("lives");
            match target {
                Target::Relay => {
                    l.relay = relay.proc.pid();
                    l.relay_life += 1;
                }
                Target::Agent => {
                    l.agent = agent.proc.pid();
                    l.agent_life += 1;
                }
            }
        }
        let recovered = soak.recovered().await;
        not_before = Instant::now() + KILL_SPACING;
        soak.kills.lock().expect("kills").push(Kill {
            target,
            at_secs,
            down_secs: down.as_secs_f64(),
            recovered_after_secs: recovered,
        });
    }
}

/// Network faults, one after the other.
async fn run_net(soak: Arc<Soak>, nets: Vec<(Duration, Action)>) {
    for (at, action) in nets {
        let Action::Net { fault, length } = action else {
            continue;
        };
        tokio::time::sleep_until(soak.start + at).await;
        let name = match fault {
            NetFault::Degrade { name, faults } => {
                soak.proxy
                    .set_faults(logrelay_chaos::Direction::Both, faults);
                name.to_owned()
            }
            NetFault::Blackhole(l) => {
                soak.proxy.blackhole(l);
                if l < Duration::from_millis(1200) {
                    "blackhole < idle timeout".into()
                } else {
                    "blackhole > idle timeout".into()
                }
            }
            NetFault::Rebind => {
                if let Err(e) = soak.proxy.rebind() {
                    soak.fail(format!("the fault proxy could not rebind: {e}"));
                }
                "NAT rebinding".into()
            }
        };
        *soak
            .episodes
            .lock()
            .expect("episodes")
            .entry(name)
            .or_default() += 1;
        // The fault lasts this long (a step of the soak).
        tokio::time::sleep(length).await;
        soak.proxy.heal();
    }
}

/// Session churn; returns the late joiners' tasks (they outlive the schedule by their stay).
async fn run_churn(
    soak: Arc<Soak>,
    churn: Vec<(Duration, Action)>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut joiners = Vec::new();
    for (at, action) in churn {
        tokio::time::sleep_until(soak.start + at).await;
        match action {
            Action::LateJoiner { pod, tail, stay } => {
                let soak = soak.clone();
                joiners.push(tokio::spawn(async move {
                    late_joiner(&soak, pod, tail, stay).await;
                }));
            }
            Action::Reconnect { pod } => {
                soak.checkers[pod].reconnect();
                *soak.reconnects.lock().expect("count") += 1;
            }
            Action::Resubscribe { pod } => {
                soak.checkers[pod].resubscribe();
                *soak.resubscribes.lock().expect("count") += 1;
            }
            Action::Kill { .. } | Action::Net { .. } => {}
        }
    }
    joiners
}

/// A session that joins `pod`'s stream with `tail` lines of backlog, stays `stay`, and leaves;
/// the lines from the first to the last it got must all be there, or in exact gaps.
async fn late_joiner(soak: &Soak, pod: usize, tail: u32, stay: Duration) {
    let client = ResumingClient::start(soak.url.clone(), selector_of(&pod_name(pod)), tail);
    // How long it watches is a step of the soak.
    tokio::time::sleep(stay).await;
    let (window, note) = client.with(|s| {
        let l = &s.ledger;
        let window = match (l.first_line(), l.highest_line()) {
            (Some(first), Some(last)) => Some((first, last + 1, l.tally_range(first, last + 1))),
            _ => None,
        };
        let events: Vec<String> = s.events.iter().map(|(_, e)| format!("{e:?}")).collect();
        let note = format!(
            "{} tail {tail} for {stay:?}: sessions {}, events {events:?}, errors {:?}",
            pod_name(pod),
            s.sessions,
            s.errors
        );
        (window, note)
    });
    drop(client);
    let mut j = soak.joiners.lock().expect("joiners");
    j.sessions += 1;
    match window {
        None => {
            j.empty += 1;
            if j.empty_notes.len() < 10 {
                j.empty_notes.push(note);
            }
        }
        Some((from, to, t)) if t.is_exact() => {
            j.exact += 1;
            j.lines_checked += to - from;
        }
        Some((from, to, t)) => {
            if j.failures.len() < 20 {
                j.failures.push(format!(
                    "{} tail {tail}, lines {from}..{to}: {t:?}",
                    pod_name(pod)
                ));
            }
        }
    }
}

/// Samples RSS of relay and agent every second until told to stop; draws the progress line.
async fn sample_rss(
    soak: Arc<Soak>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    duration: Duration,
    progress: bool,
) -> (Vec<RssSample>, Vec<RssSample>) {
    let mut bar = Progress::new(progress);
    let (mut relay, mut agent) = (Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let t_secs = soak.at();
        let lives = *soak.lives.lock().expect("lives");
        for (pid, life, out) in [
            (lives.relay, lives.relay_life, &mut relay),
            (lives.agent, lives.agent_life, &mut agent),
        ] {
            if let Some(r) = pid.and_then(|p| procstat::read(&p.to_string())) {
                out.push(RssSample {
                    t_secs,
                    life,
                    rss_bytes: r.rss_bytes,
                });
            }
        }
        let written: u64 = soak.written().iter().sum();
        let delivered: u64 = soak
            .checkers
            .iter()
            .map(|c| c.with(|s| s.ledger.delivered.len() as u64))
            .sum();
        let kills = soak.kills.lock().expect("kills").len();
        let status = format!(
            "written {written}, delivered {delivered}, kills {kills}, relay {}, agent {}",
            relay
                .last()
                .map_or("–".into(), |s: &RssSample| crate::report::mib(
                    s.rss_bytes as f64
                )),
            agent
                .last()
                .map_or("–".into(), |s: &RssSample| crate::report::mib(
                    s.rss_bytes as f64
                )),
        );
        bar.update("chaos", t_secs, duration.as_secs_f64(), &status);
    }
    bar.finish();
    (relay, agent)
}
