//! Screenshots of the live viewer for docs/viewer.md, light and dark, taken in a real headless
//! Chromium over the demo's own workload (its four pods, their cgroups, the relay's metrics).
//! Regenerate them with:
//!
//! ```sh
//! cargo test -p logrelay-e2e --test ui_screenshots -- --ignored
//! ```
//!
//! They are written to `docs/` (`LOGRELAY_SCREENSHOTS_DIR` to put them elsewhere).

use std::path::PathBuf;

use logrelay::demo::Workload;
use logrelay_e2e::viewer::{Viewer, demo_agent};
use logrelay_e2e::*;

fn out_dir() -> PathBuf {
    std::env::var_os("LOGRELAY_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/viewer-*.png; run by name"]
async fn screenshots_of_the_main_views() {
    let browser = Chromium::launch().await;
    let pki = TestPki::new();
    let relay = TestRelay::start(&pki).await;
    let work = tempfile::tempdir().unwrap();
    let mut workload = Workload::create(work.path()).unwrap();
    for _ in 0..30 {
        workload.tick(2, 0.1).unwrap();
    }
    let _agent = demo_agent(&pki, &relay, &workload, 1000).await;
    let running = tokio::spawn(workload.run(20));
    let base = relay.handle.ui_url().unwrap();
    let views = [
        (
            "viewer-merged",
            format!(
                "{base}?sel=namespace%3Dweb%26pod%3Dapache&sel=namespace%3Dshop%26pod%3Dcheckout&q=error"
            ),
        ),
        (
            "viewer-json",
            format!("{base}?namespace=shop&pod=checkout&container=api&wrap=1"),
        ),
    ];
    let dir = out_dir();
    for (name, url) in views {
        for scheme in ["light", "dark"] {
            let mut v = Viewer::open(&browser, "about:blank").await;
            v.page.color_scheme(scheme).await;
            v.page.navigate(&url).await;
            v.wait_held("lines", |h| h.lines().count() >= 60).await;
            v.wait(
                "charts with points",
                "Number(document.querySelector('#chart-mem').dataset.points || 0) >= 24",
            )
            .await;
            if name == "viewer-merged" {
                v.page.click("#log").await;
                v.page.press("N").await;
                v.wait(
                    "a current hit",
                    "document.querySelector('#viewport .row.current')",
                )
                .await;
            }
            v.eval("document.activeElement.blur()").await;
            // Let the last frame paint (the charts redraw every half second).
            v.page
                .evaluate_async(
                    "new Promise((r) => setTimeout(() => requestAnimationFrame(() => r(1)), 600))",
                )
                .await
                .unwrap();
            let png = v.page.screenshot().await;
            let path = dir.join(format!("{name}-{scheme}.png"));
            std::fs::write(&path, png).unwrap();
            println!("wrote {}", path.display());
            assert!(v.page.problems.is_empty(), "{:?}", v.page.problems);
        }
    }
    running.abort();
}
