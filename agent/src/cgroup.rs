//! Pod resource usage from cgroup v2: CPU, memory working set, limits.
//!
//! [`find_pods`] lists the pod cgroups under a cgroup root ([`layout`] knows kubelet's names
//! for both cgroup drivers); [`read_usage`] reads one cgroup's interface files ([`files`]
//! parses them). Both take the root as a parameter, so tests run them on a recorded tree.
//!
//! Each pod is one `metrics` stream (`container: "resources"`). While it is watched it is
//! sampled every `resources_interval_ms` (a second sample after one second, so the CPU rate
//! shows at once) and each sample is encoded as text exposition records (see
//! [`crate::scrape::encode`]):
//!
//! ```text
//! # TYPE pod_cpu_usage_seconds_total counter     cpu.stat usage_usec / 1e6
//! # TYPE pod_cpu_usage_cores gauge               rate of the above since the previous sample
//! # TYPE pod_memory_working_set_bytes gauge      memory.current − memory.stat inactive_file
//! # TYPE pod_memory_usage_bytes gauge            memory.current
//! # TYPE pod_cpu_limit_cores gauge               cpu.max quota / period, when set
//! # TYPE pod_memory_limit_bytes gauge            memory.max, when set
//! ```
//!
//! and the same `container_*` series per container cgroup, labelled `container="<name>"`
//! (from kubelet's `/var/log/containers` symlinks) or, when the name is unknown (the pod
//! sandbox), `container_id="<first 12 hex digits>"`. A file that does not exist (a controller
//! not enabled) leaves its series out.

pub mod files;
pub mod layout;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use logrelay_wire::control::Demand;
use logrelay_wire::labels::{Labels, PodDir, StreamKind};

use crate::metrics::AgentMetrics;
use crate::scrape::encode::{NameFilter, ResultEncoder};
use crate::scrape::exposition::{Family, MetricType, Sample};
use crate::scrape::periodic::{self, Collector, Schedule, SourceState};
use crate::sink::{BatchSink, SinkClosed};

/// The `container` label of a pod's resources stream.
pub const RESOURCES_CONTAINER: &str = "resources";

/// Default of `--cgroup-root`: where the cgroup v2 hierarchy is mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// Default of `--containers-dir`: kubelet's container log symlinks.
pub const DEFAULT_CONTAINERS_DIR: &str = "/var/log/containers";
/// Default of `--resources-interval-ms`.
pub const DEFAULT_INTERVAL_MS: u64 = 5_000;

/// Where and how often pods' resource usage is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcesConfig {
    /// Mount point of the cgroup v2 hierarchy.
    pub cgroup_root: PathBuf,
    /// kubelet's container log symlinks (`<pod>_<ns>_<container>-<id>.log`), read for
    /// container names.
    pub containers_dir: PathBuf,
    /// Time between samples of a watched pod.
    pub interval: Duration,
}

/// One cgroup's usage; `None` where the file is missing or unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// `cpu.stat`.
    pub cpu: Option<files::CpuStat>,
    /// `memory.current`, bytes.
    pub memory_current: Option<u64>,
    /// `memory.stat` `inactive_file`, bytes.
    pub inactive_file: Option<u64>,
    /// `cpu.max`.
    pub cpu_max: Option<files::CpuMax>,
    /// `memory.max`: `Some(None)` is "max" (no limit).
    pub memory_max: Option<Option<u64>>,
}

impl Usage {
    /// Working set, bytes (needs `memory.current`; `inactive_file` taken as 0 if missing).
    pub fn working_set(&self) -> Option<u64> {
        self.memory_current
            .map(|c| files::working_set(c, self.inactive_file.unwrap_or(0)))
    }
}

/// Reads the usage of the cgroup at `dir`.
pub fn read_usage(dir: &Path) -> Usage {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    Usage {
        cpu: read("cpu.stat").as_deref().and_then(files::cpu_stat),
        memory_current: read("memory.current").as_deref().and_then(files::value),
        inactive_file: read("memory.stat")
            .as_deref()
            .and_then(|s| files::stat_value(s, "inactive_file")),
        cpu_max: read("cpu.max").as_deref().and_then(files::cpu_max),
        memory_max: read("memory.max").as_deref().and_then(files::limit),
    }
}

/// A pod cgroup found under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPod {
    /// Pod UID.
    pub uid: String,
    /// Its directory.
    pub dir: PathBuf,
}

