//! The browser live viewer: the three static files of `ui/`, compiled into the binary and served
//! from the session listener, so the page and `/v1/subscribe` share one origin.
//!
//! | Path | File |
//! | --- | --- |
//! | `GET /` | `ui/index.html` |
//! | `GET /ui/app.js` | `ui/app.js` |
//! | `GET /ui/style.css` | `ui/style.css` |
//!
//! The relay reads no file for this (the files are `include_str!`ed) and writes none. Every
//! response carries a strict Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]: only this
//! origin's script, style and WebSocket, no inline code, no framing), `nosniff`, no referrer, and
//! an `ETag` with `Cache-Control: no-cache`, so a browser revalidates and a new relay build is
//! picked up at once. Responses close their connection (`Connection: close`): a page load holds
//! a slot of the accept loop's handshake cap only while a request is read and answered.
//! With `--ui false` none of these routes exist (404).

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// `ui/index.html`.
pub const INDEX_HTML: &str = include_str!("../../ui/index.html");
/// `ui/app.js`.
pub const APP_JS: &str = include_str!("../../ui/app.js");
/// `ui/style.css`.
pub const STYLE_CSS: &str = include_str!("../../ui/style.css");

/// The policy of every UI response: this origin's script, style and WebSocket only; no inline
/// script or style, no plugins, no framing, no form submission, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug, Clone, Copy)]
struct Asset {
    body: &'static str,
    content_type: &'static str,
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
    ($body:expr, $content_type:expr) => {{
        const TAG: [u8; 18] = etag($body);
        Asset {
            body: $body,
            content_type: $content_type,
            etag: match std::str::from_utf8(&TAG) {
                Ok(s) => s,
                Err(_) => panic!("hex digits are UTF-8"),
            },
        }
    }};
}

const INDEX: Asset = asset!(INDEX_HTML, "text/html; charset=utf-8");
const APP: Asset = asset!(APP_JS, "text/javascript; charset=utf-8");
const STYLE: Asset = asset!(STYLE_CSS, "text/css; charset=utf-8");

/// The viewer's routes, to merge into the session router.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(INDEX, &h) }))
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { serve(APP, &h) }),
        )
        .route(
            "/ui/style.css",
            get(|h: HeaderMap| async move { serve(STYLE, &h) }),
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

    #[test]
    fn etags_are_quoted_hex_and_differ_per_file() {
        for a in [INDEX, APP, STYLE] {
            assert_eq!(a.etag.len(), 18);
            assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
            assert!(a.etag[1..17].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(INDEX.etag, APP.etag);
        assert_ne!(APP.etag, STYLE.etag);
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        assert!(INDEX_HTML.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/ui/style.css">"#));
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
        // Data reaches the page as text, never as markup.
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(forbidden), "app.js uses `{forbidden}`");
        }
        for forbidden in [
            "localStorage",
            "sessionStorage",
            "document.cookie",
            "indexedDB",
        ] {
            assert!(!APP_JS.contains(forbidden), "app.js uses `{forbidden}`");
        }
    }
}
