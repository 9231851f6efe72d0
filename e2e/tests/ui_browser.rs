//! The browser live viewer, as a person uses it: a real relay serving `ui/`, a real agent over
//! a pods directory (the demo's own workload where it fits: its pods, their cgroup tree, JSON and
//! ANSI lines), and a real headless Chromium from Debian driven with the mouse and keyboard.
//! Every check polls the page with a deadline; what the view holds is read from the text its
//! Copy button copies (every line of the merged view, not only the rows on screen).

use std::io::Write;

use logrelay::demo::Workload;
use logrelay_e2e::viewer::{Viewer, demo_agent};
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_wire::labels::Labels;
use serde_json::json;

/// The viewer's URL on `relay` with `query` (without `?`).
fn view(relay: &TestRelay, query: &str) -> String {
    let base = relay.handle.ui_url().expect("the viewer is on by default");
    if query.is_empty() {
        base
    } else {
        format!("{base}?{query}")
    }
}

/// `sel=` of one selection (the link form of a merged view).
fn sel(fields: &[(&str, &str)]) -> String {
    let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("sel={}", inner.join("%26").replace('=', "%3D"))
}

/// Appends raw CRI records (`<time> <stream> F <message>`) to a container's log.
fn append_cri(pods: &PodsDir, ns: &str, pod: &str, records: &[(String, &str, String)]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(pods.log_path(ns, pod, "main"))
        .expect("open log");
    let mut buf = String::new();
    for (time, stream, message) in records {
        buf.push_str(&format!("{time} {stream} F {message}\n"));
    }
    f.write_all(buf.as_bytes()).expect("append");
}

