//! Discovery of container logs under the pods directory.
//!
//! Layout (kubelet): `<pods_dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log`. Each
//! `<restart>.log` is one stream (a restart is a new stream with its own `restart` label);
//! rotated files (`0.log.<timestamp>`, `.gz`) are not streams. A log may be a symlink (Docker
//! json-file logs are linked there), followed to a regular file.
//!
//! New pods and containers are seen at once: inotify (through `notify`) watches the pods
//! directory and every pod directory (never the container directories, whose files are written
//! all the time) and wakes a rescan. A periodic rescan is the safety net, and finds restarts.
//! Rescans are cheap: a directory whose modification time did not change is not read again.
//!
//! A stream whose file disappears while it is being followed stays in the catalog until the
//! follower has read it to its end and sent it ([`Tailer::is_draining`]); then it is removed
//! and forgotten.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use logrelay_wire::labels::{Labels, PodDir, StreamKind, parse_restart};
use notify::Watcher;
use tokio::sync::{Notify, watch};

use crate::kube::{PodIndex, TaskLabels};
use crate::tail::Tailer;

use super::catalog::{Catalog, Entry, Group, Source};
use super::identity::{MetadataWait, with_identity};

/// Default of `--pods-dir`: where kubelet writes pod logs.
pub const DEFAULT_PODS_DIR: &str = "/var/log/pods";
/// Default of `--rescan-ms`.
pub const DEFAULT_RESCAN_MS: u64 = 250;
/// Default of `--resync-ms`.
pub const DEFAULT_RESYNC_MS: u64 = 2_000;

/// The log discovery loop's configuration.
#[derive(Debug, Clone)]
pub struct LogsConfig {
    /// Directory kubelet writes pod logs to (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    pub pods_dir: PathBuf,
    /// This node's name, in every stream's labels.
    pub node: String,
    /// Time between rescans without inotify; with it, between rescans of directories still
    /// settling.
    pub rescan: Duration,
    /// With inotify: time between rescans of every container directory (the safety net, and
    /// how container restarts are found).
    pub resync: Duration,
    /// Pod labels (or annotations) mapped onto task identity, with a pod index.
    pub task_labels: TaskLabels,
}

/// A vanished stream is kept at most this long while its follower drains it.
const MAX_DRAIN: Duration = Duration::from_secs(60);
/// The shortest rescan period.
const MIN_PERIOD: Duration = Duration::from_millis(10);
/// A vanished stream is kept at least this long (kubelet renames `0.log` before the runtime
/// reopens it).
const VANISH_GRACE: Duration = Duration::from_secs(1);

/// A directory's entries, remembered with its modification time.
#[derive(Debug, Clone)]
struct Cached {
    mtime: Option<SystemTime>,
    /// The entries were read after the directory had been unchanged for a while: file times
    /// come from a coarse clock, so a change within the same tick would not move `mtime`.
    settled: bool,
    names: Vec<String>,
}

/// How long a directory must have been unchanged before its listing is trusted by mtime.
const SETTLED: Duration = Duration::from_secs(1);

/// Scans the pods directory, re-reading only directories that changed.
#[derive(Debug, Default)]
pub struct Scanner {
    dirs: HashMap<PathBuf, Cached>,
    /// Streams found, by container directory.
    found: HashMap<PathBuf, Vec<Entry>>,
    /// Pod directories found.
    pod_dirs: Vec<PathBuf>,
}

