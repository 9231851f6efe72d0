//! Real `nats-server` processes for the backplane's tests (Debian's package; `scripts/test`
//! installs it when missing): a single node or a cluster of three joined by routes, on
//! ephemeral loopback ports read off the server's log, each with its monitoring listener so
//! tests read `/varz`, `/subsz` and `/connz` (messages in and out, subscriptions) to prove what
//! flows, and what does not.
//!
//! ```ignore
//! let mut nats = NatsServer::start().await;
//! let relay = TestRelay::start_with(&pki, RelayConfig { backplane: nats.backplane("a"), ..RelayConfig::loopback() }).await;
//! let before = nats.counters().await;
//! nats.restart().await;        // SIGKILL, then the same ports again
//! let cluster = NatsCluster::start().await;
//! cluster.nodes[1].kill();
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use logrelay_relay::backplane::BackplaneConfig;

use crate::{eventually, http_get};

/// Counters of a node's `/varz` and `/subsz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Messages received from clients (and routes).
    pub in_msgs: u64,
    /// Messages delivered.
    pub out_msgs: u64,
    /// Subscriptions held.
    pub subscriptions: u64,
}

/// One `nats-server` process, killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    /// Client listener (`nats://…`).
    pub client: SocketAddr,
    /// Monitoring listener (`/varz`, `/subsz`, `/connz`).
    pub monitor: SocketAddr,
    /// Route listener, in a cluster.
    pub route: Option<SocketAddr>,
    /// The configuration it runs with (ports fixed after the first start).
    config: String,
    dir: Arc<tempfile::TempDir>,
    name: String,
    child: Option<Child>,
    /// Its log lines, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

/// What the first start learnt.
struct Started {
    client: SocketAddr,
    monitor: SocketAddr,
    route: Option<SocketAddr>,
}

fn spawn(
    dir: &std::path::Path,
    name: &str,
    config: &str,
    want_route: bool,
    log: Arc<Mutex<Vec<String>>>,
) -> (Child, Started) {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, config).expect("write nats-server config");
    let mut child = Command::new("nats-server")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "nats-server must be installed (apt-get install nats-server; scripts/test does it)",
        );
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            log.lock().expect("log lock").push(line.clone());
            let _ = tx.send(line);
        }
    });
    let (mut client, mut monitor, mut route) = (None, None, None);
    let deadline = std::time::Instant::now() + crate::DEADLINE;
    let addr = |line: &str, marker: &str| -> Option<SocketAddr> {
        let (_, rest) = line.split_once(marker)?;
        rest.trim().trim_start_matches("nats://").parse().ok()
    };
    while client.is_none() || monitor.is_none() || (want_route && route.is_none()) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("nats-server {name} did not report its listeners"));
        client = client.or_else(|| addr(&line, "Listening for client connections on "));
        monitor = monitor.or_else(|| addr(&line, "Starting http monitor on "));
        route = route.or_else(|| addr(&line, "Listening for route connections on "));
        assert!(!line.contains("[FTL]"), "nats-server {name}: {line}");
    }
    (
        child,
        Started {
            client: client.expect("client"),
            monitor: monitor.expect("monitor"),
            route,
        },
    )
}

