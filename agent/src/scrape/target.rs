//! Scrape targets: static ones from configuration, and pods annotated for Prometheus (pure).
//!
//! A static target is a URL with optional per-target settings, written
//! `URL[,key=value…]`:
//!
//! ```text
//! http://127.0.0.1:9100/metrics,interval_ms=5000,timeout_ms=2000,sample_limit=10000,max_body_bytes=4194304,name=node
//! ```
//!
//! A pod is a target when annotated as the Prometheus community charts' `kubernetes-pods` job
//! reads it: `prometheus.io/scrape: "true"`, `prometheus.io/port` (else each declared TCP
//! container port), `prometheus.io/path` (default `/metrics`), `prometheus.io/scheme` (only
//! `http`). [`pod_targets`] is that mapping; the pods come from the kube metadata watch
//! ([`crate::kube::PodIndex`], `--kube-pods`, the `k8s` feature) and
//! [`super::sources`] turns them into catalog entries.

use std::str::FromStr;
use std::time::Duration;

use logrelay_wire::labels::{Labels, StreamKind};

use super::http::{Url, UrlError};
pub use crate::kube::PodMeta;

/// Settings a target takes when it does not set its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeDefaults {
    /// Time between scrapes while watched.
    pub interval: Duration,
    /// Time allowed for one scrape (capped at the interval).
    pub timeout: Duration,
    /// Prometheus `sample_limit`: a scrape exposing more samples fails; 0 = no limit.
    pub sample_limit: usize,
    /// Largest response body read.
    pub max_body_bytes: usize,
}

impl Default for ScrapeDefaults {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            sample_limit: 0,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// One target, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetSpec {
    /// What is fetched.
    pub url: Url,
    /// Time between scrapes while watched.
    pub interval: Duration,
    /// Time allowed for one scrape, at most `interval`.
    pub timeout: Duration,
    /// A scrape exposing more samples than this fails (`up` 0); 0 = no limit.
    pub sample_limit: usize,
    /// Largest response body read; a larger one fails the scrape.
    pub max_body_bytes: usize,
}

/// A static target as configured: a URL and the settings it overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticTarget {
    /// What is fetched.
    pub url: Url,
    /// Stream name (the `container` label is `scrape:<name>`); default `host:port/path`.
    pub name: Option<String>,
    /// `interval_ms=`.
    pub interval: Option<Duration>,
    /// `timeout_ms=`.
    pub timeout: Option<Duration>,
    /// `sample_limit=`.
    pub sample_limit: Option<usize>,
    /// `max_body_bytes=`.
    pub max_body_bytes: Option<usize>,
}

/// Why a static target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The URL is not a scrapeable `http://` URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// An option is unknown or its value is not a number.
    #[error(
        "bad scrape target option {0:?} (known: name, interval_ms, timeout_ms, sample_limit, max_body_bytes)"
    )]
    Option(String),
}

impl FromStr for StaticTarget {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, TargetError> {
        let mut parts = s.split(',');
        let url: Url = parts.next().unwrap_or_default().trim().parse()?;
        let mut t = Self {
            url,
            name: None,
            interval: None,
            timeout: None,
            sample_limit: None,
            max_body_bytes: None,
        };
        for opt in parts.map(str::trim).filter(|o| !o.is_empty()) {
            let bad = || TargetError::Option(opt.to_owned());
            let (key, value) = opt.split_once('=').ok_or_else(bad)?;
            let num = || value.parse::<u64>().map_err(|_| bad());
            match key {
                "name" if !value.is_empty() => t.name = Some(value.to_owned()),
                "interval_ms" => t.interval = Some(Duration::from_millis(num()?.max(1))),
                "timeout_ms" => t.timeout = Some(Duration::from_millis(num()?.max(1))),
                "sample_limit" => t.sample_limit = Some(num()? as usize),
                "max_body_bytes" => t.max_body_bytes = Some(num()?.max(1) as usize),
                _ => return Err(bad()),
            }
        }
        Ok(t)
    }
}

impl StaticTarget {
    /// The resolved target.
    pub fn spec(&self, defaults: &ScrapeDefaults) -> TargetSpec {
        let interval = self.interval.unwrap_or(defaults.interval);
        TargetSpec {
            url: self.url.clone(),
            interval,
            timeout: self.timeout.unwrap_or(defaults.timeout).min(interval),
            sample_limit: self.sample_limit.unwrap_or(defaults.sample_limit),
            max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        }
    }

    /// Labels of its stream: the node, and `container` = `scrape:<name>`.
    pub fn labels(&self, node: &str) -> Labels {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.url.authority(), self.url.path));
        Labels {
            node: node.to_owned(),
            container: format!("scrape:{name}"),
            kind: StreamKind::Metrics,
            ..Labels::default()
        }
    }
}