fn rfc3339(ns: i64) -> String {
    logrelay_wire::time::rfc3339_nanos(ns)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// An agent of org `dev` over `pods`.
async fn agent(pki: &TestPki, relay: &TestRelay, pods: &PodsDir) -> TestAgent {
    TestAgent::start_with(pki, pods, relay.quic_addr(), |c| {
        c.resources = false;
    })
    .await
}

/// Appends `lines` stdout lines to a container through the demo's CRI writer.
fn write(app: &mut logrelay::demo::CriWriter, lines: impl IntoIterator<Item = String>) {
    let lines: Vec<String> = lines.into_iter().map(|l| format!("{l}\n")).collect();
    app.write_lines(lines.iter().map(String::as_bytes))
        .expect("append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_picker_lists_the_demo_pods_and_a_picked_pod_shows_its_containers_and_charts() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let work = tempfile::tempdir().unwrap();
    let mut workload = Workload::create(work.path()).unwrap();
    for _ in 0..5 {
        workload.tick(4, 0.2).unwrap();
    }
    let _agent = demo_agent(&pki, &relay, &workload, 500).await;
    let running = tokio::spawn(workload.run(20));

    // Nothing typed: the page lists what runs.
    let mut v = Viewer::open(&browser, &view(&relay, "")).await;
    let pods =
        "[...document.querySelectorAll('#picker-tree .item.d1 .name')].map(b => b.textContent)";
    v.wait(
        "the four demo pods in the picker",
        &format!("{pods}.length === 4"),
    )
    .await;
    assert_eq!(
        v.eval(pods).await,
        json!(["spark", "checkout", "hdfs", "apache"]),
        "by namespace: analytics, shop, storage, web"
    );
    assert_eq!(v.text("#picker-summary").await, "5 streams in 4 pods");
    let checkout = v
        .text("#picker-tree .item.d1:has(button[data-sel='namespace=shop&pod=checkout'])")
        .await;
    assert!(checkout.contains("2 containers"), "{checkout}");
    // Search narrows the list.
    v.page.click("#picker-search").await;
    v.page.type_text("hdfs").await;
    v.wait(
        "only hdfs listed",
        &format!("JSON.stringify({pods}) === '[\"hdfs\"]'"),
    )
    .await;
    assert_eq!(
        v.text("#picker-summary").await,
        "1 of 5 streams match (1 pod)"
    );
    v.eval("(() => { const s = document.getElementById('picker-search'); s.value = ''; s.dispatchEvent(new Event('input')); })()")
        .await;
    v.wait("all pods again", &format!("{pods}.length === 4"))
        .await;

    // A click on a pod watches all its containers.
    v.page
        .click("#picker-tree button.name[data-sel='namespace=shop&pod=checkout']")
        .await;
    let held = v
        .wait_held("lines of both containers of shop/checkout", |h| {
            let sources: std::collections::BTreeSet<&str> = h.lines().map(|(_, s, _)| s).collect();
            sources.len() == 2 && h.lines().count() >= 40
        })
        .await;
    let sources: std::collections::BTreeSet<&str> = held.lines().map(|(_, s, _)| s).collect();
    assert_eq!(
        sources.into_iter().collect::<Vec<_>>(),
        ["shop/checkout/api", "shop/checkout/worker"]
    );
    assert!(
        v.href().await.ends_with("/?namespace=shop&pod=checkout"),
        "the link names the view"
    );
    assert_eq!(v.text("#chips .chip").await, "shop/checkout×");
    // JSON lines readable, ANSI as styled spans, no escape left.
    v.wait(
        "a JSON line with its level",
        "document.querySelector('#viewport .row .msg.json .lvl')",
    )
    .await;
    v.wait(
        "an ANSI-coloured line",
        "document.querySelector('#viewport .row .msg .a-f2')",
    )
    .await;
    assert!(!held.texts().iter().any(|t| t.contains('\u{1b}')));
    let shown = v.shown_messages().await.join("\n");
    assert!(!shown.contains('\u{1b}'), "{shown}");

    // The pod's CPU and memory, drawn as points in the charts.
    for chart in ["#chart-cpu", "#chart-mem"] {
        v.wait(
            &format!("two points in {chart}"),
            &format!("Number(document.querySelector('{chart}').dataset.points || 0) >= 2"),
        )
        .await;
        let painted = v
            .eval(&format!(
                "(() => {{ const c = document.querySelector('{chart} canvas'); \
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                   let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }})()"
            ))
            .await;
        assert!(
            painted.as_u64().unwrap() > 200,
            "{chart} has drawn pixels: {painted}"
        );
    }
    let memory = v
        .eval("document.querySelector('#metrics-rows tr[data-pod=\"shop/checkout\"] td.memory').dataset.value")
        .await;
    assert!(
        memory.as_str().unwrap().parse::<f64>().unwrap() > 100e6,
        "{memory}"
    );
    // A scraped series the user picks: the relay's own sessions gauge.
    v.wait(
        "the relay as a scrape target",
        "[...document.querySelectorAll('#scrape-source option')].some(o => o.value === 'scrape:relay')",
    )
    .await;
    v.eval("(() => { const s = document.getElementById('scrape-source'); s.value = 'scrape:relay'; s.dispatchEvent(new Event('change')); })()")
        .await;
    v.page.click("#series-search").await;
    v.page.type_text("sessions_connected").await;
    v.page
        .click("#series-list button[data-series='scrape:relay|logrelay_relay_sessions_connected']")
        .await;
    v.wait(
        "points of the picked series",
        "Number(document.querySelector('.picked-series')?.dataset.points || 0) >= 2",
    )
    .await;
    assert!(v.href().await.contains(
        "scrape=scrape%3Arelay&series=scrape%3Arelay%7Clogrelay_relay_sessions_connected"
    ));
    running.abort();
    assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_view_of_three_pods_is_in_time_order_and_a_link_restores_it() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let names = ["alpha", "bravo", "charlie"];
    for p in names {
        pods.container("team", p, "main");
    }
    // Backlogs whose times interleave: each pod's own in order, the three shuffled together.
    let base = now_ns() - 120_000_000_000;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut written: Vec<(String, String, String)> = Vec::new();
    for (i, p) in names.iter().enumerate() {
        let mut t = base + i as i64 * 1_000;
        let mut records = Vec::new();
        for j in 0..40 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            t += 1_000_000 + (rng % 5_000_000) as i64;
            let stream = if i == 1 && j % 10 == 3 {
                "stderr"
            } else {
                "stdout"
            };
            let msg = format!("{p} line {j:02}");
            records.push((rfc3339(t), stream, msg.clone()));
            written.push((rfc3339(t), format!("team/{p}/main"), msg));
        }
        append_cri(&pods, "team", p, &records);
    }
    written.sort();
    let _agent = agent(&pki, &relay, &pods).await;

    let query = names
        .iter()
        .map(|p| sel(&[("namespace", "team"), ("pod", p)]))
        .collect::<Vec<_>>()
        .join("&");
    let mut v = Viewer::open(&browser, &view(&relay, &query)).await;
    let held = v.wait_held("120 lines", |h| h.lines().count() >= 120).await;
    let got: Vec<(String, String, String)> = held
        .lines()
        .map(|(t, s, m)| (t.to_owned(), s.to_owned(), m.to_owned()))
        .collect();
    assert_eq!(
        got, written,
        "one merged view, in time order, each line once"
    );
    assert_eq!(held.markers(), Vec::<&str>::new(), "nothing missed");
    // Download takes what the view holds, one line each with its time and source.
    let downloads = tempfile::tempdir().unwrap();
    v.page.allow_downloads(downloads.path()).await;
    v.page.click("#download").await;
    let file = eventually("the downloaded file", || async {
        std::fs::read_dir(downloads.path())
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "log"))
    })
    .await;
    let text = eventually("the whole download", || async {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|t| t.lines().count() == 120)
    })
    .await;
    let first = &written[0];
    assert_eq!(
        text.lines().next().unwrap(),
        format!("{} {} stdout {}", first.0, first.1, first.2)
    );
    assert!(
        file.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("logrelay-")
    );

    // A colour and a label per source; stderr marked.
    let rows = v
        .eval(
            "[...document.querySelectorAll('#viewport .row.line')].map(r => [\
               [...r.classList].find(c => /^c[0-9]$/.test(c)), r.querySelector('.src').textContent, \
               getComputedStyle(r.querySelector('.src')).display, r.classList.contains('stderr'), \
               r.querySelector('.fd').textContent])",
        )
        .await;
    let rows: Vec<(String, String, String, bool, String)> = serde_json::from_value(rows).unwrap();
    assert!(rows.len() >= 20, "{rows:?}");
    let mut colours = std::collections::HashMap::new();
    for (colour, src, display, stderr, fd) in &rows {
        assert_ne!(
            display, "none",
            "the source column shows with several sources"
        );
        assert_eq!(
            colours.entry(src.clone()).or_insert(colour.clone()),
            colour,
            "one colour per source"
        );
        assert_eq!(fd, if *stderr { "err" } else { "out" });
    }
    let distinct: std::collections::HashSet<_> = colours.values().collect();
    assert_eq!(distinct.len(), colours.len(), "sources differ in colour");
    assert!(
        rows.iter().any(|r| r.3),
        "a stderr line is on screen: {rows:?}"
    );

    // Toggles: UTC timestamps, wrap, no source column; the link keeps them.
    v.eval("(() => { const s = document.getElementById('ts-mode'); s.value = 'utc'; s.dispatchEvent(new Event('change')); })()")
        .await;
    let (last_time, _, _) = held.lines().last().unwrap();
    let want = format!("{} {}Z", &last_time[..10], &last_time[11..23]);
    v.wait(
        "UTC timestamps",
        &format!(
            "[...document.querySelectorAll('#viewport .row.line .ts')].at(-1)?.textContent === {}",
            json!(want)
        ),
    )
    .await;
    v.page.click("#wrap").await;
    v.page.click("#src-col").await;
    v.wait(
        "no source column",
        "getComputedStyle(document.querySelector('#viewport .row.line .src')).display === 'none'",
    )
    .await;
    assert_eq!(
        v.eval("document.getElementById('log').classList.contains('wrap')")
            .await,
        json!(true)
    );
    let href = v.href().await;
    assert!(
        href.contains("ts=utc") && href.contains("src=0") && href.contains("wrap=1"),
        "{href}"
    );

    let mut again = Viewer::open(&browser, &href).await;
    let held2 = again
        .wait_held("the same 120 lines", |h| h.lines().count() >= 120)
        .await;
    assert_eq!(held2.texts(), held.texts());
    assert_eq!(
        again
            .eval("[document.getElementById('ts-mode').value, document.getElementById('wrap').checked, document.getElementById('src-col').checked]")
            .await,
        json!(["utc", true, false])
    );
    assert_eq!(
        again
            .eval("document.querySelectorAll('#chips .chip').length")
            .await,
        json!(3)
    );

    // Live lines, written now, come after the backlog, in order.
    for p in names {
        append_cri(
            &pods,
            "team",
            p,
            &[(rfc3339(now_ns()), "stdout", format!("{p} live"))],
        );
    }
    let held = again
        .wait_held("three live lines", |h| h.lines().count() >= 123)
        .await;
    let tail: Vec<String> = held.texts().split_off(120);
    assert_eq!(tail, ["alpha live", "bravo live", "charlie live"]);
    assert!(again.page.problems.is_empty(), "{:?}", again.page.problems);
    assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);
}

