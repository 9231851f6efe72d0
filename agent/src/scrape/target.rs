//! Scrape targets: static ones from configuration, and pods annotated for Prometheus (pure).
//!
//! A static target is a URL with optional per-target settings, written
//! `URL[,key=value…]`:
//!
//! ```text
//! http://127.0.0.1:9100/metrics,interval_ms=5000,timeout_ms=2000,sample_limit=10000,max_body_bytes=4194304,name=node
//! https://10.0.0.9:8443/metrics,ca_file=/etc/ca.pem,server_name=exporter.internal,bearer_token_file=/run/token
//! ```
//!
//! The keys `ca_file`, `server_name`, `insecure_skip_verify` and `bearer_token_file` mirror
//! Prometheus' `tls_config` and `authorization.credentials_file`; a target that sets none of
//! them takes the agent-wide `--scrape-ca-file`, `--scrape-ca-cluster`,
//! `--scrape-insecure-skip-verify` and `--scrape-bearer-token-file` ([`ScrapeDefaults`]).
//!
//! A pod is a target when annotated as the Prometheus community charts' `kubernetes-pods` job
//! reads it: `prometheus.io/scrape: "true"`, `prometheus.io/port` (else each declared TCP
//! container port), `prometheus.io/path` (default `/metrics`), `prometheus.io/scheme` (`http`,
//! or `https` when the agent has a CA for scrapes or skips verification). [`pod_targets`] is
//! that mapping; the pods come from the kube metadata watch ([`crate::kube::PodIndex`],
//! `--kube-pods`, the `k8s` feature) and [`crate::discover::metrics`] turns them into catalog
//! entries.
//! Pods never get the bearer token: any pod that can be annotated would receive it.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use logrelay_wire::labels::{Labels, StreamKind};

use super::http::{Scheme, Url, UrlError};
pub use crate::kube::PodMeta;

/// How a target's certificate is checked and what credentials it is sent (Prometheus
/// `tls_config` and `authorization`). The files are read at each scrape, so rotated ones are
/// used without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScrapeAuth {
    /// PEM bundles of the CAs an `https://` target's certificate must chain to (all of them
    /// trusted together).
    pub ca_files: Vec<PathBuf>,
    /// Name the certificate must carry (and the SNI sent) instead of the URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate of an `https://` target: the connection is encrypted but the
    /// target is not authenticated.
    pub insecure_skip_verify: bool,
    /// File whose content (surrounding blanks trimmed) is sent as `Authorization: Bearer`.
    pub bearer_token_file: Option<PathBuf>,
}

impl ScrapeAuth {
    /// Whether an `https://` target can be scraped with these settings: some CA to verify it
    /// with, or verification skipped on purpose.
    pub fn can_verify_https(&self) -> bool {
        self.insecure_skip_verify || !self.ca_files.is_empty()
    }
}

/// Settings a target takes when it does not set its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeDefaults {
    /// Time between scrapes while watched.
    pub interval: Duration,
    /// Time allowed for one scrape (capped at the interval).
    pub timeout: Duration,
    /// Prometheus `sample_limit`: a scrape exposing more samples fails; 0 = no limit.
    pub sample_limit: usize,
    /// Largest response body read.
    pub max_body_bytes: usize,
    /// CAs and verification of `https://` targets (static and annotated pods), and the bearer
    /// token file of static targets (never sent to pods).
    pub auth: ScrapeAuth,
}

/// Default of `--scrape-interval-ms`.
pub const DEFAULT_INTERVAL_MS: u64 = 15_000;
/// Default of `--scrape-timeout-ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default of `--scrape-sample-limit`: no limit.
pub const DEFAULT_SAMPLE_LIMIT: usize = 0;
/// Default of `--scrape-max-body-bytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

