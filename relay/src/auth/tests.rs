use std::sync::OnceLock;

use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::testkit::{Signer, b64, jwks};
use super::*;

const NOW: i64 = 1_700_000_000;

fn claims(exp: i64) -> Value {
    json!({
        "sub": "alice@example.com",
        "org": "acme",
        "exp": exp,
        "iat": NOW - 10,
        "roles": [{"role": "viewer", "scope": {"domain": "production", "project": "flytesnacks"}}],
    })
}

fn verifier(signers: &[&Signer]) -> Verifier {
    Verifier::new(
        AuthConfig::default(),
        KeySet::from_jwks(jwks(signers).as_bytes()).unwrap(),
    )
}

#[test]
fn valid_eddsa_and_es256_tokens_yield_their_claims() {
    let ed = Signer::ed25519(Some("ed-1"));
    let es = Signer::es256(Some("es-1"));
    let v = verifier(&[&ed, &es]);
    for signer in [&ed, &es] {
        let c = v.verify(&signer.token(&claims(NOW + 300)), NOW).unwrap();
        assert_eq!(
            c,
            Claims {
                sub: "alice@example.com".into(),
                org: "acme".into(),
                roles: vec![RoleBinding {
                    role: Role::Viewer,
                    scope: Scope::Project {
                        domain: "production".into(),
                        project: "flytesnacks".into()
                    }
                }],
                exp: NOW + 300,
            }
        );
    }
    // The fully-specified name of RFC 9864 is accepted too.
    let t = ed.sign_raw(
        r#"{"alg":"Ed25519","kid":"ed-1"}"#,
        &claims(NOW + 300).to_string(),
    );
    assert!(v.verify(&t, NOW).is_ok());
}

#[test]
fn expiry_and_not_before_respect_the_clock_skew_exactly() {
    let ed = Signer::ed25519(Some("k"));
    let v = verifier(&[&ed]);
    let skew = i64::from(DEFAULT_CLOCK_SKEW_SECS);
    let exp = NOW;
    let t = ed.token(&claims(exp));
    assert!(v.verify(&t, exp + skew - 1).is_ok());
    assert_eq!(
        v.verify(&t, exp + skew),
        Err(AuthError::Expired {
            exp,
            now: exp + skew
        })
    );
    assert_eq!(v.expires_at(&v.verify(&t, exp).unwrap()), exp + skew);
    let c = v.verify(&t, exp).unwrap();
    assert!(v.check_not_expired(&c, exp + skew - 1).is_ok());
    assert_eq!(
        v.check_not_expired(&c, exp + skew)
            .unwrap_err()
            .close_code(),
        logrelay_wire::session::close::TOKEN_EXPIRED
    );

    for claim in ["nbf", "iat"] {
        let mut c = claims(NOW + 3600);
        c[claim] = json!(NOW + 100);
        let t = ed.token(&c);
        assert!(v.verify(&t, NOW + 100 - skew).is_ok(), "{claim}");
        assert_eq!(
            v.verify(&t, NOW + 100 - skew - 1),
            Err(AuthError::NotYetValid {
                not_before: NOW + 100,
                now: NOW + 100 - skew - 1
            }),
            "{claim}"
        );
    }

    // NumericDate may be fractional; huge values saturate instead of overflowing (and are then
    // refused for their lifetime, see below).
    let mut c = claims(0);
    c["exp"] = json!(NOW as f64 + 0.9);
    assert!(v.verify(&ed.token(&c), NOW + skew - 1).is_ok());
    c["exp"] = json!(u64::MAX);
    c.as_object_mut().unwrap().remove("iat");
    assert!(v.verify(&ed.token(&c), i64::MAX - 1).is_ok());
    let strict = Verifier::new(
        AuthConfig {
            clock_skew_secs: 0,
            ..AuthConfig::default()
        },
        KeySet::from_jwks(jwks(&[&ed]).as_bytes()).unwrap(),
    );
    assert!(matches!(
        strict.verify(&ed.token(&claims(NOW)), NOW),
        Err(AuthError::Expired { .. })
    ));
}

