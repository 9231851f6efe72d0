//! The viewer's pure modules (`ui/*.js`: batch decoding, ANSI, the merged buffer, links,
//! formatting, the picker's grouping, reconnect delays, metrics parsing), tested in the browser
//! that runs them: a real headless Chromium imports each module from a real relay and the
//! results are checked here. One browser, one page, no timing.

use logrelay_e2e::*;
use serde_json::{Value, json};

async fn run(page: &mut Page, body: &str) -> Value {
    page.evaluate_async(&format!("(async () => {{ {body} }})()"))
        .await
        .unwrap_or_else(|e| panic!("{body}\nthrew: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_modules_decide_as_documented() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let mut page = browser.page().await;
    page.navigate(&relay.handle.ui_url().expect("viewer on"))
        .await;
    page.wait_for(
        "the page's modules",
        "typeof window.__logrelayViewText === 'function'",
    )
    .await;

    // batch.js: the example batch of docs/protocol.md §4.2, and every malformation refused.
    let ts: i64 = 1_704_164_645_123_456_789;
    let (hi, lo) = (ts >> 32, ts & 0xffff_ffff);
    let batch = run(
        &mut page,
        r#"
        const { decodeBatch } = await import('/ui/batch.js');
        const hex = '4c0101000300000000000000efcdab7856341200feffffff000000000200000026000000' +
          '00000000' + '15ff5c37b768a617' + '00' + '06000000' + '68656c6c6f0a' +
          '15ff5c37b768a617' + '00' + '06000000' + '776f726c640a';
        const bytes = new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
        const b = decodeBatch(bytes.buffer);
        const errors = [];
        for (const mutate of [(x) => x.slice(0, 39), (x) => { x[0] = 0; return x; },
          (x) => { x[1] = 2; return x; }, (x) => { x[2] = 2; return x; },
          (x) => x.slice(0, x.length - 1), (x) => { x[28] = 3; return x; }]) {
          try { decodeBatch(mutate(bytes.slice()).buffer); errors.push('accepted'); }
          catch (e) { errors.push(e.message); }
        }
        return { stream: b.header.stream, epoch: b.header.epoch, first: b.header.firstSeq,
          lines: b.lines.map((l) => [l.seq, l.text, l.flags, l.hi, l.lo, l.size]), errors };
        "#,
    )
    .await;
    assert_eq!(batch["stream"], 3);
    assert_eq!(batch["epoch"], "5124095577148911");
    assert_eq!(batch["first"], 4_294_967_294u64);
    assert_eq!(
        batch["lines"],
        json!([
            [4_294_967_294u64, "hello", 0, hi, lo, 6],
            [4_294_967_295u64, "world", 0, hi, lo, 6]
        ])
    );
    assert_eq!(
        batch["errors"],
        json!([
            "batch of 39 bytes is shorter than its 40-byte header",
            "bad batch magic 0x0",
            "unsupported batch version 2",
            "unknown batch kind 2",
            "batch body is 37 bytes but the header says 38",
            "line record 2 is malformed"
        ])
    );

    // ansi.js: SGR becomes classes (16 colours, 256 and 24-bit mapped to the nearest), every
    // other sequence is dropped, markup stays text.
    let ansi = run(
        &mut page,
        r#"
        const { segments, strip, cut } = await import('/ui/ansi.js');
        return {
          plain: segments('no escapes <b>'),
          sgr: segments('\x1b[1;31mred bold\x1b[0m plain \x1b[38;5;208morange\x1b[39m \x1b[38;2;0;0;255mblue\x1b[0m'),
          strip: strip('\x1b]8;;http://x\x07link\x1b]8;;\x07 \x1b[2Kcleared \x1b[?25lcursor'),
          unterminated: strip('ok \x1b[31'),
          cut: cut([{ text: 'abcdef', cls: 'a-f1' }, { text: 'ghi', cls: '' }], [[4, 7, 'mark']]),
        };
        "#,
    )
    .await;
    assert_eq!(
        ansi["plain"],
        json!([{"text": "no escapes <b>", "cls": ""}])
    );
    assert_eq!(
        ansi["sgr"],
        json!([
            {"text": "red bold", "cls": "a-f1 a-bold"},
            {"text": " plain ", "cls": ""},
            {"text": "orange", "cls": "a-f3"},
            {"text": " ", "cls": ""},
            {"text": "blue", "cls": "a-f4"}
        ])
    );
    assert_eq!(ansi["strip"], "link cleared cursor");
    assert_eq!(ansi["unterminated"], "ok ");
    assert_eq!(
        ansi["cut"],
        json!([
            {"text": "abcd", "cls": "a-f1", "tag": null},
            {"text": "ef", "cls": "a-f1", "tag": "mark"},
            {"text": "g", "cls": "", "tag": "mark"},
            {"text": "hi", "cls": "", "tag": null}
        ])
    );

    // lines.js: two sources merged in time order whatever the arrival order, each (epoch, seq)
    // once, a marker right after its source's newest line, the oldest dropped first and
    // counted, search hits counted and found, a dropped line never coming back.
    let lines = run(
        &mut page,
        r#"
        const L = await import('/ui/lines.js');
        const b = new L.LineBuffer({ maxLines: 8, maxBytes: 1e9 });
        const a = b.source('a');
        const c = b.source('c');
        const line = (seq, ts, text) => ({ seq, ts, hi: 0, lo: ts, flags: 0, size: text.length + 1, text });
        for (const [s, t] of [[1, 10], [2, 20], [3, 30]]) b.addLine(a, 'e1', line(s, t, `a${s}`), false);
        b.flush();
        for (const [s, t] of [[7, 5], [8, 15], [9, 25]]) b.addLine(c, 'e2', line(s, t, `c${s}`), true);
        const dup = b.addLine(a, 'e1', line(2, 20, 'a2'), false);
        const r = b.flush();
        const order1 = b.items.map((e) => e.text);
        b.addMarker(a, 'gap', 'gap after a3', 0);
        b.addLine(a, 'e1', line(4, 40, 'a4 needle'), false);
        b.addLine(c, 'e2', line(10, 35, 'c10 Needle'), false);
        const r2 = b.flush();
        const order2 = b.items.map((e) => e.text);
        b.setSearch(L.matcher('needle'), false);
        const hits = b.hits;
        const next = b.nextHit(-1, 1);
        const wrap = b.nextHit(b.items.length - 1, 1);
        for (const [s, t] of [[5, 50], [6, 60], [7, 70]]) b.addLine(a, 'e1', line(s, t, `a${s}`), false);
        b.flush();
        const back = b.addLine(c, 'e2', line(7, 5, 'c7'), true);
        const held = b.items.map((e) => e.text);
        const evicted = b.evictedLines;
        const hitsAfter = b.hits;
        b.setSearch(L.matcher('NEEDLE', { caseSensitive: true }), false);
        const caseHits = b.hits;
        b.setSearch(L.matcher('c1[0-9]', { regex: true }), true);
        const only = b.list.map((e) => e.text);
        let bad = null;
        try { L.matcher('(', { regex: true }); } catch (e) { bad = e.name; }
        return { dup, r, order1, r2, order2, hits, next, wrap, back, held, evicted, hitsAfter, caseHits, only,
          resume: [a.epoch, a.hwm, c.epoch, c.hwm], bad };
        "#,
    )
    .await;
    assert_eq!(lines["dup"], false, "a duplicate is refused");
    assert_eq!(lines["r"], json!({"added": 3, "at": 0, "evicted": 0}));
    assert_eq!(lines["order1"], json!(["c7", "a1", "c8", "a2", "c9", "a3"]));
    assert_eq!(lines["r2"], json!({"added": 3, "at": 5, "evicted": 1}));
    assert_eq!(
        lines["order2"],
        json!([
            "a1",
            "c8",
            "a2",
            "c9",
            "a3",
            "gap after a3",
            "c10 Needle",
            "a4 needle"
        ])
    );
    assert_eq!(lines["hits"], 2);
    assert_eq!(lines["next"], 6);
    assert_eq!(lines["wrap"], 6, "wraps around");
    assert_eq!(lines["back"], false, "a dropped line does not come back");
    assert_eq!(
        lines["held"],
        json!([
            "c9",
            "a3",
            "gap after a3",
            "c10 Needle",
            "a4 needle",
            "a5",
            "a6",
            "a7"
        ])
    );
    assert_eq!(lines["evicted"], 4);
    assert_eq!(lines["hitsAfter"], 2);
    assert_eq!(lines["caseHits"], 0);
    assert_eq!(lines["only"], json!(["gap after a3", "c10 Needle"]));
    assert_eq!(lines["resume"], json!(["e1", 7, "e2", 10]));
    assert_eq!(lines["bad"], "SyntaxError");

    // url.js: the links of docs/viewer.md, both forms, and back.
    let url = run(
        &mut page,
        r#"
        const U = await import('/ui/url.js');
        const legacy = U.decode('?namespace=web&pod=apache&tail=50&follow=false&contains=err&token=x');
        const multi = U.decode('?sel=' + encodeURIComponent('namespace=web&pod=apache') +
          '&sel=' + encodeURIComponent('pod_regex=train-.*') + '&sel=' + encodeURIComponent('pod_regex=train-.*') +
          '&q=x&case=1&ts=utc&wrap=1&src=0&only=1&matches=(?i)err&max_lines=500&series=scrape:relay|up');
        const round = U.decode(U.encode(multi));
        return { legacy: [legacy.selections, legacy.tail, legacy.follow, legacy.contains],
          multi: [multi.selections, multi.q, multi.caseSensitive, multi.ts, multi.wrap, multi.src, multi.only,
            multi.matches, multi.maxLines, multi.series],
          same: JSON.stringify(round) === JSON.stringify(multi), encoded: U.encode(legacy),
          labels: [U.selectionLabel({ project: 'p', domain: 'd', run: 'r' }), U.selectionLabel({ namespace: 'web', pod: 'a' }),
            U.selectionLabel({ pod_regex: 'train-.*' })],
          empty: U.encode(U.defaults()) };
        "#,
    )
    .await;
    assert_eq!(
        url["legacy"],
        json!([[{"namespace": "web", "pod": "apache"}], 50, false, "err"])
    );
    assert_eq!(
        url["multi"],
        json!([
            [{"namespace": "web", "pod": "apache"}, {"pod_regex": "train-.*"}],
            "x", true, "utc", true, "off", true, "(?i)err", 500, ["scrape:relay|up"]
        ])
    );
    assert_eq!(url["same"], true);
    assert_eq!(
        url["encoded"], "?namespace=web&pod=apache&tail=50&follow=false&contains=err",
        "never a token"
    );
    assert_eq!(
        url["labels"],
        json!(["p/d · run r", "web/a", "pod ~ train-.*"])
    );
    assert_eq!(url["empty"], "");

    // format.js, session.js, charts.js.
    let misc = run(
        &mut page,
        r#"
        const F = await import('/ui/format.js');
        const Se = await import('/ui/session.js');
        const C = await import('/ui/charts.js');
        const j = F.jsonLine('{"level":"warn","msg":"slow <b>","latency_ms":12,"tags":["a"]}');
        const pts = [];
        for (let i = 0; i < 700; i++) C.push(pts, i, i);
        const older = C.push(pts, 5, 1);
        return {
          j: [j.level, j.message, j.fields], notJson: F.jsonLine('{oops'), arr: F.jsonLine('[1]'),
          level: ['ERROR', 'Warning', 'info', 'trace', 'x'].map(F.levelClass),
          delays: [0, 1, 2, 3, 10, 40].map((a) => [Se.retryDelay(a, 0), Se.retryDelay(a, 0.999999)]),
          json: Se.toJson({ since_ns: 1712345678901234567n, seq: 5, s: 'a"b' }),
          sample: C.parseLine('http_requests_total{code="200",path="/a}b"} 1027 1700000000000'),
          type: C.parseLine('# TYPE http_requests_total counter'),
          inf: C.parseLine('x +Inf').value === Infinity, junk: C.parseLine('{x} 1'),
          units: ['a_bytes', 'b_seconds_total', 'pod_cpu_usage_cores', 'x'].map(C.unitOf),
          kept: pts.length, first: pts[0][0], older,
          bytes: [F.formatBytes(0), F.formatBytes(1536), F.formatBytes(268435456)],
          rfc: F.rfc3339(396781751, 928841493),
        };
        "#,
    )
    .await;
    assert_eq!(
        misc["j"],
        json!([
            "warn",
            "slow <b>",
            [["latency_ms", "12"], ["tags", "[\"a\"]"]]
        ])
    );
    assert_eq!(misc["notJson"], Value::Null);
    assert_eq!(misc["arr"], Value::Null);
    assert_eq!(
        misc["level"],
        json!(["error", "warn", "info", "debug", "other"])
    );
    assert_eq!(
        misc["delays"],
        json!([
            [250, 500],
            [500, 1000],
            [1000, 2000],
            [2000, 4000],
            [7500, 15000],
            [7500, 15000]
        ])
    );
    assert_eq!(
        misc["json"],
        r#"{"since_ns":1712345678901234567,"seq":5,"s":"a\"b"}"#
    );
    assert_eq!(
        misc["sample"],
        json!({"series": "http_requests_total{code=\"200\",path=\"/a}b\"}", "name": "http_requests_total", "value": 1027})
    );
    assert_eq!(
        misc["type"],
        json!({"type": ["http_requests_total", "counter"]})
    );
    assert_eq!(misc["inf"], true);
    assert_eq!(misc["junk"], Value::Null);
    assert_eq!(misc["units"], json!(["bytes", "seconds", "cores", ""]));
    assert_eq!(misc["kept"], 600, "bounded");
    assert_eq!(misc["first"], 100, "the oldest points go");
    assert_eq!(misc["older"], false, "time only moves on");
    assert_eq!(misc["bytes"], json!(["0 B", "1.5 KiB", "256 MiB"]));
    assert_eq!(misc["rfc"], "2024-01-02T03:04:05.123456789Z");

    // picker.js: what runs, grouped by namespace and by task, searched and kept current.
    let picker = run(
        &mut page,
        r#"
        const P = await import('/ui/picker.js');
        const e = (ns, pod, c, extra = {}) => ({ labels: { namespace: ns, pod, container: c, restart: 0, ...extra }, live: true });
        const entries = [e('web', 'b', 'main'), e('web', 'a', 'side'), e('web', 'a', 'main'),
          e('db', 'x', 'main', { project: 'p', domain: 'd', run: 'r1', action: 'n0', attempt: '1' }),
          e('db', 'y', 'main', { project: 'p', domain: 'd', run: 'r1', action: 'n1' })];
        const ns = P.byNamespace(entries).map((n) => [n.ns, n.pods.map((p) => [p.pod, p.containers.map((c) => c.labels.container)])]);
        const tasks = P.byTask(entries).map((t) => [t.project, t.domain, [...t.runs.values()].map((r) => [r.run, r.actions.size])]);
        const cat = new P.Catalog();
        cat.replace(entries.map((x, i) => ({ stream: i, ...x })));
        cat.apply({ removed: [{ stream: 0, reason: 'container_removed' }],
          added: [{ stream: 9, labels: { namespace: 'new', pod: 'p', container: 'c' }, live: false }] });
        return { ns, tasks, size: cat.streams.size, run: cat.matching('R1').length, path: cat.matching('web/a/').length,
          away: cat.streams.get(9).live };
        "#,
    )
    .await;
    assert_eq!(
        picker["ns"],
        json!([
            ["db", [["x", ["main"]], ["y", ["main"]]]],
            ["web", [["a", ["main", "side"]], ["b", ["main"]]]]
        ])
    );
    assert_eq!(picker["tasks"], json!([["p", "d", [["r1", 2]]]]));
    assert_eq!(picker["size"], 5);
    assert_eq!(picker["run"], 2);
    assert_eq!(picker["path"], 2);
    assert_eq!(picker["away"], false);
    assert!(page.problems.is_empty(), "{:?}", page.problems);
}
