//! Session tokens: the input, as a token string, goes through
//!
//! 1. a verifier holding a fixed JWKS (one Ed25519, one P-256 key): size, shape, base64url,
//!    header, `alg`/`kid` selection and signature checks must never panic, and a token is only
//!    accepted with a genuine signature (none can be forged here, so nothing is accepted
//!    unless it is a seed);
//! 2. a development-mode verifier (HS256), after re-signing `header.payload` with its secret —
//!    so the claims checks (times, `iss`/`aud`, `sub`, `org`, role bindings) see fuzzed claims
//!    behind a valid signature — and, when claims come out, `authorize`/`selector_allowed`,
//!    which must never let a session across orgs;
//! 3. the header carriers, with the input as both header values.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use ring::hmac;

use logrelay_relay::auth::{AuthConfig, KeySet, Verifier, authorize, selector_allowed, token_from_headers};

/// The fixed key set; the `eddsa` seed is signed by its Ed25519 key (seed `[1; 32]`).
const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w","kid":"ed"},{"kty":"EC","crv":"P-256","x":"XAbSzOdkGFnpz9RRU_RuCyIN2wX6iXsP8YyEATp5e5I","y":"Td5QvnDq2Z-NiZn2I8mq4u1Ubcod1oXzMf9X5bsR_No","kid":"es"}]}"#;

/// The development-mode secret inputs are re-signed with.
const SECRET: &[u8; 32] = b"logrelay-fuzz-hs256-secret-32by!";

/// The fuzzing clock: the seeds are valid at this time.
const NOW: i64 = 1_700_000_000;

fn config() -> AuthConfig {
    AuthConfig {
        issuer: Some("https://id.example".into()),
        audience: Some("logrelay".into()),
        ..AuthConfig::default()
    }
}

static KEYS: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::new(config(), KeySet::from_jwks(JWKS.as_bytes()).unwrap()));

static DEV: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::new(config(), KeySet::dev_hs256_only(SECRET).unwrap()));

static HMAC: LazyLock<hmac::Key> = LazyLock::new(|| hmac::Key::new(hmac::HMAC_SHA256, SECRET));

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let mut n = [0u8; 3];
        n[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from(n[0]) << 16 | u32::from(n[1]) << 8 | u32::from(n[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = KEYS.verify(token, NOW);
    let _ = token_from_headers(Some(token), Some(token));

    let Some((signing_input, _)) = token.rsplit_once('.') else {
        return;
    };
    let tag = hmac::sign(&HMAC, signing_input.as_bytes());
    let resigned = format!("{signing_input}.{}", b64(tag.as_ref()));
    let Ok(claims) = DEV.verify(&resigned, NOW) else {
        return;
    };
    assert!(!claims.org.is_empty());
    let _ = DEV.check_not_expired(&claims, NOW);
    for (domain, project) in [(None, None), (Some("d"), None), (Some("d"), Some("p"))] {
        let mut labels = Labels {
            org: claims.org.clone(),
            domain: domain.map(Into::into),
            project: project.map(Into::into),
            ..Labels::default()
        };
        let selector = Selector {
            domain: labels.domain.clone(),
            project: labels.project.clone(),
            ..Selector::default()
        };
        if authorize(&claims, &labels) {
            assert!(selector_allowed(&claims, &selector).is_ok());
        }
        labels.org.push('x');
        assert!(!authorize(&claims, &labels));
    }
});