impl NatsServer {
    /// A single node on ephemeral ports.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// A single node with extra configuration (a `tls { … }` or `authorization { … }` block).
    pub async fn start_with(extra: &str) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(dir, "nats", extra, None).await
    }

    /// A node whose configuration may join a cluster (`cluster` block in `extra_cluster`).
    async fn start_in(
        dir: Arc<tempfile::TempDir>,
        name: &str,
        extra: &str,
        cluster: Option<&str>,
    ) -> Self {
        let template = |client: &str, monitor: &str, route: &str| {
            let mut c = format!(
                "server_name: \"{name}\"\nlisten: \"{client}\"\nhttp: \"{monitor}\"\n{extra}\n"
            );
            if let Some(routes) = cluster {
                c.push_str(&format!(
                    "cluster {{\n  name: \"logrelay-test\"\n  listen: \"{route}\"\n  {routes}\n}}\n"
                ));
            }
            c
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = template("127.0.0.1:-1", "127.0.0.1:-1", "127.0.0.1:-1");
        let (child, started) = spawn(dir.path(), name, &first, cluster.is_some(), log.clone());
        // Restarts keep the ports that peers and clients know.
        let config = template(
            &started.client.to_string(),
            &started.monitor.to_string(),
            &started
                .route
                .map_or_else(|| "127.0.0.1:-1".into(), |r| r.to_string()),
        );
        let server = Self {
            client: started.client,
            monitor: started.monitor,
            route: started.route,
            config,
            dir,
            name: name.to_owned(),
            child: Some(child),
            log,
        };
        server.ready().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    /// A backplane configuration pointing at this server, for the relay `relay_id`, with
    /// quick heartbeats and leases so tests see expiry within their deadlines.
    pub fn backplane(&self, relay_id: &str) -> BackplaneConfig {
        backplane(vec![self.url()], relay_id)
    }

    /// Flags of a relay process named `relay_id` on this server, with quick heartbeats, leases
    /// and expiry (seen within the tests' deadlines) and a 1 s linger.
    pub fn relay_flags(&self, relay_id: &str) -> Vec<String> {
        [
            "--nats-url",
            &self.url(),
            "--relay-id",
            relay_id,
            "--nats-heartbeat-ms",
            "200",
            "--nats-relay-expiry-ms",
            "1500",
            "--nats-lease-refresh-ms",
            "300",
            "--nats-lease-ttl-ms",
            "1000",
            "--linger-secs",
            "1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Starts a relay process named `relay_id` on this server ([`Self::relay_flags`], then
    /// `extra`), and waits until it is connected to NATS.
    pub async fn start_relay(
        &self,
        files: &crate::procs::PkiFiles,
        relay_id: &str,
        extra: &[&str],
    ) -> crate::procs::RelayProcess {
        let flags = self.relay_flags(relay_id);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let relay = crate::procs::RelayProcess::start(files, &args).await;
        relay.backplane_connected().await;
        relay
    }

    /// The directory of its configuration (certificates for a TLS test can go there).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    async fn ready(&self) {
        let monitor = self.monitor;
        eventually(
            &format!("nats-server {} healthy", self.name),
            || async move {
                let (status, _) = http_get(monitor, "/healthz").await;
                (status == 200).then_some(())
            },
        )
        .await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Killed (SIGKILL) and started again on the same ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    /// Starts a killed server again on the same ports.
    pub async fn start_again(&mut self) {
        let (child, _) = spawn(
            self.dir.path(),
            &self.name,
            &self.config,
            self.route.is_some(),
            self.log.clone(),
        );
        self.child = Some(child);
        self.ready().await;
    }

    /// A JSON monitoring endpoint (`/varz`, `/subsz`, `/connz?subs=1`, …).
    pub async fn monitoring(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(self.monitor, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// Messages in and out, and subscriptions, now.
    pub async fn counters(&self) -> Counters {
        let varz = self.monitoring("/varz").await;
        let subsz = self.monitoring("/subsz").await;
        Counters {
            in_msgs: varz["in_msgs"].as_u64().unwrap_or(0),
            out_msgs: varz["out_msgs"].as_u64().unwrap_or(0),
            subscriptions: subsz["num_subscriptions"].as_u64().unwrap_or(0),
        }
    }

    /// The subjects the clients of this node subscribe to (`/connz?subs=1`).
    pub async fn subscribed_subjects(&self) -> Vec<String> {
        let connz = self.monitoring("/connz?subs=1").await;
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    }

    /// Names of the client connections on this node (a relay's is `logrelay-relay <id>`).
    pub async fn client_names(&self) -> Vec<String> {
        let connz = self.monitoring("/connz").await;
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A backplane configuration for tests: quick heartbeats, leases and expiry.
pub fn backplane(urls: Vec<String>, relay_id: &str) -> BackplaneConfig {
    BackplaneConfig {
        nats_urls: urls,
        relay_id: Some(relay_id.to_owned()),
        nats_subject_prefix: "test.logrelay".into(),
        nats_lease_refresh_ms: 300,
        nats_lease_ttl_ms: 1_000,
        nats_heartbeat_ms: 200,
        nats_relay_expiry_ms: 1_000,
        ..BackplaneConfig::default()
    }
}

/// Three `nats-server` nodes joined by routes (no JetStream).
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes: the first listens for routes, the others route to it (and learn of
    /// each other from it), and waits until every node sees the two others.
    pub async fn start() -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let seed = NatsServer::start_in(dir.clone(), "n0", "", Some("")).await;
        let routes = format!(
            "routes: [\"nats-route://{}\"]",
            seed.route.expect("route listener")
        );
        let mut nodes = vec![seed];
        for i in 1..3 {
            nodes
                .push(NatsServer::start_in(dir.clone(), &format!("n{i}"), "", Some(&routes)).await);
        }
        for n in &nodes {
            eventually(&format!("{} routed to both others", n.name), || async {
                let routez = n.monitoring("/routez").await;
                (routez["num_routes"].as_u64() >= Some(2)).then_some(())
            })
            .await;
        }
        Self { nodes }
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The node a relay's client is connected to, by its connection name.
    pub async fn node_of(&self, relay_id: &str) -> Option<usize> {
        let name = format!("logrelay-relay {relay_id}");
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_some() && n.client_names().await.contains(&name) {
                return Some(i);
            }
        }
        None
    }
}
