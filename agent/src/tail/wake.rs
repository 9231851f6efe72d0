//! Wake-ups for followers: inotify on the directories of followed files.
//!
//! A follower that reached the end of its file waits for the next write. Polling alone makes that
//! wait cost half the poll interval on average, which dominates the agent's share of end-to-end
//! latency. So each follower registers the directory of its file here, and any write, creation,
//! rename or removal in that directory wakes the followers of that directory at once. Events are
//! only a hint: a follower still polls, less often ([`WAKE_FALLBACK`]), in case an event is lost
//! or inotify is unavailable (then it polls at its configured interval).
//!
//! Only followed files are watched, so an agent that nobody watches holds no watch at all, and
//! the inotify thread starts with the first follower. A container directory holds only that
//! container's logs, so events there are about the followed stream (or its rotation).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::Watcher;
use tokio::sync::Notify;

/// How often a follower woken by inotify still polls its file, in case an event was missed.
pub const WAKE_FALLBACK: Duration = Duration::from_millis(250);

type Waiters = HashMap<PathBuf, Vec<Arc<Notify>>>;

/// The followers' wake-ups, shared by every follower of a tailer.
#[derive(Debug, Default)]
pub struct Wakes {
    /// Followers by watched directory.
    waiters: Arc<Mutex<Waiters>>,
    /// The inotify watcher: `None` until the first registration, and `Some(None)` once it
    /// could not be created (then followers poll).
    watcher: Mutex<Option<Option<notify::RecommendedWatcher>>>,
}

/// One follower's registration; dropping it unregisters (and unwatches an emptied directory).
#[derive(Debug)]
pub struct Wake {
    wakes: Weak<Wakes>,
    dir: PathBuf,
    notify: Arc<Notify>,
    /// False when inotify is unavailable or the directory could not be watched.
    hinted: bool,
}

impl Wakes {
    /// A new, empty set (no thread, no watch).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a follower of `file`: it is woken on any change in the file's directory.
    pub fn register(self: &Arc<Self>, file: &Path) -> Wake {
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let notify = Arc::new(Notify::new());
        // The watcher lock serialises (un)registrations; the waiters lock is never held while
        // calling the watcher, whose event thread takes it to deliver events.
        let mut watcher = self.watcher.lock().expect("wakes lock");
        let watcher = watcher.get_or_insert_with(|| self.start());
        if let Some(list) = self.waiters.lock().expect("wakes lock").get_mut(&dir) {
            list.push(notify.clone());
            return self.wake(dir, notify, true);
        }
        let hinted = match watcher.as_mut() {
            Some(w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    let mut waiters = self.waiters.lock().expect("wakes lock");
                    waiters.insert(dir.clone(), vec![notify.clone()]);
                    true
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "no inotify watch; polling");
                    false
                }
            },
            None => false,
        };
        self.wake(dir, notify, hinted)
    }

    fn wake(self: &Arc<Self>, dir: PathBuf, notify: Arc<Notify>, hinted: bool) -> Wake {
        Wake {
            wakes: Arc::downgrade(self),
            dir,
            notify,
            hinted,
        }
    }

    /// Directories watched.
    pub fn watched(&self) -> usize {
        self.waiters.lock().expect("wakes lock").len()
    }

    fn start(&self) -> Option<notify::RecommendedWatcher> {
        let waiters = Arc::downgrade(&self.waiters);
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let Some(waiters) = waiters.upgrade() else {
                return;
            };
            let waiters = waiters.lock().expect("wakes lock");
            for path in &event.paths {
                let dir = path.parent().unwrap_or(path);
                for n in waiters.get(dir).into_iter().flatten() {
                    n.notify_one();
                }
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "no inotify; followers poll their files"))
        .ok()
    }

    fn unregister(&self, dir: &Path, notify: &Arc<Notify>) {
        let mut watcher = self.watcher.lock().expect("wakes lock");
        let emptied = {
            let mut waiters = self.waiters.lock().expect("wakes lock");
            let Some(list) = waiters.get_mut(dir) else {
                return;
            };
            list.retain(|n| !Arc::ptr_eq(n, notify));
            list.is_empty() && waiters.remove(dir).is_some()
        };
        if emptied && let Some(Some(w)) = watcher.as_mut() {
            let _ = w.unwatch(dir);
        }
    }
}

impl Wake {
    /// Waits for a change in the directory, or `poll` at most (at least [`WAKE_FALLBACK`] when
    /// inotify watches the directory).
    pub async fn wait(&self, poll: Duration) {
        let limit = if self.hinted {
            poll.max(WAKE_FALLBACK)
        } else {
            poll
        };
        let _ = tokio::time::timeout(limit, self.notify.notified()).await;
    }

    /// True when inotify watches the file's directory.
    pub fn is_hinted(&self) -> bool {
        self.hinted
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        if self.hinted
            && let Some(wakes) = self.wakes.upgrade()
        {
            wakes.unregister(&self.dir, &self.notify);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_wakes_the_followers_of_that_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let wakes = Wakes::new();
        let wa = wakes.register(&a.join("0.log"));
        let wa2 = wakes.register(&a.join("0.log"));
        let wb = wakes.register(&b.join("0.log"));
        assert!(wa.is_hinted(), "inotify is available on this machine");
        assert_eq!(wakes.watched(), 2);

        std::fs::write(a.join("0.log"), b"line\n").unwrap();
        // Both followers of `a` wake long before their poll would; `b` stays asleep.
        let hour = Duration::from_secs(3600);
        tokio::time::timeout(Duration::from_secs(20), async {
            wa.wait(hour).await;
            wa2.wait(hour).await;
        })
        .await
        .expect("woken by the write");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wb.notify.notified())
                .await
                .is_err(),
            "another directory's follower is not woken"
        );

        drop((wa, wa2));
        assert_eq!(wakes.watched(), 1, "an emptied directory is unwatched");
        drop(wb);
        assert_eq!(wakes.watched(), 0);
    }
}
