//! The `logrelay` command line: a WebSocket [`client`] of the relay, the [`tail`] command that
//! prints lines like `kubectl logs -f`, and the [`demo`] that runs relay, agent and a sample
//! workload in one process on loopback.
#![forbid(unsafe_code)]

pub mod client;
pub mod demo;
pub mod tail;
pub mod token;
