//! Standard output as a tool in a pipeline should treat it: line-buffered on a terminal,
//! written in 64 KiB blocks into a pipe or file (and flushed whenever the relay has nothing more
//! to send at the moment), and a reader that goes away (`| head`) ends the command quietly.
//! Notices go to standard error, which is never buffered and whose failures are ignored.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, LineWriter, Write};
use std::os::fd::{AsFd, OwnedFd};

use crate::exit::CliError;

/// Bytes buffered before a write when standard output is not a terminal.
pub const PIPE_BUFFER_BYTES: usize = 64 * 1024;

/// How a write ended badly.
#[derive(Debug)]
pub enum WriteError {
    /// The reader went away (EPIPE): end quietly, exit code 0.
    Closed,
    /// Anything else (a full disk): a failure.
    Failed(std::io::Error),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Self::Closed
        } else {
            Self::Failed(e)
        }
    }
}

impl WriteError {
    /// `Ok(())` when the reader went away (the command ends normally), the error otherwise.
    pub fn into_result(self) -> Result<(), CliError> {
        match self {
            Self::Closed => Ok(()),
            Self::Failed(e) => Err(CliError::Output(e)),
        }
    }
}

/// A command's `result` once standard output is flushed: a failed flush fails the command,
/// unless the reader went away.
pub fn flushed(result: Result<(), CliError>, out: &mut Out) -> Result<(), CliError> {
    match out.flush() {
        Ok(()) => result,
        Err(e) => result.and(e.into_result()),
    }
}

enum Sink {
    Line(LineWriter<File>),
    Block(BufWriter<File>),
    Stdout(std::io::Stdout),
}

/// Standard output.
pub struct Out {
    sink: Sink,
    terminal: bool,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("terminal", &self.terminal)
            .finish_non_exhaustive()
    }
}

impl Out {
    /// Standard output, buffered as its kind asks.
    pub fn stdout() -> Self {
        let stdout = std::io::stdout();
        let terminal = stdout.is_terminal();
        let sink = match stdout.as_fd().try_clone_to_owned() {
            Ok(fd) if terminal => Sink::Line(LineWriter::new(File::from(fd))),
            Ok(fd) => Sink::Block(BufWriter::with_capacity(PIPE_BUFFER_BYTES, File::from(fd))),
            Err(_) => Sink::Stdout(stdout),
        };
        Self { sink, terminal }
    }

    /// True when standard output is a terminal.
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Writes bytes (buffered).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        match &mut self.sink {
            Sink::Line(w) => w.write_all(bytes)?,
            Sink::Block(w) => w.write_all(bytes)?,
            Sink::Stdout(w) => w.write_all(bytes)?,
        }
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        match &mut self.sink {
            Sink::Line(w) => w.flush()?,
            Sink::Block(w) => w.flush()?,
            Sink::Stdout(w) => w.flush()?,
        }
        Ok(())
    }
}

/// Prints one notice line on standard error (`logrelay <command>: <text>`), ignoring failures.
pub fn notice(command: &str, text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "logrelay {command}: {text}");
}

/// Resolves when standard output is a pipe whose reader has gone away; never resolves for a
/// terminal or a file (a write finds out then). Lets an idle `logrelay tail | head` end as soon
/// as `head` has what it wanted, not at the next line.
pub async fn reader_gone() {
    if let Some(fd) = pipe_fd() {
        use tokio::io::Interest;
        use tokio::io::unix::AsyncFd;
        // The deprecation is about a `T` that does not own its descriptor; an `OwnedFd`
        // does, for as long as the registration lives (the safe alternative is `unsafe`).
        #[allow(
            deprecated,
            reason = "sound for an OwnedFd; this crate forbids unsafe code"
        )]
        let registered = AsyncFd::with_interest(fd, Interest::ERROR);
        if let Ok(afd) = registered
            && afd.ready(Interest::ERROR).await.is_ok()
        {
            return;
        }
    }
    std::future::pending::<()>().await
}

fn pipe_fd() -> Option<OwnedFd> {
    use std::os::unix::fs::FileTypeExt;
    let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    let file = File::from(fd);
    if !file.metadata().ok()?.file_type().is_fifo() {
        return None;
    }
    Some(OwnedFd::from(file))
}
