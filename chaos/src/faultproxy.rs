//! A fault-injecting UDP proxy in user space (this kernel has no netem), to put between QUIC
//! clients (agents) and their server (the relay).
//!
//! ```ignore
//! let proxy = FaultProxy::start(ProxyConfig::new(relay_quic_addr, seed)).await?;
//! // the agent dials proxy.addr() instead of the relay
//! proxy.set_faults(Direction::Both, Faults::loss(0.01));    // 1 % loss each way
//! proxy.blackhole(Duration::from_secs(3));                 // nothing passes for 3 s
//! proxy.rebind()?;                                         // NAT rebinding: a new source address
//! let stats = proxy.stats();                               // every datagram counted
//! ```
//!
//! Each client address (an agent's socket) gets a mapping, as in a NAT: a socket of the proxy
//! bound to one of [`ProxyConfig::source_ips`] from which its datagrams go to the upstream, and
//! on which the upstream's answers come back. [`FaultProxy::rebind`] moves every mapping to a
//! new socket on the next source address (another 127.0.0.0/8 address): the upstream sees the
//! client's address change, and what it sends to the old one is lost, as after a NAT
//! rebinding.
//!
//! What happens to each datagram is decided by the pure [`fate`] module (one [`fate::Decider`]
//! per direction, seeded from [`ProxyConfig::seed`]); datagrams wait for their due time in a
//! [`fate::DelayQueue`] of [`ProxyConfig::queue_bytes`] per direction (full: the newest is
//! dropped); every drop is counted in [`ProxyStats`]. Sends never wait: a socket that cannot
//! take a datagram at once costs that datagram (counted as a send error), as a full interface
//! queue would. Drops in the kernel's own socket buffers are not seen; the proxy's sockets ask
//! for 4 MiB buffers to make them rare.

pub mod fate;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use fate::{Burst, DirectionStats, DropCause, Faults};
use fate::{Decider, DelayQueue, Fate};

/// Largest datagram relayed (UDP's limit).
const MAX_DATAGRAM: usize = 65_535;
/// Socket buffers asked for (the kernel caps them at `net.core.{r,w}mem_max`).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Which way datagrams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the clients (agents) to the upstream (relay).
    Up,
    /// From the upstream to the clients.
    Down,
    /// Both ways (for settings).
    Both,
}

/// How a proxy is set up.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where clients send (port 0: any free port).
    pub listen: SocketAddr,
    /// Where datagrams go (the relay's QUIC address).
    pub upstream: SocketAddr,
    /// Seed of every random choice (each direction draws from its own sequence).
    pub seed: u64,
    /// Bytes of datagrams each direction holds while they wait for their due time.
    pub queue_bytes: usize,
    /// Client mappings kept at most (the least recently used goes first).
    pub max_mappings: usize,
    /// Addresses the mappings' sockets bind to toward the upstream, one after the other at
    /// each [`FaultProxy::rebind`].
    pub source_ips: Vec<IpAddr>,
}

impl ProxyConfig {
    /// A proxy on a free loopback port in front of `upstream`: 8 MiB queued per direction, 64
    /// mappings, source addresses 127.0.0.1 to 127.0.0.4.
    pub fn new(upstream: SocketAddr, seed: u64) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            upstream,
            seed,
            queue_bytes: 8 << 20,
            max_mappings: 64,
            source_ips: (1..=4)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect(),
        }
    }
}

/// What the proxy did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Clients to upstream.
    pub up: DirectionStats,
    /// Upstream to clients.
    pub down: DirectionStats,
    /// Rebindings ([`FaultProxy::rebind`]).
    pub rebinds: u64,
    /// Client mappings now.
    pub mappings: usize,
    /// Mappings evicted to stay within [`ProxyConfig::max_mappings`].
    pub evicted_mappings: u64,
    /// Bytes waiting in both queues now.
    pub queued_bytes: usize,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    listen: UdpSocket,
    /// Sends to clients.
    listen_send: Arc<std::net::UdpSocket>,
    upstream: SocketAddr,
    start: Instant,
}

#[derive(Debug)]
struct State {
    up: Lane,
    down: Lane,
    mappings: HashMap<SocketAddr, Mapping>,
    source_ips: Vec<IpAddr>,
    source: usize,
    max_mappings: usize,
    uses: u64,
    rebinds: u64,
    evicted: u64,
}

#[derive(Debug)]
struct Lane {
    decider: Decider,
    queue: DelayQueue<Packet>,
    stats: DirectionStats,
}

#[derive(Debug)]
struct Packet {
    data: Vec<u8>,
    /// The client it comes from (up) or goes to (down).
    client: SocketAddr,
}

#[derive(Debug)]
struct Mapping {
    /// Sends to the upstream (its address is the one the upstream sees).
    socket: Arc<std::net::UdpSocket>,
    reader: JoinHandle<()>,
    last_use: u64,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut st) = self.shared.state.lock() {
            st.mappings.clear();
        }
    }
}