impl Scanner {
    /// The names in `dir`, from the cache when its modification time is unchanged; `changed`
    /// is set when they differ from the cached ones.
    fn names(
        &mut self,
        dir: &Path,
        seen: &mut HashSet<PathBuf>,
        changed: &mut bool,
    ) -> Option<Vec<String>> {
        seen.insert(dir.to_path_buf());
        let mtime = std::fs::metadata(dir).ok()?.modified().ok();
        if let Some(c) = self.dirs.get(dir)
            && c.settled
            && c.mtime.is_some()
            && c.mtime == mtime
        {
            return Some(c.names.clone());
        }
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort_unstable();
        let settled = mtime
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > SETTLED);
        if self.dirs.get(dir).is_none_or(|c| c.names != names) {
            *changed = true;
        }
        self.dirs.insert(
            dir.to_path_buf(),
            Cached {
                mtime,
                settled,
                names: names.clone(),
            },
        );
        Some(names)
    }

    /// Rescans `pods_dir`. With `deep`, every container directory is looked at (to find
    /// restarts); without, only pods whose directory changed are. Returns whether the streams
    /// found changed.
    pub fn scan(&mut self, pods_dir: &Path, node: &str, deep: bool) -> bool {
        let mut seen = HashSet::new();
        let mut changed = false;
        let pods = self
            .names(pods_dir, &mut seen, &mut changed)
            .unwrap_or_default();
        let mut pod_dirs = Vec::with_capacity(pods.len());
        for pod in pods {
            let Some(pod_id) = PodDir::parse(&pod) else {
                continue;
            };
            let pod_path = pods_dir.join(&pod);
            let mut pod_changed = false;
            let Some(containers) = self.names(&pod_path, &mut seen, &mut pod_changed) else {
                continue;
            };
            changed |= pod_changed;
            pod_dirs.push(pod_path.clone());
            for container in containers {
                let dir = pod_path.join(&container);
                if !deep && !pod_changed && self.found.get(&dir).is_some_and(|e| !e.is_empty()) {
                    // Nothing new in this pod: its containers are as they were. (A container
                    // directory without a log yet is looked at again: its first log is due.)
                    seen.insert(dir);
                    continue;
                }
                let mut dir_changed = false;
                let Some(files) = self.names(&dir, &mut seen, &mut dir_changed) else {
                    continue;
                };
                if !dir_changed && self.found.contains_key(&dir) {
                    continue;
                }
                changed = true;
                let entries = files
                    .iter()
                    .filter_map(|file| {
                        let restart = parse_restart(file)?;
                        let path = dir.join(file);
                        // Follows a symlink: the stream is the file it points to.
                        std::fs::metadata(&path)
                            .is_ok_and(|m| m.is_file())
                            .then(|| Entry {
                                labels: Labels {
                                    node: node.to_owned(),
                                    namespace: pod_id.namespace.clone(),
                                    pod: pod_id.pod.clone(),
                                    pod_uid: pod_id.pod_uid.clone(),
                                    container: container.clone(),
                                    restart,
                                    kind: StreamKind::Log,
                                    ..Labels::default()
                                },
                                source: Source::Log { path },
                            })
                    })
                    .collect();
                self.found.insert(dir, entries);
            }
        }
        let before = self.found.len();
        self.dirs.retain(|d, _| seen.contains(d));
        self.found.retain(|d, _| seen.contains(d));
        changed |= self.found.len() != before;
        self.pod_dirs = pod_dirs;
        changed
    }

    /// True when some directory changed too recently for its listing to be trusted by mtime.
    pub fn unsettled(&self) -> bool {
        self.dirs.values().any(|c| !c.settled)
    }

    /// Container directories without a log file yet (just created: the runtime is about to
    /// create the first log), watched until it appears.
    fn awaiting_logs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.found
            .iter()
            .filter(|(_, entries)| entries.is_empty())
            .map(|(dir, _)| dir.clone())
    }

    /// Every stream found by the last scan.
    pub fn entries(&self) -> Vec<Entry> {
        self.found.values().flatten().cloned().collect()
    }
}

/// inotify watches on the pods directory, each pod directory and each container directory that
/// has no log yet; wakes `wake` when an entry is created, removed or renamed in one of them.
/// (Container directories with logs are not watched: every write to a log would be an event.)
struct Hint {
    watcher: notify::RecommendedWatcher,
    watched: HashSet<PathBuf>,
}