/// Why an annotated pod gives no target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodSkip {
    /// `prometheus.io/scrape` is absent or not `"true"`.
    #[error("not annotated for scraping")]
    NotAnnotated,
    /// The pod has no IP yet.
    #[error("pod has no IP")]
    NoIp,
    /// `prometheus.io/port` is not a port number.
    #[error("bad prometheus.io/port {0:?}")]
    BadPort(String),
    /// `prometheus.io/scheme` is not `http`.
    #[error("unsupported prometheus.io/scheme {0:?}")]
    Scheme(String),
    /// `prometheus.io/path` is not an absolute path.
    #[error("bad prometheus.io/path {0:?}")]
    BadPath(String),
    /// No port annotation and no declared TCP port.
    #[error("no port to scrape")]
    NoPort,
}

impl PodSkip {
    /// A short name for metrics (`logrelay_agent_scrape_pods_skipped{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAnnotated => "not_annotated",
            Self::NoIp => "no_ip",
            Self::BadPort(_) => "bad_port",
            Self::Scheme(_) => "scheme",
            Self::BadPath(_) => "bad_path",
            Self::NoPort => "no_port",
        }
    }
}

/// The targets of an annotated pod, each with the labels of its stream: the pod's labels
/// (`pod`, task identity…) as given in `base`, kind `metrics`, and `container` =
/// `scrape:<port><path>`.
pub fn pod_targets(
    pod: &PodMeta,
    base: &Labels,
    defaults: &ScrapeDefaults,
) -> Result<Vec<(Labels, TargetSpec)>, PodSkip> {
    let ann = |k: &str| pod.annotations.get(k).map(|v| v.trim());
    if ann("prometheus.io/scrape") != Some("true") {
        return Err(PodSkip::NotAnnotated);
    }
    if let Some(scheme) = ann("prometheus.io/scheme")
        && !scheme.eq_ignore_ascii_case("http")
    {
        return Err(PodSkip::Scheme(scheme.to_owned()));
    }
    let ip = pod.ip.ok_or(PodSkip::NoIp)?;
    let path = ann("prometheus.io/path")
        .filter(|p| !p.is_empty())
        .unwrap_or("/metrics");
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(PodSkip::BadPath(path.to_owned()));
    }
    let mut ports: Vec<u16> = match ann("prometheus.io/port") {
        Some(p) => vec![
            p.parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| PodSkip::BadPort(p.to_owned()))?,
        ],
        None => pod
            .ports
            .iter()
            .filter(|p| p.protocol.is_empty() || p.protocol.eq_ignore_ascii_case("TCP"))
            .map(|p| p.port)
            .collect(),
    };
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        return Err(PodSkip::NoPort);
    }
    Ok(ports
        .into_iter()
        .map(|port| {
            let labels = Labels {
                container: format!("scrape:{port}{path}"),
                restart: 0,
                kind: StreamKind::Metrics,
                ..base.clone()
            };
            let spec = TargetSpec {
                url: Url {
                    host: ip.to_string(),
                    port,
                    path: path.to_owned(),
                },
                interval: defaults.interval,
                timeout: defaults.timeout.min(defaults.interval),
                sample_limit: defaults.sample_limit,
                max_body_bytes: defaults.max_body_bytes,
            };
            (labels, spec)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_targets_with_options() {
        let t: StaticTarget =
            "http://127.0.0.1:9100/metrics, interval_ms=500,timeout_ms=2000,sample_limit=10,name=node"
                .parse()
                .unwrap();
        let spec = t.spec(&ScrapeDefaults::default());
        assert_eq!(spec.interval, Duration::from_millis(500));
        assert_eq!(
            spec.timeout,
            Duration::from_millis(500),
            "capped at the interval"
        );
        assert_eq!(spec.sample_limit, 10);
        assert_eq!(spec.max_body_bytes, 16 * 1024 * 1024);
        assert_eq!(t.labels("n1").container, "scrape:node");
        assert_eq!(t.labels("n1").kind, StreamKind::Metrics);

        let t: StaticTarget = "http://10.0.0.1:8080/m".parse().unwrap();
        assert_eq!(
            t.spec(&ScrapeDefaults::default()).interval,
            Duration::from_secs(15)
        );
        assert_eq!(t.labels("n").container, "scrape:10.0.0.1:8080/m");

        assert!(matches!(
            "http://h/m,color=red".parse::<StaticTarget>(),
            Err(TargetError::Option(_))
        ));
        assert!(matches!(
            "http://h/m,interval_ms=soon".parse::<StaticTarget>(),
            Err(TargetError::Option(_))
        ));
        assert!(matches!(
            "https://h/m".parse::<StaticTarget>(),
            Err(TargetError::Url(_))
        ));
    }

    fn pod(ann: &[(&str, &str)], ports: &[(u16, &str)]) -> PodMeta {
        PodMeta {
            ip: Some("10.1.2.3".parse().unwrap()),
            annotations: ann
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ports: ports
                .iter()
                .map(|(p, proto)| crate::kube::DeclaredPort {
                    container: "main".to_owned(),
                    port: *p,
                    protocol: (*proto).to_owned(),
                })
                .collect(),
            ..PodMeta::default()
        }
    }

    fn base() -> Labels {
        Labels {
            namespace: "ns".into(),
            pod: "task-abc".into(),
            pod_uid: "u".into(),
            container: "ignored".into(),
            run: Some("r1".into()),
            ..Labels::default()
        }
    }

    #[test]
    fn annotated_pod_with_port_and_path() {
        let p = pod(
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "8080"),
                ("prometheus.io/path", "/stats/prometheus"),
            ],
            &[(9999, "TCP")],
        );
        let t = pod_targets(&p, &base(), &ScrapeDefaults::default()).unwrap();
        assert_eq!(t.len(), 1);
        let (labels, spec) = &t[0];
        assert_eq!(
            spec.url.to_string(),
            "http://10.1.2.3:8080/stats/prometheus"
        );
        assert_eq!(labels.container, "scrape:8080/stats/prometheus");
        assert_eq!(labels.kind, StreamKind::Metrics);
        assert_eq!(
            (labels.pod.as_str(), labels.run.as_deref()),
            ("task-abc", Some("r1"))
        );
    }

    #[test]
    fn without_port_annotation_every_tcp_port_is_a_target() {
        let p = pod(
            &[("prometheus.io/scrape", "true")],
            &[(9090, "TCP"), (53, "UDP"), (8080, ""), (9090, "TCP")],
        );
        let t = pod_targets(&p, &base(), &ScrapeDefaults::default()).unwrap();
        let urls: Vec<String> = t.iter().map(|(_, s)| s.url.to_string()).collect();
        assert_eq!(
            urls,
            [
                "http://10.1.2.3:8080/metrics",
                "http://10.1.2.3:9090/metrics"
            ]
        );
    }

    #[test]
    fn pods_that_give_no_target_say_why() {
        let d = ScrapeDefaults::default();
        let b = base();
        assert_eq!(
            pod_targets(&pod(&[], &[(80, "TCP")]), &b, &d),
            Err(PodSkip::NotAnnotated)
        );
        assert_eq!(
            pod_targets(
                &pod(&[("prometheus.io/scrape", "false")], &[(80, "TCP")]),
                &b,
                &d
            ),
            Err(PodSkip::NotAnnotated)
        );
        assert_eq!(
            pod_targets(&pod(&[("prometheus.io/scrape", "true")], &[]), &b, &d),
            Err(PodSkip::NoPort)
        );
        assert_eq!(
            pod_targets(
                &pod(
                    &[
                        ("prometheus.io/scrape", "true"),
                        ("prometheus.io/port", "http")
                    ],
                    &[]
                ),
                &b,
                &d
            ),
            Err(PodSkip::BadPort("http".into()))
        );
        assert_eq!(
            pod_targets(
                &pod(
                    &[
                        ("prometheus.io/scrape", "true"),
                        ("prometheus.io/scheme", "https")
                    ],
                    &[(443, "TCP")]
                ),
                &b,
                &d
            ),
            Err(PodSkip::Scheme("https".into()))
        );
        assert_eq!(
            pod_targets(
                &pod(
                    &[
                        ("prometheus.io/scrape", "true"),
                        ("prometheus.io/path", "metrics")
                    ],
                    &[(80, "TCP")]
                ),
                &b,
                &d
            ),
            Err(PodSkip::BadPath("metrics".into()))
        );
        let mut no_ip = pod(&[("prometheus.io/scrape", "true")], &[(80, "TCP")]);
        no_ip.ip = None;
        assert_eq!(pod_targets(&no_ip, &b, &d), Err(PodSkip::NoIp));
    }

    #[test]
    fn ipv6_pods() {
        let mut p = pod(
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "9102"),
            ],
            &[],
        );
        p.ip = Some("fd00::5".parse().unwrap());
        let t = pod_targets(&p, &base(), &ScrapeDefaults::default()).unwrap();
        assert_eq!(t[0].1.url.to_string(), "http://[fd00::5]:9102/metrics");
    }
}
