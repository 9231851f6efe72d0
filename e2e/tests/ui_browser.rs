//! The browser live viewer, as a person uses it: a real relay serving `ui/`, a real agent over a
//! pods directory (and a recorded cgroup tree), and a real headless Chromium from Debian opening
//! a link. Every check polls the page with a deadline.

use std::io::Write;
use std::path::Path;

use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_relay::auth::testkit::{Signer, jwks};
use serde_json::{Value, json};

/// The viewer's URL on `relay` with `query`.
fn view(relay: &TestRelay, query: &str) -> String {
    let base = relay.handle.ui_url().expect("the viewer is on by default");
    format!("{base}?{query}")
}

/// Messages of the log lines the page shows, in page order.
const MESSAGES: &str = "[...document.querySelectorAll('#log .line .msg')].map(m => m.textContent)";

/// Waits until the page shows at least `n` log lines; returns their messages.
async fn messages_at_least(page: &mut Page, n: usize) -> Vec<String> {
    let v = page
        .wait_for(
            &format!("{n} lines on the page"),
            &format!("(() => {{ const m = {MESSAGES}; return m.length >= {n} ? m : null; }})()"),
        )
        .await;
    serde_json::from_value(v).expect("an array of strings")
}

/// Appends a CRI record on stderr (the demo writer writes stdout only).
fn write_stderr(pods: &PodsDir, ns: &str, pod: &str, message: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(pods.log_path(ns, pod, "main"))
        .expect("open log");
    let ts = logrelay::demo::now_rfc3339();
    f.write_all(format!("{ts} stderr F {message}").as_bytes())
        .expect("append");
}

/// Writes `files` (name → content) into `dir`.
fn write_cgroup(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

/// A recorded kubepods tree for the pod `ns/pod` of `pods` (its UID comes from its log
/// directory): 100 MB working set, 256 MiB limit, half a core.
fn record_cgroups(pods: &PodsDir, ns: &str, pod: &str, root: &Path, containers: &Path) {
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pod_dir = pods
        .log_path(ns, pod, "main")
        .parent()
        .and_then(Path::parent)
        .expect("pod directory")
        .to_owned();
    let dir_name = pod_dir.file_name().unwrap().to_string_lossy().into_owned();
    let uid = dir_name.rsplit_once('_').expect("ns_pod_uid").1.to_owned();
    std::fs::write(containers.join(format!("{pod}_{ns}_main-{ID}.log")), "").unwrap();
    let cgroup = root.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    ));
    write_cgroup(
        &cgroup,
        &[
            ("cpu.stat", "usage_usec 2500000\n"),
            ("memory.current", "104857600\n"),
            ("memory.stat", "anon 50000000\ninactive_file 4857600\n"),
            ("memory.max", "268435456\n"),
            ("cpu.max", "50000 100000\n"),
        ],
    );
    write_cgroup(
        &cgroup.join(format!("cri-containerd-{ID}.scope")),
        &[
            ("cpu.stat", "usage_usec 2000000\n"),
            ("memory.current", "94857600\n"),
            ("memory.stat", "inactive_file 4857600\n"),
        ],
    );
}

/// An agent of org `dev` over `pods`, sampling resources from `cgroups` when given.
async fn agent(
    pki: &TestPki,
    relay: &TestRelay,
    pods: &PodsDir,
    cgroups: Option<(&Path, &Path)>,
) -> TestAgent {
    TestAgent::start_with(pki, pods, relay.quic_addr(), |c| {
        c.metrics_rescan_ms = 50;
        c.resources = cgroups.is_some();
        c.resources_interval_ms = 1_000;
        if let Some((root, containers)) = cgroups {
            c.cgroup_root = root.to_owned();
            c.containers_dir = containers.to_owned();
        }
    })
    .await
}

