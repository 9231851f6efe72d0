//! The browser live viewer: the static files of `ui/`, compiled into the binary and served
//! from the session listener, so the page and `/v1/subscribe` share one origin.
//!
//! | Path | File |
//! | --- | --- |
//! | `GET /` | `ui/index.html` |
//! | `GET /ui/<name>` | every file of [`ASSETS`]: the page's ES modules (`app.js`, `batch.js`, …), `style.css`, and the vendored uPlot (`vendor/uPlot.iife.min.js`, `vendor/uPlot.min.css`) |
//!
//! The relay reads no file for this (the files are `include_str!`ed) and writes none; uPlot is
//! vendored from npm by `scripts/ui-vendor`, so building the relay never needs npm. Every
//! response carries a strict Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]: only this
//! origin's script, style and WebSocket, no inline code, no framing), `nosniff`, no referrer, and
//! an `ETag` with `Cache-Control: no-cache`, so a browser revalidates and a new relay build is
//! picked up at once. Responses close their connection (`Connection: close`): a page load holds
//! a slot of the accept loop's handshake cap only while a request is read and answered.
//! With `--ui false` none of these routes exist (404).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// `ui/index.html`.
pub const INDEX_HTML: &str = include_str!("../../ui/index.html");
/// `ui/app.js`, the page's entry module.
pub const APP_JS: &str = include_str!("../../ui/app.js");
/// `ui/style.css`.
pub const STYLE_CSS: &str = include_str!("../../ui/style.css");

/// The policy of every UI response: this origin's script, style and WebSocket only; no inline
/// script or style, no plugins, no framing, no form submission, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its path under `/ui/`.
    pub name: &'static str,
    /// Its content.
    pub body: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    etag: &'static str,
}

/// A strong validator computed when the relay is compiled: FNV-1a of the content, quoted.
const fn etag(body: &str) -> [u8; 18] {
    let bytes = body.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    let mut out = [b'"'; 18];
    let hex = b"0123456789abcdef";
    let mut j = 0;
    while j < 16 {
        out[1 + j] = hex[((h >> (60 - 4 * j)) & 0xf) as usize];
        j += 1;
    }
    out
}

macro_rules! asset {
    ($name:expr, $body:expr, $content_type:expr) => {{
        const TAG: [u8; 18] = etag($body);
        Asset {
            name: $name,
            body: $body,
            content_type: $content_type,
            etag: match std::str::from_utf8(&TAG) {
                Ok(s) => s,
                Err(_) => panic!("hex digits are UTF-8"),
            },
        }
    }};
}

macro_rules! module {
    ($name:literal) => {
        asset!($name, include_str!(concat!("../../ui/", $name)), JS)
    };
}

const INDEX: Asset = asset!("", INDEX_HTML, "text/html; charset=utf-8");

/// Every file served under `/ui/`.
pub const ASSETS: [Asset; 13] = [
    asset!("app.js", APP_JS, JS),
    module!("ansi.js"),
    module!("batch.js"),
    module!("charts.js"),
    module!("format.js"),
    module!("lines.js"),
    module!("picker.js"),
    module!("session.js"),
    module!("url.js"),
    module!("view.js"),
    asset!("style.css", STYLE_CSS, CSS),
    asset!(
        "vendor/uPlot.iife.min.js",
        include_str!("../../ui/vendor/uPlot.iife.min.js"),
        JS
    ),
    asset!(
        "vendor/uPlot.min.css",
        include_str!("../../ui/vendor/uPlot.min.css"),
        CSS
    ),
];

