//! Where to connect and with which credentials: flags, `LOGRELAY_*` environment variables and
//! named contexts in a config file, resolved into one [`Connection`].
//!
//! The config file (TOML) lives at `$LOGRELAY_CONFIG`, else `$XDG_CONFIG_HOME/logrelay/config.toml`,
//! else `~/.config/logrelay/config.toml`:
//!
//! ```toml
//! current_context = "prod"
//!
//! [contexts.prod]
//! url = "wss://relay.example.com/v1/subscribe"
//! ca_file = "/etc/logrelay/ca.pem"
//! token_file = "~/.config/logrelay/prod.token"
//!
//! [contexts.staging]
//! url = "wss://relay.staging.example.com/v1/subscribe"
//! token_command = "vault read -field=token secret/logrelay/staging"
//! ```
//!
//! A flag (or its environment variable) wins over the context, the context over the default.
//! A token is never printed: [`Token`]'s `Debug` hides it, and no error message quotes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::CliError;

/// The relay URL used when neither a flag, the environment nor a context names one.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8080/v1/subscribe";

/// Connection flags shared by every command that talks to a relay.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Use this context of the config file (default: its `current_context`).
    #[arg(long, env = "LOGRELAY_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Config file (default: `$XDG_CONFIG_HOME/logrelay/config.toml`, else
    /// `~/.config/logrelay/config.toml`).
    #[arg(long, env = "LOGRELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Relay WebSocket URL, `ws://host:port/v1/subscribe` or `wss://…` (default: the
    /// context's, else ws://127.0.0.1:8080/v1/subscribe).
    #[arg(long, env = "LOGRELAY_URL")]
    pub url: Option<String>,
    /// PEM CA bundle to trust for `wss://` (default: the context's).
    #[arg(long, env = "LOGRELAY_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token (surrounding whitespace ignored).
    #[arg(long, env = "LOGRELAY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Bearer token. Prefer `LOGRELAY_TOKEN` or `--token-file`: a flag shows in `ps`.
    #[arg(long, env = "LOGRELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Reconnection attempts after a lost connection before giving up (exit code 5). Waits
    /// grow from 100 ms to 5 s between attempts; a working connection resets the count.
    #[arg(long, env = "LOGRELAY_RETRIES", default_value_t = 20)]
    pub retries: u32,
}

/// A bearer token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// One named context of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Relay WebSocket URL (`ws://…/v1/subscribe` or `wss://…`).
    pub url: Option<String>,
    /// PEM CA bundle to trust for `wss://`; `~/` and paths relative to the config file work.
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Shell command (`sh -c`) whose standard output is the bearer token, run on every
    /// connection attempt (so a short-lived token is fresh). Its standard error is passed on.
    pub token_command: Option<String>,
}

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Context used when `--context` / `LOGRELAY_CONTEXT` is not given.
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No token (an anonymous session).
    None,
    /// Given directly (`--token`, `LOGRELAY_TOKEN`).
    Value(Token),
    /// Read from a file at each connection attempt.
    File(PathBuf),
    /// Printed by a command at each connection attempt.
    Command(String),
}

/// Everything needed to open a session.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Relay WebSocket URL.
    pub url: String,
    /// CA bundle for `wss://`.
    pub ca_file: Option<PathBuf>,
    /// The token's source.
    pub token: TokenSource,
    /// Reconnection attempts.
    pub retries: u32,
}

/// The default config file path, from the environment given as a lookup function.
pub fn default_config_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(x) = env("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(Path::new(&x).join("logrelay").join("config.toml"));
    }
    env("HOME").filter(|v| !v.is_empty()).map(|h| {
        Path::new(&h)
            .join(".config")
            .join("logrelay")
            .join("config.toml")
    })
}

/// Parses a config file's text; `path` names it in errors.
pub fn parse_config(text: &str, path: &Path) -> Result<ConfigFile, CliError> {
    toml::from_str(text)
        .map_err(|e| CliError::Config(format!("config file {}: {e}", path.display())))
}

/// Expands `~/` with `home` and makes a relative path relative to `base` (the config file's
/// directory).
pub fn expand_path(p: &Path, home: Option<&str>, base: Option<&Path>) -> PathBuf {
    if let (Ok(rest), Some(h)) = (p.strip_prefix("~"), home) {
        return Path::new(h).join(rest);
    }
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    }
}

