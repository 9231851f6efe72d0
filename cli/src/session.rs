//! One session after another: connect, let a command run its session, and when the connection
//! is lost reconnect with backoff (100 ms doubling to 5 s, full jitter) so the command resumes
//! where it was. The first connection is not retried: a wrong URL or a relay that is down is
//! reported at once. Refused credentials are never retried.

use std::time::Duration;

use logrelay_wire::session::close;

use crate::client::{Client, ClientError};
use crate::config::Connection;
use crate::exit::CliError;
use crate::output::{WriteError, notice};

/// First wait before a reconnection.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A session that receives nothing at all, pings included (the relay pings every 15 s), for
/// this long is taken as lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The wait before reconnection attempt `attempt` (1-based), `jitter` in [0, 1).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let cap = BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
        .min(BACKOFF_MAX);
    cap.mul_f64(jitter.clamp(0.0, 1.0))
        .max(BACKOFF_MIN.min(cap))
}

/// Ends a session on a write error: the reader going away ends the command normally.
pub fn written(r: Result<(), WriteError>) -> Result<Option<SessionEnd>, CliError> {
    match r {
        Ok(()) => Ok(None),
        Err(e) => e.into_result().map(|()| Some(SessionEnd::Done)),
    }
}

/// How a session ended, when it did not fail.
#[derive(Debug)]
pub enum SessionEnd {
    /// The command is done.
    Done,
    /// The connection was lost (why, in words): reconnect and go on.
    Lost(String),
}

/// What a read error of an open session means: the connection lost (retry), refused
/// credentials, or a failure.
pub fn read_error(e: ClientError) -> Result<SessionEnd, CliError> {
    match e {
        ClientError::Closed { code, reason } => match code {
            close::TOKEN_EXPIRED => Ok(SessionEnd::Lost(format!("token expired ({reason})"))),
            close::SHUTDOWN | close::SLOW_CONSUMER | close::PING_TIMEOUT | close::RECONNECT => Ok(
                SessionEnd::Lost(format!("the relay closed the session: {code} {reason}")),
            ),
            close::UNAUTHENTICATED | close::FORBIDDEN => Err(CliError::Auth(format!(
                "the relay closed the session: {code} {reason}"
            ))),
            _ => Err(CliError::Relay(format!(
                "the relay closed the session: {code} {reason}"
            ))),
        },
        ClientError::Ws(e) => Ok(SessionEnd::Lost(e.to_string())),
        e @ ClientError::Idle(_) => Ok(SessionEnd::Lost(e.to_string())),
        other => Err(CliError::Relay(other.to_string())),
    }
}

/// Receives the next message, treating a long silence as a lost connection.
pub async fn next(client: &mut Client) -> Result<Result<crate::client::Raw, SessionEnd>, CliError> {
    match tokio::time::timeout(IDLE_TIMEOUT, client.next_raw()).await {
        Err(_) => Ok(Err(SessionEnd::Lost(format!(
            "nothing received for {} s",
            IDLE_TIMEOUT.as_secs()
        )))),
        Ok(Ok(Some(m))) => Ok(Ok(m)),
        Ok(Ok(None)) => Ok(Err(SessionEnd::Lost(
            "the relay closed the connection".into(),
        ))),
        Ok(Err(e)) => read_error(e).map(Err),
    }
}

/// Opens one session.
pub async fn connect(conn: &Connection) -> Result<Client, CliError> {
    let token = conn.token().await?;
    let roots = conn.roots()?;
    Client::connect(&conn.url, roots, token.as_ref().map(|t| t.expose()))
        .await
        .map_err(CliError::from_connect)
}

/// Runs `session` on one connection after another until it is done, fails, or the
/// reconnection attempts run out. `command` names the command in notices.
pub async fn run<F>(conn: &Connection, command: &str, mut session: F) -> Result<(), CliError>
where
    F: AsyncFnMut(Client, bool) -> Result<SessionEnd, CliError>,
{
    let mut client = connect(conn).await?;
    let mut reconnected = false;
    loop {
        let why = match session(client, reconnected).await? {
            SessionEnd::Done => return Ok(()),
            SessionEnd::Lost(why) => why,
        };
        notice(
            command,
            &format!("connection to the relay lost ({why}); reconnecting"),
        );
        let mut attempt = 0;
        client = loop {
            attempt += 1;
            tokio::time::sleep(backoff(attempt, fastrand::f64())).await;
            match connect(conn).await {
                Ok(c) => break c,
                Err(e) if e.is_retryable() && attempt < conn.retries => {
                    notice(
                        command,
                        &format!(
                            "reconnection attempt {attempt} of {} failed: {e}",
                            conn.retries
                        ),
                    );
                }
                Err(e) if e.is_retryable() => {
                    return Err(CliError::ConnectionLost {
                        retries: attempt,
                        last: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        };
        notice(command, "reconnected");
        reconnected = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter_inside() {
        assert_eq!(backoff(1, 0.0), BACKOFF_MIN);
        assert_eq!(
            backoff(1, 0.999),
            BACKOFF_MIN,
            "the first wait is the minimum"
        );
        assert_eq!(backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(3, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(30, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 0.0), BACKOFF_MIN);
    }

    #[test]
    fn closes_that_a_reconnection_may_cure_are_losses() {
        let closed = |code| ClientError::Closed {
            code,
            reason: "r".into(),
        };
        for code in [
            close::SHUTDOWN,
            close::RECONNECT,
            close::TOKEN_EXPIRED,
            close::SLOW_CONSUMER,
            close::PING_TIMEOUT,
        ] {
            assert!(
                matches!(read_error(closed(code)), Ok(SessionEnd::Lost(_))),
                "{code}"
            );
        }
        assert_eq!(
            read_error(closed(close::FORBIDDEN))
                .unwrap_err()
                .exit_code(),
            crate::exit::AUTH
        );
        assert_eq!(
            read_error(closed(close::LIMIT)).unwrap_err().exit_code(),
            crate::exit::FAILURE
        );
    }
}