/// Messages of the current hit and the hit counter.
async fn current_hit(v: &mut Viewer) -> (String, String) {
    let msg = v
        .wait(
            "the current hit on screen",
            "document.querySelector('#viewport .row.current .msg')?.textContent",
        )
        .await;
    (msg.as_str().unwrap().to_owned(), v.text("#hits").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_highlights_and_jumps_between_hits_and_filters_at_the_source() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut app = pods.container("ns", "app", "main");
    write(
        &mut app,
        (0..300).map(|i| match i {
            50 | 150 | 250 => format!("line {i:03} has a needle"),
            200 => format!("line {i:03} has a NEEDLE"),
            _ => format!("line {i:03}"),
        }),
    );
    let _agent = agent(&pki, &relay, &pods).await;
    let mut v = Viewer::open(&browser, &view(&relay, "namespace=ns&pod=app")).await;
    v.wait_held("300 lines", |h| h.lines().count() >= 300).await;

    // `/` goes to the search box; the hits are counted and marked on screen.
    v.page.click("#log").await;
    v.page.press("/").await;
    assert_eq!(v.eval("document.activeElement.id").await, json!("search"));
    v.page.type_text("needle").await;
    v.wait(
        "4 hits",
        "document.getElementById('hits').textContent === '4 hits'",
    )
    .await;
    // Enter jumps to the first hit at or below the top of the screen (none: it wraps).
    v.page.press("Enter").await;
    assert_eq!(
        current_hit(&mut v).await,
        ("line 050 has a needle".into(), "1 / 4 hits".into())
    );
    assert_eq!(
        v.eval("document.querySelector('#viewport .row.current mark.cur').textContent")
            .await,
        json!("needle")
    );
    assert_eq!(v.text("#follow").await, "Follow", "a jump pauses");
    // `n` / `N` outside the box.
    v.page.press("Escape").await;
    for (key, want) in [
        ("n", "line 150 has a needle"),
        ("n", "line 200 has a NEEDLE"),
        ("n", "line 250 has a needle"),
        ("n", "line 050 has a needle"),
        ("N", "line 250 has a needle"),
    ] {
        v.page.press(key).await;
        let w = json!(want);
        v.wait(
            &format!("{key} to {want}"),
            &format!("document.querySelector('#viewport .row.current .msg')?.textContent === {w}"),
        )
        .await;
    }
    // Case and regex.
    v.page.click("#case").await;
    v.wait(
        "3 case-sensitive hits",
        "document.getElementById('hits').textContent.endsWith('3 hits')",
    )
    .await;
    v.page.click("#regex").await;
    v.eval("(() => { const s = document.getElementById('search'); s.value = 'needle|0(0|9)9$'; s.dispatchEvent(new Event('input')); })()").await;
    v.wait(
        "5 regex hits",
        "document.getElementById('hits').textContent.endsWith('5 hits')",
    )
    .await;
    // Only matching lines.
    v.page.click("#only").await;
    let held = v
        .wait_held("only the 5 hits", |h| h.lines().count() == 5)
        .await;
    assert_eq!(
        held.texts(),
        [
            "line 009",
            "line 050 has a needle",
            "line 099",
            "line 150 has a needle",
            "line 250 has a needle"
        ]
    );
    let href = v.href().await;
    assert!(
        href.contains("q=needle%7C0%280%7C9%299%24&case=1&regex=1&only=1"),
        "{href}"
    );

    // Filter at the source: the agent sends matching lines only, now and from now on.
    v.page.click("#only").await;
    v.page.click("#source-filter").await;
    v.wait(
        "the source filter chip",
        "document.querySelector('#chips .chip.filter')?.textContent.includes('/needle|0(0|9)9$/')",
    )
    .await;
    let held = v
        .wait_held("the 5 matching lines from the agent", |h| {
            h.lines().count() == 5
        })
        .await;
    assert_eq!(held.texts()[0], "line 009");
    write(
        &mut app,
        ["not this one".to_owned(), "but this needle".to_owned()],
    );
    let held = v
        .wait_held("the new matching line", |h| h.lines().count() == 6)
        .await;
    assert_eq!(held.texts().last().unwrap(), "but this needle");
    assert!(v.href().await.contains("matches=needle%7C0%280%7C9%299%24"));
    // Removing the filter brings every line back.
    v.page.click("#chips .chip.filter .x").await;
    v.wait_held("all 302 lines", |h| h.lines().count() == 302)
        .await;
    assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_keeps_buffering_and_resume_loses_nothing_and_the_page_stays_bounded() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    let mut app = pods.container("ns", "bulk", "main");
    write(&mut app, (0..100).map(|i| format!("bulk line {i:03}")));
    let _agent = agent(&pki, &relay, &pods).await;
    let mut v = Viewer::open(
        &browser,
        &view(&relay, "namespace=ns&pod=bulk&max_lines=400"),
    )
    .await;
    v.wait_held("100 lines", |h| h.lines().count() >= 100).await;
    v.wait(
        "the newest line on screen",
        "[...document.querySelectorAll('#viewport .row.line .msg')].at(-1)?.textContent === 'bulk line 099'",
    )
    .await;

    // Pause (space): new lines are counted, the screen does not move.
    v.page.click("#log").await;
    v.page.press(" ").await;
    assert_eq!(v.text("#follow").await, "Follow");
    let before = v.shown_messages().await;
    write(&mut app, (100..350).map(|i| format!("bulk line {i:03}")));
    v.wait(
        "250 new lines counted",
        "document.getElementById('newlines').textContent === '↓ 250 new lines'",
    )
    .await;
    assert_eq!(v.shown_messages().await, before, "a paused screen stays");
    // Resume: everything is there, once, in order, and the screen follows again.
    v.page.click("#newlines").await;
    v.wait(
        "the newest line on screen",
        "[...document.querySelectorAll('#viewport .row.line .msg')].at(-1)?.textContent === 'bulk line 349'",
    )
    .await;
    let held = v.held().await;
    let want: Vec<String> = (0..350).map(|i| format!("bulk line {i:03}")).collect();
    assert_eq!(held.texts(), want, "nothing lost, nothing twice");
    assert_eq!(v.text("#follow").await, "Pause");

    // Scrolling up pauses too.
    v.eval("document.getElementById('log').scrollTop = 0").await;
    v.wait(
        "paused by the scroll",
        "document.getElementById('follow').textContent === 'Follow'",
    )
    .await;
    assert_eq!(
        v.shown_messages().await.first().map(String::as_str),
        Some("bulk line 000")
    );

    // Bounded: beyond 400 lines the oldest go, counted as the viewer's own, not as a gap.
    write(&mut app, (350..550).map(|i| format!("bulk line {i:03}")));
    let notice = v
        .wait(
            "the viewer's own evictions",
            "(() => { const e = document.getElementById('evicted'); \
               return !e.hidden && e.textContent.startsWith('150 older lines') ? e.textContent : null; })()",
        )
        .await;
    assert!(
        notice.as_str().unwrap().contains("400 lines")
            && notice.as_str().unwrap().contains("not a gap in the stream"),
        "{notice}"
    );
    let held = v.held().await;
    let want: Vec<String> = (150..550).map(|i| format!("bulk line {i:03}")).collect();
    assert_eq!(held.texts(), want);
    assert!(held.markers().is_empty(), "{:?}", held.markers());
    let rows = v
        .eval("document.querySelectorAll('#viewport .row').length")
        .await;
    assert!(
        rows.as_u64().unwrap() < 80,
        "only what fits the screen is in the DOM: {rows}"
    );
    // `End` follows again.
    v.page.press("End").await;
    v.wait(
        "following the newest line",
        "[...document.querySelectorAll('#viewport .row.line .msg')].at(-1)?.textContent === 'bulk line 549'",
    )
    .await;
    assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansi_and_markup_in_lines_render_as_text_under_the_relays_policy() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let pods = PodsDir::new();
    pods.container("ns", "evil", "main");
    let t = now_ns();
    let lines = [
        ("stdout", "<img src=x onerror=alert(1)>"),
        ("stdout", "<script>window.pwned = 1</script>"),
        (
            "stderr",
            "\u{1b}[31mred\u{1b}[0m <b>bold</b> \u{1b}[1;4munderlined\u{1b}[0m",
        ),
        (
            "stdout",
            "\u{1b}]8;;javascript:alert(1)\u{7}a link\u{1b}]8;;\u{7} \u{1b}[2Kafter",
        ),
        (
            "stdout",
            r#"{"level":"error","msg":"<img src=y onerror=alert(2)>","html":"<a href=x>x</a>"}"#,
        ),
    ];
    let records: Vec<(String, &str, String)> = lines
        .iter()
        .enumerate()
        .map(|(i, (s, m))| (rfc3339(t + i as i64), *s, (*m).to_owned()))
        .collect();
    append_cri(&pods, "ns", "evil", &records);
    let _agent = agent(&pki, &relay, &pods).await;
    let mut v = Viewer::open(&browser, &view(&relay, "namespace=ns&pod=evil")).await;
    let held = v.wait_held("5 lines", |h| h.lines().count() >= 5).await;
    assert_eq!(
        held.texts(),
        [
            "<img src=x onerror=alert(1)>",
            "<script>window.pwned = 1</script>",
            "red <b>bold</b> underlined",
            "a link after",
            r#"{"level":"error","msg":"<img src=y onerror=alert(2)>","html":"<a href=x>x</a>"}"#,
        ]
    );
    v.wait(
        "five rows",
        "document.querySelectorAll('#viewport .row.line').length === 5",
    )
    .await;
    // Nothing of it became an element, and no script of it ran.
    assert_eq!(
        v.eval("document.querySelectorAll('#viewport img, #viewport script, #viewport a, #viewport b').length")
            .await,
        json!(0)
    );
    assert_eq!(v.eval("window.pwned === undefined").await, json!(true));
    let msgs = v.shown_messages().await;
    assert_eq!(msgs[0], "<img src=x onerror=alert(1)>");
    assert_eq!(msgs[2], "red <b>bold</b> underlined");
    assert_eq!(msgs[3], "a link after");
    // ANSI styles as classes.
    assert_eq!(
        v.eval("[...document.querySelectorAll('#viewport .row.line')][2].querySelector('.a-f1').textContent")
            .await,
        json!("red")
    );
    assert_eq!(
        v.eval("[...document.querySelectorAll('#viewport .row.line')][2].querySelector('.a-bold.a-ul').textContent")
            .await,
        json!("underlined")
    );
    assert_eq!(
        v.eval(
            "[...document.querySelectorAll('#viewport .row.line')][2].classList.contains('stderr')"
        )
        .await,
        json!(true)
    );
    // A JSON line made readable, its values as text.
    let json_row = v
        .eval(
            "(() => { const r = [...document.querySelectorAll('#viewport .row.line')][4]; \
               return [r.querySelector('.lvl').textContent, r.querySelector('.jmsg').textContent, \
                 [...r.querySelectorAll('.jf')].map(f => f.textContent)]; })()",
        )
        .await;
    assert_eq!(
        json_row,
        json!([
            "error",
            "<img src=y onerror=alert(2)>",
            ["html=<a href=x>x</a>"]
        ])
    );
    // `j` shows JSON lines raw.
    v.page.click("#log").await;
    v.page.press("j").await;
    v.wait(
        "the raw JSON line",
        "[...document.querySelectorAll('#viewport .row.line .msg')][4].textContent.startsWith('{\"level\"')",
    )
    .await;
    assert!(v.href().await.contains("json=0"));
    assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);

    // The browser enforces the relay's policy: script injected inline does not run.
    let ran = v
        .eval(
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
    let directive = v.wait("the CSP violation event", "window.violated").await;
    assert!(
        directive.as_str().unwrap().starts_with("script-src"),
        "{directive}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pod_regex_is_shown_to_the_user() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    // pod_regex=(a+
    let mut v = Viewer::open(&browser, &view(&relay, "pod_regex=%28a%2B")).await;
    let error = v
        .wait(
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
    let status = v.eval("document.getElementById('status').className").await;
    assert!(status.as_str().unwrap().contains("bad"), "{status}");
    assert_eq!(
        v.eval("document.querySelector('#adv input[name=pod_regex]').value")
            .await,
        json!("(a+"),
        "the form shows what the link asked for"
    );
    assert_eq!(v.text("#chips .chip").await, "pod ~ (a+×");
    let held = v.held().await;
    assert!(
        held.markers()
            .iter()
            .any(|m| m.contains("invalid regular expression")),
        "shown in place too: {held:?}"
    );
    assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_fragment_opens_the_session_and_is_kept_only_in_memory() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    // No anonymous org: a session without a valid token is refused.
    let (relay, signer, _keys) = TestRelay::with_tokens(
        &pki,
        RelayConfig {
            ..RelayConfig::loopback()
        },
    )
    .await;
    let pods = PodsDir::new();
    let mut app = pods.container("ns", "app", "main");
    write(&mut app, ["only for token holders".to_owned()]);
    let _agent = agent(&pki, &relay, &pods).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = signer.token(&json!({
        "sub": "alice", "org": "dev", "exp": exp, "roles": [{ "role": "viewer" }]
    }));

    let mut v = Viewer::open(
        &browser,
        &format!("{}#token={token}", view(&relay, "namespace=ns&pod=app")),
    )
    .await;
    let held = v.wait_held("the line", |h| h.lines().count() >= 1).await;
    assert_eq!(held.texts(), ["only for token holders"]);
    // The picker lists what the token may read.
    v.wait(
        "the pod in the picker",
        "document.querySelector('#picker-tree button.name[data-sel=\"namespace=ns&pod=app\"]')",
    )
    .await;
    let href = v.href().await;
    assert!(
        !href.contains('#') && !href.contains(&token),
        "the token left the address bar: {href}"
    );
    let stored = v
        .eval("localStorage.length + sessionStorage.length + document.cookie.length")
        .await;
    assert_eq!(stored, json!(0), "nothing stored");

    // A bad token: the relay refuses the upgrade, and the page says so. (A new document: a
    // change of fragment alone does not reload the page.)
    let mut bad = Viewer::open(
        &browser,
        &format!("{}#token=not-a-jwt", view(&relay, "namespace=ns&pod=app")),
    )
    .await;
    bad.wait(
        "the refusal in the banner",
        "document.getElementById('banner').textContent.includes('refused the session')",
    )
    .await;
    assert_eq!(bad.held().await.lines().count(), 0);
}

/// A task pod's log stream as an agent announces it.
fn task_stream(project: &str, domain: &str, run: &str, action: &str, pod: &str) -> Labels {
    Labels {
        namespace: format!("{project}-{domain}"),
        pod: pod.into(),
        pod_uid: format!("uid-{pod}"),
        container: "main".into(),
        node: "node-1".into(),
        project: Some(project.into()),
        domain: Some(domain.into()),
        run: Some(run.into()),
        action: Some(action.into()),
        attempt: Some("0".into()),
        ..Labels::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_picker_groups_tasks_by_run_and_lists_only_what_the_token_may_read() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let (relay, signer, _keys) = TestRelay::with_tokens(
        &pki,
        RelayConfig {
            ..RelayConfig::loopback()
        },
    )
    .await;
    let streams = vec![
        task_stream("flytesnacks", "development", "f3a", "n0", "f3a-n0-0"),
        task_stream("flytesnacks", "development", "f3a", "n1", "f3a-n1-0"),
        task_stream("flytesnacks", "development", "f3b", "n0", "f3b-n0-0"),
        task_stream("secret", "production", "s1", "n0", "s1-n0-0"),
    ]
    .into_iter()
    .map(|l| {
        let lines = (0..3).map(|i| format!("{} line {i}\n", l.pod)).collect();
        (l, lines)
    })
    .collect();
    let _agent = FakeAgent::start(&pki, relay.quic_addr(), "dev", "test", streams).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = signer.token(&json!({
        "sub": "bob", "org": "dev", "exp": exp,
        "roles": [{ "role": "admin", "scope": { "domain": "development", "project": "flytesnacks" } }]
    }));

    let mut v = Viewer::open(&browser, &format!("{}#token={token}", view(&relay, ""))).await;
    let runs =
        "[...document.querySelectorAll('#picker-tree .item.d1 .name')].map(b => b.textContent)";
    v.wait(
        "the runs and pods the token may read",
        &format!("{runs}.length === 5"),
    )
    .await;
    assert_eq!(
        v.eval(runs).await,
        json!(["run f3a", "run f3b", "f3a-n0-0", "f3a-n1-0", "f3b-n0-0"]),
        "tasks first, then namespaces; nothing of project secret"
    );
    let tree = v.text("#picker-tree").await;
    assert!(
        tree.contains("flytesnacks / development") && !tree.contains("secret"),
        "{tree}"
    );
    assert_eq!(v.text("#picker-summary").await, "3 streams in 3 pods");

    // A run watches every pod of it.
    v.page
        .click(
            "#picker-tree button.name[data-sel='project=flytesnacks&domain=development&run=f3a']",
        )
        .await;
    let held = v
        .wait_held("both pods of run f3a", |h| h.lines().count() >= 6)
        .await;
    let sources: std::collections::BTreeSet<&str> = held.lines().map(|(_, s, _)| s).collect();
    assert_eq!(
        sources.into_iter().collect::<Vec<_>>(),
        [
            "flytesnacks-development/f3a-n0-0/main",
            "flytesnacks-development/f3a-n1-0/main"
        ]
    );
    assert!(
        v.href()
            .await
            .ends_with("/?project=flytesnacks&domain=development&run=f3a"),
        "{}",
        v.href().await
    );
    // A tick adds a pod to the merged view.
    v.page
        .click("#picker-tree .item:has(button[data-sel='namespace=flytesnacks-development&pod=f3b-n0-0']) input.add")
        .await;
    let held = v
        .wait_held("three pods merged", |h| h.lines().count() >= 9)
        .await;
    assert_eq!(
        held.texts()
            .iter()
            .filter(|t| t.starts_with("f3b-n0-0"))
            .count(),
        3
    );
    assert_eq!(
        v.eval("[...document.querySelectorAll('#chips .chip')].map(c => c.firstChild.textContent)")
            .await,
        json!([
            "flytesnacks/development · run f3a",
            "flytesnacks-development/f3b-n0-0"
        ])
    );
    // Taking the run out leaves only the pod's lines.
    v.page.click("#chips .chip .x").await;
    let held = v
        .wait_held("only f3b-n0-0", |h| h.lines().count() == 3)
        .await;
    assert!(held.texts().iter().all(|t| t.starts_with("f3b-n0-0")));
    assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);
}
