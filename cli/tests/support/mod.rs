//! What the `logrelay` binary's tests share.

use std::process::Stdio;

/// `logrelay ARGS` as a user runs it, with nothing from the test's environment: no URL, token,
/// context or configuration file, `NO_COLOR` unset; stdin empty, stdout and stderr piped, killed
/// when dropped.
pub fn logrelay(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_logrelay"));
    cmd.args(args)
        .env_remove("LOGRELAY_URL")
        .env_remove("LOGRELAY_TOKEN")
        .env_remove("LOGRELAY_CONTEXT")
        .env("LOGRELAY_CONFIG", "/dev/null")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}
