//! A demand storm (issue #11, defect 2): sessions of one org loop `subscribe {pod_regex, tail:
//! 100}` / `unsubscribe` against a real relay and a real agent tailing real files. Afterwards
//! the agent serves exactly the demands the relay holds open (both gauges), both return to
//! zero once nobody watches, a new subscriber gets data within 1 s, and a session of the same
//! org watching a steadily written log never went silent for more than 1 s. The figures are
//! printed (run with `--nocapture`).

use std::time::{Duration, Instant};

use logrelay::client::{Client, Incoming};
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};
use serde_json::json;
use tokio::sync::watch;

/// Sessions storming, and for how long.
const STORM_SESSIONS: usize = 20;
const STORM: Duration = Duration::from_secs(8);
/// Pods matched by the storm's regex, each written every `WRITE_EVERY`.
const PODS: usize = 6;
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// CPU time the test process (relay, agent and clients) has used.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn thread_names() -> String {
    let mut names: std::collections::BTreeMap<String, usize> = Default::default();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let n = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        *names.entry(n.trim().to_owned()).or_default() += 1;
    }
    format!("{names:?}")
}

/// One storming session: a subscribe and an unsubscribe every 110 ms (just under the default
/// 20 requests per second), reading whatever comes, until `until`.
async fn storm(url: String, until: Instant) -> (usize, usize) {
    let mut client = Client::connect(&url, None, None).await.expect("connect");
    let selector: Selector = serde_json::from_value(json!({ "pod_regex": "acme-.*" })).unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(110));
    let (mut loops, mut errors) = (0, 0);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= until {
                    break;
                }
                let id = format!("s{loops}");
                let sub = Request::Subscribe {
                    id: id.clone(),
                    selector: selector.clone(),
                    tail: Some(100),
                    since_ns: None,
                    since_seq: None,
                    follow: true,
                    contains: None,
                    matches: None,
                };
                if client.send(&sub).await.is_err()
                    || client.send(&Request::Unsubscribe { id }).await.is_err()
                {
                    break;
                }
                loops += 1;
            }
            m = client.next() => match m {
                Ok(Some(Incoming::Event(Event::Error { .. }))) => errors += 1,
                Ok(Some(_)) => {}
                _ => break,
            },
        }
    }
    client.close().await;
    (loops, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_storm_leaves_no_demand_behind_and_silences_nobody() {
    let pki = TestPki::new();
    let relay = TestRelay::start_with(
        &pki,
        RelayConfig {
            linger_secs: 1,
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut writers: Vec<_> = (0..PODS)
        .map(|i| pods.container("ns", &format!("acme-{i}"), "main"))
        .collect();
    for (i, w) in writers.iter_mut().enumerate() {
        let backlog: Vec<String> = (0..200).map(|n| format!("acme-{i} old {n}\n")).collect();
        w.write_lines(backlog.iter().map(|l| l.as_bytes())).unwrap();
    }
    // The line source: every pod, steadily.
    let (stop_writing, mut stopped) = watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval(WRITE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return,
            }
            for (i, w) in writers.iter_mut().enumerate() {
                let line = format!("acme-{i} line {n}\n");
                w.write_lines([line.as_bytes()]).unwrap();
            }
            n += 1;
        }
    });
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    eventually("the pods announced", || async {
        (relay.metric("logrelay_relay_streams").await == PODS as f64).then_some(())
    })
    .await;

    // The session of the same org that must never go silent for long.
    let mut steady = relay.subscriber().await;
    steady
        .subscribe("steady", &selector("ns", "acme-0", "main"), Some(0))
        .await;
    steady
        .until("its first line", |s| s.total_lines() > 0)
        .await;
    let (stop_steady, mut steady_done) = watch::channel(false);
    let steady_task = tokio::spawn(async move {
        let started = Instant::now();
        let mut last = Instant::now();
        let mut longest = Duration::ZERO;
        loop {
            tokio::select! {
                m = steady.recv() => match m {
                    Some(Incoming::Lines(_)) => {
                        if last.elapsed() > longest {
                            longest = last.elapsed();
                            eprintln!(
                                "steady: silent {longest:?}, until {:?} after it started",
                                started.elapsed()
                            );
                        }
                        last = Instant::now();
                    }
                    Some(_) => {}
                    None => panic!("the steady session closed"),
                },
                _ = steady_done.changed() => break,
            }
        }
        (steady, longest.max(last.elapsed()))
    });

    // The storm, while threads are counted.
    let base_threads = threads();
    let cpu_before = cpu();
    let until = Instant::now() + STORM;
    let storms: Vec<_> = (0..STORM_SESSIONS)
        .map(|_| tokio::spawn(storm(relay.handle.subscribe_url(), until)))
        .collect();
    let mut peak_threads = base_threads;
    let mut peak_names = thread_names();
    let mut peak_relay_demands = 0.0f64;
    while Instant::now() < until {
        if threads() > peak_threads {
            peak_threads = threads();
            peak_names = thread_names();
        }
        peak_relay_demands =
            peak_relay_demands.max(relay.metric("logrelay_relay_demands_open").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut loops, mut errors) = (0, 0);
    for s in storms {
        let (l, e) = within("a storming session ends", s).await.unwrap();
        loops += l;
        errors += e;
    }
    let storm_end = Instant::now();
    let storm_cpu = cpu() - cpu_before;

    // The agent serves what the relay wants: the steady session's demand, once the storm's
    // backfills and the linger are over.
    eventually("both sides settle on the steady demand", || async {
        let relay_open = relay.metric("logrelay_relay_demands_open").await;
        let agent_active = agent.metric("logrelay_agent_demands_active").await;
        (relay_open == 1.0 && agent_active == 1.0).then_some(())
    })
    .await;
    let settle = storm_end.elapsed();

    // A new subscriber gets data within a second.
    let mut late = relay.subscriber().await;
    let asked = Instant::now();
    late.subscribe("late", &selector("ns", "acme-1", "main"), Some(100))
        .await;
    late.until("the new subscriber's data", |s| s.total_lines() > 0)
        .await;
    let first_data = asked.elapsed();

    // Everyone leaves: nothing stays open on either side.
    stop_steady.send(true).unwrap();
    let (steady, longest_silence) = steady_task.await.unwrap();
    drop(steady);
    drop(late);
    let _ = stop_writing.send(true);
    writer.await.unwrap();
    eventually("both sides at zero", || async {
        let relay_open = relay.metric("logrelay_relay_demands_open").await;
        let agent_active = agent.metric("logrelay_agent_demands_active").await;
        (relay_open == 0.0 && agent_active == 0.0).then_some(())
    })
    .await;

    eprintln!(
        "storm: {STORM_SESSIONS} sessions x {STORM:?}, {loops} subscribe/unsubscribe pairs over \
         {PODS} pods ({errors} error events), {storm_cpu:?} of CPU; peak relay demands {peak_relay_demands}; \
         threads {base_threads} -> peak {peak_threads}; settled {settle:?} after the storm; \
         new subscriber's first data after {first_data:?}; longest silence of the steady \
         session {longest_silence:?}; threads at the peak: {peak_names}"
    );
    assert!(loops > STORM_SESSIONS * 10, "the storm stormed: {loops}");
    // Each storming session holds one subscription at a time: a backfill per pod at most,
    // plus the pods' live demands. Backfills that outlive their watcher pile up beyond it.
    assert!(
        peak_relay_demands <= ((STORM_SESSIONS + 2) * PODS) as f64,
        "demands piled up: {peak_relay_demands}"
    );
    assert!(
        longest_silence <= Duration::from_secs(1),
        "the steady session went silent for {longest_silence:?}"
    );
    assert!(
        first_data <= Duration::from_secs(1),
        "the new subscriber waited {first_data:?}"
    );
    assert!(
        peak_threads <= base_threads + 16,
        "threads grew with the demands: {base_threads} -> {peak_threads}"
    );
}
