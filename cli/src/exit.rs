//! How a command ends: one error type for every command, and the exit code each failure maps
//! to. The codes are part of the interface (docs/cli.md, "Exit codes"): scripts test them.

use crate::client::ClientError;

/// Ended normally: a one-off read finished, the output was closed (`| head`), or Ctrl-C.
pub const OK: u8 = 0;
/// Any other failure (a request the relay refused, an unreadable message, an I/O error).
pub const FAILURE: u8 = 1;
/// Bad usage: unknown flag, bad value, bad config file or context, unreadable token file.
pub const USAGE: u8 = 2;
/// The relay refused the credentials (HTTP 401/403, expired token, `forbidden` selector).
pub const AUTH: u8 = 3;
/// Nothing matched: no stream for a one-off read (`tail --no-follow`).
pub const NOT_FOUND: u8 = 4;
/// The relay could not be reached, or the connection was lost and every retry failed.
pub const CONNECTION_LOST: u8 = 5;
/// The selector matches more streams than `--max-streams` allows.
pub const TOO_MANY_STREAMS: u8 = 6;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is unusable (config file, context, token file or command, CA file).
    #[error("{0}")]
    Config(String),
    /// The relay refused the session's credentials or a request for lack of rights.
    #[error("{0}")]
    Auth(String),
    /// Nothing matched the selector where something had to.
    #[error("{0}")]
    NotFound(String),
    /// The first connection failed (nothing is retried before a session ever worked).
    #[error("{0}")]
    Unreachable(String),
    /// The connection was lost and `retries` reconnection attempts failed.
    #[error(
        "connection to the relay lost and {retries} reconnection attempts failed; last error: {last}"
    )]
    ConnectionLost {
        /// Attempts made.
        retries: u32,
        /// The last attempt's error.
        last: String,
    },
    /// The selector matches more streams than allowed.
    #[error(
        "the selector matches {matched} streams, more than --max-streams {max}: narrow the selector or raise --max-streams"
    )]
    TooManyStreams {
        /// Streams matched.
        matched: usize,
        /// The cap.
        max: usize,
    },
    /// The relay refused a request, or sent something unreadable.
    #[error("{0}")]
    Relay(String),
    /// Writing the output failed (other than the reader going away).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => USAGE,
            Self::Auth(_) => AUTH,
            Self::NotFound(_) => NOT_FOUND,
            Self::Unreachable(_) | Self::ConnectionLost { .. } => CONNECTION_LOST,
            Self::TooManyStreams { .. } => TOO_MANY_STREAMS,
            Self::Relay(_) | Self::Output(_) => FAILURE,
        }
    }

    /// Classifies a failure to open a session: refused credentials are an auth failure,
    /// everything else leaves the relay unreachable.
    pub fn from_connect(e: ClientError) -> Self {
        match e {
            ClientError::Refused { status, .. } if status == 401 || status == 403 => {
                Self::Auth(e.to_string())
            }
            ClientError::Url(_) => Self::Config(e.to_string()),
            other => Self::Unreachable(other.to_string()),
        }
    }

    /// True when a reconnection attempt may help (the relay restarting, a network blip).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_domain_has_its_own_code() {
        let refused = |status| ClientError::Refused {
            status,
            body: "unauthenticated: token expired".into(),
        };
        assert_eq!(CliError::from_connect(refused(401)).exit_code(), AUTH);
        assert_eq!(CliError::from_connect(refused(403)).exit_code(), AUTH);
        assert_eq!(
            CliError::from_connect(refused(503)).exit_code(),
            CONNECTION_LOST
        );
        assert_eq!(
            CliError::from_connect(ClientError::Url("x".into())).exit_code(),
            USAGE
        );
        let codes = [
            OK,
            FAILURE,
            USAGE,
            AUTH,
            NOT_FOUND,
            CONNECTION_LOST,
            TOO_MANY_STREAMS,
        ];
        let mut sorted = codes.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len(), "distinct codes");
        assert!(CliError::from_connect(refused(502)).is_retryable());
        assert!(!CliError::from_connect(refused(401)).is_retryable());
    }
}
