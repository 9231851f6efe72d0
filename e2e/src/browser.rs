//! A real headless Chromium (Debian package `chromium`), driven over the Chrome DevTools
//! Protocol: one WebSocket to the browser, one attached page, `Runtime.evaluate` polled until a
//! condition holds. Nothing here sleeps to synchronise.
//!
//! ```ignore
//! let browser = Chromium::launch().await;
//! let mut page = browser.page().await;
//! page.navigate(&url).await;
//! page.wait_for("the first line", "document.querySelector('.line')").await;
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_tungstenite::tungstenite::Message;

use crate::within;

/// Deadline of a page condition: longer than [`crate::DEADLINE`], because a browser shares the
/// two cores of a test machine with the relay, the agent and the other tests.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// One browser at a time per test binary: each is several processes, and the machine has two
/// cores. Tests queue here before they start anything timed.
static BROWSER_SLOT: Semaphore = Semaphore::const_new(1);

/// The Chromium binary of the Debian package.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium with a fresh profile, killed (with every process of its group) on drop.
#[derive(Debug)]
pub struct Chromium {
    child: Child,
    /// `ws://127.0.0.1:<port>/devtools/browser/<id>`.
    pub devtools_url: String,
    stderr: Arc<Mutex<VecDeque<String>>>,
    _profile: tempfile::TempDir,
    _slot: SemaphorePermit<'static>,
}

