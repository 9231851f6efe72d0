//! Which web origins may open a session (pure).
//!
//! Browsers attach an `Origin` header to every WebSocket handshake, and any web page can ask a
//! browser to open one to any host. A session's bearer token travels in the handshake itself,
//! so a foreign page cannot borrow a user's token, but it can open an anonymous session on a
//! relay that accepts them (`--anonymous-org`, `--dev`) and that the browser can reach. So a
//! handshake carrying an `Origin` is accepted only from the relay's own origin (the viewer it
//! serves) or from an origin the operator lists (`--allowed-origin`); one without `Origin` is
//! not from a browser page (`logrelay tail`, other programs) and is accepted.

/// Whether a handshake with `origin` (the `Origin` header) to `host` (the `Host` header) may
/// open a session, given the operator's `allowed` origins (`scheme://host[:port]`, or `*`).
pub fn allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // `null` (sandboxed frames, local files) and anything that is not `scheme://authority`
    // is never the relay's own origin.
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let bare = |h: &str| -> String {
        let h = h.to_ascii_lowercase();
        h.strip_suffix(default_port).map(str::to_owned).unwrap_or(h)
    };
    bare(authority) == bare(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_and_the_relays_own_pages_are_accepted() {
        assert!(
            allowed(None, Some("relay:8080"), &[]),
            "no Origin: not a page"
        );
        assert!(allowed(Some("http://relay:8080"), Some("relay:8080"), &[]));
        assert!(allowed(
            Some("https://Relay.Example"),
            Some("relay.example"),
            &[]
        ));
        assert!(allowed(
            Some("https://relay.example"),
            Some("relay.example:443"),
            &[]
        ));
        assert!(allowed(
            Some("http://127.0.0.1:4000"),
            Some("127.0.0.1:4000"),
            &[]
        ));
    }

    #[test]
    fn other_pages_only_when_listed() {
        let none: &[String] = &[];
        assert!(!allowed(
            Some("https://evil.example"),
            Some("relay.example"),
            none
        ));
        assert!(
            !allowed(Some("http://relay:8081"), Some("relay:8080"), none),
            "other port"
        );
        assert!(!allowed(
            Some("https://relay:8080"),
            Some("relay:8080:80"),
            none
        ));
        assert!(!allowed(Some("null"), Some("relay"), none));
        assert!(!allowed(Some("file://"), Some("relay"), none));
        assert!(
            !allowed(Some("http://relay"), None, none),
            "no Host to compare with"
        );
        let listed = ["https://console.example.com/".to_owned()];
        assert!(allowed(
            Some("https://console.example.com"),
            Some("relay"),
            &listed
        ));
        assert!(!allowed(
            Some("https://console.example.org"),
            Some("relay"),
            &listed
        ));
        assert!(allowed(Some("null"), Some("relay"), &["*".to_owned()]));
    }
}
