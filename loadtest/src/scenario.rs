//! Scenarios: what load to offer, in TOML. Pure: parsing, presets, validation.
//!
//! ```toml
//! name = "fanout-10"
//! mode = "quic-producer"      # or "agent": real agent processes tailing files the harness writes
//! agents = 1
//! streams_per_agent = 1
//! line_bytes = 200            # omit for LogHub lines as they are
//! rate_lines_per_sec = 100000 # total over all streams; omit for unpaced
//! duration_secs = 10
//! warmup_secs = 2
//!
//! [subscribers]
//! per_stream = 10
//! sessions = 10
//! stalled_fraction = 0.0
//! ```

use serde::{Deserialize, Serialize};

/// How lines enter the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// An in-process QUIC client speaking the agent protocol (hello, catalog, serve `open` with
    /// encoded batches): real QUIC and TLS, no file I/O. Measures the relay, not the agent.
    #[default]
    QuicProducer,
    /// Real agent processes tailing CRI files that the harness appends to: the whole pipeline,
    /// file write to WebSocket delivery.
    Agent,
}

impl Mode {
    /// Name as written in scenarios.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QuicProducer => "quic-producer",
            Self::Agent => "agent",
        }
    }
}

/// Where agents and sessions connect when a run has several relays (joined over a NATS
/// backplane that the harness starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Agent `a` on relay `a mod relays`, session `i` on relay `i mod relays`: most sessions
    /// watch some stream held by another relay, as behind a load balancer.
    #[default]
    Spread,
    /// Every agent on the first relay, the sessions on the others (round-robin): every line a
    /// session gets crossed the backplane.
    AwayFromAgents,
}

/// Who watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Subscribers {
    /// Sessions watching each stream.
    pub per_stream: u32,
    /// WebSocket sessions in total; each watches `streams × per_stream / sessions` streams
    /// (assigned round-robin). Must be at least `per_stream` unless nobody watches.
    pub sessions: u32,
    /// Fraction of sessions that subscribe and then never read (stalled consumers).
    pub stalled_fraction: f64,
    /// Fraction of sessions that pause `slow_delay_ms` after every message.
    pub slow_fraction: f64,
    /// Pause of a slow session after each message, in milliseconds.
    pub slow_delay_ms: u64,
}

impl Default for Subscribers {
    fn default() -> Self {
        Self {
            per_stream: 1,
            sessions: 1,
            stalled_fraction: 0.0,
            slow_fraction: 0.0,
            slow_delay_ms: 5,
        }
    }
}

/// One load scenario. Units are in the field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Shown in reports.
    pub name: String,
    /// How lines enter the relay.
    pub mode: Mode,
    /// Agents (QUIC connections, or agent processes).
    pub agents: u32,
    /// Streams (containers) per agent.
    pub streams_per_agent: u32,
    /// Every line's size, terminator included (LogHub text cut or repeated to fit); absent:
    /// LogHub lines as they are (129 bytes on average, stamp included).
    pub line_bytes: Option<u32>,
    /// Lines per second over all streams; absent: as fast as the producers can send.
    pub rate_lines_per_sec: Option<u64>,
    /// Measured time.
    pub duration_secs: f64,
    /// Load before measuring starts (connections warm, rings full).
    pub warmup_secs: f64,
    /// Interval of the time series (chart, progress).
    pub sample_secs: f64,
    /// A producer flushes a batch at this size (the agent's `max_batch_bytes`).
    pub batch_bytes: u32,
    /// Record the latency of every Nth line (1: all), to keep subscribers cheap.
    pub latency_sample_every: u32,
    /// Bytes of each relay stream ring (relay `--ring-bytes`).
    pub ring_bytes: u64,
    /// Relays; more than one run as a scale-out deployment, joined by a `nats-server` the
    /// harness starts (`--nats-url`), with agents and sessions placed by `placement`.
    pub relays: u32,
    /// Where agents and sessions connect when there are several relays.
    pub placement: Placement,
    /// Who watches.
    pub subscribers: Subscribers,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "custom".into(),
            mode: Mode::QuicProducer,
            agents: 1,
            streams_per_agent: 1,
            line_bytes: None,
            rate_lines_per_sec: None,
            duration_secs: 10.0,
            warmup_secs: 2.0,
            sample_secs: 1.0,
            batch_bytes: 64 * 1024,
            latency_sample_every: 1,
            ring_bytes: 4 * 1024 * 1024,
            relays: 1,
            placement: Placement::Spread,
            subscribers: Subscribers::default(),
        }
    }
}

