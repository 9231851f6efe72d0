//! The relay binary forbids itself to write files once started: a write it attempts after
//! start-up is refused, and every one of its threads carries the restriction.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn landlock_abi() -> Option<i64> {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    let out = Command::new("python3")
        .args([
            "-c",
            "import ctypes; l=ctypes.CDLL(None, use_errno=True); print(l.syscall(444, None, 0, 1))",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|v| *v > 0)
}

#[test]
fn a_write_after_start_up_is_refused_in_every_thread() {
    let Some(abi) = landlock_abi() else {
        eprintln!("NOTE: this kernel has no Landlock; the relay warns and carries on");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_logrelay-relay"))
        .args([
            "--dev",
            "--require-sandbox",
            "--quic-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--sandbox-self-check-dir",
        ])
        .arg(dir.path())
        .env("LOGRELAY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Diagnostic logs are on stderr (stdout carries the audit trail only).
    let stdout = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::sync_channel(1024);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let verdict = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("sandbox self-check") => break line,
            Ok(line) => seen.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("no self-check verdict ({e}); output: {seen:#?}");
            }
        }
    };
    assert!(verdict.contains("file write refused"), "{verdict}");
    assert!(
        seen.iter().any(|l| l.contains(&format!("Landlock ABI {abi}")) || l.contains("file writes denied")),
        "start-up reports the sandbox: {seen:#?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing was created"
    );

    // Every thread of the process has no_new_privs, set by the sandbox right before it
    // restricted the main thread, which created all the others afterwards.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap();
    let mut threads = 0;
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        assert!(
            status.contains("NoNewPrivs:\t1"),
            "thread {:?} is not restricted",
            t.file_name()
        );
        threads += 1;
    }
    assert!(threads > 1, "the runtime's threads were checked too");

    // SIGTERM shuts it down cleanly.
    let killed = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
