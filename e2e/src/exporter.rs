//! A real `prometheus-node-exporter` (Debian package) on an ephemeral loopback port.

use std::net::SocketAddr;
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
        // A free port: bind, note it, release it for the exporter.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a port");
        let child = Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address={addr}"))
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

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
