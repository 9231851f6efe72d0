//! The fault proxy on real UDP sockets: an echo server upstream, a client in front, and what
//! each fault does to the datagrams between them, counted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logrelay_chaos::faultproxy::{Direction, FaultProxy, Faults, ProxyConfig, ProxyStats};
use tokio::net::UdpSocket;

const DEADLINE: Duration = Duration::from_secs(20);

/// A loopback UDP socket with 4 MiB buffers (the default 208 KiB holds about 90 datagrams of
/// 1200 bytes, and a burst beyond that would be dropped by the kernel, not by the proxy).
async fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = socket2::SockRef::from(&s);
    r.set_recv_buffer_size(4 << 20).unwrap();
    r.set_send_buffer_size(4 << 20).unwrap();
    s
}

/// An upstream that echoes every datagram and remembers where each came from.
struct Echo {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    async fn start() -> Self {
        let socket = socket().await;
        let addr = socket.local_addr().unwrap();
        let sources = Arc::new(Mutex::new(Vec::new()));
        let seen = sources.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                seen.lock().unwrap().push(from);
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        Self {
            addr,
            sources,
            task,
        }
    }

    fn sources(&self) -> Vec<SocketAddr> {
        self.sources.lock().unwrap().clone()
    }
}

struct Setup {
    echo: Echo,
    proxy: FaultProxy,
    client: UdpSocket,
}

async fn setup(config: impl FnOnce(&mut ProxyConfig)) -> Setup {
    let echo = Echo::start().await;
    let mut c = ProxyConfig::new(echo.addr, 7);
    config(&mut c);
    let proxy = FaultProxy::start(c).await.unwrap();
    let client = socket().await;
    client.connect(proxy.addr()).await.unwrap();
    Setup {
        echo,
        proxy,
        client,
    }
}

impl Setup {
    async fn send(&self, range: std::ops::Range<u32>, size: usize) {
        for i in range {
            let mut d = i.to_be_bytes().to_vec();
            d.resize(size.max(4), 0);
            self.client.send(&d).await.unwrap();
        }
    }

    /// Receives `n` echoes; their numbers in arrival order.
    async fn recv(&self, n: usize) -> Vec<u32> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_535];
        tokio::time::timeout(DEADLINE, async {
            while got.len() < n {
                let k = self.client.recv(&mut buf).await.unwrap();
                got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                assert!(k >= 4);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} of {n} echoes: {:?}", got.len(), self.proxy.stats()));
        got
    }

    /// Waits until the proxy's counters satisfy `done`.
    async fn stats_until(&self, what: &str, done: impl Fn(&ProxyStats) -> bool) -> ProxyStats {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let s = self.proxy.stats();
                if done(&s) {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("waiting for {what}: {:?}", self.proxy.stats()))
    }
}

#[tokio::test]
async fn without_faults_every_datagram_goes_through_in_order() {
    let s = setup(|_| {}).await;
    s.send(0..500, 1200).await;
    assert_eq!(s.recv(500).await, (0..500).collect::<Vec<_>>());
    let st = s.proxy.stats();
    assert_eq!((st.up.received, st.up.sent, st.up.dropped()), (500, 500, 0));
    assert_eq!((st.down.received, st.down.sent), (500, 500));
    assert_eq!(st.up.sent_bytes, 500 * 1200);
    assert_eq!(st.mappings, 1);
}

#[tokio::test]
async fn loss_is_counted_by_direction() {
    let s = setup(|_| {}).await;
    s.proxy.set_faults(Direction::Up, Faults::loss(1.0));
    s.send(0..50, 100).await;
    let st = s
        .stats_until("50 datagrams dropped", |st| st.up.received == 50)
        .await;
    assert_eq!(
        (st.up.dropped_loss, st.up.sent, st.down.received),
        (50, 0, 0)
    );
    // 50 % each way: what comes back is what survived both, and every datagram is accounted
    // for.
    s.proxy.set_faults(Direction::Both, Faults::loss(0.5));
    s.send(50..1050, 100).await;
    let st = s
        .stats_until("the second round accounted for", |st| {
            st.up.received == 1050 && st.down.received == st.up.sent
        })
        .await;
    assert_eq!(st.up.dropped_loss + st.up.sent, 1050);
    assert!((350..650).contains(&st.up.dropped_loss), "{st:?}");
    assert!(st.down.dropped_loss > 0 && st.down.sent + st.down.dropped_loss == st.down.received);
    assert_eq!(s.proxy.faults(Direction::Down), Faults::loss(0.5));
}