impl Hint {
    fn new(wake: Arc<Notify>) -> Option<Self> {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| {
                matches!(
                    e.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Remove(_)
                        | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                )
            }) {
                wake.notify_one();
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "no inotify; discovery relies on rescans"))
        .ok()?;
        Some(Self {
            watcher,
            watched: HashSet::new(),
        })
    }

    /// Watches exactly `dirs` (adding new ones, dropping gone ones); true when one was added
    /// (what was created in it before the watch needs another look).
    fn watch(&mut self, dirs: impl IntoIterator<Item = PathBuf>) -> bool {
        let mut added = false;
        let want: HashSet<PathBuf> = dirs.into_iter().collect();
        for gone in self.watched.difference(&want).cloned().collect::<Vec<_>>() {
            let _ = self.watcher.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for dir in want {
            if !self.watched.contains(&dir)
                && self
                    .watcher
                    .watch(&dir, notify::RecursiveMode::NonRecursive)
                    .is_ok()
            {
                self.watched.insert(dir);
                added = true;
            }
        }
        added
    }
}

/// Rescans on inotify hints and periodically, and updates the catalog's log group, until
/// shutdown.
///
/// With inotify, a hint rescans the pods directory and the pods that changed, and a deep rescan
/// (every container directory, for restarts) runs every `resync`; without it, every `rescan`
/// rescan is deep. With pod metadata from the Kubernetes API (`pods`), a new pod's streams wait
/// for its task identity, at most [`super::identity::METADATA_WAIT`].
pub async fn run(
    config: LogsConfig,
    catalog: Arc<Catalog>,
    tailer: Arc<Tailer>,
    pods: Option<Arc<PodIndex>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let wake = Arc::new(Notify::new());
    let mut hint = Hint::new(wake.clone());
    let period = if hint.is_some() {
        config.resync.max(config.rescan)
    } else {
        config.rescan
    };
    let mut tick = tokio::time::interval(period.max(MIN_PERIOD));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While a directory may still be settling, a shallow rescan runs every `rescan`.
    let mut settle = tokio::time::interval(config.rescan.max(MIN_PERIOD));
    settle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsettled = false;
    let mut again = false;
    let scanner = Arc::new(std::sync::Mutex::new(Scanner::default()));
    // Streams whose file vanished while followed: kept until drained.
    let mut draining: HashMap<PathBuf, (Entry, tokio::time::Instant)> = HashMap::new();
    let mut known: HashMap<PathBuf, Entry> = HashMap::new();
    let mut first = true;
    // Everything the last scan found, before task identity is added.
    let mut scanned: Vec<Entry> = Vec::new();
    // When each pod was first seen without metadata.
    let mut waiting = MetadataWait::default();
    let no_pods = Notify::new();
    // The pod index version whose metadata the catalog reflects.
    let mut applied = 0;
    loop {
        let mut refresh = false;
        let deep = if std::mem::take(&mut again) {
            false
        } else {
            let pods_changed = pods.as_ref().map_or(&no_pods, |p| &p.changed).notified();
            tokio::select! {
                _ = tick.tick() => true,
                () = wake.notified() => false,
                _ = settle.tick(), if unsettled || waiting.holding() || !draining.is_empty() => false,
                () = pods_changed => {
                    refresh = true;
                    false
                }
                () = crate::shutdown::stopped(&mut shutdown) => return,
            }
        };
        if let Some(index) = &pods
            && index.version() != applied
        {
            // Checked on every pass: a change that came while this loop was busy (its wake-up
            // lost) is applied at the next tick.
            applied = index.version();
            refresh = true;
        }
        let dir = config.pods_dir.clone();
        let node = config.node.clone();
        let sc = scanner.clone();
        let Ok((changed, found, pod_dirs, still)) = tokio::task::spawn_blocking(move || {
            let mut sc = sc.lock().expect("scanner lock");
            let changed = sc.scan(&dir, &node, deep);
            let found = changed.then(|| sc.entries());
            let pod_dirs = changed.then(|| {
                let mut dirs = sc.pod_dirs.clone();
                dirs.extend(sc.awaiting_logs());
                dirs
            });
            (changed, found, pod_dirs, sc.unsettled())
        })
        .await
        else {
            continue;
        };
        unsettled = still;
        if let (Some(h), Some(pod_dirs)) = (hint.as_mut(), pod_dirs) {
            again = h.watch(std::iter::once(config.pods_dir.clone()).chain(pod_dirs));
        } else if first && let Some(h) = hint.as_mut() {
            again = h.watch([config.pods_dir.clone()]);
        }
        first = false;
        if !changed && !refresh && draining.is_empty() && !waiting.holding() {
            continue;
        }
        if let Some(f) = found {
            scanned = f;
        }
        let found = match &pods {
            None => scanned.clone(),
            Some(index) => with_identity(&scanned, index, &config.task_labels, &mut waiting),
        };
        let found_paths: HashSet<PathBuf> =
            found.iter().map(|e| log_path(e).to_path_buf()).collect();
        for (path, entry) in known.drain() {
            if !found_paths.contains(&path) && !draining.contains_key(&path) {
                draining.insert(path, (entry, tokio::time::Instant::now()));
            }
        }
        let mut listed = found;
        draining.retain(|path, (entry, since)| {
            if found_paths.contains(path) {
                return false;
            }
            // A rename rotation leaves the path empty for a moment: a stream is only gone once
            // it stayed away a while, and was drained if followed.
            if since.elapsed() < VANISH_GRACE
                || (since.elapsed() < MAX_DRAIN && tailer.is_draining(path))
            {
                listed.push(entry.clone());
                return true;
            }
            tailer.forget(path);
            false
        });
        known = listed
            .iter()
            .map(|e| (log_path(e).to_path_buf(), e.clone()))
            .collect();
        let diff = catalog.replace(Group::Logs, listed);
        for s in &diff.added {
            tracing::info!(stream = s.id, namespace = %s.labels.namespace, pod = %s.labels.pod,
                container = %s.labels.container, restart = s.labels.restart, "stream discovered");
        }
        for s in &diff.removed {
            tracing::info!(stream = s.id, reason = %s.reason, "stream removed");
        }
    }
}