/// The viewer's routes, to merge into the session router.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(INDEX, &h) }))
        .route(
            "/ui/{*name}",
            get(|Path(name): Path<String>, h: HeaderMap| async move {
                match ASSETS.iter().find(|a| a.name == name) {
                    Some(a) => serve(*a, &h),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
}

fn serve(asset: Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == asset.etag || t.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::ETAG, asset.etag),
        (header::CONNECTION, "close"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if fresh {
        headers.remove(header::CONTENT_TYPE);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own modules (not the vendored library).
    fn own_js() -> impl Iterator<Item = &'static Asset> {
        ASSETS
            .iter()
            .filter(|a| a.content_type == JS && !a.name.starts_with("vendor/"))
    }

    #[test]
    fn etags_are_quoted_hex_and_differ_per_file() {
        let mut seen = std::collections::HashSet::new();
        for a in ASSETS.iter().chain([&INDEX]) {
            assert_eq!(a.etag.len(), 18);
            assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
            assert!(a.etag[1..17].bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(a.etag), "{} shares its etag", a.name);
        }
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for a in own_js() {
            for line in a.body.lines() {
                let Some(from) = line.split(" from '").nth(1) else {
                    continue;
                };
                let target = from.split('\'').next().unwrap_or_default();
                let target = target.strip_prefix("./").unwrap_or(target);
                assert!(
                    names.contains(&target),
                    "{} imports {target}, which is not served",
                    a.name
                );
            }
        }
        // And every served module is imported by some other one (no dead files).
        for a in own_js().filter(|a| a.name != "app.js") {
            let imported = own_js().any(|b| b.body.contains(&format!("from './{}'", a.name)));
            assert!(imported, "{} is served but imported by no module", a.name);
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/ui/app.js"></script>"#));
        assert!(
            INDEX_HTML.contains(r#"<script src="/ui/vendor/uPlot.iife.min.js" defer></script>"#)
        );
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/ui/style.css">"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/ui/vendor/uPlot.min.css">"#));
        // Nothing the CSP would block: no inline script, style or handler, nothing external.
        for forbidden in [
            "<style",
            "style=",
            "javascript:",
            "http://",
            "https://",
            "<script>",
        ] {
            assert!(
                !INDEX_HTML.contains(forbidden),
                "index.html contains `{forbidden}`"
            );
        }
        let handler = INDEX_HTML.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "index.html has an inline event handler");
        // Data reaches the page as text, never as markup; nothing is stored; nothing is
        // fetched from elsewhere. (The vendored uPlot too: it builds its DOM with textContent.)
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            for forbidden in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "localStorage",
                "sessionStorage",
                "document.cookie",
                "indexedDB",
            ] {
                assert!(!a.body.contains(forbidden), "{} uses `{forbidden}`", a.name);
            }
        }
        for a in own_js() {
            for forbidden in ["http://", "https://", "setAttribute('style'", "cssText"] {
                assert!(!a.body.contains(forbidden), "{} uses `{forbidden}`", a.name);
            }
        }
    }

    /// The vendored uPlot is the version `ui/package-lock.json` pins, byte for byte what
    /// `scripts/ui-vendor` took from that npm tarball (whose sha512 `npm ci` checked against the
    /// lockfile): the checksums it recorded hold for the embedded files.
    #[test]
    fn the_vendored_chart_library_is_the_locked_version() {
        let lock: serde_json::Value =
            serde_json::from_str(include_str!("../../ui/package-lock.json")).expect("lockfile");
        let locked = lock["packages"]["node_modules/uplot"]["version"]
            .as_str()
            .expect("uplot in the lockfile");
        assert!(
            lock["packages"]["node_modules/uplot"]["integrity"]
                .as_str()
                .is_some_and(|i| i.starts_with("sha512-")),
            "the lockfile pins the tarball's integrity"
        );
        let package: serde_json::Value =
            serde_json::from_str(include_str!("../../ui/package.json")).expect("package.json");
        assert_eq!(package["dependencies"]["uplot"], locked, "exact pin");
        let js = ASSETS
            .iter()
            .find(|a| a.name == "vendor/uPlot.iife.min.js")
            .expect("vendored");
        assert!(
            js.body
                .lines()
                .next()
                .is_some_and(|l| l.contains(&format!("(v{locked})"))),
            "the vendored file names version {locked}"
        );
        let sums = include_str!("../../ui/vendor/SHA256SUMS");
        let mut checked = 0;
        for line in sums.lines() {
            let (sum, name) = line.split_once("  ").expect("sha256sum format");
            let asset = ASSETS
                .iter()
                .find(|a| a.name == format!("vendor/{name}"))
                .unwrap_or_else(|| panic!("{name} is embedded"));
            let digest = ring::digest::digest(&ring::digest::SHA256, asset.body.as_bytes());
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                hex, sum,
                "{name} differs from what scripts/ui-vendor recorded"
            );
            checked += 1;
        }
        assert_eq!(checked, 2);
    }
    /// The keys of the object literal `const <name> = { … };` in `module`.
    fn js_table(module: &str, name: &str) -> Vec<String> {
        let body = ASSETS
            .iter()
            .find(|a| a.name == module)
            .map(|a| a.body)
            .unwrap_or_else(|| panic!("{module} is served"));
        let start = body
            .find(&format!("const {name} = {{"))
            .unwrap_or_else(|| panic!("{module} defines {name}"));
        let rest = &body[start..];
        let table = &rest[rest.find('{').unwrap() + 1..rest.find("};").unwrap()];
        table
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, _)| k.trim().to_owned())
            .collect()
    }

    fn sorted(words: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut w: Vec<String> = words.into_iter().collect();
        w.sort();
        w
    }

    #[test]
    fn the_viewer_names_exactly_the_words_of_the_protocol() {
        use logrelay_wire::code::{CloseCode, Retry};
        use logrelay_wire::reason::{EndReason, GapReason, PauseReason};
        assert_eq!(
            sorted(js_table("format.js", "GAP_REASONS")),
            sorted(GapReason::ALL.iter().map(|w| w.as_str().to_owned()))
        );
        assert_eq!(
            sorted(js_table("format.js", "PAUSE_REASONS")),
            sorted(PauseReason::ALL.iter().map(|w| w.as_str().to_owned()))
        );
        assert_eq!(
            sorted(js_table("format.js", "END_REASONS")),
            sorted(EndReason::ALL.iter().map(|w| w.as_str().to_owned()))
        );
        // Close codes: every one the relay uses, plus the standard ones a browser reports
        // itself (1000, 1006, …, all below the application range 4000–4999).
        let codes: Vec<u16> = js_table("format.js", "CLOSE_CODES")
            .iter()
            .map(|k| k.parse().expect("a close code"))
            .collect();
        for c in CloseCode::ALL {
            assert!(codes.contains(&c.code()), "CLOSE_CODES lacks {c}");
        }
        for n in codes.iter().filter(|n| **n >= 4000) {
            assert!(
                CloseCode::ALL.iter().any(|c| c.code() == *n),
                "CLOSE_CODES names {n}, which the relay does not use"
            );
        }
        // The viewer stops after the codes a reconnect cannot help with.
        let session = ASSETS.iter().find(|a| a.name == "session.js").unwrap().body;
        let line = session
            .lines()
            .find(|l| l.starts_with("const FINAL_CODES = new Set(["))
            .expect("session.js defines FINAL_CODES");
        let inner = &line[line.find('[').unwrap() + 1..line.find(']').unwrap()];
        let mut finals: Vec<u16> = inner
            .split(',')
            .map(|n| n.trim().parse().expect("a close code"))
            .collect();
        finals.sort_unstable();
        let mut expected: Vec<u16> = CloseCode::ALL
            .iter()
            .filter(|c| matches!(c.retry(), Retry::Never | Retry::NewCredentials))
            .map(|c| c.code())
            .collect();
        expected.sort_unstable();
        assert_eq!(finals, expected);
    }
}