impl Chromium {
    /// Starts Chromium and waits for its DevTools endpoint.
    pub async fn launch() -> Self {
        // A queue, not a synchronisation: the tests ahead each hold the slot for a few seconds.
        let slot = tokio::time::timeout(Duration::from_secs(600), BROWSER_SLOT.acquire())
            .await
            .expect("a browser slot within 10 minutes")
            .expect("the slot semaphore is never closed");
        let profile = tempfile::Builder::new()
            .prefix("logrelay-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMIUM)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    // The viewer's three columns, as on a laptop screen.
                    "--window-size=1400,900",
                    "--hide-scrollbars",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                // Its own process group, so that drop ends the renderers and helpers too.
                .process_group(0)
                .spawn()
                .expect(
                    "chromium must be installed (apt-get install chromium; scripts/test does it)",
                )
        };
        // Drain stderr for the browser's whole life (a full pipe would stall it), keeping the
        // last lines for failure messages, and pass on the DevTools URL.
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (url_tx, url_rx) = tokio::sync::oneshot::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut url_tx = Some(url_tx);
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = url_tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
                let mut kept = kept.lock().expect("stderr lock");
                if kept.len() == 50 {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        let mut browser = Self {
            child,
            devtools_url: String::new(),
            stderr,
            _profile: profile,
            _slot: slot,
        };
        let url = tokio::time::timeout(PAGE_DEADLINE, url_rx).await;
        match url {
            Ok(Ok(url)) => browser.devtools_url = url,
            _ => panic!(
                "chromium printed no DevTools URL within {PAGE_DEADLINE:?}; stderr:\n{}",
                browser.stderr_tail()
            ),
        }
        browser
    }

    /// The last lines Chromium wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().expect("stderr lock");
        kept.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Opens a new blank page and attaches to it.
    pub async fn page(&self) -> Page {
        let (ws, _) = within(
            "DevTools connection",
            tokio_tungstenite::connect_async(self.devtools_url.as_str()),
        )
        .await
        .expect("connect to DevTools");
        let mut page = Page {
            ws,
            session: None,
            next_id: 1,
            problems: Vec::new(),
        };
        let target = page
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        page.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        );
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The whole process group: browser, zygotes, renderers, utilities.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type DevToolsSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page of the browser, driven over DevTools.
pub struct Page {
    ws: DevToolsSocket,
    session: Option<String>,
    next_id: u64,
    /// What the page reported as errors so far: uncaught exceptions, console errors, and
    /// browser messages such as Content-Security-Policy violations or failed requests.
    pub problems: Vec<String>,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("session", &self.session)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

impl Page {
    /// Calls a DevTools method (on this page once attached) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            msg["sessionId"] = json!(session);
        }
        let what = format!("DevTools {method}");
        within(&what, async {
            self.ws
                .send(Message::text(msg.to_string()))
                .await
                .expect("send to DevTools");
            loop {
                let msg = self
                    .ws
                    .next()
                    .await
                    .expect("DevTools connection open")
                    .expect("DevTools message");
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
                if v["id"].as_u64() == Some(id) {
                    if let Some(e) = v.get("error") {
                        panic!("{method} failed: {e}");
                    }
                    return v["result"].clone();
                }
                self.note_event(&v);
            }
        })
        .await
    }

    fn note_event(&mut self, v: &Value) {
        let params = &v["params"];
        let problem = match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &params["exceptionDetails"];
                Some(format!(
                    "exception: {}",
                    d["exception"]["description"]
                        .as_str()
                        .or_else(|| d["text"].as_str())
                        .unwrap_or("?")
                ))
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => Some(format!(
                "console.error: {}",
                params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a["value"].to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => Some(format!(
                "{}: {}",
                params["entry"]["source"].as_str().unwrap_or("log"),
                params["entry"]["text"].as_str().unwrap_or("?")
            )),
            _ => None,
        };
        self.problems.extend(problem);
    }

    /// Navigates to `url`.
    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(e) = r.get("errorText") {
            panic!("navigating to {url} failed: {e}");
        }
    }

    /// Evaluates `expression` in the page: its value (JSON), or the exception's text.
    pub async fn evaluate(&mut self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(d) = r.get("exceptionDetails") {
            return Err(d["exception"]["description"]
                .as_str()
                .or_else(|| d["text"].as_str())
                .unwrap_or("exception")
                .to_owned());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expression`, waiting for the promise it gives (an `import()`, an async
    /// function): its value (JSON), or the exception's text.
    pub async fn evaluate_async(&mut self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(d) = r.get("exceptionDetails") {
            return Err(d["exception"]["description"]
                .as_str()
                .or_else(|| d["text"].as_str())
                .unwrap_or("exception")
                .to_owned());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Presses a key as a keyboard does (`"/"`, `"n"`, `" "`, `"Enter"`, `"Escape"`), on the
    /// focused element.
    pub async fn press(&mut self, key: &str) {
        let (code, text) = match key {
            "Enter" => (13, Some("\r")),
            "Escape" => (27, None),
            "End" => (35, None),
            " " => (32, Some(" ")),
            k if k.chars().count() == 1 => {
                let c = k.chars().next().expect("one char");
                (c.to_ascii_uppercase() as u32, Some(k))
            }
            k => panic!("no key code for {k}"),
        };
        let mut down = json!({ "type": "keyDown", "key": key, "windowsVirtualKeyCode": code });
        if let Some(t) = text {
            down["text"] = json!(t);
        }
        self.call("Input.dispatchKeyEvent", down).await;
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "windowsVirtualKeyCode": code }),
        )
        .await;
    }

    /// Types `text` into the focused element, as an input method does.
    pub async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Clicks the centre of the first element matching `selector` with the mouse.
    pub async fn click(&mut self, selector: &str) {
        let at = self
            .wait_for(
                &format!("{selector} on screen"),
                &format!(
                    "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                       e.scrollIntoView({{block: 'nearest'}}); const r = e.getBoundingClientRect(); \
                       return r.width > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()",
                    sel = json!(selector)
                ),
            )
            .await;
        let (x, y) = (at[0].clone(), at[1].clone());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Lets the page download files into `dir` (headless Chromium refuses downloads otherwise).
    pub async fn allow_downloads(&mut self, dir: &std::path::Path) {
        let session = self.session.take();
        self.call(
            "Browser.setDownloadBehavior",
            json!({ "behavior": "allow", "downloadPath": dir.to_string_lossy() }),
        )
        .await;
        self.session = session;
    }

    /// Runs `source` in every document this page loads from now on, before the page's own
    /// scripts (DevTools' own injection: no page policy applies to it).
    pub async fn before_each_document(&mut self, source: &str) {
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": source }),
        )
        .await;
    }

    /// Emulates the system's colour scheme (`"light"` or `"dark"`).
    pub async fn color_scheme(&mut self, scheme: &str) {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )
        .await;
    }

    /// A PNG of the page as it is on screen.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }

    /// Bytes of the page's JavaScript heap in use, after a full garbage collection.
    pub async fn heap_used_after_gc(&mut self) -> u64 {
        self.call("HeapProfiler.collectGarbage", json!({})).await;
        let r = self.call("Runtime.getHeapUsage", json!({})).await;
        r["usedSize"].as_f64().expect("usedSize") as u64
    }

    /// Evaluates `expression` until it gives a truthy value (not `null`, `false`, `0`, `""` or
    /// `undefined`), and returns it; panics after [`PAGE_DEADLINE`] with what the page shows.
    pub async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let waited = tokio::time::timeout(PAGE_DEADLINE, async {
            let mut backoff = Duration::from_millis(10);
            loop {
                if let Ok(v) = self.evaluate(expression).await {
                    let truthy = match &v {
                        Value::Null => false,
                        Value::Bool(b) => *b,
                        Value::Number(n) => n.as_f64() != Some(0.0),
                        Value::String(s) => !s.is_empty(),
                        Value::Array(_) | Value::Object(_) => true,
                    };
                    if truthy {
                        return v;
                    }
                }
                // Polling, not synchronising: there is no event to wait on inside the page.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        })
        .await;
        match waited {
            Ok(v) => v,
            Err(_) => {
                let shown = self
                    .evaluate("document.body ? document.body.innerText.slice(0, 4000) : ''")
                    .await
                    .unwrap_or_else(Value::String);
                panic!(
                    "timed out after {PAGE_DEADLINE:?} waiting for {what} ({expression}); \
                     page problems: {:?}; the page shows:\n{}",
                    self.problems,
                    shown.as_str().unwrap_or_default()
                );
            }
        }
    }
}

/// Standard base64 (DevTools sends screenshots so).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_what_devtools_sends() {
        assert_eq!(super::base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(super::base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
    }
}
