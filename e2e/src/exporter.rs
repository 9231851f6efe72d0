//! A real `prometheus-node-exporter` (Debian package) on an ephemeral loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::eventually;

/// `prometheus-node-exporter` listening on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct NodeExporter {
    child: Child,
    /// Where it serves `/metrics`.
    pub addr: SocketAddr,
}

impl NodeExporter {
    /// Starts it and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_at(free_port(), None).await
    }

    /// Starts it on `addr`, with `--web.config.file` (TLS, …) when given, and waits until it
    /// accepts connections.
    pub async fn start_at(addr: SocketAddr, web_config: Option<&Path>) -> Self {
        let mut command = Command::new("prometheus-node-exporter");
        command.arg(format!("--web.listen-address={addr}"));
        if let Some(config) = web_config {
            command.arg(format!("--web.config.file={}", config.display()));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "prometheus-node-exporter must be installed \
                 (apt-get install prometheus-node-exporter; scripts/test does it)",
            );
        let exporter = Self { child, addr };
        eventually("node exporter listening", || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        exporter
    }
}

/// A free loopback port: bind, note it, release it for the exporter.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a port")
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