#[test]
fn a_token_that_would_never_expire_is_refused_for_its_lifetime() {
    let ed = Signer::ed25519(Some("k"));
    let v = verifier(&[&ed]);
    let max = DEFAULT_MAX_LIFETIME_SECS as i64;
    let skew = i64::from(DEFAULT_CLOCK_SKEW_SECS);
    let verify = |exp: Value, iat: Option<i64>| {
        let mut c = claims(0);
        c["exp"] = exp;
        match iat {
            Some(iat) => c["iat"] = json!(iat),
            None => {
                c.as_object_mut().unwrap().remove("iat");
            }
        }
        v.verify(&ed.token(&c), NOW)
    };
    for huge in [json!(1e300), json!(u64::MAX), json!(i64::MAX)] {
        let refused = verify(huge.clone(), None).unwrap_err();
        assert!(
            matches!(
                refused,
                AuthError::LifetimeTooLong {
                    exp: i64::MAX,
                    max_secs: DEFAULT_MAX_LIFETIME_SECS,
                    from: "now"
                }
            ),
            "{huge}: {refused:?}"
        );
        assert_eq!(refused.reason(), "token_lifetime_too_long");
        assert_eq!(refused.http_status(), 401);
        assert!(refused.to_string().contains("86400 s"), "{refused}");
    }
    // Measured from now, with the clock skew on top: exactly at the limit passes.
    assert!(verify(json!(NOW + max + skew), None).is_ok());
    assert!(matches!(
        verify(json!(NOW + max + skew + 1), None),
        Err(AuthError::LifetimeTooLong { from: "now", .. })
    ));
    // Measured from the token's own `iat`, without skew: an old long-lived token is refused
    // even near its end.
    assert!(verify(json!(NOW + 60), Some(NOW + 60 - max)).is_ok());
    assert!(matches!(
        verify(json!(NOW + 60), Some(NOW + 59 - max)),
        Err(AuthError::LifetimeTooLong { from: "iat", .. })
    ));
    assert!(matches!(
        verify(json!(NOW + 60), Some(i64::MIN)),
        Err(AuthError::LifetimeTooLong { from: "iat", .. })
    ));
    // The limit is configurable.
    let hour = Verifier::new(
        AuthConfig {
            max_lifetime_secs: 3600,
            ..AuthConfig::default()
        },
        KeySet::from_jwks(jwks(&[&ed]).as_bytes()).unwrap(),
    );
    let t = |exp: i64| ed.token(&json!({"sub": "a", "org": "acme", "exp": exp}));
    assert!(hour.verify(&t(NOW + 3600), NOW).is_ok());
    assert!(hour.verify(&t(NOW + 3600 + skew), NOW).is_ok());
    assert!(matches!(
        hour.verify(&t(NOW + 3601 + skew), NOW),
        Err(AuthError::LifetimeTooLong { max_secs: 3600, .. })
    ));
}

#[test]
fn a_token_from_another_key_or_tampered_is_refused() {
    let ed = Signer::ed25519(Some("k"));
    let es = Signer::es256(Some("e"));
    let v = verifier(&[&ed, &es]);
    // Same kid, different private key.
    let forger = Signer::ed25519(Some("k"));
    assert_eq!(
        v.verify(&forger.token(&claims(NOW + 60)), NOW),
        Err(AuthError::BadSignature)
    );
    let forger = Signer::es256(Some("e"));
    assert_eq!(
        v.verify(&forger.token(&claims(NOW + 60)), NOW),
        Err(AuthError::BadSignature)
    );

    // Payload swapped for a wider grant, signature kept.
    for signer in [&ed, &es] {
        let t = signer.token(&claims(NOW + 60));
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut wider = claims(NOW + 60);
        wider["roles"] = json!([{"role": "admin"}]);
        let payload = b64(wider.to_string().as_bytes());
        parts[1] = &payload;
        assert_eq!(
            v.verify(&parts.join("."), NOW),
            Err(AuthError::BadSignature)
        );
        // A flipped signature bit.
        let mut sig = super::jwt::base64url_decode(parts[2].as_bytes()).unwrap();
        sig[10] ^= 1;
        let sig = b64(&sig);
        let t2 = format!(
            "{}.{}.{}",
            parts[0],
            b64(claims(NOW + 60).to_string().as_bytes()),
            sig
        );
        assert_eq!(v.verify(&t2, NOW), Err(AuthError::BadSignature));
    }
}

