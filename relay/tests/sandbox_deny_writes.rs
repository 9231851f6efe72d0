//! Integration tests for `sandbox::deny_writes`.
//!
//! Landlock restricts the calling thread (and what it creates afterwards)
//! irreversibly, so every check runs in a freshly spawned thread that calls
//! `deny_writes()` itself; the test harness's own threads stay unrestricted.
//!
//! On a kernel without Landlock these tests assert `Status::NotSupported` and
//! print a NOTE instead of the write checks. Set `LOGRELAY_REQUIRE_LANDLOCK=1`
//! to make that a failure (for CI on machines known to have Landlock).

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Barrier, mpsc};
use std::thread;

use landlock::LandlockStatus;
use logrelay_relay::sandbox::{SandboxError, Status, deny_writes};
use tempfile::TempDir;

/// `O_TRUNC`, identical on x86_64 and aarch64 (the test has no libc dep).
const O_TRUNC: i32 = 0o1000;

/// Prints even when the harness captures test output (`eprintln!` is captured).
fn note(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

/// The kernel's Landlock ABI, probed without restricting anything
/// (no ruleset, no `prctl`): `Some(abi)` if usable.
fn kernel_abi() -> Option<i32> {
    let status = landlock::RestrictSelf::default()
        .no_new_privs(false)
        .apply()
        .expect("probing Landlock has no side effect and cannot fail");
    match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => Some(effective_abi as i32),
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => None,
    }
}

/// Calls `deny_writes()` on the current thread. Returns `true` if Landlock
/// now restricts it; `false` (after checking that the kernel really lacks
/// Landlock, and saying so) if it is `NotSupported`.
fn restrict_current_thread(test: &str) -> bool {
    let status = deny_writes().expect("deny_writes failed");
    match (&status, kernel_abi()) {
        (Status::Enforced { abi }, Some(k)) => {
            assert_eq!(*abi, k);
            true
        }
        (Status::PartiallyEnforced { abi, unrestricted }, Some(k)) => {
            assert_eq!(*abi, k);
            assert!(k < 5, "ABI {k} must be fully enforced");
            note(&format!(
                "NOTE {test}: partial, still allowed: {unrestricted:?}"
            ));
            true
        }
        (Status::NotSupported { reason }, None) => {
            assert!(
                std::env::var_os("LOGRELAY_REQUIRE_LANDLOCK").is_none(),
                "LOGRELAY_REQUIRE_LANDLOCK is set but: {reason}"
            );
            note(&format!(
                "NOTE {test}: kernel lacks Landlock, only checked that deny_writes() \
                 returns NotSupported ({reason}); write checks SKIPPED"
            ));
            false
        }
        (status, abi) => panic!("status {status:?} contradicts kernel probe {abi:?}"),
    }
}

/// Runs `check` in a new thread restricted by `deny_writes()`, unless the
/// kernel lacks Landlock. Scoped, so `check` may borrow; panics propagate.
fn in_restricted_thread(test: &str, check: impl FnOnce() + Send) {
    thread::scope(|s| {
        s.spawn(|| {
            if restrict_current_thread(test) {
                check();
            }
        });
    });
}

fn assert_denied<T: std::fmt::Debug>(what: &str, result: io::Result<T>) {
    match result {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    }
}

/// A temp dir holding `existing.txt` ("original") and an empty `subdir/`.
fn fixture() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let existing = dir.path().join("existing.txt");
    fs::write(&existing, "original").expect("write fixture");
    fs::create_dir(dir.path().join("subdir")).expect("mkdir fixture");
    (dir, existing)
}

fn assert_unchanged(existing: &Path) {
    assert_eq!(fs::read_to_string(existing).unwrap(), "original");
}

#[test]
fn status_matches_kernel() {
    let abi = kernel_abi();
    let status = thread::spawn(deny_writes).join().unwrap().unwrap();
    note(&format!(
        "landlock on this kernel: probe={abi:?}, deny_writes() -> {status:?}"
    ));
    match abi {
        Some(k) if k >= 5 => assert_eq!(status, Status::Enforced { abi: k }),
        Some(k) => assert!(matches!(status, Status::PartiallyEnforced { abi, .. } if abi == k)),
        None => assert!(matches!(status, Status::NotSupported { .. })),
    }
}