async fn eval(page: &mut Page, expression: &str) -> Value {
    page.evaluate(expression)
        .await
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_shows_the_backlog_in_order_then_live_lines_as_text_with_the_pods_resources() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut app = pods.container("team", "task-7", "main");

    // The backlog: stdout lines, one stderr line among them, and a line that is markup.
    let mut written = Vec::new();
    for i in 0..10 {
        let l = format!("backlog line {i:02}\n");
        app.write_lines([l.as_bytes()]).unwrap();
        written.push(l);
    }
    let stderr_line = "disk quota nearly exceeded\n";
    write_stderr(&pods, "team", "task-7", stderr_line);
    written.push(stderr_line.into());
    let markup = "<img src=x onerror=alert(1)>\n";
    for l in ["backlog line 10\n", markup, "backlog line 11\n"] {
        app.write_lines([l.as_bytes()]).unwrap();
        written.push(l.into());
    }
    let cgroups = tempfile::tempdir().unwrap();
    let containers = tempfile::tempdir().unwrap();
    record_cgroups(&pods, "team", "task-7", cgroups.path(), containers.path());
    let _agent = agent(
        &pki,
        &relay,
        &pods,
        Some((cgroups.path(), containers.path())),
    )
    .await;

    let mut page = browser.page().await;
    page.navigate(&view(&relay, "namespace=team&pod=task-7&container=main"))
        .await;

    // The backlog, in order, each line once, terminators not shown.
    let want: Vec<String> = written.iter().map(|l| l.trim_end().to_owned()).collect();
    let shown = messages_at_least(&mut page, want.len()).await;
    assert_eq!(shown, want, "the backlog in write order");

    // stderr is marked; stdout is not.
    let stderr = eval(
        &mut page,
        "[...document.querySelectorAll('#log .line.stderr')]\
           .map(l => [l.querySelector('.fd').textContent, l.querySelector('.msg').textContent])",
    )
    .await;
    assert_eq!(stderr, json!([["err", stderr_line.trim_end()]]));
    let stdout = eval(
        &mut page,
        "document.querySelectorAll('#log .line.stdout').length",
    )
    .await;
    assert_eq!(stdout, json!(want.len() - 1));

    // Markup in a line is text: no element was made of it.
    assert_eq!(
        eval(&mut page, "document.querySelectorAll('img').length").await,
        json!(0)
    );
    assert!(shown.contains(&markup.trim_end().to_owned()));

    // A line written now appears live, after the backlog.
    app.write_lines([b"written after the page opened\n".as_slice()])
        .unwrap();
    let shown = messages_at_least(&mut page, want.len() + 1).await;
    assert_eq!(shown.last().unwrap(), "written after the page opened");
    assert_eq!(shown.len(), want.len() + 1, "nothing twice");

    // The pod's resources, from the recorded cgroup tree: working set = current - inactive_file.
    let row = "document.querySelector('#metrics-rows tr[data-pod=\"team/task-7\"]')";
    let memory = page
        .wait_for(
            "the pod's memory in the metrics panel",
            &format!("{row}?.querySelector('td.memory')?.dataset.value"),
        )
        .await;
    assert_eq!(memory, json!("100000000"));
    let cells = eval(
        &mut page,
        &format!("[...{row}.querySelectorAll('td')].slice(0, 5).map(td => td.textContent)"),
    )
    .await;
    assert_eq!(
        cells[0],
        json!("team/task-7"),
        "the row names the pod: {cells}"
    );
    assert_eq!(cells[2], json!("0.5"), "CPU limit in cores: {cells}");
    assert_eq!(cells[3], json!("95.4 MiB"), "working set: {cells}");
    assert_eq!(cells[4], json!("256 MiB"), "memory limit: {cells}");
    assert_eq!(
        eval(&mut page, "document.getElementById('metrics').hidden").await,
        json!(false)
    );

    let status = eval(&mut page, "document.getElementById('status').textContent").await;
    assert_eq!(
        status,
        json!("Watching 1 log stream and the resources of 1 pod.")
    );
    assert!(
        page.problems.is_empty(),
        "the page reported errors (CSP violations, exceptions): {:?}",
        page.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pod_regex_is_shown_to_the_user() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let mut page = browser.page().await;
    // pod_regex=(a+
    page.navigate(&view(&relay, "pod_regex=%28a%2B")).await;
    let error = page
        .wait_for(
            "the relay's refusal on the page",
            "(() => { const e = document.getElementById('error'); \
              return !e.hidden && e.textContent.includes('invalid regular expression') \
                ? e.textContent : null; })()",
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("`(a+`"),
        "names the pattern: {error}"
    );
    let status = eval(&mut page, "document.getElementById('status').className").await;
    assert!(status.as_str().unwrap().contains("bad"), "{status}");
    assert_eq!(
        eval(
            &mut page,
            "document.querySelector('input[name=pod_regex]').value"
        )
        .await,
        json!("(a+"),
        "the form shows what the link asked for"
    );
    assert!(page.problems.is_empty(), "{:?}", page.problems);

    // The browser enforces the relay's policy: script injected inline does not run.
    let ran = eval(
        &mut page,
        "(() => { \
           document.addEventListener('securitypolicyviolation', \
             e => { window.violated = e.effectiveDirective; }); \
           const s = document.createElement('script'); \
           s.textContent = 'window.inlineRan = true'; \
           document.body.append(s); \
           return window.inlineRan === true; })()",
    )
    .await;
    assert_eq!(ran, json!(false));
    let directive = page
        .wait_for("the CSP violation event", "window.violated")
        .await;
    assert!(
        directive.as_str().unwrap().starts_with("script-src"),
        "{directive}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_fragment_opens_the_session_and_is_kept_only_in_memory() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let signer = Signer::ed25519(Some("k1"));
    let keys = tempfile::tempdir().unwrap();
    let jwks_path = keys.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&signer])).unwrap();
    // No anonymous org: a session without a valid token is refused.
    let relay = TestRelay::start_exactly(
        &pki,
        RelayConfig {
            token_jwks_file: Some(jwks_path),
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut app = pods.container("ns", "app", "main");
    app.write_lines([b"only for token holders\n".as_slice()])
        .unwrap();
    let _agent = agent(&pki, &relay, &pods, None).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = signer.token(&json!({
        "sub": "alice", "org": "dev", "exp": exp, "roles": [{ "role": "viewer" }]
    }));

    let mut page = browser.page().await;
    page.navigate(&format!(
        "{}#token={token}",
        view(&relay, "namespace=ns&pod=app")
    ))
    .await;
    let shown = messages_at_least(&mut page, 1).await;
    assert_eq!(shown, ["only for token holders"]);
    let href = eval(&mut page, "location.href").await;
    assert!(
        !href.as_str().unwrap().contains('#') && !href.as_str().unwrap().contains(&token),
        "the token left the address bar: {href}"
    );
    let stored = eval(
        &mut page,
        "localStorage.length + sessionStorage.length + document.cookie.length",
    )
    .await;
    assert_eq!(stored, json!(0), "nothing stored");

    // A bad token: the relay refuses the upgrade, and the page says so. (A new document: a
    // change of fragment alone does not reload the page.)
    page.navigate("about:blank").await;
    page.navigate(&format!(
        "{}#token=not-a-jwt",
        view(&relay, "namespace=ns&pod=app")
    ))
    .await;
    page.wait_for(
        "the refusal in the status line",
        "document.getElementById('status').textContent.includes('refused the session')",
    )
    .await;
    assert_eq!(
        eval(&mut page, "document.querySelectorAll('#log .line').length").await,
        json!(0)
    );
}

/// True when the log view overflows and shows its newest line.
const AT_END: &str = "(() => { const l = document.getElementById('log'); \
    return l.scrollHeight > l.clientHeight && l.scrollHeight - l.scrollTop - l.clientHeight < 8; })()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_keeps_the_newest_lines_and_follows_them_until_the_user_scrolls_up() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut app = pods.container("ns", "bulk", "main");
    let mut lines: Vec<String> = (0..300).map(|i| format!("bulk line {i:03}\n")).collect();
    app.write_lines(lines.iter().map(|l| l.as_bytes())).unwrap();
    let _agent = agent(&pki, &relay, &pods, None).await;

    let mut page = browser.page().await;
    page.navigate(&view(&relay, "namespace=ns&pod=bulk&max_lines=200"))
        .await;
    // 301 entries arrived (the stream's notice and 300 lines); the newest 200 stay.
    let dropped = page
        .wait_for(
            "the dropped-lines notice",
            "(() => { const d = document.getElementById('dropped'); \
              return !d.hidden && d.textContent.startsWith('101 ') ? d.textContent : null; })()",
        )
        .await;
    assert!(
        dropped.as_str().unwrap().contains("newest 200"),
        "{dropped}"
    );
    let shown: Vec<String> = serde_json::from_value(eval(&mut page, MESSAGES).await).unwrap();
    let want: Vec<String> = lines[100..]
        .iter()
        .map(|l| l.trim_end().to_owned())
        .collect();
    assert_eq!(shown, want);
    assert_eq!(
        eval(
            &mut page,
            "document.getElementById('log').childElementCount"
        )
        .await,
        json!(200)
    );

    // The view follows the newest line...
    page.wait_for("the view at its newest line", AT_END).await;
    // ...until the user scrolls up: new lines arrive, and the view stays where the user is.
    eval(&mut page, "document.getElementById('log').scrollTop = 0").await;
    page.wait_for(
        "the paused notice",
        "!document.getElementById('jump').hidden",
    )
    .await;
    for i in 300..310 {
        let l = format!("bulk line {i:03}\n");
        app.write_lines([l.as_bytes()]).unwrap();
        lines.push(l);
    }
    messages_at_least(&mut page, 200).await;
    page.wait_for(
        "the newest line on the page",
        &format!("{MESSAGES}.at(-1) === 'bulk line 309'"),
    )
    .await;
    assert_eq!(
        eval(&mut page, "document.getElementById('log').scrollTop").await,
        json!(0),
        "a paused view does not move"
    );
    assert_eq!(eval(&mut page, AT_END).await, json!(false));
    // The button brings the newest line back, and following resumes.
    eval(&mut page, "document.getElementById('jump').click()").await;
    page.wait_for("the view back at its newest line", AT_END)
        .await;
    assert!(page.problems.is_empty(), "{:?}", page.problems);
}
