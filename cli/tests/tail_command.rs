//! `logrelay tail` as a user runs it: a real binary against a real relay and agent.

mod support;

use logrelay_e2e::*;
use support::logrelay;
use tokio::io::{AsyncBufReadExt, BufReader};

fn tail_cmd(args: &[&str]) -> tokio::process::Command {
    let mut cmd = logrelay(&["tail"]);
    cmd.args(args);
    cmd
}

async fn fails_with(args: &[&str], needle: &str) {
    let out = within("tail exits", tail_cmd(args).output()).await.unwrap();
    assert!(!out.status.success(), "tail must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(needle),
        "`{stderr}` should mention `{needle}`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_auth_failures_exit_non_zero_with_one_line() {
    // Nothing listens on port 1.
    fails_with(
        &["--url", "ws://127.0.0.1:1/v1/subscribe"],
        "cannot connect",
    )
    .await;
    fails_with(&["--url", "http://127.0.0.1:1/"], "bad relay URL").await;

    // A relay that accepts no anonymous sessions.
    let pki = TestPki::new();
    let relay = logrelay_relay::start(logrelay_relay::RelayConfig::loopback(), pki.relay_tls())
        .await
        .unwrap();
    let url = relay.subscribe_url();
    fails_with(&["--url", &url], "HTTP 401").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_backlog_then_follows_like_kubectl_logs() {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("shop", "cart", "main");
    let mut other = pods.container("shop", "cart", "sidecar");
    for i in 0..20 {
        w.write_lines([format!("old {i}\n").as_bytes()]).unwrap();
        other.write_lines([b"sidecar noise\n".as_slice()]).unwrap();
    }
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let url = relay.handle.subscribe_url();
    let mut child = tail_cmd(&[
        "--url",
        &url,
        "-n",
        "shop",
        "-p",
        "cart",
        "-c",
        "main",
        "--tail",
        "3",
        "--timestamps",
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            within("backlog line", lines.next_line())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    w.write_lines([b"new line\n".as_slice()]).unwrap();
    got.push(
        within("live line", lines.next_line())
            .await
            .unwrap()
            .unwrap(),
    );
    let messages: Vec<&str> = got.iter().map(|l| l.split_once(' ').unwrap().1).collect();
    assert_eq!(messages, ["old 17", "old 18", "old 19", "new line"]);
    for l in &got {
        let ts = l.split_once(' ').unwrap().0;
        assert!(
            ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_regex_selects_every_matching_pod_and_a_bad_one_is_refused_up_front() {
    let out = within("tail exits", tail_cmd(&["--pod-regex", "train-("]).output())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid regular expression `train-(`: unclosed group"),
        "{stderr}"
    );

    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    for pod in ["train-0", "train-1", "pretrain-0", "eval"] {
        pods.container("ml", pod, "main")
            .write_lines([format!("from {pod}\n").as_bytes()])
            .unwrap();
    }
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    // Wait until the relay knows all four streams, so the one-off read below sees them.
    let mut sub = relay.subscriber().await;
    let everything = logrelay_wire::selector::Selector {
        namespace: Some("ml".into()),
        ..Default::default()
    };
    sub.subscribe("all", &everything, Some(10)).await;
    sub.until("a line from each pod", |s| s.total_lines() == 4)
        .await;

    let url = relay.handle.subscribe_url();
    let out = within(
        "tail --no-follow exits",
        tail_cmd(&[
            "--url",
            &url,
            "--pod-regex",
            "train-[0-9]+",
            "--prefix",
            "--no-follow",
        ])
        .output(),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["[train-0/main] from train-0", "[train-1/main] from train-1"],
        "the whole pod name must match: not pretrain-0, not eval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_prints_only_the_lines_a_regex_matches_and_a_bad_one_is_refused_up_front() {
    let out = within("tail exits", tail_cmd(&["--matches", "(a+"]).output())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid regular expression `(a+`: unclosed group"),
        "{stderr}"
    );
    let out = within(
        "tail exits",
        tail_cmd(&["--metrics", "--matches", "up"]).output(),
    )
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "metrics take names, not a regex"
    );

    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("shop", "cart", "main");
    let levels = ["INFO", "WARN", "ERROR", "DEBUG"];
    for i in 0..20 {
        let level = levels[i % levels.len()];
        w.write_lines([format!("{level} request {i} done\n").as_bytes()])
            .unwrap();
    }
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let url = relay.handle.subscribe_url();
    let mut child = tail_cmd(&[
        "--url",
        &url,
        "-p",
        "cart",
        "--no-prefix",
        "--matches",
        "^(WARN|ERROR) request 1[0-9]",
        "--contains",
        "done",
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(
            within("a matching line", lines.next_line())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // New lines: only the matching ones are printed, in order.
    w.write_lines([
        b"ERROR request 99 done\n".as_slice(),
        b"ERROR request 100 failed\n".as_slice(),
        b"WARN request 17 done\n".as_slice(),
    ])
    .unwrap();
    got.push(
        within("the new matching line", lines.next_line())
            .await
            .unwrap()
            .unwrap(),
    );
    // ("ERROR request 100 failed" matches the regex, not `--contains`: both must hold.)
    assert_eq!(
        got,
        [
            "ERROR request 10 done",
            "WARN request 13 done",
            "ERROR request 14 done",
            "WARN request 17 done",
            "ERROR request 18 done",
            "WARN request 17 done",
        ]
    );
    child.kill().await.unwrap();
}