#[test]
fn creating_files_is_denied() {
    let (dir, _) = fixture();
    let d = dir.path();
    in_restricted_thread("creating_files_is_denied", || {
        assert_denied("File::create", File::create(d.join("new.txt")));
        assert_denied(
            "create_new in subdir",
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d.join("subdir/new.txt")),
        );
        assert_denied("create_dir", fs::create_dir(d.join("newdir")));
        assert_denied("symlink", symlink("existing.txt", d.join("link")));
        assert_denied(
            "hard_link",
            fs::hard_link(d.join("existing.txt"), d.join("hard")),
        );
        assert_denied("bind unix socket", UnixListener::bind(d.join("sock")));
        // Also outside the temp dir: the whole filesystem is covered.
        assert_denied(
            "create in /tmp",
            File::create(std::env::temp_dir().join("logrelay-landlock-probe")),
        );
    });
    let names: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "nothing was created: {names:?}");
}

#[test]
fn writing_existing_files_is_denied() {
    let (_dir, existing) = fixture();
    let existing = existing.as_path();
    in_restricted_thread("writing_existing_files_is_denied", || {
        assert_denied(
            "open for append",
            OpenOptions::new().append(true).open(existing),
        );
        assert_denied(
            "open for write",
            OpenOptions::new().write(true).open(existing),
        );
        assert_denied("fs::write", fs::write(existing, "changed"));
    });
    assert_unchanged(existing);
}

#[test]
fn truncating_is_denied() {
    let (dir, existing) = fixture();
    let existing = existing.as_path();
    // Premise: unrestricted, O_RDONLY|O_TRUNC really truncates.
    let control = dir.path().join("control.txt");
    fs::write(&control, "data").unwrap();
    drop(
        OpenOptions::new()
            .read(true)
            .custom_flags(O_TRUNC)
            .open(&control)
            .unwrap(),
    );
    assert_eq!(fs::metadata(&control).unwrap().len(), 0);
    in_restricted_thread("truncating_is_denied", || {
        // O_RDONLY|O_TRUNC truncates on Linux without needing write access
        // to the open file description: only Landlock's TRUNCATE right stops it.
        assert_denied(
            "open(O_RDONLY|O_TRUNC)",
            OpenOptions::new()
                .read(true)
                .custom_flags(O_TRUNC)
                .open(existing),
        );
        assert_denied(
            "open(O_WRONLY|O_TRUNC)",
            OpenOptions::new().write(true).truncate(true).open(existing),
        );
        // truncate(2) by path, from a child process: children inherit the domain.
        let out = Command::new("truncate")
            .args(["-s", "0"])
            .arg(existing)
            .output()
            .expect("spawn truncate");
        assert!(!out.status.success(), "truncate(1) in a child succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Permission denied"), "{stderr}");
    });
    assert_unchanged(existing);
}

#[test]
fn renaming_and_removing_are_denied() {
    let (dir, existing) = fixture();
    let d = dir.path();
    let existing = existing.as_path();
    in_restricted_thread("renaming_and_removing_are_denied", || {
        assert_denied(
            "rename in same dir",
            fs::rename(existing, d.join("renamed.txt")),
        );
        // Landlock answers EXDEV when REFER alone blocks a cross-directory
        // rename; here MAKE_REG and REMOVE_FILE are denied too: EACCES.
        assert_denied(
            "rename to subdir",
            fs::rename(existing, d.join("subdir/moved.txt")),
        );
        assert_denied("remove_file", fs::remove_file(existing));
        assert_denied("remove_dir", fs::remove_dir(d.join("subdir")));
    });
    assert_unchanged(existing);
    assert!(d.join("subdir").is_dir());
}

#[test]
fn reading_still_works_including_files_changed_later() {
    let (dir, existing) = fixture();
    let d = dir.path();
    let existing = existing.as_path();
    let (restricted_tx, restricted_rx) = mpsc::channel();
    let (rotated_tx, rotated_rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(move || {
            if !restrict_current_thread("reading_still_works") {
                return;
            }
            assert_eq!(fs::read_to_string(existing).unwrap(), "original");
            let mut buf = String::new();
            File::open(existing)
                .unwrap()
                .read_to_string(&mut buf)
                .unwrap();
            assert_eq!(buf, "original");
            assert_eq!(fs::read_dir(d).unwrap().count(), 2);
            assert!(fs::metadata("/etc/passwd").is_ok());
            restricted_tx.send(()).unwrap();
            // An unrestricted writer (e.g. cert renewal) replaces the file:
            // the relay must see the new contents.
            rotated_rx.recv().unwrap();
            assert_eq!(fs::read_to_string(existing).unwrap(), "rotated cert");
            assert_eq!(fs::read_to_string(d.join("new.pem")).unwrap(), "new file");
        });
        if restricted_rx.recv().is_ok() {
            // This (harness) thread is not restricted.
            fs::write(d.join("new.pem"), "new file").unwrap();
            let tmp = d.join("cert.tmp");
            fs::write(&tmp, "rotated cert").unwrap();
            fs::rename(&tmp, existing).unwrap();
            rotated_tx.send(()).unwrap();
        }
    });
}