fn subdirs(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
}

/// Every pod cgroup under `root` (either driver), sorted by UID.
pub fn find_pods(root: &Path) -> Vec<FoundPod> {
    let mut out = Vec::new();
    for top in layout::KUBEPODS {
        for (name, path) in subdirs(&root.join(top)) {
            if let Some(uid) = layout::pod_uid(&name) {
                out.push(FoundPod { uid, dir: path });
            } else if layout::is_qos_class(&name) {
                for (name, path) in subdirs(&path) {
                    if let Some(uid) = layout::pod_uid(&name) {
                        out.push(FoundPod { uid, dir: path });
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.uid.cmp(&b.uid));
    out
}

/// A pod's resources in the catalog: where to read, and its state across demands.
///
/// Two are the same stream when everything but the state is equal.
#[derive(Debug)]
pub struct PodResources {
    /// Pod UID.
    pub uid: String,
    /// The pod's cgroup directory.
    pub dir: PathBuf,
    /// kubelet's container log symlinks, for container names.
    pub containers_dir: PathBuf,
    /// Time between samples while watched.
    pub interval: Duration,
    state: SourceState,
}

impl PodResources {
    /// A newly found pod.
    pub fn new(uid: String, dir: PathBuf, containers_dir: PathBuf, interval: Duration) -> Self {
        Self {
            uid,
            dir,
            containers_dir,
            interval,
            state: SourceState::new(),
        }
    }
}

impl PartialEq for PodResources {
    fn eq(&self, o: &Self) -> bool {
        (&self.uid, &self.dir, &self.containers_dir, self.interval)
            == (&o.uid, &o.dir, &o.containers_dir, o.interval)
    }
}

impl Eq for PodResources {}

impl Hash for PodResources {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (&self.uid, &self.dir, &self.containers_dir, self.interval).hash(h);
    }
}

/// Every pod under the cgroup root, labelled like its log streams: node, and namespace and pod
/// from the `<ns>_<pod>_<uid>` directory under `pods_dir` when there is one.
pub fn scan(config: &ResourcesConfig, pods_dir: &Path, node: &str) -> Vec<(Labels, PodResources)> {
    let pods = find_pods(&config.cgroup_root);
    if pods.is_empty() {
        return Vec::new();
    }
    let names: HashMap<String, PodDir> = std::fs::read_dir(pods_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| PodDir::parse(e.file_name().to_str()?))
        .map(|p| (p.pod_uid.clone(), p))
        .collect();
    pods.into_iter()
        .map(|p| {
            let dir = names.get(&p.uid);
            let labels = Labels {
                node: node.to_owned(),
                namespace: dir.map(|d| d.namespace.clone()).unwrap_or_default(),
                pod: dir.map(|d| d.pod.clone()).unwrap_or_default(),
                pod_uid: p.uid.clone(),
                container: RESOURCES_CONTAINER.into(),
                kind: StreamKind::Metrics,
                ..Labels::default()
            };
            let res =
                PodResources::new(p.uid, p.dir, config.containers_dir.clone(), config.interval);
            (labels, res)
        })
        .collect()
}

/// One sample of a pod: the pod cgroup and each container cgroup.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodSample {
    /// The pod cgroup.
    pub pod: Usage,
    /// Each container cgroup, by id.
    pub containers: Vec<ContainerSample>,
}

/// One container cgroup's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    /// Its full id (64 hex digits).
    pub id: String,
    /// The label naming it: `("container", name)`, or `("container_id", first 12 hex digits)`
    /// when no log symlink names it (the pod sandbox).
    pub label: (&'static str, String),
    /// Its usage.
    pub usage: Usage,
}

/// Container names by id, from kubelet's log symlinks in `containers_dir`.
pub fn container_names(containers_dir: &Path) -> HashMap<String, String> {
    std::fs::read_dir(containers_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let l = layout::container_log_name(&name)?;
            Some((l.id.to_owned(), l.container.to_owned()))
        })
        .collect()
}

/// Reads a pod's cgroup and its containers' (blocking file reads).
pub fn sample_pod(dir: &Path, containers_dir: &Path) -> PodSample {
    let mut containers: Vec<_> = subdirs(dir)
        .filter_map(|(name, path)| Some((layout::container_id(&name)?.to_owned(), path)))
        .collect();
    containers.sort();
    let names = if containers.is_empty() {
        HashMap::new()
    } else {
        container_names(containers_dir)
    };
    PodSample {
        pod: read_usage(dir),
        containers: containers
            .into_iter()
            .map(|(id, path)| ContainerSample {
                label: match names.get(&id) {
                    Some(n) => ("container", n.clone()),
                    None => ("container_id", id[..12].to_owned()),
                },
                usage: read_usage(&path),
                id,
            })
            .collect(),
    }
}

/// One cgroup's place in a sample: its labels, its usage now and at the previous sample.
struct Row<'a> {
    labels: Vec<(String, String)>,
    now: &'a Usage,
    before: Option<&'a Usage>,
}

