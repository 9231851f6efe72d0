//! Where the soak's relay and agent binaries are. The processes themselves (certificate files,
//! fixed loopback ports, SIGKILL and start again, logs beside the report) are
//! [`logrelay_chaos::procs`], shared with the e2e tests.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
pub use logrelay_chaos::procs::{Agent, PkiFiles, Relay};

/// Where the two binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `logrelay-relay`.
    pub relay: PathBuf,
    /// `logrelay-agent`.
    pub agent: PathBuf,
}

impl Binaries {
    /// In `dir` when given (taken as they are); otherwise beside this executable, built first
    /// with `cargo build --locked` of the same profile when this run came through `cargo run`
    /// (cargo rebuilds them only if their sources changed).
    pub fn locate(dir: Option<&Path>) -> anyhow::Result<Self> {
        let (dir, build) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => {
                let exe = std::env::current_exe().context("path of loadtest")?;
                let dir = exe.parent().context("loadtest's directory")?.to_path_buf();
                (dir, std::env::var_os("CARGO").is_some())
            }
        };
        if build {
            let release = dir.file_name().is_some_and(|n| n == "release");
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("workspace root")?;
            eprintln!("loadtest: building the relay and agent binaries (cargo build)");
            logrelay_chaos::procs::build_binaries(root, release)?;
        }
        let bins = Self {
            relay: dir.join("logrelay-relay"),
            agent: dir.join("logrelay-agent"),
        };
        for b in [&bins.relay, &bins.agent] {
            if !b.is_file() {
                bail!(
                    "{} is missing: build it (cargo build --release -p logrelay-relay -p \
                     logrelay-agent) or name its directory with --bin-dir",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// The environment of the soak's children: `LOGRELAY_LOG` from `LOADTEST_CHILD_LOG`, else `info`.
pub fn child_env() -> logrelay_chaos::procs::ChildEnv {
    logrelay_chaos::procs::ChildEnv::log_from("LOADTEST_CHILD_LOG", "info")
}