/// A UDP socket bound to `addr` with large buffers: registered with tokio to receive, and a
/// non-blocking handle of the same socket to send without waiting (tokio's `try_send_to`
/// refuses until its reactor has seen the socket writable once).
fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, Arc<std::net::UdpSocket>)> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let s = socket2::SockRef::from(&socket);
    // Best effort: the kernel caps what it grants.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    let send = Arc::new(socket.try_clone()?);
    Ok((UdpSocket::from_std(socket)?, send))
}

impl FaultProxy {
    /// Binds the listening socket and starts forwarding, with no fault at first.
    pub async fn start(config: ProxyConfig) -> std::io::Result<Self> {
        if config.source_ips.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the fault proxy needs at least one source address",
            ));
        }
        let (listen, listen_send) = bind(config.listen)?;
        let addr = listen.local_addr()?;
        let lane = |salt: u64| Lane {
            decider: Decider::new(Faults::default(), config.seed ^ salt),
            queue: DelayQueue::new(config.queue_bytes),
            stats: DirectionStats::default(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                up: lane(0x5555_5555_5555_5555),
                down: lane(0xAAAA_AAAA_AAAA_AAAA),
                mappings: HashMap::new(),
                source_ips: config.source_ips,
                source: 0,
                max_mappings: config.max_mappings.max(1),
                uses: 0,
                rebinds: 0,
                evicted: 0,
            }),
            wake: Notify::new(),
            listen,
            listen_send,
            upstream: config.upstream,
            start: Instant::now(),
        });
        let tasks = vec![
            tokio::spawn(from_clients(shared.clone())),
            tokio::spawn(scheduler(shared.clone())),
        ];
        Ok(Self {
            shared,
            addr,
            tasks,
        })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where datagrams go.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.shared.state.lock().expect("proxy state"))
    }

    /// Sets the faults of `direction` (from the next datagram on).
    pub fn set_faults(&self, direction: Direction, faults: Faults) {
        self.with(|st| {
            for lane in st.lanes(direction) {
                lane.decider.set_faults(faults);
            }
        });
    }

    /// The faults in force in one direction (`Both` reads `Up`).
    pub fn faults(&self, direction: Direction) -> Faults {
        self.with(|st| match direction {
            Direction::Down => st.down.decider.faults(),
            Direction::Up | Direction::Both => st.up.decider.faults(),
        })
    }

    /// Drops every datagram, both ways, from now for `length` (and those due meanwhile).
    pub fn blackhole(&self, length: Duration) {
        let now = self.shared.now();
        self.with(|st| {
            for lane in st.lanes(Direction::Both) {
                lane.decider.blackhole(now, length);
            }
        });
    }

    /// No fault and no blackhole any more, both ways.
    pub fn heal(&self) {
        self.with(|st| {
            for lane in st.lanes(Direction::Both) {
                lane.decider.set_faults(Faults::default());
                lane.decider.clear_blackhole();
            }
        });
    }

    /// NAT rebinding: every mapping moves to a new socket on the next source address; the
    /// upstream sees its clients come from a new address and port, and what it still sends to
    /// the old ones is lost. Returns the new source address of each mapping.
    pub fn rebind(&self) -> std::io::Result<Vec<SocketAddr>> {
        let shared = self.shared.clone();
        self.with(|st| {
            st.source = (st.source + 1) % st.source_ips.len();
            st.rebinds += 1;
            let ip = st.source_ips[st.source];
            let mut moved = Vec::new();
            for (client, m) in &mut st.mappings {
                let (socket, send) = bind(SocketAddr::new(ip, 0))?;
                moved.push(send.local_addr()?);
                m.reader.abort();
                m.reader = tokio::spawn(from_upstream(shared.clone(), socket, *client));
                m.socket = send;
            }
            Ok(moved)
        })
    }

    /// The source addresses the upstream sees now, one per mapping.
    pub fn source_addrs(&self) -> Vec<SocketAddr> {
        self.with(|st| {
            st.mappings
                .values()
                .filter_map(|m| m.socket.local_addr().ok())
                .collect()
        })
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        self.with(|st| ProxyStats {
            up: st.up.stats,
            down: st.down.stats,
            rebinds: st.rebinds,
            mappings: st.mappings.len(),
            evicted_mappings: st.evicted,
            queued_bytes: st.up.queue.bytes() + st.down.queue.bytes(),
        })
    }
}

impl Shared {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// Decides the fate of a datagram that arrived on `lane` and queues it.
    fn arrive(&self, direction: Direction, data: &[u8], client: SocketAddr) {
        let now = self.now();
        let mut st = self.state.lock().expect("proxy state");
        let lane = match direction {
            Direction::Down => &mut st.down,
            Direction::Up | Direction::Both => &mut st.up,
        };
        lane.stats.received += 1;
        lane.stats.received_bytes += data.len() as u64;
        match lane.decider.decide(now) {
            Fate::Dropped(cause) => lane.stats.drop_by(cause),
            Fate::Forward {
                due,
                copy_due,
                reordered,
            } => {
                if reordered {
                    lane.stats.reordered += 1;
                }
                let copies = [Some(due), copy_due];
                for (i, due) in copies.into_iter().flatten().enumerate() {
                    let packet = Packet {
                        data: data.to_vec(),
                        client,
                    };
                    if lane.queue.push(due, data.len(), packet).is_err() {
                        lane.stats.drop_by(DropCause::QueueFull);
                    } else if i == 1 {
                        lane.stats.duplicated += 1;
                    }
                }
                drop(st);
                self.wake.notify_one();
            }
        }
    }
}