type Series = (&'static str, MetricType, fn(&Usage) -> Option<f64>);

/// The series read directly off one cgroup, by name suffix.
const SERIES: [Series; 5] = [
    ("cpu_usage_seconds_total", MetricType::Counter, |u| {
        u.cpu.map(|c| c.usage_usec as f64 / 1e6)
    }),
    ("memory_working_set_bytes", MetricType::Gauge, |u| {
        u.working_set().map(|v| v as f64)
    }),
    ("memory_usage_bytes", MetricType::Gauge, |u| {
        u.memory_current.map(|v| v as f64)
    }),
    ("cpu_limit_cores", MetricType::Gauge, |u| {
        u.cpu_max.and_then(|m| m.cores())
    }),
    ("memory_limit_bytes", MetricType::Gauge, |u| {
        u.memory_max.flatten().map(|v| v as f64)
    }),
];

/// The series of a sample, given the previous one and the seconds between (for CPU rates):
/// `pod_*` families, then `container_*` families.
pub fn families(prev: Option<(&PodSample, f64)>, cur: &PodSample) -> Vec<Family> {
    let secs = prev.map(|(_, s)| s);
    let pod = [Row {
        labels: Vec::new(),
        now: &cur.pod,
        before: prev.map(|(p, _)| &p.pod),
    }];
    let containers: Vec<Row<'_>> = cur
        .containers
        .iter()
        .map(|c| Row {
            labels: vec![(c.label.0.to_owned(), c.label.1.clone())],
            now: &c.usage,
            before: prev
                .and_then(|(p, _)| p.containers.iter().find(|b| b.id == c.id).map(|b| &b.usage)),
        })
        .collect();
    let mut out = Vec::new();
    for (scope, rows) in [("pod", &pod[..]), ("container", &containers[..])] {
        for (i, (suffix, kind, get)) in SERIES.iter().enumerate() {
            push_family(&mut out, format!("{scope}_{suffix}"), *kind, rows, |r| {
                get(r.now)
            });
            if i == 0 {
                push_family(
                    &mut out,
                    format!("{scope}_cpu_usage_cores"),
                    MetricType::Gauge,
                    rows,
                    |r| cpu_rate(r.before?, r.now, secs?),
                );
            }
        }
    }
    out
}

/// Cores used between two readings `secs` apart.
fn cpu_rate(before: &Usage, now: &Usage, secs: f64) -> Option<f64> {
    let (a, b) = (before.cpu?, now.cpu?);
    (secs > 0.0 && b.usage_usec >= a.usage_usec)
        .then(|| (b.usage_usec - a.usage_usec) as f64 / 1e6 / secs)
}

/// Appends family `name` with a sample per row that has a value (none: no family).
fn push_family(
    out: &mut Vec<Family>,
    name: String,
    kind: MetricType,
    rows: &[Row<'_>],
    value: impl Fn(&Row<'_>) -> Option<f64>,
) {
    let samples: Vec<Sample> = rows
        .iter()
        .filter_map(|r| {
            Some(Sample {
                name: name.clone(),
                labels: r.labels.clone(),
                value: value(r)?,
                timestamp_ms: None,
                exemplar: None,
            })
        })
        .collect();
    if !samples.is_empty() {
        out.push(Family {
            name,
            kind,
            help: None,
            unit: None,
            samples,
        });
    }
}

struct Sampler<'a> {
    pod: &'a PodResources,
    metrics: &'a AgentMetrics,
    prev: Option<(i64, PodSample)>,
}

impl Collector for Sampler<'_> {
    type Reading = PodSample;

    async fn read(&mut self) -> (i64, PodSample) {
        let (dir, names) = (self.pod.dir.clone(), self.pod.containers_dir.clone());
        let sample = crate::blocking::run(move || sample_pod(&dir, &names))
            .await
            .unwrap_or_default();
        self.metrics.resource_samples.inc();
        (crate::scrape::unix_nanos(SystemTime::now()), sample)
    }

    fn encode(&mut self, ts: i64, s: &PodSample, out: &mut ResultEncoder, filter: &NameFilter) {
        let prev = self.prev.as_ref().map(|(t, p)| (p, (ts - t) as f64 / 1e9));
        out.families(ts, &families(prev, s), filter);
        self.prev = Some((ts, s.clone()));
    }
}

/// Serves one demand of a pod's resources (see [`periodic::serve`]).
pub async fn serve<S: BatchSink>(
    pod: &PodResources,
    spec: &Demand,
    stream_ref: u64,
    max_batch_bytes: usize,
    sink: &mut S,
    metrics: &AgentMetrics,
) -> Result<(), SinkClosed> {
    let mut sampler = Sampler {
        pod,
        metrics,
        prev: None,
    };
    let schedule = Schedule {
        first_interval: pod.interval.min(Duration::from_secs(1)),
        interval: pod.interval,
    };
    periodic::serve(
        &pod.state,
        &mut sampler,
        schedule,
        spec,
        stream_ref,
        max_batch_bytes,
        sink,
        metrics,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_usec: u64, current: u64, inactive: u64) -> Usage {
        Usage {
            cpu: Some(files::CpuStat {
                usage_usec: cpu_usec,
                ..files::CpuStat::default()
            }),
            memory_current: Some(current),
            inactive_file: Some(inactive),
            cpu_max: Some(files::CpuMax {
                quota_usec: Some(50_000),
                period_usec: 100_000,
            }),
            memory_max: Some(None),
        }
    }

    fn value(fams: &[Family], name: &str, label: Option<&str>) -> Option<f64> {
        fams.iter()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels.first().map(|l| l.1.as_str()) == label)
            .map(|s| s.value)
    }

    #[test]
    fn series_rates_and_limits() {
        let a = PodSample {
            pod: usage(1_000_000, 10_000, 4_000),
            containers: vec![ContainerSample {
                id: "id1".into(),
                label: ("container", "main".into()),
                usage: usage(900_000, 9_000, 1_000),
            }],
        };
        let first = families(None, &a);
        assert_eq!(
            value(&first, "pod_cpu_usage_seconds_total", None),
            Some(1.0)
        );
        assert_eq!(
            value(&first, "pod_memory_working_set_bytes", None),
            Some(6000.0)
        );
        assert_eq!(value(&first, "pod_memory_usage_bytes", None), Some(10000.0));
        assert_eq!(value(&first, "pod_cpu_limit_cores", None), Some(0.5));
        assert_eq!(
            value(&first, "pod_memory_limit_bytes", None),
            None,
            "max = no limit"
        );
        assert_eq!(
            value(&first, "pod_cpu_usage_cores", None),
            None,
            "no rate yet"
        );
        assert_eq!(
            value(&first, "container_memory_working_set_bytes", Some("main")),
            Some(8000.0)
        );

        let mut b = a.clone();
        b.pod.cpu.as_mut().unwrap().usage_usec = 3_000_000;
        b.containers[0].usage.cpu.as_mut().unwrap().usage_usec = 1_900_000;
        let second = families(Some((&a, 4.0)), &b);
        assert_eq!(value(&second, "pod_cpu_usage_cores", None), Some(0.5));
        assert_eq!(
            value(&second, "container_cpu_usage_cores", Some("main")),
            Some(0.25)
        );
        let kinds: Vec<_> = second.iter().map(|f| (f.name.as_str(), f.kind)).collect();
        assert_eq!(
            kinds[0],
            ("pod_cpu_usage_seconds_total", MetricType::Counter)
        );
        assert_eq!(kinds[1], ("pod_cpu_usage_cores", MetricType::Gauge));
    }

    #[test]
    fn missing_files_leave_series_out() {
        let s = PodSample {
            pod: Usage {
                cpu: Some(files::CpuStat::default()),
                ..Usage::default()
            },
            containers: Vec::new(),
        };
        let names: Vec<_> = families(None, &s).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["pod_cpu_usage_seconds_total"]);
    }
}