#[test]
fn alg_none_and_unknown_algs_are_refused() {
    let ed = Signer::ed25519(Some("k"));
    let v = verifier(&[&ed]);
    let payload = b64(claims(NOW + 60).to_string().as_bytes());
    for alg in [
        "none", "None", "NONE", "RS256", "ES384", "PS256", "HS512", "", "eddsa",
    ] {
        let header = b64(format!(r#"{{"alg":"{alg}","kid":"k"}}"#).as_bytes());
        for sig in ["", "AAAA"] {
            let t = format!("{header}.{payload}.{sig}");
            assert_eq!(
                v.verify(&t, NOW),
                Err(AuthError::alg_not_allowed(alg)),
                "{alg}"
            );
        }
    }
    let header = b64(br#"{"kid":"k"}"#);
    assert!(matches!(
        v.verify(&format!("{header}.{payload}."), NOW),
        Err(AuthError::Malformed(_))
    ));
    let long = "A".repeat(1000);
    let header = b64(format!(r#"{{"alg":"{long}"}}"#).as_bytes());
    match v.verify(&format!("{header}.{payload}."), NOW) {
        Err(AuthError::AlgNotAllowed(a)) => assert_eq!(a.len(), 32),
        other => panic!("{other:?}"),
    }
}

#[test]
fn algorithm_confusion_is_refused() {
    let ed = Signer::ed25519(Some("ed"));
    let es = Signer::es256(Some("es"));
    let v = verifier(&[&ed, &es]);
    // HS256 "signed" with a public key's bytes as the secret, as if the verifier would feed
    // the configured key to HMAC.
    for (target, kid) in [(&ed, Some("ed")), (&es, Some("es")), (&ed, None)] {
        let forger = Signer::hs256(&target.public_key(), kid);
        let t = forger.token(&claims(NOW + 60));
        assert_eq!(
            v.verify(&t, NOW),
            Err(AuthError::alg_not_allowed("HS256")),
            "{kid:?}"
        );
        // Also with the x coordinate as the secret.
        let forger = Signer::hs256(target.jwk_x().as_bytes(), kid);
        assert!(v.verify(&forger.token(&claims(NOW + 60)), NOW).is_err());
    }
    // Even in development mode, with its own secret installed.
    let dev = Verifier::new(
        AuthConfig::default(),
        KeySet::from_jwks(jwks(&[&ed, &es]).as_bytes())
            .unwrap()
            .with_dev_hs256_secret(&[7; 32])
            .unwrap(),
    );
    let forger = Signer::hs256(&ed.public_key(), Some("ed"));
    assert_eq!(
        dev.verify(&forger.token(&claims(NOW + 60)), NOW),
        Err(AuthError::alg_not_allowed("HS256"))
    );
    let forger = Signer::hs256(&ed.public_key(), None);
    assert_eq!(
        dev.verify(&forger.token(&claims(NOW + 60)), NOW),
        Err(AuthError::BadSignature)
    );
    // An EdDSA header naming the P-256 key, and the reverse.
    let body = claims(NOW + 60).to_string();
    let t = ed.sign_raw(r#"{"alg":"EdDSA","kid":"es"}"#, &body);
    assert_eq!(v.verify(&t, NOW), Err(AuthError::alg_not_allowed("EdDSA")));
    let t = es.sign_raw(r#"{"alg":"ES256","kid":"ed"}"#, &body);
    assert_eq!(v.verify(&t, NOW), Err(AuthError::alg_not_allowed("ES256")));
    // An ES256 signature presented as EdDSA for the right kid does not verify.
    let t = es.sign_raw(r#"{"alg":"ES256","kid":"es"}"#, &body);
    let relabelled = format!(
        "{}.{}",
        b64(br#"{"alg":"EdDSA","kid":"ed"}"#),
        t.split_once('.').unwrap().1
    );
    assert_eq!(v.verify(&relabelled, NOW), Err(AuthError::BadSignature));
    // Keys offered in the header are ignored.
    let attacker = Signer::ed25519(None);
    let header = format!(r#"{{"alg":"EdDSA","jwk":{}}}"#, attacker.jwk());
    let t = attacker.sign_raw(&header, &body);
    assert_eq!(v.verify(&t, NOW), Err(AuthError::BadSignature));
}

#[test]
fn hs256_only_in_development_mode() {
    let secret = [42u8; 32];
    let hs = Signer::hs256(&secret, None);
    let t = hs.token(&claims(NOW + 60));
    let ed = Signer::ed25519(Some("ed"));
    assert_eq!(
        verifier(&[&ed]).verify(&t, NOW),
        Err(AuthError::alg_not_allowed("HS256"))
    );
    let dev = Verifier::new(
        AuthConfig::default(),
        KeySet::dev_hs256_only(&secret).unwrap(),
    );
    assert_eq!(dev.verify(&t, NOW).unwrap().org, "acme");
    let wrong = Signer::hs256(&[43u8; 32], None);
    assert_eq!(
        dev.verify(&wrong.token(&claims(NOW + 60)), NOW),
        Err(AuthError::BadSignature)
    );
    // No public key in a dev-only set.
    assert_eq!(
        dev.verify(&ed.token(&claims(NOW + 60)), NOW),
        Err(AuthError::UnknownKey)
    );
}

#[test]
fn keys_are_selected_by_kid() {
    let a = Signer::ed25519(Some("a"));
    let b = Signer::ed25519(Some("b"));
    let es = Signer::es256(None);
    let v = verifier(&[&a, &b, &es]);
    assert!(v.verify(&a.token(&claims(NOW + 60)), NOW).is_ok());
    assert!(v.verify(&b.token(&claims(NOW + 60)), NOW).is_ok());
    // b's token relabelled as a's: verified against a, fails.
    let t = b.token(&claims(NOW + 60));
    let relabelled = format!(
        "{}.{}",
        b64(br#"{"alg":"EdDSA","kid":"a"}"#),
        t.split_once('.').unwrap().1
    );
    assert_eq!(v.verify(&relabelled, NOW), Err(AuthError::BadSignature));
    let c = Signer::ed25519(Some("c"));
    assert_eq!(
        v.verify(&c.token(&claims(NOW + 60)), NOW),
        Err(AuthError::UnknownKey)
    );
    // Without a kid: fine when exactly one key fits the algorithm, refused when several do.
    assert!(v.verify(&es.token(&claims(NOW + 60)), NOW).is_ok());
    let body = claims(NOW + 60).to_string();
    assert_eq!(
        v.verify(&a.sign_raw(r#"{"alg":"EdDSA"}"#, &body), NOW),
        Err(AuthError::UnknownKey)
    );
    let single = verifier(&[&a]);
    assert!(
        single
            .verify(&a.sign_raw(r#"{"alg":"EdDSA"}"#, &body), NOW)
            .is_ok()
    );
}

#[test]
fn oversized_tokens_are_refused_unread() {
    let ed = Signer::ed25519(Some("k"));
    let v = verifier(&[&ed]);
    let mut c = claims(NOW + 60);
    c["pad"] = json!("x".repeat(DEFAULT_MAX_TOKEN_BYTES));
    let t = ed.token(&c);
    assert_eq!(
        v.verify(&t, NOW),
        Err(AuthError::TooLarge {
            len: t.len(),
            max: DEFAULT_MAX_TOKEN_BYTES
        })
    );
    // Garbage of the same size is refused for its size, before any decoding.
    let junk = "!".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
    assert!(matches!(
        v.verify(&junk, NOW),
        Err(AuthError::TooLarge { .. })
    ));
    // Just under the limit is decoded.
    let mut c = claims(NOW + 60);
    c["pad"] = json!("x".repeat(DEFAULT_MAX_TOKEN_BYTES / 2));
    assert!(v.verify(&ed.token(&c), NOW).is_ok());
}

#[test]
fn malformed_tokens_are_refused() {
    let ed = Signer::ed25519(Some("k"));
    let v = verifier(&[&ed]);
    let good = ed.token(&claims(NOW + 60));
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    for bad in [
        String::new(),
        "abc".into(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}.{p}.{s}.x.y"),
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}.{s}=="),
        format!("{}.{p}.{s}", b64(b"not json")),
        format!("{}.{p}.{s}", b64(br#"["EdDSA"]"#)),
    ] {
        assert!(
            matches!(v.verify(&bad, NOW), Err(AuthError::Malformed(_))),
            "{bad:?}: {:?}",
            v.verify(&bad, NOW)
        );
    }
    // The signature is checked before the payload is decoded.
    assert_eq!(
        v.verify(&format!("{h}.{p}+.{s}"), NOW),
        Err(AuthError::BadSignature)
    );
    let crit = ed.sign_raw(
        r#"{"alg":"EdDSA","kid":"k","crit":["b64"],"b64":false}"#,
        &claims(NOW + 60).to_string(),
    );
    assert!(matches!(v.verify(&crit, NOW), Err(AuthError::Malformed(_))));
    // A signed payload that is not a claims object.
    for payload in [
        "[]",
        "null",
        r#"{"exp":"soon"}"#,
        r#"{"exp":1,"exp":2}"#,
        r#"[1800000000,null,null,null,null,"alice","acme",[]]"#,
    ] {
        let t = ed.sign_raw(r#"{"alg":"EdDSA","kid":"k"}"#, payload);
        assert!(
            matches!(v.verify(&t, NOW), Err(AuthError::Malformed(_))),
            "{payload}"
        );
    }
}

#[test]
fn required_claims_issuer_and_audience() {
    let ed = Signer::ed25519(Some("k"));
    let keys = || KeySet::from_jwks(jwks(&[&ed]).as_bytes()).unwrap();
    let v = Verifier::new(AuthConfig::default(), keys());
    let without = |k: &str| {
        let mut c = claims(NOW + 60);
        c.as_object_mut().unwrap().remove(k);
        ed.token(&c)
    };
    assert_eq!(
        v.verify(&without("exp"), NOW),
        Err(AuthError::MissingClaim("exp"))
    );
    assert_eq!(
        v.verify(&without("sub"), NOW),
        Err(AuthError::MissingClaim("sub"))
    );
    assert_eq!(v.verify(&without("org"), NOW), Err(AuthError::MissingOrg));
    let mut c = claims(NOW + 60);
    c["org"] = json!("");
    assert_eq!(v.verify(&ed.token(&c), NOW), Err(AuthError::MissingOrg));
    // No roles: a valid session that sees nothing.
    assert!(v.verify(&without("roles"), NOW).unwrap().roles.is_empty());

    let v = Verifier::new(
        AuthConfig {
            issuer: Some("https://id.example".into()),
            audience: Some("logrelay".into()),
            ..AuthConfig::default()
        },
        keys(),
    );
    let with = |iss: Value, aud: Value| {
        let mut c = claims(NOW + 60);
        if !iss.is_null() {
            c["iss"] = iss;
        }
        if !aud.is_null() {
            c["aud"] = aud;
        }
        v.verify(&ed.token(&c), NOW).map(|_| ())
    };
    assert_eq!(with(json!("https://id.example"), json!("logrelay")), Ok(()));
    assert_eq!(
        with(json!("https://id.example"), json!(["ui", "logrelay"])),
        Ok(())
    );
    assert_eq!(
        with(Value::Null, json!("logrelay")),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        with(json!("https://evil.example"), json!("logrelay")),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        with(json!("https://id.example"), Value::Null),
        Err(AuthError::WrongAudience)
    );
    assert_eq!(
        with(json!("https://id.example"), json!(["ui"])),
        Err(AuthError::WrongAudience)
    );
}

#[test]
fn role_bindings_outside_the_model_make_the_token_malformed() {
    let ed = Signer::ed25519(Some("k"));
    let v = verifier(&[&ed]);
    let with_roles = |roles: Value| {
        let mut c = claims(NOW + 60);
        c["roles"] = roles;
        v.verify(&ed.token(&c), NOW)
    };
    for bad in [
        json!([{"role": "viewer", "scope": {"project": "p"}}]),
        json!([{"role": "viewer", "scope": {"domain": "d", "cluster": "c"}}]),
        json!([{"role": "viewer", "scope": {"domain": ""}}]),
        json!([{"role": "viewer", "scope": {"domain": "d", "project": ""}}]),
        json!([{"role": "viewer", "scope": {}}]),
        json!([{"role": "viewer", "until": 5}]),
        json!([{"scope": {"domain": "d"}}]),
        json!({"role": "viewer"}),
        json!("admin"),
        json!([["viewer", null]]),
        json!([{"role": "viewer", "scope": ["d", "p"]}]),
    ] {
        assert!(
            matches!(with_roles(bad.clone()), Err(AuthError::Malformed(_))),
            "{bad}"
        );
    }
    let c = with_roles(json!([
        {"role": "owner"},
        {"role": "admin", "scope": null},
        {"role": "contributor", "scope": {"domain": "d"}},
    ]))
    .unwrap();
    assert_eq!(
        c.roles,
        vec![
            RoleBinding {
                role: Role::Unknown,
                scope: Scope::Org
            },
            RoleBinding {
                role: Role::Admin,
                scope: Scope::Org
            },
            RoleBinding {
                role: Role::Contributor,
                scope: Scope::Domain { domain: "d".into() }
            },
        ]
    );
}

#[test]
fn errors_map_to_status_and_close_codes() {
    use logrelay_wire::session::close;
    let expired = AuthError::Expired { exp: 1, now: 2 };
    assert_eq!(
        (expired.http_status(), expired.close_code()),
        (401, close::TOKEN_EXPIRED)
    );
    assert_eq!(
        (
            AuthError::BadSignature.http_status(),
            AuthError::BadSignature.close_code()
        ),
        (401, close::UNAUTHENTICATED)
    );
    assert_eq!(
        (
            AuthError::MissingOrg.http_status(),
            AuthError::MissingOrg.close_code()
        ),
        (403, close::FORBIDDEN)
    );
    assert_eq!(AuthError::Missing.error_code(), ErrorCode::Unauthenticated);
    let d = Denial {
        domain: Some("d".into()),
        project: None,
    };
    assert_eq!((d.http_status(), d.close_code()), (403, close::FORBIDDEN));
    assert_eq!(
        d.to_string(),
        r#"no role binding of this token covers domain "d""#
    );
}

#[test]
fn bearer_tokens_come_from_either_carrier() {
    let tok = |a, p| token_from_headers(a, p);
    let bt = |token, subprotocol| Some(BearerToken { token, subprotocol });
    assert_eq!(
        tok(Some("Bearer abc.def.ghi"), None),
        bt("abc.def.ghi", None)
    );
    assert_eq!(tok(Some("bearer   abc"), None), bt("abc", None));
    assert_eq!(tok(Some("Basic dXNlcjpw"), None), None);
    assert_eq!(tok(Some("Bearer"), None), None);
    assert_eq!(tok(Some("Bearer a b"), None), None);
    assert_eq!(
        tok(None, Some("logrelay.v1, bearer.abc.def.ghi")),
        bt("abc.def.ghi", Some(SUBPROTOCOL))
    );
    assert_eq!(
        tok(None, Some("bearer.abc,logrelay.v1")),
        bt("abc", Some(SUBPROTOCOL))
    );
    // The token alone cannot be the echoed protocol.
    assert_eq!(tok(None, Some("bearer.abc")), None);
    assert_eq!(tok(None, Some("logrelay.v1, bearer.a, bearer.b")), None);
    assert_eq!(tok(None, Some("logrelay.v1, bearer.")), None);
    assert_eq!(tok(None, Some("logrelay.v1")), None);
    assert_eq!(tok(None, None), None);
    // Both: must agree.
    assert_eq!(
        tok(Some("Bearer abc"), Some("logrelay.v1, bearer.abc")),
        bt("abc", Some(SUBPROTOCOL))
    );
    assert_eq!(
        tok(Some("Bearer abc"), Some("logrelay.v1, bearer.xyz")),
        None
    );
    assert_eq!(
        tok(Some("Bearer abc"), Some("logrelay.v1")),
        bt("abc", Some(SUBPROTOCOL))
    );
    assert_eq!(
        select_subprotocol(Some("chat, logrelay.v1")),
        Some(SUBPROTOCOL)
    );
    assert_eq!(select_subprotocol(Some("logrelay.v2")), None);
}

fn labels(org: &str, domain: Option<&str>, project: Option<&str>) -> Labels {
    Labels {
        org: org.into(),
        domain: domain.map(Into::into),
        project: project.map(Into::into),
        ..Labels::default()
    }
}

fn claims_with(roles: Vec<RoleBinding>) -> Claims {
    Claims {
        sub: "s".into(),
        org: "acme".into(),
        roles,
        exp: NOW,
    }
}

#[test]
fn authorize_follows_the_rbac_model() {
    let project = claims_with(vec![RoleBinding {
        role: Role::Viewer,
        scope: Scope::Project {
            domain: "prod".into(),
            project: "p".into(),
        },
    }]);
    assert!(authorize(
        &project,
        &labels("acme", Some("prod"), Some("p"))
    ));
    assert!(!authorize(
        &project,
        &labels("acme", Some("dev"), Some("p"))
    ));
    assert!(!authorize(
        &project,
        &labels("acme", Some("prod"), Some("q"))
    ));
    assert!(!authorize(&project, &labels("acme", Some("prod"), None)));
    assert!(!authorize(&project, &labels("acme", None, None)));
    assert!(!authorize(
        &project,
        &labels("other", Some("prod"), Some("p"))
    ));

    let domain = claims_with(vec![RoleBinding {
        role: Role::Contributor,
        scope: Scope::Domain {
            domain: "prod".into(),
        },
    }]);
    assert!(authorize(&domain, &labels("acme", Some("prod"), None)));
    assert!(authorize(
        &domain,
        &labels("acme", Some("prod"), Some("any"))
    ));
    assert!(!authorize(&domain, &labels("acme", None, Some("any"))));

    let org = claims_with(vec![RoleBinding {
        role: Role::Admin,
        scope: Scope::Org,
    }]);
    assert!(authorize(&org, &labels("acme", None, None)));
    assert!(!authorize(&org, &labels("other", None, None)));
    assert!(!authorize(&org, &labels("", None, None)));

    let unknown = claims_with(vec![RoleBinding {
        role: Role::Unknown,
        scope: Scope::Org,
    }]);
    assert!(!authorize(&unknown, &labels("acme", None, None)));
    assert!(!authorize(
        &claims_with(vec![]),
        &labels("acme", None, None)
    ));
}

#[test]
fn selectors_naming_uncovered_scopes_are_denied_up_front() {
    let c = claims_with(vec![RoleBinding {
        role: Role::Viewer,
        scope: Scope::Project {
            domain: "prod".into(),
            project: "p".into(),
        },
    }]);
    let sel = |domain: Option<&str>, project: Option<&str>| Selector {
        domain: domain.map(Into::into),
        project: project.map(Into::into),
        ..Selector::default()
    };
    assert_eq!(selector_allowed(&c, &sel(None, None)), Ok(()));
    assert_eq!(selector_allowed(&c, &sel(Some("prod"), None)), Ok(()));
    assert_eq!(selector_allowed(&c, &sel(None, Some("p"))), Ok(()));
    assert_eq!(selector_allowed(&c, &sel(Some("prod"), Some("p"))), Ok(()));
    assert_eq!(
        selector_allowed(&c, &sel(Some("dev"), None)),
        Err(Denial {
            domain: Some("dev".into()),
            project: None
        })
    );
    assert!(selector_allowed(&c, &sel(Some("prod"), Some("q"))).is_err());
    assert!(selector_allowed(&c, &sel(None, Some("q"))).is_err());
    // Nothing readable: every selector is denied.
    assert!(selector_allowed(&claims_with(vec![]), &sel(None, None)).is_err());
}

// ---- property test: `authorize` and `selector_allowed` against an independent model ----

const ORGS: [&str; 2] = ["o1", "o2"];
const DOMAINS: [&str; 3] = ["d1", "d2", "d3"];
const PROJECTS: [&str; 2] = ["p1", "p2"];
const ROLES: [&str; 4] = ["viewer", "contributor", "admin", "owner"];

/// A binding as generated: role index, scope depth (0 org, 1 domain, 2 project), domain and
/// project indices.
type GenBinding = (usize, u8, usize, usize);

fn signer() -> &'static (Signer, Verifier) {
    static S: OnceLock<(Signer, Verifier)> = OnceLock::new();
    S.get_or_init(|| {
        let s = Signer::ed25519(Some("prop"));
        let v = verifier(&[&s]);
        (s, v)
    })
}

/// The model: a stream sits at the path `org / domain / project` (cut at the first absent
/// label); a binding at `org / scope…`. A readable binding covers the streams below its path.
fn model_covers(token_org: &str, bindings: &[GenBinding], stream: &[&str]) -> bool {
    bindings.iter().any(|&(role, depth, d, p)| {
        let mut path = vec![token_org];
        if depth >= 1 {
            path.push(DOMAINS[d]);
        }
        if depth >= 2 {
            path.push(PROJECTS[p]);
        }
        role < 3 && stream.starts_with(&path)
    })
}

fn stream_path<'a>(
    org: &'a str,
    domain: Option<&'a str>,
    project: Option<&'a str>,
) -> Vec<&'a str> {
    let mut path = vec![org];
    if let Some(d) = domain {
        path.push(d);
        if let Some(p) = project {
            path.push(p);
        }
    }
    path
}

fn opt(values: &'static [&'static str]) -> impl Strategy<Value = Option<&'static str>> {
    proptest::option::of(proptest::sample::select(values))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn authorize_matches_the_model_and_never_crosses_orgs(
        token_org in 0..ORGS.len(),
        bindings in proptest::collection::vec((0..ROLES.len(), 0u8..3, 0..DOMAINS.len(), 0..PROJECTS.len()), 0..5),
        streams in proptest::collection::vec(
            (proptest::sample::select(&ORGS[..]), opt(&["d1", "d2", "d3", "zz"]), opt(&["p1", "p2", "zz"])),
            1..8),
        sel_domain in opt(&["d1", "d2", "d3", "zz"]),
        sel_project in opt(&["p1", "p2", "zz"]),
    ) {
        let roles: Vec<Value> = bindings.iter().map(|&(role, depth, d, p)| match depth {
            0 => json!({"role": ROLES[role]}),
            1 => json!({"role": ROLES[role], "scope": {"domain": DOMAINS[d]}}),
            _ => json!({"role": ROLES[role], "scope": {"project": PROJECTS[p], "domain": DOMAINS[d]}}),
        }).collect();
        let (s, v) = signer();
        let token = s.token(&json!({"sub": "u", "org": ORGS[token_org], "exp": NOW + 60, "roles": roles}));
        let claims = v.verify(&token, NOW).unwrap();

        for &(org, domain, project) in &streams {
            let got = authorize(&claims, &labels(org, domain, project));
            let want = model_covers(ORGS[token_org], &bindings, &stream_path(org, domain, project));
            prop_assert_eq!(got, want, "stream {:?}", (org, domain, project));
            if org != ORGS[token_org] {
                prop_assert!(!got);
            }
        }

        // A selector is allowed exactly when some stream it matches is covered (searched over
        // every label combination, including values no token names).
        let selector = Selector {
            domain: sel_domain.map(Into::into),
            project: sel_project.map(Into::into),
            ..Selector::default()
        };
        let mut reachable = false;
        for domain in [None, Some("d1"), Some("d2"), Some("d3"), Some("zz")] {
            for project in [None, Some("p1"), Some("p2"), Some("zz")] {
                let l = labels(ORGS[token_org], domain, project);
                if !selector.matches(&l) {
                    continue;
                }
                let covered = model_covers(ORGS[token_org], &bindings, &stream_path(ORGS[token_org], domain, project));
                reachable |= covered;
                if selector_allowed(&claims, &selector).is_err() {
                    // A denial is never wrong.
                    prop_assert!(!authorize(&claims, &l));
                }
            }
        }
        prop_assert_eq!(selector_allowed(&claims, &selector).is_ok(), reachable);
    }
}

/// The "Session tokens" section of docs/security.md.
fn session_tokens_doc() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
        .unwrap();
    let start = doc.find("\n## Session tokens").expect("the section exists");
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

#[test]
fn the_example_payloads_in_docs_security_md_are_accepted() {
    let doc = session_tokens_doc();
    let ed = Signer::ed25519(Some("k"));
    let v = Verifier::new(
        AuthConfig {
            issuer: Some("https://id.example.com".into()),
            audience: Some("logrelay".into()),
            ..AuthConfig::default()
        },
        KeySet::from_jwks(jwks(&[&ed]).as_bytes()).unwrap(),
    );
    let examples: Vec<Value> = doc
        .split("```json\n")
        .skip(1)
        .map(|block| serde_json::from_str(block.split("```").next().unwrap()).unwrap())
        .collect();
    assert!(examples.len() >= 4, "{examples:?}");
    let mut roles_seen = std::collections::HashSet::new();
    let mut scopes_seen = std::collections::HashSet::new();
    for mut payload in examples {
        // Current times, the rest exactly as documented.
        payload["iat"] = json!(NOW - 10);
        payload["exp"] = json!(NOW + 3600);
        if payload.get("nbf").is_some() {
            payload["nbf"] = json!(NOW - 10);
        }
        let claims = v
            .verify(&ed.token(&payload), NOW)
            .unwrap_or_else(|e| panic!("{payload}: {e}"));
        assert_eq!(claims.org, payload["org"].as_str().unwrap());
        assert_eq!(claims.sub, payload["sub"].as_str().unwrap());
        assert_eq!(
            claims.roles.len(),
            payload["roles"].as_array().unwrap().len()
        );
        for b in &claims.roles {
            assert!(b.role.can_read(), "{payload}");
            roles_seen.insert(b.role);
            scopes_seen.insert(std::mem::discriminant(&b.scope));
        }
    }
    assert_eq!(roles_seen.len(), 3, "an example for each role");
    assert_eq!(scopes_seen.len(), 3, "an example for each scope");
}

#[test]
fn the_refused_payload_fragments_in_docs_security_md_are_malformed() {
    let doc = session_tokens_doc();
    let ed = Signer::ed25519(Some("k"));
    let v = verifier(&[&ed]);
    let table = doc
        .split("| payload fragment | why |")
        .nth(1)
        .expect("the table of refused fragments");
    let mut checked = 0;
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cell = row.split(" | ").next().unwrap().trim_start_matches("| ");
        for fragment in cell.split(", ") {
            let fragment = fragment.trim_matches('`');
            let patch: serde_json::Map<String, Value> =
                serde_json::from_str(&format!("{{{fragment}}}")).unwrap();
            let mut payload = claims(NOW + 60);
            for (k, val) in patch {
                payload[k] = val;
            }
            match v.verify(&ed.token(&payload), NOW) {
                Err(AuthError::Malformed(_)) => checked += 1,
                other => panic!("{fragment}: expected malformed, got {other:?}"),
            }
        }
    }
    assert!(checked >= 7, "{checked}");
}
