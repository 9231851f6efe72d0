//! The `logrelay` command line: [`list`] the streams a token may read, [`tail`] many of them
//! at once (resumed across reconnections, [`resume`]), [`top`] for CPU and memory, and the
//! [`demo`] that runs relay, agent and a sample workload in one process on loopback. Every
//! command talks to the relay through the WebSocket [`client`]; [`config`] resolves where and
//! as whom, [`session`] reconnects, [`output`] behaves in pipes, [`exit`] names the exit codes.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod demo;
pub mod exit;
pub mod format;
pub mod list;
pub mod output;
pub mod resume;
pub mod select;
pub mod session;
pub mod since;
pub mod tail;
pub mod token;
pub mod top;