#[test]
fn networking_still_works() {
    in_restricted_thread("networking_still_works", || {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        udp.send_to(b"ping", udp.local_addr().unwrap())
            .expect("udp send");
        let mut buf = [0u8; 8];
        let (n, _) = udp.recv_from(&mut buf).expect("udp recv");
        assert_eq!(&buf[..n], b"ping");

        let listener = TcpListener::bind("127.0.0.1:0").expect("tcp bind");
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    });
}

/// Why the relay must call `deny_writes()` before starting the tokio runtime:
/// threads that exist before the call stay unrestricted, threads spawned by
/// the restricted thread afterwards are restricted.
#[test]
fn restriction_is_per_thread_and_inherited_by_later_threads() {
    let (dir, _) = fixture();
    let d = dir.path();
    let restricted = Barrier::new(2);
    thread::scope(|s| {
        // Started BEFORE the restriction, like a runtime worker would be.
        let early = s.spawn(|| {
            restricted.wait();
            fs::write(d.join("from-early-thread"), "ok")
        });
        s.spawn(|| {
            let enforced = restrict_current_thread("restriction_is_per_thread");
            restricted.wait();
            if enforced {
                // Started AFTER the restriction: inherits it.
                let late = thread::spawn({
                    let p = d.join("from-late-thread");
                    move || File::create(p)
                });
                assert_denied("late thread", late.join().unwrap());
            }
        });
        early
            .join()
            .unwrap()
            .expect("pre-existing thread can still write");
    });
    // And the harness thread itself was never restricted.
    fs::write(d.join("from-test-thread"), "ok").unwrap();
    assert!(d.join("from-early-thread").exists());
    assert!(!d.join("from-late-thread").exists());
}

/// Documents Landlock's limits (see the module docs); if a kernel/crate
/// upgrade closes one of these, review this test and the docs.
#[test]
fn documented_limits() {
    let (_dir, existing) = fixture();
    let existing = existing.as_path();
    let mut opened_before = OpenOptions::new().append(true).open(existing).unwrap();
    thread::scope(|s| {
        s.spawn(move || {
            if !restrict_current_thread("documented_limits") {
                return;
            }
            // 1. Descriptors opened before the call keep their access mode.
            opened_before
                .write_all(b"+")
                .expect("pre-opened fd writable");
            // 2. Metadata changes are not covered by Landlock.
            fs::set_permissions(existing, fs::Permissions::from_mode(0o600))
                .expect("chmod is not restricted by Landlock");
            // 3. /dev/null cannot be opened for writing either.
            assert_denied(
                "open /dev/null for writing",
                OpenOptions::new().write(true).open("/dev/null"),
            );
        });
    });
}

/// Simulates kernels without Landlock with a seccomp filter (this thread
/// only) that fails the three Landlock syscalls, as such kernels do.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn kernels_without_landlock_yield_not_supported() {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    use std::collections::BTreeMap;

    const ENOSYS: u32 = 38;
    const EOPNOTSUPP: u32 = 95;
    // landlock_create_ruleset, landlock_add_rule, landlock_restrict_self:
    // same numbers on every architecture.
    const LANDLOCK_SYSCALLS: [i64; 3] = [444, 445, 446];

    for (errno, expected) in [(ENOSYS, "ENOSYS"), (EOPNOTSUPP, "EOPNOTSUPP")] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        thread::scope(|s| {
            s.spawn(|| {
                let rules = BTreeMap::from(LANDLOCK_SYSCALLS.map(|nr| (nr, vec![])));
                let filter = SeccompFilter::new(
                    rules,
                    SeccompAction::Allow,
                    SeccompAction::Errno(errno),
                    std::env::consts::ARCH.try_into().unwrap(),
                )
                .unwrap();
                let program: BpfProgram = filter.try_into().unwrap();
                seccompiler::apply_filter(&program).unwrap();

                let status: Result<Status, SandboxError> = deny_writes();
                match status {
                    Ok(Status::NotSupported { reason }) => {
                        assert!(reason.contains(expected), "{reason}");
                    }
                    other => panic!("errno {errno}: expected NotSupported, got {other:?}"),
                }
                // Nothing was restricted, and the status said so honestly.
                fs::write(d.join("still-writable"), "ok").unwrap();
            });
        });
    }
}