impl State {
    fn lanes(&mut self, direction: Direction) -> Vec<&mut Lane> {
        match direction {
            Direction::Up => vec![&mut self.up],
            Direction::Down => vec![&mut self.down],
            Direction::Both => vec![&mut self.up, &mut self.down],
        }
    }

    /// The socket of `client`'s mapping, made on first use (evicting the least recently used
    /// beyond the limit).
    fn mapping(
        &mut self,
        shared: &Arc<Shared>,
        client: SocketAddr,
    ) -> std::io::Result<Arc<std::net::UdpSocket>> {
        self.uses += 1;
        let uses = self.uses;
        if let Some(m) = self.mappings.get_mut(&client) {
            m.last_use = uses;
            return Ok(m.socket.clone());
        }
        while self.mappings.len() >= self.max_mappings {
            let Some(oldest) = self
                .mappings
                .iter()
                .min_by_key(|(_, m)| m.last_use)
                .map(|(c, _)| *c)
            else {
                break;
            };
            self.mappings.remove(&oldest);
            self.evicted += 1;
        }
        let (socket, send) = bind(SocketAddr::new(self.source_ips[self.source], 0))?;
        let reader = tokio::spawn(from_upstream(shared.clone(), socket, client));
        self.mappings.insert(
            client,
            Mapping {
                socket: send.clone(),
                reader,
                last_use: uses,
            },
        );
        Ok(send)
    }
}

/// Datagrams of the clients, as they arrive on the listening socket.
async fn from_clients(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, client)) = shared.listen.recv_from(&mut buf).await else {
            // An ICMP error reported on the socket: nothing to do but go on.
            continue;
        };
        // The mapping exists from the first datagram on, so answers find their way back.
        let made = {
            let mut st = shared.state.lock().expect("proxy state");
            st.mapping(&shared, client).is_ok()
        };
        if made {
            shared.arrive(Direction::Up, &buf[..n], client);
        }
    }
}

/// Datagrams of the upstream for `client`, on its mapping's socket.
async fn from_upstream(shared: Arc<Shared>, socket: UdpSocket, client: SocketAddr) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if from != shared.upstream {
            continue;
        }
        shared.arrive(Direction::Down, &buf[..n], client);
    }
}

/// Sends each queued datagram when it is due.
async fn scheduler(shared: Arc<Shared>) {
    let mut due: Vec<(Direction, Packet, Option<Arc<std::net::UdpSocket>>)> = Vec::new();
    let mut sent = [(0u64, 0u64, 0u64); 2];
    loop {
        let next = {
            let now = shared.now();
            let mut guard = shared.state.lock().expect("proxy state");
            let st = &mut *guard;
            for (lane, (n, bytes, errors)) in [&mut st.up, &mut st.down].into_iter().zip(&mut sent)
            {
                lane.stats.sent += *n;
                lane.stats.sent_bytes += *bytes;
                lane.stats.dropped_send_error += *errors;
                (*n, *bytes, *errors) = (0, 0, 0);
            }
            for dir in [Direction::Up, Direction::Down] {
                loop {
                    let lane = if dir == Direction::Up {
                        &mut st.up
                    } else {
                        &mut st.down
                    };
                    let Some(p) = lane.queue.pop_due(now) else {
                        break;
                    };
                    if lane.decider.blackholed(now) {
                        lane.stats.drop_by(DropCause::Blackhole);
                        continue;
                    }
                    let socket = if dir == Direction::Up {
                        // Through the client's mapping as it is now (a rebinding moves what
                        // is still queued too).
                        st.mappings.get(&p.client).map(|m| m.socket.clone())
                    } else {
                        None
                    };
                    due.push((dir, p, socket));
                }
            }
            [st.up.queue.next_due(), st.down.queue.next_due()]
                .into_iter()
                .flatten()
                .min()
        };
        for (dir, p, socket) in due.drain(..) {
            let (i, result) = match dir {
                Direction::Up => (
                    0,
                    socket.map_or(Err(std::io::ErrorKind::NotFound.into()), |s| {
                        s.send_to(&p.data, shared.upstream)
                    }),
                ),
                _ => (1, shared.listen_send.send_to(&p.data, p.client)),
            };
            match result {
                Ok(_) => {
                    sent[i].0 += 1;
                    sent[i].1 += p.data.len() as u64;
                }
                Err(_) => sent[i].2 += 1,
            }
        }
        if sent.iter().any(|s| *s != (0, 0, 0)) {
            // Count what was just sent before waiting.
            continue;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(shared.start + at) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}
