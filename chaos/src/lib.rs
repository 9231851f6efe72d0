//! Fault injection and line-by-line accounting for logrelay's failure tests, shared by the e2e
//! tests (`e2e/tests/faults.rs`, `e2e/tests/crash.rs`) and the `loadtest chaos` soak, and kept
//! out of the release binaries of the relay, the agent and the CLI.
//!
//! * [`faultproxy`]: a UDP proxy between agents and the relay that loses, delays, reorders,
//!   duplicates and blackholes datagrams, and changes the agent's address (NAT rebinding);
//!   deterministic for a seed, bounded in bytes, every drop counted.
//! * [`procs`]: the production relay and agent binaries as child processes with certificate
//!   files, on fixed loopback ports, to SIGKILL, SIGTERM, freeze and start again.
//! * [`writer`]: a container log written at a steady rate with kubelet's rotation (rename,
//!   reopen, gzip of older files); line `i` says `i`.
//! * [`ledger`]: what one client got of one stream, line by line (delivered, reported missing
//!   exactly or not, out of order, twice), added up against what was written; and
//!   [`ledger::ResumingClient`], a client written from docs/protocol.md that follows a stream
//!   through relay restarts with `since_seq`.
#![forbid(unsafe_code)]

pub mod faultproxy;
pub mod ledger;
pub mod procs;
pub mod writer;

pub use faultproxy::{Direction, FaultProxy, Faults, ProxyConfig, ProxyStats};
pub use ledger::{Ledger, ResumingClient, Tally};
pub use writer::{KubeletWriter, WriterConfig};

/// Default deadline of the waits in this crate.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);