fn log_path(e: &Entry) -> &Path {
    match &e.source {
        Source::Log { path } => path,
        #[allow(unreachable_patterns)]
        _ => Path::new(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_containers_restarts_and_symlinks_but_not_rotated_files() {
        let pods = tempfile::tempdir().unwrap();
        let c = pods.path().join("ns_pod_uid-1").join("app");
        std::fs::create_dir_all(&c).unwrap();
        for f in [
            "0.log",
            "1.log",
            "0.log.20240101-000000",
            "0.log.20240101-000000.gz",
        ] {
            std::fs::write(c.join(f), b"").unwrap();
        }
        let target = pods.path().join("elsewhere-json.log");
        std::fs::write(&target, b"").unwrap();
        let d = pods.path().join("ns_pod_uid-1").join("docker");
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(&target, d.join("0.log")).unwrap();
        std::fs::create_dir_all(pods.path().join("not-a-pod-dir").join("x")).unwrap();

        let mut scanner = Scanner::default();
        assert!(scanner.scan(pods.path(), "n", true));
        let mut found: Vec<(String, u32)> = scanner
            .entries()
            .into_iter()
            .map(|e| (e.labels.container, e.labels.restart))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [("app".into(), 0), ("app".into(), 1), ("docker".into(), 0)]
        );
        // A new restart appears in a known directory: a deep scan finds it.
        std::fs::write(c.join("2.log"), b"").unwrap();
        assert!(scanner.scan(pods.path(), "n", true));
        assert_eq!(scanner.entries().len(), 4);
        assert!(
            !scanner.scan(pods.path(), "n", true),
            "nothing changed since"
        );
    }
}