impl Default for ScrapeDefaults {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(DEFAULT_INTERVAL_MS),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            sample_limit: DEFAULT_SAMPLE_LIMIT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            auth: ScrapeAuth::default(),
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
    /// TLS verification and credentials.
    pub auth: ScrapeAuth,
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
    /// `ca_file=`: replaces the agent-wide scrape CAs for this target.
    pub ca_file: Option<PathBuf>,
    /// `server_name=`.
    pub server_name: Option<String>,
    /// `insecure_skip_verify=true|false`.
    pub insecure_skip_verify: Option<bool>,
    /// `bearer_token_file=`.
    pub bearer_token_file: Option<PathBuf>,
}

/// Why a static target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The URL is not a scrapeable `http://` URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// An option is unknown or its value is not a number.
    #[error(
        "bad scrape target option {0:?} (known: name, interval_ms, timeout_ms, sample_limit, max_body_bytes, ca_file, server_name, insecure_skip_verify, bearer_token_file)"
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
            ca_file: None,
            server_name: None,
            insecure_skip_verify: None,
            bearer_token_file: None,
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
                "ca_file" if !value.is_empty() => t.ca_file = Some(value.into()),
                "server_name" if !value.is_empty() => t.server_name = Some(value.to_owned()),
                "insecure_skip_verify" => {
                    t.insecure_skip_verify = Some(value.parse().map_err(|_| bad())?);
                }
                "bearer_token_file" if !value.is_empty() => {
                    t.bearer_token_file = Some(value.into());
                }
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
            auth: ScrapeAuth {
                ca_files: match &self.ca_file {
                    Some(own) => vec![own.clone()],
                    None => defaults.auth.ca_files.clone(),
                },
                server_name: self.server_name.clone(),
                insecure_skip_verify: self
                    .insecure_skip_verify
                    .unwrap_or(defaults.auth.insecure_skip_verify),
                bearer_token_file: self
                    .bearer_token_file
                    .clone()
                    .or_else(|| defaults.auth.bearer_token_file.clone()),
            },
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
    /// `prometheus.io/scheme` is neither `http` nor `https`.
    #[error("unsupported prometheus.io/scheme {0:?}")]
    Scheme(String),
    /// `prometheus.io/scheme: https`, and the agent has no CA for scrapes
    /// (`--scrape-ca-file`, `--scrape-ca-cluster`) nor `--scrape-insecure-skip-verify`.
    #[error(
        "prometheus.io/scheme https needs --scrape-ca-file or --scrape-ca-cluster (or --scrape-insecure-skip-verify)"
    )]
    HttpsWithoutCa,
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
            Self::Scheme(_) | Self::HttpsWithoutCa => "scheme",
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
    let scheme = match ann("prometheus.io/scheme") {
        None | Some("") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(s) => return Err(PodSkip::Scheme(s.to_owned())),
    };
    // What pods get of the agent-wide settings: how to verify them, never the bearer token.
    let auth = ScrapeAuth {
        ca_files: defaults.auth.ca_files.clone(),
        server_name: None,
        insecure_skip_verify: defaults.auth.insecure_skip_verify,
        bearer_token_file: None,
    };
    if scheme == Scheme::Https && !auth.can_verify_https() {
        return Err(PodSkip::HttpsWithoutCa);
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
                    scheme,
                    host: ip.to_string(),
                    port,
                    path: path.to_owned(),
                },
                interval: defaults.interval,
                timeout: defaults.timeout.min(defaults.interval),
                sample_limit: defaults.sample_limit,
                max_body_bytes: defaults.max_body_bytes,
                auth: auth.clone(),
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
            "ftp://h/m".parse::<StaticTarget>(),
            Err(TargetError::Url(_))
        ));
        assert!(matches!(
            "https://h/m,insecure_skip_verify=yes".parse::<StaticTarget>(),
            Err(TargetError::Option(_))
        ));
    }

    #[test]
    fn https_static_targets_take_their_own_tls_settings_or_the_agents() {
        let defaults = ScrapeDefaults {
            auth: ScrapeAuth {
                ca_files: vec!["/etc/cluster-ca.crt".into()],
                server_name: None,
                insecure_skip_verify: false,
                bearer_token_file: Some("/run/agent-token".into()),
            },
            ..ScrapeDefaults::default()
        };
        let t: StaticTarget = "https://10.0.0.9:8443/metrics,name=x,ca_file=/etc/own-ca.pem,\
            server_name=exporter.internal,bearer_token_file=/run/own-token"
            .parse()
            .unwrap();
        let spec = t.spec(&defaults);
        assert_eq!(spec.url.scheme, Scheme::Https);
        assert_eq!(
            spec.auth,
            ScrapeAuth {
                ca_files: vec!["/etc/own-ca.pem".into()],
                server_name: Some("exporter.internal".into()),
                insecure_skip_verify: false,
                bearer_token_file: Some("/run/own-token".into()),
            },
            "a target's own settings replace the agent's"
        );

        let t: StaticTarget = "https://10.0.0.9/metrics".parse().unwrap();
        let spec = t.spec(&defaults);
        assert_eq!(spec.url.port, 443);
        assert_eq!(spec.auth, defaults.auth, "the agent's settings by default");
        assert!(spec.auth.can_verify_https());

        let t: StaticTarget = "https://10.0.0.9/metrics,insecure_skip_verify=true"
            .parse()
            .unwrap();
        let spec = t.spec(&ScrapeDefaults::default());
        assert!(spec.auth.insecure_skip_verify && spec.auth.can_verify_https());
        assert!(
            !"https://10.0.0.9/metrics"
                .parse::<StaticTarget>()
                .unwrap()
                .spec(&ScrapeDefaults::default())
                .auth
                .can_verify_https(),
            "no CA and verification not skipped"
        );
    }

    #[test]
    fn https_pods_are_targets_once_the_agent_has_a_ca() {
        let p = pod(
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/scheme", "HTTPS"),
                ("prometheus.io/port", "8443"),
            ],
            &[],
        );
        assert_eq!(
            pod_targets(&p, &base(), &ScrapeDefaults::default()),
            Err(PodSkip::HttpsWithoutCa)
        );
        assert_eq!(PodSkip::HttpsWithoutCa.reason(), "scheme");
        let with_ca = ScrapeDefaults {
            auth: ScrapeAuth {
                ca_files: vec!["/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into()],
                server_name: None,
                insecure_skip_verify: false,
                bearer_token_file: Some("/run/agent-token".into()),
            },
            ..ScrapeDefaults::default()
        };
        let t = pod_targets(&p, &base(), &with_ca).unwrap();
        let (labels, spec) = &t[0];
        assert_eq!(spec.url.to_string(), "https://10.1.2.3:8443/metrics");
        assert_eq!(labels.container, "scrape:8443/metrics");
        assert_eq!(spec.auth.ca_files, with_ca.auth.ca_files);
        assert_eq!(
            spec.auth.bearer_token_file, None,
            "the agent's token is never sent to a pod"
        );
        let skip = ScrapeDefaults {
            auth: ScrapeAuth {
                insecure_skip_verify: true,
                ..ScrapeAuth::default()
            },
            ..ScrapeDefaults::default()
        };
        let t = pod_targets(&p, &base(), &skip).unwrap();
        assert!(t[0].1.auth.insecure_skip_verify);
        // Plain http pods get no TLS settings they would use, and still no token.
        let plain = pod(
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "9102"),
            ],
            &[],
        );
        let t = pod_targets(&plain, &base(), &with_ca).unwrap();
        assert_eq!(t[0].1.url.scheme, Scheme::Http);
        assert_eq!(t[0].1.auth.bearer_token_file, None);
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
                        ("prometheus.io/scheme", "gopher")
                    ],
                    &[(443, "TCP")]
                ),
                &b,
                &d
            ),
            Err(PodSkip::Scheme("gopher".into()))
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
