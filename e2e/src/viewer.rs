//! The live viewer as its browser tests drive it: one page of a relay's viewer, what the view
//! holds (the text its Copy and Download buttons produce, every line of the merged view in
//! order, not only the rows on screen) and what it shows (the rows in the DOM).
//!
//! ```ignore
//! let mut v = Viewer::open(&browser, &format!("{}?namespace=ns&pod=app", ui)).await;
//! let held = v.wait_held("3 lines", |h| h.lines().count() >= 3).await;
//! ```

use logrelay::demo::Workload;
use serde_json::Value;

use crate::browser::{Chromium, Page};
use crate::{PodsDir, TestAgent, TestPki, TestRelay};

/// An agent of org `dev` on the demo `workload`'s pods, cgroups and containers, as the viewer's
/// tests watch it: resources every 500 ms, and the relay's own `/metrics` scraped (as a
/// `name=relay` target) every `scrape_interval_ms`.
pub async fn demo_agent(
    pki: &TestPki,
    relay: &TestRelay,
    workload: &Workload,
    scrape_interval_ms: u64,
) -> TestAgent {
    let pods_dir = workload.pods_dir();
    let relay_metrics = format!("http://{}/metrics,name=relay", relay.handle.admin_addr);
    TestAgent::start_with(pki, &PodsDir::new(), relay.quic_addr(), |c| {
        c.pods_dir = pods_dir;
        c.cgroup_root = workload.cgroup_root();
        c.containers_dir = workload.containers_dir();
        c.resources_interval_ms = 500;
        c.metrics_rescan_ms = 50;
        c.scrape_targets = vec![relay_metrics.parse().expect("a scrape target")];
        c.scrape_interval_ms = scrape_interval_ms;
    })
    .await
}

/// One entry of the view: a log line or a marker (gap, end, pause, connection, error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A log line.
    Line {
        /// RFC 3339 UTC with nanoseconds.
        time: String,
        /// `namespace/pod/container`.
        source: String,
        /// On stderr.
        stderr: bool,
        /// The message as shown: terminator and escape sequences left out.
        text: String,
    },
    /// A marker, in its plain-language text.
    Marker(String),
}

/// What the view holds, in order.
#[derive(Debug, Clone, Default)]
pub struct HeldView(pub Vec<Held>);

impl HeldView {
    /// Parses the viewer's copy text (`<time> <source> <stdout|stderr> <text>`, `# <marker>`).
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .map(|l| match l.strip_prefix("# ") {
                    Some(m) => Held::Marker(m.to_owned()),
                    None => {
                        let mut parts = l.splitn(4, ' ');
                        let time = parts.next().unwrap_or_default().to_owned();
                        let source = parts.next().unwrap_or_default().to_owned();
                        let stderr = parts.next() == Some("stderr");
                        let text = parts.next().unwrap_or_default().to_owned();
                        Held::Line {
                            time,
                            source,
                            stderr,
                            text,
                        }
                    }
                })
                .collect(),
        )
    }

    /// The log lines' messages, in order.
    pub fn texts(&self) -> Vec<String> {
        self.lines().map(|(_, _, t)| t.to_owned()).collect()
    }

    /// The log lines: (time, source, text).
    pub fn lines(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.0.iter().filter_map(|h| match h {
            Held::Line {
                time, source, text, ..
            } => Some((time.as_str(), source.as_str(), text.as_str())),
            Held::Marker(_) => None,
        })
    }

    /// The markers' texts.
    pub fn markers(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|h| match h {
                Held::Marker(m) => Some(m.as_str()),
                Held::Line { .. } => None,
            })
            .collect()
    }
}

/// A page of the viewer.
#[derive(Debug)]
pub struct Viewer {
    /// The page.
    pub page: Page,
}

impl Viewer {
    /// Opens `url` in a new page of `browser`.
    pub async fn open(browser: &Chromium, url: &str) -> Self {
        let mut page = browser.page().await;
        page.navigate(url).await;
        Self { page }
    }

    /// What the view holds now.
    pub async fn held(&mut self) -> HeldView {
        let v = self
            .page
            .evaluate("window.__logrelayViewText ? window.__logrelayViewText() : ''")
            .await
            .unwrap_or_else(|e| panic!("the view's text: {e}"));
        HeldView::parse(v.as_str().unwrap_or_default())
    }

    /// Waits until what the view holds satisfies `done`; returns it. Panics after the page
    /// deadline with what it held.
    pub async fn wait_held(&mut self, what: &str, done: impl Fn(&HeldView) -> bool) -> HeldView {
        self.wait_held_within(crate::browser::PAGE_DEADLINE, what, done)
            .await
    }

    /// [`Self::wait_held`] with a deadline of its own (for what waits on a timeout elsewhere).
    pub async fn wait_held_within(
        &mut self,
        within: std::time::Duration,
        what: &str,
        done: impl Fn(&HeldView) -> bool,
    ) -> HeldView {
        let deadline = tokio::time::Instant::now() + within;
        let mut backoff = std::time::Duration::from_millis(20);
        loop {
            let held = self.held().await;
            if done(&held) {
                return held;
            }
            if tokio::time::Instant::now() > deadline {
                let tail: Vec<_> = held.0.iter().rev().take(30).rev().collect();
                let status = self.text("#status").await;
                let banner = self.text("#banner").await;
                panic!(
                    "timed out waiting for {what}; the view holds {} entries, the last: {tail:#?}; \
                     banner: {banner}; status: {status}; page problems: {:?}",
                    held.0.len(),
                    self.page.problems
                );
            }
            // Polling, not synchronising: the page has no event to wait on from here.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_millis(200));
        }
    }

    /// `textContent` of the first element matching `selector` ('' when none).
    pub async fn text(&mut self, selector: &str) -> String {
        let v = self
            .eval(&format!(
                "document.querySelector({})?.textContent ?? ''",
                Value::String(selector.into())
            ))
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Evaluates `expression` in the page; panics on an exception.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.page
            .evaluate(expression)
            .await
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// Waits for `expression` to be truthy.
    pub async fn wait(&mut self, what: &str, expression: &str) -> Value {
        self.page.wait_for(what, expression).await
    }

    /// The rows on screen: `[classes, textContent]` of each.
    pub async fn rows(&mut self) -> Vec<(String, String)> {
        let v = self
            .eval("[...document.querySelectorAll('#viewport .row')].map(r => [r.className, r.textContent])")
            .await;
        serde_json::from_value(v).expect("rows")
    }

    /// The messages of the rows on screen (log lines only).
    pub async fn shown_messages(&mut self) -> Vec<String> {
        let v = self
            .eval("[...document.querySelectorAll('#viewport .row.line .msg')].map(m => m.textContent)")
            .await;
        serde_json::from_value(v).expect("messages")
    }

    /// The page's address.
    pub async fn href(&mut self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}