/// Resolves flags, environment (already merged into `args` by clap) and the config file into a
/// connection. `file` is the config file's path and text, if one was found.
pub fn resolve_with(
    args: &ConnectArgs,
    file: Option<(&Path, &str)>,
    home: Option<&str>,
) -> Result<Connection, CliError> {
    let config = match file {
        Some((path, text)) => Some((path, parse_config(text, path)?)),
        None => None,
    };
    let wanted = args
        .context
        .clone()
        .or_else(|| config.as_ref().and_then(|(_, c)| c.current_context.clone()));
    let (context, base) = match (&wanted, &config) {
        (None, _) => (Context::default(), None),
        (Some(name), Some((path, c))) => match c.contexts.get(name) {
            Some(ctx) => (ctx.clone(), path.parent()),
            None => {
                let known: Vec<&str> = c.contexts.keys().map(String::as_str).collect();
                return Err(CliError::Config(format!(
                    "no context `{name}` in {} (it has: {})",
                    path.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        },
        (Some(name), None) => {
            return Err(CliError::Config(format!(
                "context `{name}` asked for, but there is no config file (looked for {})",
                args.config
                    .clone()
                    .or_else(|| default_config_path(|k| std::env::var(k).ok()))
                    .map_or_else(
                        || "none: HOME is not set".into(),
                        |p| p.display().to_string()
                    )
            )));
        }
    };
    let token = if let Some(t) = args.token.clone().filter(|t| !t.is_empty()) {
        TokenSource::Value(Token(t))
    } else if let Some(f) = &args.token_file {
        TokenSource::File(expand_path(f, home, None))
    } else if let Some(f) = &context.token_file {
        TokenSource::File(expand_path(f, home, base))
    } else if let Some(c) = &context.token_command {
        TokenSource::Command(c.clone())
    } else {
        TokenSource::None
    };
    Ok(Connection {
        url: args
            .url
            .clone()
            .or(context.url)
            .unwrap_or_else(|| DEFAULT_URL.into()),
        ca_file: args
            .ca_file
            .as_deref()
            .map(|p| expand_path(p, home, None))
            .or_else(|| context.ca_file.map(|p| expand_path(&p, home, base))),
        token,
        retries: args.retries,
    })
}

/// Resolves `args` against the config file on disk (if any).
pub fn resolve(args: &ConnectArgs) -> Result<Connection, CliError> {
    let home = std::env::var("HOME").ok();
    let path = args
        .config
        .clone()
        .or_else(|| default_config_path(|k| std::env::var(k).ok()));
    let text = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.config.is_none() => None,
            Err(e) => {
                return Err(CliError::Config(format!(
                    "cannot read config file {}: {e}",
                    p.display()
                )));
            }
        },
        None => None,
    };
    let file = match (&path, &text) {
        (Some(p), Some(t)) => Some((p.as_path(), t.as_str())),
        _ => None,
    };
    resolve_with(args, file, home.as_deref())
}

impl Connection {
    /// The token for the next connection attempt (re-read from its file or command each time).
    pub async fn token(&self) -> Result<Option<Token>, CliError> {
        let text = match &self.token {
            TokenSource::None => return Ok(None),
            TokenSource::Value(t) => return Ok(Some(t.clone())),
            TokenSource::File(p) => tokio::fs::read_to_string(p).await.map_err(|e| {
                CliError::Config(format!("cannot read token file {}: {e}", p.display()))
            })?,
            TokenSource::Command(c) => {
                let out = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(c)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .await
                    .map_err(|e| CliError::Config(format!("cannot run token command: {e}")))?;
                if !out.status.success() {
                    return Err(CliError::Config(format!(
                        "token command `{c}` failed ({})",
                        out.status
                    )));
                }
                String::from_utf8(out.stdout).map_err(|_| {
                    CliError::Config(format!("token command `{c}` printed something not UTF-8"))
                })?
            }
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(CliError::Config(match &self.token {
                TokenSource::File(p) => format!("token file {} is empty", p.display()),
                _ => "the token command printed nothing".into(),
            }));
        }
        Ok(Some(Token(t.to_owned())))
    }

    /// The CA roots for `wss://`, if a CA file is configured.
    pub fn roots(&self) -> Result<Option<rustls::RootCertStore>, CliError> {
        self.ca_file
            .as_deref()
            .map(|p| {
                logrelay_tls::roots_from_pem_file(p).map_err(|e| CliError::Config(e.to_string()))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
current_context = "prod"

[contexts.prod]
url = "wss://relay.example.com/v1/subscribe"
ca_file = "ca.pem"
token_file = "~/prod.token"

[contexts.staging]
url = "wss://staging.example.com/v1/subscribe"
token_command = "echo t"
"#;

    fn path() -> &'static Path {
        Path::new("/home/u/.config/logrelay/config.toml")
    }

    #[test]
    fn the_current_context_fills_what_flags_leave_unset() {
        let c = resolve_with(
            &ConnectArgs::default(),
            Some((path(), FILE)),
            Some("/home/u"),
        )
        .unwrap();
        assert_eq!(c.url, "wss://relay.example.com/v1/subscribe");
        assert_eq!(
            c.ca_file.as_deref(),
            Some(Path::new("/home/u/.config/logrelay/ca.pem")),
            "relative to the config file"
        );
        assert_eq!(c.token, TokenSource::File("/home/u/prod.token".into()));

        let args = ConnectArgs {
            context: Some("staging".into()),
            ..Default::default()
        };
        let c = resolve_with(&args, Some((path(), FILE)), Some("/home/u")).unwrap();
        assert_eq!(c.url, "wss://staging.example.com/v1/subscribe");
        assert_eq!(c.token, TokenSource::Command("echo t".into()));
        assert_eq!(c.ca_file, None);
    }

    #[test]
    fn flags_win_over_the_context_and_defaults_apply_without_one() {
        let args = ConnectArgs {
            url: Some("ws://10.0.0.1:8080/v1/subscribe".into()),
            token: Some("secret".into()),
            ..Default::default()
        };
        let c = resolve_with(&args, Some((path(), FILE)), Some("/home/u")).unwrap();
        assert_eq!(c.url, "ws://10.0.0.1:8080/v1/subscribe");
        assert!(matches!(c.token, TokenSource::Value(_)));
        assert!(!format!("{c:?}").contains("secret"), "{c:?}");

        let c = resolve_with(&ConnectArgs::default(), None, None).unwrap();
        assert_eq!(
            (c.url.as_str(), &c.token),
            (DEFAULT_URL, &TokenSource::None)
        );
    }

    #[test]
    fn unknown_contexts_and_fields_are_refused_by_name() {
        let args = ConnectArgs {
            context: Some("qa".into()),
            ..Default::default()
        };
        let e = resolve_with(&args, Some((path(), FILE)), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no context `qa` in /home/u/.config/logrelay/config.toml (it has: prod, staging)"
        );
        assert_eq!(e.exit_code(), crate::exit::USAGE);
        let e = resolve_with(
            &ConnectArgs::default(),
            Some((path(), "[contexts.x]\nurll = \"ws://a:1/\"\n")),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `urll`"), "{e}");
        assert!(resolve_with(&args, None, None).is_err());
    }

    #[test]
    fn the_default_path_follows_xdg() {
        let env = |xdg: Option<&'static str>| {
            move |k: &str| match k {
                "XDG_CONFIG_HOME" => xdg.map(str::to_owned),
                "HOME" => Some("/home/u".to_owned()),
                _ => None,
            }
        };
        assert_eq!(
            default_config_path(env(Some("/x"))),
            Some("/x/logrelay/config.toml".into())
        );
        assert_eq!(
            default_config_path(env(None)),
            Some("/home/u/.config/logrelay/config.toml".into())
        );
    }

    #[tokio::test]
    async fn tokens_come_from_files_and_commands_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "abc.def\n").unwrap();
        let conn = |token| Connection {
            url: DEFAULT_URL.into(),
            ca_file: None,
            token,
            retries: 0,
        };
        let t = conn(TokenSource::File(f.clone())).token().await.unwrap();
        assert_eq!(t.unwrap().expose(), "abc.def");
        let t = conn(TokenSource::Command("printf ' xyz '".into()))
            .token()
            .await
            .unwrap();
        assert_eq!(t.unwrap().expose(), "xyz");
        let e = conn(TokenSource::Command("exit 3".into()))
            .token()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
        std::fs::write(&f, "  \n").unwrap();
        let e = conn(TokenSource::File(f)).token().await.unwrap_err();
        assert!(e.to_string().ends_with("is empty"), "{e}");
    }
}
