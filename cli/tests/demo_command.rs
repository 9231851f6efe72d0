//! `logrelay demo`, the README's first command, run as a newcomer runs it: the binary starts relay,
//! agent and workload, prints where to look on stdout (and nothing else there), `logrelay list`
//! and `logrelay tail` read the sample pods through it, the viewer is served, and Ctrl-C stops it.

mod support;

use logrelay_e2e::*;
use support::logrelay;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_its_pods_to_list_tail_and_the_viewer_and_stops_on_ctrl_c() {
    let mut demo = logrelay(&[
        "demo",
        "--http-addr",
        "127.0.0.1:0",
        "--quic-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--agent-admin-addr",
        "127.0.0.1:0",
    ])
    .env("LOGRELAY_LOG", "info")
    .spawn()
    .expect("start logrelay demo");
    let mut out = BufReader::new(demo.stdout.take().unwrap()).lines();

    // The instructions, up to the command to paste into another terminal.
    let mut printed = Vec::new();
    within("the demo's instructions", async {
        while let Some(line) = out.next_line().await.expect("read demo stdout") {
            let last = line.contains("-- tail --url");
            printed.push(line);
            if last {
                break;
            }
        }
    })
    .await;
    let field = |name: &str| {
        printed
            .iter()
            .find_map(|l| {
                l.split_once(name)
                    .map(|(_, v)| v.trim_start_matches([' ', ':']))
            })
            .unwrap_or_else(|| panic!("no {name:?} line in {printed:#?}"))
            .trim()
            .to_string()
    };
    let url = field("WebSocket URL");
    let viewer = field("browser viewer");
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    // Logged at info, yet stdout holds only the instructions: diagnostics go to stderr.
    for line in &printed {
        assert!(
            !line.contains(" INFO ") && !line.contains(" WARN ") && !line.contains("\x1b["),
            "a log line on the demo's stdout: {line:?}"
        );
    }

    // `logrelay list` shows the sample pods.
    let listed = eventually("the demo's pods in logrelay list", || {
        let url = url.clone();
        async move {
            let o = logrelay(&["list", "--url", &url, "-o", "json"])
                .output()
                .await
                .ok()?;
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            (o.status.success() && text.contains("apache") && text.contains("checkout"))
                .then_some(text)
        }
    })
    .await;
    // JSON lines, one object per stream: four pods, the metrics streams beside them.
    let streams: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("list -o json: one object per line"))
        .collect();
    let pods: std::collections::BTreeSet<_> = streams
        .iter()
        .filter_map(|s| s["labels"]["pod"].as_str())
        .collect();
    assert!(pods.len() >= 4, "{pods:?} in {listed}");

    // `logrelay tail` the README's way prints the pod's recent lines.
    let tailed = within(
        "logrelay tail --no-follow",
        logrelay(&[
            "tail",
            "--url",
            &url,
            "-n",
            "web",
            "-p",
            "apache",
            "-c",
            "main",
            "--tail",
            "5",
            "--no-follow",
        ])
        .output(),
    )
    .await
    .expect("run logrelay tail");
    let lines = String::from_utf8_lossy(&tailed.stdout).into_owned();
    assert!(
        tailed.status.success() && !lines.trim().is_empty(),
        "tail: {:?} {lines:?} {}",
        tailed.status,
        String::from_utf8_lossy(&tailed.stderr)
    );

    // The viewer is served where the demo says.
    let addr = viewer
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let page = within("the viewer page", http_get(&addr, "/")).await;
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("<html"),
        "{page:.200}"
    );

    // Ctrl-C stops everything and the demo exits cleanly.
    let pid = demo.id().expect("demo pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let status = within("the demo to exit on Ctrl-C", demo.wait())
        .await
        .unwrap();
    assert!(status.success(), "demo exited with {status:?}");
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.unwrap();
    String::from_utf8_lossy(&body).into_owned()
}
