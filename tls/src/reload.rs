//! Reloading TLS material when its files change (a rotated Kubernetes Secret), with no restart.
//!
//! Agent and relay both poll their certificate, key and CA files: every interval they compare
//! each file's identity (size, modification time, inode: no read, so polling costs a few
//! `stat`s) with the last one seen and, when any changed, run their own reload action. That
//! action loads the whole set and swaps it in only if all of it is valid, so a broken or
//! half-written set leaves the last good one in force; the next change is tried again.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// The shortest polling interval [`watch_files`] uses, whatever it is asked for.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a file looked like: size, modification time (seconds, nanoseconds) and inode, or
/// `None` when it could not be read (missing, no permission).
type FileStamp = Option<(u64, i64, i64, u64)>;

/// A set of files and what each looked like when last checked.
#[derive(Debug, Clone)]
pub struct WatchedFiles {
    paths: Vec<PathBuf>,
    seen: Vec<FileStamp>,
}

impl WatchedFiles {
    /// Starts watching `paths` as they are now.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let seen = stamps(&paths);
        Self { paths, seen }
    }

    /// The files watched.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Whether any file changed (written, replaced, removed or created) since the last check;
    /// remembers what they look like now.
    pub fn changed(&mut self) -> bool {
        let now = stamps(&self.paths);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<FileStamp> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
        })
        .collect()
}

/// Checks `files` every `interval` (at least [`MIN_POLL_INTERVAL`]) until `shutdown`
/// resolves, and calls `on_change` after each check that found a change.
///
/// `on_change` is the caller's reload: it should load the whole set, swap it in only if it is
/// valid, and count and log the outcome. The first check is immediate.
pub async fn watch_files(
    mut files: WatchedFiles,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
    mut on_change: impl FnMut(),
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(interval.max(MIN_POLL_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        if files.changed() {
            on_change();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = files
            .iter()
            .map(|(name, text)| {
                let p = dir.path().join(name);
                fs::write(&p, text).unwrap();
                p
            })
            .collect();
        (dir, paths)
    }

    #[test]
    fn unchanged_files_are_not_a_change() {
        let (_dir, paths) = dir_with(&[("cert.pem", "cert"), ("key.pem", "key")]);
        let mut w = WatchedFiles::new(paths.clone());
        assert_eq!(w.paths(), paths.as_slice());
        assert!(!w.changed());
        assert!(!w.changed());
    }

    #[test]
    fn a_rewrite_is_a_change_seen_once() {
        let (_dir, paths) = dir_with(&[("cert.pem", "cert"), ("key.pem", "key")]);
        let mut w = WatchedFiles::new(paths.clone());
        fs::write(&paths[1], "a longer key").unwrap();
        assert!(w.changed());
        assert!(!w.changed(), "the new state is remembered");
    }

    #[test]
    fn a_replacement_of_the_same_size_is_a_change() {
        // How a Kubernetes Secret volume rotates: a new file renamed over the old one.
        let (dir, paths) = dir_with(&[("ca.pem", "ca-1")]);
        let mut w = WatchedFiles::new(paths.clone());
        let next = dir.path().join("ca.pem.new");
        fs::write(&next, "ca-2").unwrap();
        fs::rename(&next, &paths[0]).unwrap();
        assert!(w.changed());
        assert!(!w.changed());
    }

    #[test]
    fn removal_and_reappearance_are_changes() {
        let (_dir, paths) = dir_with(&[("cert.pem", "cert")]);
        let mut w = WatchedFiles::new(paths.clone());
        fs::remove_file(&paths[0]).unwrap();
        assert!(w.changed());
        assert!(!w.changed(), "still missing is no change");
        fs::write(&paths[0], "cert").unwrap();
        assert!(w.changed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_reloads_on_change_and_stops_on_shutdown() {
        let (_dir, paths) = dir_with(&[("cert.pem", "cert"), ("key.pem", "key")]);
        let (changed_tx, mut changed) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(watch_files(
            WatchedFiles::new(paths.clone()),
            Duration::ZERO,
            async {
                let _ = stopped.await;
            },
            move || changed_tx.try_send(()).unwrap(),
        ));
        let deadline = Duration::from_secs(60);

        fs::write(&paths[0], "new cert").unwrap();
        tokio::time::timeout(deadline, changed.recv())
            .await
            .expect("a change is reported")
            .expect("the watcher is running");
        fs::write(&paths[1], "new key!").unwrap();
        tokio::time::timeout(deadline, changed.recv())
            .await
            .expect("a second change is reported")
            .expect("the watcher is running");

        stop.send(()).unwrap();
        tokio::time::timeout(deadline, task)
            .await
            .expect("the watcher stops on shutdown")
            .unwrap();
        assert!(changed.try_recv().is_err(), "one call per change");
    }
}