/// Why a scenario is refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The TOML did not parse or named an unknown field.
    #[error("scenario does not parse: {0}")]
    Toml(#[from] toml::de::Error),
    /// No preset of that name.
    #[error("no preset `{0}`; presets: {names}", names = PRESETS.join(", "))]
    UnknownPreset(String),
    /// A value is out of range.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// Names of the presets: those of design §6 in its order,
/// then the scale-out ones (several relays over NATS).
pub const PRESETS: [&str; 9] = [
    "ingest",
    "fanout-10",
    "fanout-100",
    "fanout-1000",
    "latency",
    "slow-consumers",
    "idle-agent",
    "cross-relay",
    "scale-3",
];

impl Scenario {
    /// Parses a TOML scenario and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Self = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// The scenario as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("scenarios serialize")
    }

    /// A named preset (design §6).
    pub fn preset(name: &str) -> Result<Self, ScenarioError> {
        let fanout = |n: u32| Self {
            name: format!("fanout-{n}"),
            line_bytes: Some(200),
            latency_sample_every: 16,
            subscribers: Subscribers {
                per_stream: n,
                sessions: n,
                ..Subscribers::default()
            },
            ..Self::default()
        };
        let s = match name {
            "ingest" => Self {
                name: name.into(),
                streams_per_agent: 4,
                line_bytes: Some(200),
                latency_sample_every: 16,
                ..Self::default()
            },
            "fanout-10" => fanout(10),
            "fanout-100" => fanout(100),
            "fanout-1000" => fanout(1000),
            "latency" => Self {
                name: name.into(),
                mode: Mode::Agent,
                streams_per_agent: 4,
                rate_lines_per_sec: Some(100_000),
                subscribers: Subscribers {
                    per_stream: 10,
                    sessions: 10,
                    ..Subscribers::default()
                },
                ..Self::default()
            },
            "slow-consumers" => Self {
                name: name.into(),
                line_bytes: Some(200),
                rate_lines_per_sec: Some(100_000),
                latency_sample_every: 4,
                subscribers: Subscribers {
                    per_stream: 100,
                    sessions: 100,
                    stalled_fraction: 0.1,
                    ..Subscribers::default()
                },
                ..Self::default()
            },
            "idle-agent" => Self {
                name: name.into(),
                mode: Mode::Agent,
                streams_per_agent: 1000,
                rate_lines_per_sec: Some(1000),
                duration_secs: 20.0,
                warmup_secs: 3.0,
                subscribers: Subscribers {
                    per_stream: 0,
                    sessions: 0,
                    ..Subscribers::default()
                },
                ..Self::default()
            },
            // One agent on relay A, 100 sessions on relay B: every line crosses NATS. Beside
            // it, the same load on one relay: `--relays 1`.
            "cross-relay" => Self {
                name: name.into(),
                line_bytes: Some(200),
                rate_lines_per_sec: Some(100_000),
                latency_sample_every: 4,
                relays: 2,
                placement: Placement::AwayFromAgents,
                subscribers: Subscribers {
                    per_stream: 100,
                    sessions: 100,
                    ..Subscribers::default()
                },
                ..Self::default()
            },
            // Three relays, an agent and a third of the sessions on each, every session
            // watching every stream (two of three from another relay). Beside it: `--relays 1`.
            "scale-3" => Self {
                name: name.into(),
                agents: 3,
                line_bytes: Some(200),
                latency_sample_every: 16,
                relays: 3,
                subscribers: Subscribers {
                    per_stream: 99,
                    sessions: 99,
                    ..Subscribers::default()
                },
                ..Self::default()
            },
            other => return Err(ScenarioError::UnknownPreset(other.into())),
        };
        s.validate()?;
        Ok(s)
    }

    /// The CI smoke run: the whole pipeline (agent process tailing files, relay, sessions, one
    /// of them stalled) for a few seconds.
    pub fn quick() -> Self {
        Self {
            name: "quick".into(),
            mode: Mode::Agent,
            streams_per_agent: 2,
            rate_lines_per_sec: Some(20_000),
            duration_secs: 3.0,
            warmup_secs: 1.5,
            sample_secs: 0.5,
            subscribers: Subscribers {
                per_stream: 2,
                sessions: 3,
                stalled_fraction: 0.34,
                ..Subscribers::default()
            },
            ..Self::default()
        }
    }

    /// Streams in total.
    pub fn streams(&self) -> u32 {
        self.agents * self.streams_per_agent
    }

    /// The relay (index) agent `agent` connects to.
    pub fn relay_of_agent(&self, agent: u32) -> u32 {
        match self.placement {
            Placement::Spread => agent % self.relays.max(1),
            Placement::AwayFromAgents => 0,
        }
    }

    /// The relay (index) session `session` connects to.
    pub fn relay_of_session(&self, session: u32) -> u32 {
        match self.placement {
            _ if self.relays <= 1 => 0,
            Placement::Spread => session % self.relays,
            Placement::AwayFromAgents => 1 + session % (self.relays - 1),
        }
    }

    /// Sessions that stall, then sessions that are slow (the first ones, by index).
    pub fn stalled_and_slow(&self) -> (u32, u32) {
        let n = f64::from(self.subscribers.sessions);
        let stalled = (n * self.subscribers.stalled_fraction).round() as u32;
        let slow = (n * self.subscribers.slow_fraction).round() as u32;
        (stalled, slow.min(self.subscribers.sessions - stalled))
    }

    /// Streams each session watches: stream `s`'s `r`-th watcher is session
    /// `(s · per_stream + r) mod sessions`, so no session watches a stream twice.
    pub fn assignments(&self) -> Vec<Vec<u32>> {
        let sessions = self.subscribers.sessions as usize;
        let mut out = vec![Vec::new(); sessions];
        if sessions == 0 {
            return out;
        }
        let per = self.subscribers.per_stream as usize;
        for s in 0..self.streams() as usize {
            for r in 0..per {
                out[(s * per + r) % sessions].push(s as u32);
            }
        }
        out
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        let sub = &self.subscribers;
        if self.agents == 0 || self.streams_per_agent == 0 {
            return bad("agents and streams_per_agent must be at least 1".into());
        }
        if !(self.duration_secs > 0.0 && self.duration_secs <= 3600.0) {
            return bad("duration_secs must be in (0, 3600]".into());
        }
        if !(self.warmup_secs >= 0.0 && self.warmup_secs <= 600.0) {
            return bad("warmup_secs must be in [0, 600]".into());
        }
        if !(self.sample_secs >= 0.1 && self.sample_secs <= self.duration_secs) {
            return bad("sample_secs must be in [0.1, duration_secs]".into());
        }
        if let Some(b) = self.line_bytes
            && !(32..=1 << 20).contains(&b)
        {
            return bad(
                "line_bytes must be in [32, 1 MiB] (a line carries a 22-byte stamp)".into(),
            );
        }
        if !(1024..=4 << 20).contains(&self.batch_bytes) {
            return bad("batch_bytes must be in [1 KiB, 4 MiB]".into());
        }
        if self.latency_sample_every == 0 {
            return bad("latency_sample_every must be at least 1".into());
        }
        if self.rate_lines_per_sec == Some(0) {
            return bad("rate_lines_per_sec must be positive (omit it for unpaced)".into());
        }
        if self.mode == Mode::Agent && self.rate_lines_per_sec.is_none() {
            return bad(
                "mode = \"agent\" needs rate_lines_per_sec (files would grow without bound)".into(),
            );
        }
        if (sub.per_stream == 0) != (sub.sessions == 0) {
            return bad(
                "subscribers.per_stream and subscribers.sessions are both 0 or both positive"
                    .into(),
            );
        }
        if sub.per_stream > sub.sessions {
            return bad("subscribers.per_stream cannot exceed subscribers.sessions".into());
        }
        if sub.sessions > 10_000 || self.streams() > 100_000 {
            return bad("at most 10000 sessions and 100000 streams".into());
        }
        for (name, f) in [
            ("stalled_fraction", sub.stalled_fraction),
            ("slow_fraction", sub.slow_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!("subscribers.{name} must be in [0, 1]"));
            }
        }
        if !(1..=8).contains(&self.relays) {
            return bad("relays must be in [1, 8]".into());
        }
        if self.placement == Placement::AwayFromAgents && self.relays < 2 {
            return bad(
                "placement = \"away-from-agents\" needs relays >= 2 (or placement = \"spread\")"
                    .into(),
            );
        }
        if sub.stalled_fraction + sub.slow_fraction > 1.0 {
            return bad("stalled_fraction + slow_fraction cannot exceed 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_round_trips_through_toml() {
        for name in PRESETS {
            let s = Scenario::preset(name).unwrap();
            assert_eq!(s.name, name);
            assert_eq!(Scenario::from_toml(&s.to_toml()).unwrap(), s, "{name}");
        }
        Scenario::quick().validate().unwrap();
        assert!(matches!(
            Scenario::preset("nope"),
            Err(ScenarioError::UnknownPreset(_))
        ));
    }

    #[test]
    fn presets_match_the_design_goals() {
        let p = |n| Scenario::preset(n).unwrap();
        assert_eq!(p("ingest").subscribers.sessions, 1);
        assert_eq!(p("ingest").rate_lines_per_sec, None);
        assert_eq!(p("fanout-1000").subscribers.per_stream, 1000);
        assert_eq!(p("latency").rate_lines_per_sec, Some(100_000));
        assert_eq!(p("latency").mode, Mode::Agent);
        assert_eq!(p("slow-consumers").stalled_and_slow(), (10, 0));
        let idle = p("idle-agent");
        assert_eq!((idle.streams(), idle.subscribers.sessions), (1000, 0));
        let cross = p("cross-relay");
        assert_eq!(cross.rate_lines_per_sec, Some(100_000));
        assert_eq!((cross.relays, cross.subscribers.sessions), (2, 100));
        assert_eq!(p("scale-3").relays, 3);
    }

    #[test]
    fn several_relays_place_agents_and_sessions_as_asked() {
        let cross = Scenario::preset("cross-relay").unwrap();
        assert_eq!(cross.relay_of_agent(0), 0);
        assert!((0..100).all(|i| cross.relay_of_session(i) == 1), "all on B");
        let three = Scenario {
            relays: 3,
            placement: Placement::AwayFromAgents,
            ..cross.clone()
        };
        let on: Vec<u32> = (0..4).map(|i| three.relay_of_session(i)).collect();
        assert_eq!(on, [1, 2, 1, 2]);
        let scale = Scenario::preset("scale-3").unwrap();
        let agents: Vec<u32> = (0..3).map(|a| scale.relay_of_agent(a)).collect();
        assert_eq!(agents, [0, 1, 2]);
        let sessions: Vec<u32> = (0..4).map(|i| scale.relay_of_session(i)).collect();
        assert_eq!(sessions, [0, 1, 2, 0]);
        // One relay (the single-relay figures beside them): everyone on it.
        let one = Scenario {
            relays: 1,
            placement: Placement::Spread,
            ..cross
        };
        assert_eq!((one.relay_of_agent(0), one.relay_of_session(7)), (0, 0));
        one.validate().unwrap();
        let away_alone = Scenario {
            placement: Placement::AwayFromAgents,
            ..one
        };
        assert!(away_alone.validate().is_err());
    }

    #[test]
    fn a_partial_file_takes_defaults_and_unknown_fields_are_refused() {
        let s = Scenario::from_toml(
            "name = \"x\"\nmode = \"agent\"\nrate_lines_per_sec = 10\n[subscribers]\nper_stream = 2\nsessions = 3\n",
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Agent);
        assert_eq!(s.subscribers.sessions, 3);
        assert_eq!(s.batch_bytes, 64 * 1024);
        let err = Scenario::from_toml("nmae = \"x\"").unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
        let err = Scenario::from_toml("[subscribers]\nper_stream = 5\nsessions = 2\n").unwrap_err();
        assert!(matches!(err, ScenarioError::Invalid(_)), "{err}");
        assert!(Scenario::from_toml("mode = \"agent\"").is_err());
    }

    #[test]
    fn shipped_scenario_files_parse() {
        let example = Scenario::from_toml(include_str!("../scenarios/example.toml")).unwrap();
        assert_eq!(example.stalled_and_slow(), (0, 1));
        assert_eq!(example, Scenario::from_toml(&example.to_toml()).unwrap());
        let stalled = Scenario::from_toml(include_str!("../scenarios/stalled-1000.toml")).unwrap();
        assert_eq!(stalled.stalled_and_slow(), (990, 0));
    }

    #[test]
    fn assignments_spread_watchers_without_duplicates() {
        let s = Scenario {
            streams_per_agent: 4,
            subscribers: Subscribers {
                per_stream: 3,
                sessions: 5,
                ..Subscribers::default()
            },
            ..Scenario::default()
        };
        let a = s.assignments();
        assert_eq!(a.len(), 5);
        assert_eq!(a.iter().map(Vec::len).sum::<usize>(), 12);
        for streams in &a {
            let mut d = streams.clone();
            d.dedup();
            assert_eq!(&d, streams);
        }
        for st in 0..4 {
            assert_eq!(a.iter().filter(|v| v.contains(&st)).count(), 3);
        }
    }
}
