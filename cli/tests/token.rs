//! `logrelay token` as docs/security.md ("Session tokens") tells an operator to use it: the
//! documented commands, run as written, make a key, a JWKS and a token that a real relay with
//! that JWKS accepts, with exactly the access the token names.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use logrelay::client::{Client, Incoming};
use logrelay_e2e::*;
use logrelay_relay::RelayConfig;
use logrelay_wire::labels::Labels;
use logrelay_wire::selector::Selector;
use logrelay_wire::session::{Event, Request};

/// The first `sh` block after `marker` in docs/security.md.
fn documented_block(marker: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
        .unwrap();
    let after = &doc[doc.find(marker).expect("the marker is in the doc")..];
    let block = after.split("```sh\n").nth(1).expect("a sh block follows");
    block.split("```").next().unwrap().to_owned()
}

/// `logrelay` as installed: the directory of the built binary first on `PATH`.
fn path_with_logrelay() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_logrelay")).parent().unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn labels(pod: &str, domain: &str, project: &str) -> Labels {
    Labels {
        org: "acme".into(),
        namespace: "web".into(),
        pod: pod.into(),
        container: "main".into(),
        domain: Some(domain.into()),
        project: Some(project.into()),
        ..Labels::default()
    }
}

/// Connects with `token` and lists everything: the pods it sees.
async fn listed(url: &str, token: &str) -> Vec<String> {
    let mut client = Client::connect(url, None, Some(token))
        .await
        .expect("the relay accepts the token");
    client
        .send(&Request::List {
            selector: Selector::default(),
            id: None,
            watch: false,
        })
        .await
        .unwrap();
    loop {
        match within("the list", client.next()).await {
            Ok(Some(Incoming::Event(Event::Streams { streams, .. }))) => {
                let mut pods: Vec<_> = streams.into_iter().map(|s| s.labels.pod).collect();
                pods.sort();
                return pods;
            }
            Ok(Some(_)) => {}
            other => panic!("expected the list, got {other:?}"),
        }
    }
}

async fn relay_with_jwks(pki: &TestPki, jwks: &Path) -> TestRelay {
    TestRelay::start_exactly(
        pki,
        RelayConfig {
            token_jwks_file: Some(jwks.to_owned()),
            ..RelayConfig::loopback()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_commands_mint_a_token_a_real_relay_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let block = documented_block("**Minting a token for testing.**");
    let out = Command::new("sh")
        .args(["-e", "-c", &block])
        .current_dir(dir.path())
        .env("PATH", path_with_logrelay())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{block}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(dir.path().join("signing.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    let token = std::fs::read_to_string(dir.path().join("token.jwt")).unwrap();
    let token = token.trim_end();

    let pki = TestPki::new();
    let relay = relay_with_jwks(&pki, &dir.path().join("keys.jwks")).await;
    let _agent = FakeAgent::start(
        &pki,
        relay.quic_addr(),
        "acme",
        "c1",
        vec![
            (labels("mine", "production", "flytesnacks"), vec![]),
            (labels("other-project", "production", "other"), vec![]),
            (labels("other-domain", "staging", "flytesnacks"), vec![]),
        ],
    )
    .await;
    let url = relay.handle.subscribe_url();
    // The viewer of production/flytesnacks sees exactly that project's stream.
    let pods = eventually("the agent's streams", || async {
        let pods = listed(&url, token).await;
        (!pods.is_empty()).then_some(pods)
    })
    .await;
    assert_eq!(pods, vec!["mine".to_owned()]);
    let audit = relay.audit_events();
    assert!(
        audit
            .iter()
            .any(|e| e["op"] == "session_connect" && e["actor"]["sub"] == "logrelay-cli"),
        "{audit:#?}"
    );
}

fn logrelay(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_logrelay"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_key_works_and_mistakes_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keygen = [
        "token",
        "keygen",
        "--private-key-file",
        "k.pem",
        "--jwks-file",
        "k.jwks",
    ];
    assert!(logrelay(d, &keygen).status.success());
    let again = logrelay(d, &keygen);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("k.pem: File exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let no_domain = logrelay(
        d,
        &[
            "token",
            "mint",
            "--key-file",
            "k.pem",
            "--org",
            "acme",
            "--role",
            "viewer",
            "--project",
            "p",
        ],
    );
    assert_eq!(no_domain.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&no_domain.stderr).contains("--domain"));
    let not_a_key = logrelay(
        d,
        &["token", "mint", "--key-file", "k.jwks", "--org", "acme"],
    );
    assert!(!not_a_key.status.success());
    assert!(String::from_utf8_lossy(&not_a_key.stderr).contains("k.jwks"));
    let bad_ttl = logrelay(
        d,
        &[
            "token",
            "mint",
            "--key-file",
            "k.pem",
            "--org",
            "acme",
            "--ttl",
            "1w",
        ],
    );
    assert_eq!(bad_ttl.status.code(), Some(2));

    // A key made with openssl: its JWKS from `logrelay token jwks`, then a token an org-wide
    // admin, ES256 this time.
    let openssl = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-out", "p256.pem"])
        .current_dir(d)
        .status();
    if !matches!(openssl, Ok(s) if s.success()) {
        eprintln!("NOTE: openssl is not available; the openssl-key case was not run");
        return;
    }
    let jwks = logrelay(d, &["token", "jwks", "--key-file", "p256.pem"]);
    assert!(jwks.status.success());
    std::fs::write(d.join("p256.jwks"), &jwks.stdout).unwrap();
    let minted = logrelay(
        d,
        &[
            "token",
            "mint",
            "--key-file",
            "p256.pem",
            "--org",
            "acme",
            "--role",
            "admin",
            "--ttl",
            "90s",
        ],
    );
    assert!(minted.status.success());
    let token = String::from_utf8(minted.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "only the token on stdout");
    let pki = TestPki::new();
    let relay = relay_with_jwks(&pki, &d.join("p256.jwks")).await;
    let _agent = FakeAgent::start(
        &pki,
        relay.quic_addr(),
        "acme",
        "c1",
        vec![
            (labels("a", "production", "flytesnacks"), vec![]),
            (labels("b", "staging", "x"), vec![]),
        ],
    )
    .await;
    let url = relay.handle.subscribe_url();
    let pods = eventually("the agent's streams", || async {
        let pods = listed(&url, token.trim_end()).await;
        (pods.len() == 2).then_some(pods)
    })
    .await;
    assert_eq!(pods, vec!["a".to_owned(), "b".to_owned()]);
}