#[tokio::test]
async fn a_blackhole_drops_both_ways_until_it_ends_or_is_healed() {
    let s = setup(|_| {}).await;
    s.send(0..1, 10).await;
    s.recv(1).await;
    s.proxy.blackhole(Duration::from_secs(3600));
    s.send(1..21, 10).await;
    let st = s
        .stats_until("20 datagrams into the blackhole", |st| {
            st.up.dropped_blackhole == 20
        })
        .await;
    assert_eq!(st.up.sent, 1);
    s.proxy.heal();
    s.send(21..31, 10).await;
    assert_eq!(s.recv(10).await, (21..31).collect::<Vec<_>>());
}

#[tokio::test]
async fn duplication_sends_twice_and_delay_holds_back() {
    let s = setup(|_| {}).await;
    s.proxy.set_faults(
        Direction::Up,
        Faults {
            duplicate_ratio: 1.0,
            ..Faults::default()
        },
    );
    s.send(0..10, 10).await;
    let mut got = s.recv(20).await;
    got.sort_unstable();
    assert_eq!(got, (0..10).flat_map(|i| [i, i]).collect::<Vec<_>>());
    assert_eq!(s.proxy.stats().up.duplicated, 10);

    s.proxy.set_faults(
        Direction::Both,
        Faults {
            delay: Duration::from_millis(50),
            ..Faults::default()
        },
    );
    let sent = tokio::time::Instant::now();
    s.send(10..11, 10).await;
    assert_eq!(s.recv(1).await, vec![10]);
    assert!(
        sent.elapsed() >= Duration::from_millis(100),
        "50 ms each way"
    );
}

#[tokio::test]
async fn the_delay_queue_is_bounded_in_bytes_and_counts_what_it_refuses() {
    let s = setup(|c| c.queue_bytes = 3000).await;
    s.proxy.set_faults(
        Direction::Up,
        Faults {
            delay: Duration::from_millis(200),
            ..Faults::default()
        },
    );
    s.send(0..10, 1000).await;
    let st = s
        .stats_until("10 datagrams in", |st| st.up.received == 10)
        .await;
    assert_eq!(st.up.dropped_queue_full, 7, "{st:?}");
    assert_eq!(s.recv(3).await, vec![0, 1, 2]);
}

#[tokio::test]
async fn reordering_lets_later_datagrams_overtake() {
    let s = setup(|_| {}).await;
    s.proxy.set_faults(
        Direction::Up,
        Faults {
            reorder_ratio: 0.3,
            reorder_by: Duration::from_millis(30),
            ..Faults::default()
        },
    );
    s.send(0..100, 10).await;
    let got = s.recv(100).await;
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_ne!(got, sorted, "some overtook others");
    assert!(s.proxy.stats().up.reordered > 0);
}

#[tokio::test]
async fn a_rebinding_changes_the_address_the_upstream_sees() {
    let s = setup(|_| {}).await;
    s.send(0..5, 10).await;
    s.recv(5).await;
    let before = s.echo.sources();
    assert!(before.iter().all(|a| a == &before[0]));
    assert_eq!(before[0].ip().to_string(), "127.0.0.1");

    let moved = s.proxy.rebind().unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].ip().to_string(), "127.0.0.2");
    assert_eq!(s.proxy.source_addrs(), moved);
    s.send(5..10, 10).await;
    assert_eq!(s.recv(5).await, (5..10).collect::<Vec<_>>());
    let after = s.echo.sources();
    assert!(after[5..].iter().all(|a| *a == moved[0]), "{after:?}");
    assert_eq!(s.proxy.stats().rebinds, 1);
}
