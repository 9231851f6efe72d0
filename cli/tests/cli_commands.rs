//! The `logrelay` binary as a user runs it, against a real relay and real agents: `list` per
//! org, JSON output, colours only on a terminal, `| head`, `top` on a recorded cgroup tree,
//! contexts, completions and exit codes.

mod support;

use std::process::{Output, Stdio};

use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_relay::auth::testkit::{Signer, jwks};
use serde_json::{Value, json};
use support::logrelay;

async fn output(
    what: &str,
    mut cmd: impl std::borrow::BorrowMut<tokio::process::Command>,
) -> Output {
    within(what, cmd.borrow_mut().output())
        .await
        .expect("run logrelay")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A relay that verifies EdDSA tokens (no anonymous sessions), and a token per org.
struct TokenRelay {
    relay: TestRelay,
    signer: Signer,
    dir: tempfile::TempDir,
}

impl TokenRelay {
    async fn start(pki: &TestPki) -> Self {
        let signer = Signer::ed25519(None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks(&[&signer])).unwrap();
        let relay = TestRelay::start_exactly(
            pki,
            RelayConfig {
                token_jwks_file: Some(path),
                ..RelayConfig::loopback()
            },
        )
        .await;
        Self { relay, signer, dir }
    }

    /// Writes a token of `org` to a file and returns its path.
    fn token_file(&self, org: &str) -> String {
        let t = self.signer.token(&json!({
            "sub": "alice", "org": org, "exp": now() + 600, "roles": [{ "role": "viewer" }]
        }));
        let path = self.dir.path().join(format!("{org}.token"));
        std::fs::write(&path, format!("{t}\n")).unwrap();
        path.display().to_string()
    }

    fn url(&self) -> String {
        self.relay.handle.subscribe_url()
    }
}

fn pods_of(listed: &str) -> Vec<(String, String, String)> {
    listed
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            (
                v["labels"]["org"].as_str().unwrap().to_owned(),
                v["labels"]["pod"].as_str().unwrap().to_owned(),
                v["labels"]["container"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_exactly_the_streams_of_the_tokens_org() {
    let pki = TestPki::new();
    let relay = TokenRelay::start(&pki).await;
    let (acme_pods, globex_pods) = (PodsDir::new(), PodsDir::new());
    for (pod, c) in [("cart", "main"), ("cart", "sidecar"), ("checkout", "main")] {
        acme_pods
            .container("shop", pod, c)
            .write_lines([b"x\n".as_slice()])
            .unwrap();
    }
    globex_pods
        .container("shop", "cart", "main")
        .write_lines([b"y\n".as_slice()])
        .unwrap();
    let _acme = TestAgent::start_as(&pki, &acme_pods, relay.relay.quic_addr(), "acme", "c1").await;
    let _globex =
        TestAgent::start_as(&pki, &globex_pods, relay.relay.quic_addr(), "globex", "c9").await;
    let url = relay.url();
    let acme = relay.token_file("acme");
    let globex = relay.token_file("globex");

    let list = |token: String, extra: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let mut args = vec!["list", "--url", &url, "--token-file", &token, "-o", "json"];
            args.extend(extra);
            output("list", logrelay(&args)).await
        }
    };
    // The catalog fills as the agents announce: ask until both orgs' streams are there.
    eventually("both agents' streams listed", || async {
        let a = list(acme.clone(), &[]).await;
        let g = list(globex.clone(), &[]).await;
        (a.status.success()
            && g.status.success()
            && stdout(&a).lines().count() == 3
            && stdout(&g).lines().count() == 1)
            .then_some(())
    })
    .await;
    let a = list(acme.clone(), &[]).await;
    assert_eq!(
        pods_of(&stdout(&a)),
        [
            ("acme".into(), "cart".into(), "main".into()),
            ("acme".into(), "cart".into(), "sidecar".into()),
            ("acme".into(), "checkout".into(), "main".into()),
        ],
        "acme's token sees acme's streams, sorted, and nothing of globex"
    );
    for l in stdout(&a).lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["live"], true, "{l}");
        assert!(v["stream"].as_u64().is_some(), "{l}");
        assert_eq!(v["labels"]["kind"], "log");
        assert_eq!(v["labels"]["cluster"], "c1");
    }
    let g = list(globex.clone(), &[]).await;
    assert_eq!(
        pods_of(&stdout(&g)),
        [("globex".into(), "cart".into(), "main".into())]
    );

    // The table, and a selector.
    let t = output(
        "list table",
        logrelay(&["list", "--url", &url, "--token-file", &acme, "-p", "cart"]),
    )
    .await;
    assert!(t.status.success(), "{t:?}");
    assert_eq!(
        stdout(&t),
        "NAMESPACE   POD    CONTAINER   RESTART   KIND   LIVE\n\
         shop        cart   main        0         log    yes\n\
         shop        cart   sidecar     0         log    yes\n"
    );

    // A token the relay did not sign: an auth failure, exit code 3, and the token not shown.
    let rogue =
        Signer::ed25519(None).token(&json!({"sub": "x", "org": "acme", "exp": now() + 600}));
    let bad = output(
        "list with a rogue token",
        logrelay(&["list", "--url", &url]).env("LOGRELAY_TOKEN", &rogue),
    )
    .await;
    assert_eq!(bad.status.code(), Some(3), "{bad:?}");
    assert!(stderr(&bad).contains("HTTP 401"), "{}", stderr(&bad));
    assert!(!stderr(&bad).contains(&rogue), "never print a token");
    // A selector naming another org: forbidden.
    let other = output(
        "list of another org",
        logrelay(&[
            "list",
            "--url",
            &url,
            "--token-file",
            &acme,
            "--cluster",
            "c9",
        ]),
    )
    .await;
    assert!(other.status.success(), "a cluster is a filter: {other:?}");
    assert_eq!(stdout(&other), "");

    // A context in a config file does the same as the flags.
    let cfg = relay.dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "current_context = \"acme\"\n\n[contexts.acme]\nurl = \"{url}\"\ntoken_file = \"{acme}\"\n\n\
             [contexts.globex]\nurl = \"{url}\"\ntoken_command = \"cat {globex}\"\n"
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let by_default = output(
        "list by the current context",
        logrelay(&["list", "-o", "json"]).env("LOGRELAY_CONFIG", &cfg),
    )
    .await;
    assert_eq!(pods_of(&stdout(&by_default)).len(), 3, "{by_default:?}");
    let by_name = output(
        "list --context globex",
        logrelay(&["list", "-o", "json", "--context", "globex"]).env("LOGRELAY_CONFIG", &cfg),
    )
    .await;
    assert_eq!(
        pods_of(&stdout(&by_name)),
        [("globex".into(), "cart".into(), "main".into())]
    );
    let unknown = output(
        "list --context nope",
        logrelay(&["list", "--context", "nope"]).env("LOGRELAY_CONFIG", &cfg),
    )
    .await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("no context `nope`") && stderr(&unknown).contains("acme, globex"),
        "{}",
        stderr(&unknown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_prints_streams_as_they_appear_and_go() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    pods.container("shop", "cart", "main")
        .write_lines([b"x\n".as_slice()])
        .unwrap();
    let _agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    let url = relay.handle.subscribe_url();
    eventually("the first stream listed", || async {
        let o = output("list", logrelay(&["list", "--url", &url, "-o", "json"])).await;
        (stdout(&o).lines().count() == 1).then_some(())
    })
    .await;
    let mut child = logrelay(&[
        "list", "--url", &url, "--watch", "-o", "json", "--kind", "log",
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let l = within("a watch line", lines.next_line())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(&l).unwrap()
    };
    let first = next().await;
    assert_eq!(
        (first["event"].as_str(), first["labels"]["pod"].as_str()),
        (Some("added"), Some("cart"))
    );
    pods.container("shop", "checkout", "main")
        .write_lines([b"y\n".as_slice()])
        .unwrap();
    let added = next().await;
    assert_eq!(
        (
            added["event"].as_str(),
            added["labels"]["pod"].as_str(),
            added["live"].as_bool()
        ),
        (Some("added"), Some("checkout"), Some(true))
    );
    std::fs::remove_dir_all(
        pods.log_path("shop", "checkout", "main")
            .parent()
            .unwrap()
            .parent()
            .unwrap(),
    )
    .unwrap();
    let removed = next().await;
    assert_eq!(
        (
            removed["event"].as_str(),
            removed["labels"]["pod"].as_str(),
            removed["reason"].as_str()
        ),
        (Some("removed"), Some("checkout"), Some("container_removed"))
    );
    child.kill().await.unwrap();
}

/// A relay with an agent over one container holding `n` numbered lines.
async fn one_container(n: usize) -> (TestPki, TestRelay, PodsDir, TestAgent, CriWriterHandle) {
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut w = pods.container("shop", "cart", "main");
    let lines: Vec<String> = (0..n).map(|i| format!("line {i}\n")).collect();
    w.write_lines(lines.iter().map(|l| l.as_bytes())).unwrap();
    let agent = TestAgent::start(&pki, &pods, relay.quic_addr()).await;
    (pki, relay, pods, agent, w)
}

type CriWriterHandle = logrelay::demo::CriWriter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_and_carry_every_field() {
    let (_pki, relay, _pods, _agent, _w) = one_container(5).await;
    let url = relay.handle.subscribe_url();
    let o = eventually("a one-off read of five lines", || async {
        let o = output(
            "tail -o json",
            logrelay(&[
                "tail",
                "--url",
                &url,
                "-p",
                "cart",
                "--no-follow",
                "-o",
                "json",
            ]),
        )
        .await;
        (o.status.success() && stdout(&o).lines().count() == 5).then_some(o)
    })
    .await;
    let mut seqs = Vec::new();
    for (i, l) in stdout(&o).lines().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(v["message"], format!("line {i}"), "terminator removed: {l}");
        assert_eq!(v["stream"], "stdout");
        assert_eq!(v["labels"]["namespace"], "shop");
        assert_eq!(v["labels"]["pod"], "cart");
        assert_eq!(v["labels"]["container"], "main");
        assert_eq!(v["labels"]["org"], "dev");
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.len() == 30 && ts.ends_with('Z'), "{ts}");
        assert!(v["epoch"].as_u64().unwrap() > 0);
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Nothing matches: exit code 4.
    let none = output(
        "tail of nothing",
        logrelay(&["tail", "--url", &url, "-p", "nope", "--no-follow"]),
    )
    .await;
    assert_eq!(none.status.code(), Some(4), "{none:?}");
    assert!(stderr(&none).contains("no stream matches the selector"));
    // More streams than allowed: exit code 6.
    let many = output(
        "tail over the cap",
        logrelay(&["tail", "--url", &url, "--max-streams", "0"]),
    )
    .await;
    assert_eq!(many.status.code(), Some(6), "{many:?}");
    assert!(
        stderr(&many).contains("more than --max-streams 0"),
        "{}",
        stderr(&many)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colours_only_on_a_terminal_and_client_side_filters() {
    let (_pki, relay, _pods, _agent, _w) = one_container(20).await;
    let url = relay.handle.subscribe_url();
    let base = ["tail", "--url", &url, "-n", "shop", "--no-follow"];
    let piped = eventually("a one-off read", || async {
        let o = output("tail into a pipe", logrelay(&base)).await;
        (stdout(&o).lines().count() == 20).then_some(o)
    })
    .await;
    assert!(!stdout(&piped).contains('\x1b'), "no colour into a pipe");
    assert!(
        stdout(&piped).starts_with("[cart/main] line 0\n"),
        "{}",
        stdout(&piped)
    );

    // Under a pseudo-terminal (util-linux `script`): colours.
    let shell_cmd = format!(
        "{} tail --url {url} -n shop --no-follow --tail 3 --highlight 'line 1[0-9]'",
        env!("CARGO_BIN_EXE_logrelay")
    );
    let tty = output("tail on a terminal", {
        let mut c = tokio::process::Command::new("script");
        c.args(["-qec", &shell_cmd, "/dev/null"])
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    })
    .await;
    assert!(tty.status.success(), "{tty:?}");
    let text = stdout(&tty);
    assert!(
        text.contains("\x1b[") && text.contains("[cart/main]\x1b[0m "),
        "{text:?}"
    );
    assert!(
        text.contains("\x1b[1;41;97mline 17\x1b[0m"),
        "highlighted: {text:?}"
    );
    // --color never wins over the terminal; NO_COLOR too.
    let never = output("tail --color never on a terminal", {
        let mut c = tokio::process::Command::new("script");
        c.args(["-qec", &format!("{shell_cmd} --color never"), "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    })
    .await;
    assert!(!stdout(&never).contains('\x1b'), "{:?}", stdout(&never));
    // --color always colours a pipe.
    let mut always = base.to_vec();
    always.extend(["--color", "always", "--tail", "1"]);
    assert!(stdout(&output("tail --color always", logrelay(&always)).await).contains('\x1b'));

    // --include / --exclude, in this client, and raw output.
    let mut filtered = base.to_vec();
    filtered.extend(["--include", "line 1[0-9]", "--exclude", "5$", "-o", "raw"]);
    let f = output("tail --include --exclude", logrelay(&filtered)).await;
    let expected: String = (10..20)
        .filter(|i| i % 10 != 5)
        .map(|i| format!("line {i}\n"))
        .collect();
    assert_eq!(stdout(&f), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_into_head_it_ends_quietly_with_zero() {
    let (_pki, relay, _pods, _agent, _w) = one_container(100).await;
    let url = relay.handle.subscribe_url();
    // Following (never ends by itself): head takes five lines and leaves; the stream then
    // goes idle, so only the closed pipe can end the command.
    let script = format!(
        "set -o pipefail; {} tail --url {url} -n shop --tail 100 | head -n 5",
        env!("CARGO_BIN_EXE_logrelay")
    );
    let o = output("tail | head -n 5", {
        let mut c = tokio::process::Command::new("bash");
        c.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    })
    .await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "pipefail: logrelay exited 0 too: {o:?}"
    );
    assert_eq!(
        stdout(&o),
        "[cart/main] line 0\n[cart/main] line 1\n[cart/main] line 2\n[cart/main] line 3\n[cart/main] line 4\n"
    );
    assert_eq!(stderr(&o), "", "no broken-pipe noise");
}

const UID_A: &str = "8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const MAIN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A kubelet (systemd driver) cgroup tree with one pod and its `main` container, as a node's
/// files read (trimmed): usage 120 MB with 20 MB inactive file cache, main limited to half a
/// core and 256 MiB.
fn cgroup_tree(root: &std::path::Path, containers: &std::path::Path, usage_usec: u64) {
    let pod = root.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        UID_A.replace('-', "_")
    ));
    let main = pod.join(format!("cri-containerd-{MAIN}.scope"));
    for (dir, usec, current, inactive, cpu_max, mem_max) in [
        (
            &pod,
            usage_usec,
            120_000_000u64,
            20_000_000u64,
            "max 100000",
            "max",
        ),
        (
            &main,
            usage_usec / 2,
            100_000_000,
            15_000_000,
            "50000 100000",
            "268435456",
        ),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        for (name, content) in [
            (
                "cpu.stat",
                format!("usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\n"),
            ),
            ("memory.current", format!("{current}\n")),
            ("memory.stat", format!("anon 1\ninactive_file {inactive}\n")),
            ("cpu.max", format!("{cpu_max}\n")),
            ("memory.max", format!("{mem_max}\n")),
        ] {
            std::fs::write(dir.join(name), content).unwrap();
        }
    }
    std::fs::write(containers.join(format!("task-a_team_main-{MAIN}.log")), "").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_cgroup_trees_figures() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    std::fs::create_dir(pods.path().join(format!("team_task-a_{UID_A}"))).unwrap();
    let (cgroups, containers) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    cgroup_tree(cgroups.path(), containers.path(), 5_000_000);
    let _agent = TestAgent::start_with(&pki, &pods, relay.quic_addr(), |c| {
        c.resources = true;
        c.cgroup_root = cgroups.path().to_owned();
        c.containers_dir = containers.path().to_owned();
        c.resources_interval_ms = 200;
        c.metrics_rescan_ms = 50;
    })
    .await;
    let url = relay.handle.subscribe_url();
    eventually("the resources stream listed", || async {
        let o = output(
            "list",
            logrelay(&["list", "--url", &url, "--kind", "metrics", "-o", "json"]),
        )
        .await;
        (stdout(&o).lines().count() == 1).then_some(())
    })
    .await;

    // JSON: one object per sample.
    let mut child = logrelay(&["top", "--url", &url, "-n", "team", "-o", "json"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(
        &within("a sample", lines.next_line())
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["labels"]["pod"], "task-a");
    assert_eq!(first["usage"]["memory_working_set_bytes"], 100_000_000.0);
    assert_eq!(first["usage"]["memory_usage_bytes"], 120_000_000.0);
    assert_eq!(first["usage"]["cpu_usage_seconds_total"], 5.0);
    let main = &first["containers"][0];
    assert_eq!(main["container"], "main");
    assert_eq!(main["memory_working_set_bytes"], 85_000_000.0);
    assert_eq!(main["cpu_limit_cores"], 0.5);
    assert_eq!(main["memory_limit_bytes"], 268_435_456.0);
    // Usage grows by one CPU second: the next samples carry a positive rate.
    cgroup_tree(cgroups.path(), containers.path(), 6_000_000);
    let with_rate = within("a sample with a CPU rate", async {
        loop {
            let v: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            if v["usage"]["cpu_cores"].as_f64().is_some_and(|c| c > 0.0) {
                return v;
            }
        }
    })
    .await;
    assert!(with_rate["timestamp"].as_str().unwrap().ends_with('Z'));
    child.kill().await.unwrap();

    // The table in a pipe: rows appended, one header.
    let mut child = logrelay(&["top", "--url", &url, "-c", "main"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = within("the header", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "NAMESPACE",
            "POD",
            "CONTAINER",
            "CPU(cores)",
            "CPU",
            "LIMIT",
            "MEMORY(bytes)",
            "MEMORY",
            "LIMIT"
        ]
    );
    let row = within("a row", lines.next_line()).await.unwrap().unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], ["team", "task-a", "main"]);
    assert_eq!(cells[4..], ["500m", "81Mi", "256Mi"], "{row}");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_help_and_exit_codes() {
    for shell in ["bash", "zsh", "fish"] {
        let o = output("completion", logrelay(&["completion", shell])).await;
        assert!(o.status.success(), "{o:?}");
        let s = stdout(&o);
        assert!(
            s.contains("logrelay") && s.contains("max-streams"),
            "{shell}: {s}"
        );
    }
    let help = output("tail --help", logrelay(&["tail", "--help"])).await;
    assert!(stdout(&help).contains("Examples:"), "{}", stdout(&help));
    let codes = output("--help-exit-codes", logrelay(&["--help-exit-codes"])).await;
    for code in [
        "0  ended normally",
        "3  authentication",
        "4  not found",
        "5  connection",
    ] {
        assert!(stdout(&codes).contains(code), "{}", stdout(&codes));
    }
    let usage = output("bad flag", logrelay(&["tail", "--since", "yesterday"])).await;
    assert_eq!(usage.status.code(), Some(2));
    let unreachable = output(
        "nothing listens",
        logrelay(&["list", "--url", "ws://127.0.0.1:1/v1/subscribe"]),
    )
    .await;
    assert_eq!(unreachable.status.code(), Some(5), "{unreachable:?}");
    assert!(stderr(&unreachable).contains("cannot connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_events_interleaves_a_pods_kubernetes_events_marked() {
    use logrelay_wire::labels::{Labels, StreamKind};
    let pki = TestPki::new();
    let relay = TokenRelay::start(&pki).await;
    let pod = |container: &str, kind| Labels {
        namespace: "shop".into(),
        pod: "cart".into(),
        pod_uid: "u1".into(),
        container: container.into(),
        kind,
        ..Labels::default()
    };
    let _agent = FakeAgent::start(
        &pki,
        relay.relay.quic_addr(),
        "acme",
        "c1",
        vec![
            (pod("main", StreamKind::Log), vec!["hello\n".into()]),
            (
                pod("events", StreamKind::Events),
                vec![r#"{"reason":"BackOff","type":"Warning"}"#.to_owned() + "\n"],
            ),
        ],
    )
    .await;
    let url = relay.url();
    let token = relay.token_file("acme");
    // Follows (the fake agent keeps its streams open) and reads the first `n` lines printed.
    let first_lines = async |events: bool, n: usize| -> Vec<String> {
        use tokio::io::AsyncBufReadExt;
        let mut args = vec![
            "tail",
            "--url",
            &url,
            "--token-file",
            &token,
            "-n",
            "shop",
            "-p",
            "cart",
            "-c",
            "main",
            "--prefix",
            "--color",
            "never",
        ];
        if events {
            args.push("--events");
        }
        let mut child = logrelay(&args).spawn().expect("spawn tail");
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = Vec::new();
        within("tail prints its lines", async {
            while lines.len() < n {
                lines.push(out.next_line().await.unwrap().expect("a line"));
            }
        })
        .await;
        lines.sort();
        lines
    };
    assert_eq!(
        first_lines(true, 2).await,
        [
            r#"[cart/events] [event] {"reason":"BackOff","type":"Warning"}"#,
            "[cart/main] hello",
        ]
    );
    assert_eq!(
        first_lines(false, 1).await,
        ["[cart/main] hello"],
        "only the log without --events"
    );
}
