//! The engine's TOML configuration: listeners, destinations and routes.
//!
//! Every struct is `deny_unknown_fields`, so a misspelt key fails at start-up; every error
//! names the file, the line and the key. Loading does all validation that can be done
//! without the network (names resolve, paths and filter expressions parse, addresses are
//! well formed), so `courier check` and `courier run` refuse the same configs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::route::{Condition, Pattern};

/// A configuration error, naming the file, the line and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Io {
        /// The config file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown, or a value has the wrong type.
    #[error("{file}:{line}:{column}: {message}\n  | {text}")]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong (names the key where TOML knows it).
        message: String,
        /// The offending line, for context.
        text: String,
    },
    /// The TOML is well formed but a value is not acceptable.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// Dotted key, e.g. `route[2].destinations[0]`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Engine-wide settings.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The message store (journal and durable queues).
    #[serde(default)]
    pub store: StoreConfig,
    /// The admin HTTP server (API, metrics, dashboard); absent = none.
    #[serde(default)]
    pub admin: Option<Spanned<AdminConfig>>,
    /// Where alert notices go and how often rules are checked.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Alert rules (`[[alert]]`).
    #[serde(default, rename = "alert")]
    pub alert_rules: Vec<Spanned<AlertRule>>,
    /// MLLP listeners the engine accepts messages on.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<ListenerConfig>>,
    /// Systems messages are delivered to.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<Spanned<DestinationConfig>>,
    /// Which messages go where.
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// Lookup tables for route steps (`[tables.loinc]` with `KEY = "value"` lines), e.g.
    /// local lab codes to LOINC.
    #[serde(default)]
    pub tables: std::collections::HashMap<String, std::collections::HashMap<String, String>>,
    /// Installed plugin packages and the vendor keys trusted to sign them (`[plugins]`).
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// The file this was loaded from (set by [`Config::load`]).
    #[serde(skip)]
    pub source: PathBuf,
}

/// Where installed plugin packages live and whose signatures are trusted (`[plugins]`);
/// see docs/packages.md.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// The plugin directory (`DIR/NAME/VERSION/`), relative to the config's directory.
    #[serde(default = "defaults::plugins_dir")]
    pub dir: Spanned<PathBuf>,
    /// Vendor public keys (minisign format, the `RW...` line of a `.pub` file) whose
    /// packages may be installed and loaded.
    #[serde(default)]
    pub trusted_keys: Vec<Spanned<String>>,
    /// The capabilities a package may ask for at all (`clock`, `random`, `env:NAME`); a
    /// package asking for another is refused at install. None by default. A route must still
    /// grant each one.
    #[serde(default)]
    pub allow_capabilities: Vec<Spanned<String>>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: defaults::plugins_dir(),
            trusted_keys: Vec::new(),
            allow_capabilities: Vec::new(),
        }
    }
}

/// Engine-wide settings (`[engine]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// How long a graceful shutdown waits for destinations to drain their queues before it
    /// gives up on what is still queued (and logs it).
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Reload on change: the config file, and every plugin and script it names, are watched;
    /// a change is compiled and checked off the hot path, then swapped in whole (SIGHUP
    /// reloads too, whatever this says).
    #[serde(default = "defaults::yes")]
    pub watch: bool,
    /// How long the files must stay quiet after a change before it is reloaded, so that a
    /// save in several writes (or several files saved together) is taken as one change.
    #[serde(default = "defaults::reload_debounce", with = "humantime_serde")]
    pub reload_debounce: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: defaults::shutdown_grace(),
            watch: true,
            reload_debounce: defaults::reload_debounce(),
        }
    }
}

/// The admin HTTP server (`[admin]`): REST API, Prometheus metrics and the dashboard.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `IP:port` to serve on, e.g. `127.0.0.1:8575`.
    pub bind: Spanned<String>,
    /// The bearer token every endpoint but `/health` needs. Absent: read from the
    /// `COURIER_ADMIN_TOKEN` environment variable when the engine starts.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "defaults::admin_max_body")]
    pub max_body: usize,
}

/// `[alerts]`: where notices go. Every rule's notices also go to the log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `http://host:port/path` that each notice is POSTed to as JSON; absent = log only.
    #[serde(default)]
    pub webhook: Option<Spanned<String>>,
    /// How often the rules are checked.
    #[serde(default = "defaults::alert_check_every", with = "humantime_serde")]
    pub check_every: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook: None,
            check_every: defaults::alert_check_every(),
        }
    }
}

/// One alert rule (`[[alert]]`): a condition checked every `check_every`; a notice when it
/// starts to hold (once per incident, not once per message) and another when it stops.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Names the rule in notices.
    pub name: String,
    /// What to watch.
    pub when: AlertKind,
    /// The destination (`queue_depth`, `dead_letters`, `destination_down`).
    #[serde(default)]
    pub destination: Option<Spanned<String>>,
    /// The listener (`listener_silent`).
    #[serde(default)]
    pub listener: Option<Spanned<String>>,
    /// Only this route's steps (`step_failures`); absent = every route.
    #[serde(default)]
    pub route: Option<Spanned<String>>,
    /// The threshold: fires when the value is above it (`queue_depth`, `dead_letters`,
    /// `step_failures`).
    #[serde(default)]
    pub above: u64,
    /// How long the condition must last: every attempt failing (`destination_down`, default
    /// 1m), nothing received (`listener_silent`, default 15m).
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub lasting: Option<Duration>,
    /// The window step failures are counted over (`step_failures`, default 5m).
    #[serde(default, with = "humantime_serde")]
    pub within: Option<Duration>,
}

/// Alert conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A destination's unfinished deliveries (queued + in flight) above `above`.
    QueueDepth,
    /// A destination's dead-lettered deliveries above `above`.
    DeadLetters,
    /// Every attempt to a destination has failed for `for`.
    DestinationDown,
    /// A listener received nothing for `for`.
    ListenerSilent,
    /// More than `above` step failures (traps, timeouts, limits) within `within`.
    StepFailures,
}

/// The environment variable the admin token is read from when the config has none.
pub const ADMIN_TOKEN_ENV: &str = "COURIER_ADMIN_TOKEN";

/// Shortest admin token accepted: a guessable token on a port that can resend patient
/// messages is a hole.
pub const ADMIN_TOKEN_MIN_LEN: usize = 16;

impl AdminConfig {
    /// The token: from the config, else from the environment; an error says how to set one.
    pub fn resolve_token(&self) -> Result<Secret, String> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => match std::env::var(ADMIN_TOKEN_ENV) {
                Ok(t) => Secret(t),
                Err(_) => {
                    return Err(format!(
                        "[admin] needs a token: set {ADMIN_TOKEN_ENV} or admin.token"
                    ));
                }
            },
        };
        if token.0.len() < ADMIN_TOKEN_MIN_LEN {
            return Err(format!(
                "the admin token must be at least {ADMIN_TOKEN_MIN_LEN} characters"
            ));
        }
        Ok(token)
    }
}

/// A value that must not appear in logs or debug output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret]")
    }
}

/// The message store (`[store]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `false` runs without a store: ACKs go back once a copy is queued in memory and
    /// nothing survives a restart (for benchmarks and throwaway tests, never for a clinic).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Directory of the store; relative to the config file's directory. Default: a
    /// directory named after the config file with `.data` (`clinic.toml` → `clinic.data/`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// fsync on every commit (group-committed). Turning it off risks losing acknowledged
    /// messages on power loss.
    #[serde(default = "defaults::yes")]
    pub fsync: bool,
    /// Delivered messages older than this are pruned; queued and errored ones never are.
    #[serde(default = "defaults::retention", with = "humantime_serde")]
    pub retention: Duration,
    /// How often the pruner runs.
    #[serde(default = "defaults::prune_interval", with = "humantime_serde")]
    pub prune_interval: Duration,
    /// A cap on the store's size in bytes: beyond it new messages get AE, as on a full disk,
    /// so the store cannot fill a disk it shares. Absent = no cap.
    #[serde(default)]
    pub max_size_bytes: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            fsync: true,
            retention: defaults::retention(),
            prune_interval: defaults::prune_interval(),
            max_size_bytes: None,
        }
    }
}

impl Config {
    /// Where the store lives for this config.
    pub fn store_dir(&self) -> PathBuf {
        let base = self
            .source
            .parent()
            .map(FsPath::to_path_buf)
            .unwrap_or_default();
        match &self.store.dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => base.join(d),
            None => {
                let stem = self
                    .source
                    .file_stem()
                    .map_or("courier".into(), |s| s.to_string_lossy().into_owned());
                base.join(format!("{stem}.data"))
            }
        }
    }
}

/// When a listener sends its ACK.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AckPolicy {
    /// AA/CA once the raw message is durably stored (steps and delivery follow).
    #[default]
    AfterStore,
    /// Once the route steps ran: AE/AR carry filter or transform errors.
    AfterProcessing,
    /// Once every destination answered: their verdict is relayed (pass-through).
    AfterDelivery,
}

/// How a destination orders deliveries when one fails.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OrderingConfig {
    /// FIFO: a failing message holds back everything after it.
    #[default]
    Strict,
    /// A failing message waits its retry while later ones flow.
    SetAside,
    /// FIFO per key (`order_key`, e.g. the patient's PID-3.1): a failing message holds back
    /// only the later messages with the same key.
    ByKey,
}

/// A listener (`[[listener]]`): MLLP (the default), HTTP or a watched directory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used by routes and in logs.
    pub name: String,
    /// How messages arrive: `mllp` (default), `http` (POST, ER7 or JSON body, the ACK in the
    /// response) or `file` (files dropped in `directory`). See docs/connectors.md.
    #[serde(default)]
    pub kind: ListenerKind,
    /// Address to bind, e.g. `127.0.0.1:2575` (`:0` picks a free port); `mllp` and `http`.
    #[serde(default = "defaults::unset")]
    pub bind: Spanned<String>,
    /// `file`: the directory watched for new files; relative to the config's directory.
    /// Picked-up files move to its `processed/` or `error/` subdirectory.
    #[serde(default)]
    pub directory: Option<Spanned<PathBuf>>,
    /// `file`: which file names are picked up (`*` and `?` wildcards). Default `*`; names
    /// starting with `.` are never picked up (writers' temporary files).
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
    /// `file`: a file is picked up once its size and modification time have not changed for
    /// this long (it is then taken to be completely written). Default 1s.
    #[serde(default, with = "humantime_serde")]
    pub settle: Option<Duration>,
    /// `file`: how often the directory is scanned. Default 500ms.
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// Connections served at once. When full, a new connection evicts the one that has gone
    /// longest without completing a frame (never one handling a message); if every
    /// connection is handling one, the new connection is closed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Connections served at once from one IP address; one more is closed on accept.
    /// Absent = no per-address limit.
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Source addresses allowed to connect: networks (`10.0.0.0/8`) or single addresses
    /// (`127.0.0.1`, `::1`). Anyone else is closed right after accept. Absent = anyone.
    #[serde(default)]
    pub allow: Option<Vec<Spanned<String>>>,
    /// Serve MLLP (or HTTP: HTTPS) over TLS (`tls = { cert, key, client_ca }`); with
    /// `client_ca`, mutual TLS.
    #[serde(default)]
    pub tls: Option<Spanned<ListenerTlsConfig>>,
    /// A connection that sends nothing for this long is closed.
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest MLLP frame accepted, in bytes; a larger one closes the connection.
    #[serde(default = "defaults::max_frame_size")]
    pub max_frame_size: usize,
    /// Most segments a message may have; a message with more is refused (AR, with an ERR
    /// naming the limit) before it is stored.
    #[serde(default = "defaults::max_segments")]
    pub max_segments: usize,
    /// Most fields one segment may have (MSH-1 counts, as in HL7 numbering); a message with a
    /// longer segment is refused (AR, with an ERR naming the limit and the segment).
    #[serde(default = "defaults::max_fields")]
    pub max_fields: usize,
    /// `strict`: segments end with `\r` only. `lenient`: `\n` and `\r\n` are accepted too.
    #[serde(default)]
    pub line_endings: LineEndingsConfig,
    /// Character set assumed when MSH-18 is empty: `UTF-8`, `ASCII` or `8859/1`.
    #[serde(default = "defaults::charset")]
    pub default_charset: Spanned<String>,
    /// What to do with a message no route wants: `accept` (AA, logged as unrouted) or
    /// `reject` (AR with an ERR naming MSH-9).
    #[serde(default)]
    pub unrouted: UnroutedPolicy,
    /// When the ACK goes back: `after-store` (default), `after-processing` or
    /// `after-delivery`.
    #[serde(default)]
    pub ack_policy: AckPolicy,
    /// With `after-delivery`: how long to wait for the destinations before answering AE.
    #[serde(default = "defaults::delivery_wait", with = "humantime_serde")]
    pub delivery_wait: Duration,
    /// Duplicate detection: a message with the same MSH-3, MSH-4 and MSH-10 as one received
    /// within this window is not processed again; the original ACK is replayed. Off when
    /// absent.
    #[serde(default, with = "humantime_serde")]
    pub duplicate_window: Option<Duration>,
    /// MLLP release: `1` (default) answers each message with an HL7 ACK; `2` answers with
    /// the transport's commit acknowledgement (an `ACK` block once the message is durably
    /// stored, `NAK` when it could not be, so the sender resends). Release 2 needs the store
    /// and `ack_policy = "after-store"`.
    #[serde(default = "defaults::mllp_release")]
    pub mllp_release: u8,
    /// The TLS material named by `tls`, loaded and checked at load (set by [`Config::load`]).
    #[serde(skip)]
    pub tls_loaded: Option<courier_mllp::ServerTls>,
    /// The `allow` entries, parsed at load.
    #[serde(skip)]
    pub allow_parsed: Vec<courier_mllp::IpNet>,
}

/// Listener transports.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// HL7 over MLLP (optionally TLS).
    #[default]
    Mllp,
    /// HL7 (ER7 or JSON) in HTTP POST bodies; the ACK is the response.
    Http,
    /// Files dropped in a directory.
    File,
}

impl ListenerConfig {
    /// `file`: the settle interval.
    pub fn settle(&self) -> Duration {
        self.settle.unwrap_or(Duration::from_secs(1))
    }

    /// `file`: the scan interval.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval.unwrap_or(Duration::from_millis(500))
    }
}

/// A listener's TLS (`tls = { ... }`). Paths are relative to the config file's directory.
/// Certificates and keys are read again when their files change: new connections use the
/// new ones, open connections keep theirs; a replacement that does not load is refused with
/// a log line naming the file, and the previous material stays in use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// The listener's certificate chain (PEM), leaf first.
    pub cert: Spanned<PathBuf>,
    /// The listener's private key (PEM).
    pub key: Spanned<PathBuf>,
    /// CA bundle (PEM) that clients' certificates must chain to: mutual TLS, a client
    /// without a valid certificate is refused. Absent = clients are not asked for one.
    #[serde(default)]
    pub client_ca: Option<Spanned<PathBuf>>,
    /// How long a TLS handshake may take before the connection is closed.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

/// A destination's TLS (`tls = { ... }`). Paths are relative to the config file's directory
/// and reloaded when they change, as for a listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationTlsConfig {
    /// CA bundle (PEM) that the receiver's certificate must chain to (the OS trust store is
    /// not used).
    pub ca: Spanned<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key`.
    #[serde(default)]
    pub cert: Option<Spanned<PathBuf>>,
    /// Client private key (PEM); needs `cert`.
    #[serde(default)]
    pub key: Option<Spanned<PathBuf>>,
    /// Name the receiver's certificate must be valid for. Default: the host of `address`.
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
}

impl ListenerConfig {
    /// How this listener reads a message: its line endings, default character set and
    /// segment and field limits. The
    /// charset was validated at load, so an unknown name cannot reach here; should one, it
    /// falls back to the model's default (UTF-8).
    pub fn parse_options(&self) -> courier_hl7::ParseOptions {
        courier_hl7::ParseOptions {
            line_endings: match self.line_endings {
                LineEndingsConfig::Strict => courier_hl7::LineEndings::Strict,
                LineEndingsConfig::Lenient => courier_hl7::LineEndings::Lenient,
            },
            default_charset: parse_charset(self.default_charset.get_ref()).unwrap_or_default(),
            max_segments: self.max_segments,
            max_fields: self.max_fields,
        }
    }
}

/// Segment terminators a listener accepts.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LineEndingsConfig {
    /// `\r` only, as the standard says.
    #[default]
    Strict,
    /// `\r`, `\n` and `\r\n`.
    Lenient,
}

/// What happens to a message no route matches.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnroutedPolicy {
    /// Acknowledge with AA and log it as unrouted.
    #[default]
    Accept,
    /// Answer AR (unsupported message type).
    Reject,
}

/// A destination (`[[destination]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Unique name, used by routes and in logs.
    pub name: String,
    /// Transport: `mllp` (default), `file` or `http`. See docs/connectors.md.
    #[serde(default)]
    pub kind: DestinationKind,
    /// `mllp`: `host:port` of the receiving system.
    #[serde(default = "defaults::unset")]
    pub address: Spanned<String>,
    /// `file`: the directory each message is written to; relative to the config's directory.
    #[serde(default)]
    pub directory: Option<Spanned<PathBuf>>,
    /// `file`: the file name for each message, from `{control_id}`, `{message_type}`,
    /// `{timestamp}` (UTC, `YYYYMMDDhhmmss`), `{millis}` and `{delivery}` (a number unique
    /// per attempt). Default `{timestamp}_{control_id}.hl7`.
    #[serde(default)]
    pub name_pattern: Option<Spanned<String>>,
    /// `http`: the URL each message is POSTed to (`http://` or `https://`; https needs `tls`).
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// `http`: extra request headers, e.g. `{ Authorization = "Bearer ..." }`. Their values
    /// never appear in logs or debug output.
    #[serde(default)]
    pub headers: Option<Spanned<std::collections::BTreeMap<String, Secret>>>,
    /// `file` and `http`: `er7` (default) or `json` (the shape of docs/json.md).
    #[serde(default)]
    pub format: Option<Spanned<PayloadFormat>>,
    /// How long to wait for the receiver's ACK before retrying.
    #[serde(default = "defaults::ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How long a connection attempt may take.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Messages held in memory for this destination; when full, listeners feeding it slow
    /// their senders down instead of dropping anything.
    #[serde(default = "defaults::queue_capacity")]
    pub queue_capacity: usize,
    /// Largest ACK frame accepted from the receiver, in bytes.
    #[serde(default = "defaults::max_frame_size")]
    pub max_frame_size: usize,
    /// Retry schedule for AE, timeouts and connection failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// `strict` (default), `set-aside` or `by-key` (needs `order_key`).
    #[serde(default)]
    pub ordering: OrderingConfig,
    /// Path whose value keys the order with `ordering = "by-key"`, e.g. `PID-3.1`.
    #[serde(default)]
    pub order_key: Option<Spanned<String>>,
    /// MLLP release: `1` (default) waits for the receiver's HL7 ACK; `2` waits for its commit
    /// acknowledgement block (`ACK` = delivered; `NAK` or a timeout = sent again).
    #[serde(default = "defaults::mllp_release")]
    pub mllp_release: u8,
    /// With the store: how many queued deliveries one store commit claims (marks in flight)
    /// and how many sends share the commit that records their outcomes. Larger is faster under
    /// load; after a crash, up to this many may be sent again, flagged possible duplicates.
    /// `1` records every delivery on its own.
    #[serde(default = "defaults::claim_batch")]
    pub claim_batch: usize,
    /// Deliver over TLS (`tls = { ca, cert, key, server_name }`): the receiver's certificate
    /// is checked against `ca` and the server name; `cert` and `key` add a client certificate
    /// (mutual TLS).
    #[serde(default)]
    pub tls: Option<Spanned<DestinationTlsConfig>>,
    /// The TLS material named by `tls`, loaded and checked at load (set by [`Config::load`]).
    #[serde(skip)]
    pub tls_loaded: Option<courier_mllp::ClientTls>,
}

/// Destination transports.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// HL7 over MLLP, waiting for each ACK.
    #[default]
    Mllp,
    /// One file per message in a directory.
    File,
    /// An HTTP POST per message.
    Http,
}

/// How a message is written by a file or HTTP destination.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The message as it is (HL7 ER7).
    #[default]
    Er7,
    /// The JSON shape of docs/json.md.
    Json,
}

impl DestinationConfig {
    /// What the destination delivers to, for logs and the admin API: the address, the URL or
    /// the directory.
    pub fn target(&self) -> String {
        match self.kind {
            DestinationKind::Mllp => self.address.get_ref().clone(),
            DestinationKind::Http => self
                .url
                .as_ref()
                .map(|u| u.get_ref().clone())
                .unwrap_or_default(),
            DestinationKind::File => self
                .directory
                .as_ref()
                .map(|d| d.get_ref().display().to_string())
                .unwrap_or_default(),
        }
    }

    /// `file`/`http`: the payload format.
    pub fn payload_format(&self) -> PayloadFormat {
        self.format
            .as_ref()
            .map(|f| *f.get_ref())
            .unwrap_or_default()
    }
}

/// Exponential backoff (`retry = { ... }`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Wait after the first failure.
    #[serde(default = "defaults::retry_initial", with = "humantime_serde")]
    pub initial: Duration,
    /// Longest wait between attempts.
    #[serde(default = "defaults::retry_max", with = "humantime_serde")]
    pub max: Duration,
    /// Give up (and log the message as failed) after this many attempts; absent = never.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: defaults::retry_initial(),
            max: defaults::retry_max(),
            max_attempts: None,
        }
    }
}

/// A route (`[[route]]`): which messages, through which steps, to which destinations.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs.
    pub name: String,
    /// Listeners this route takes messages from; absent = all.
    #[serde(default)]
    pub listeners: Option<Vec<Spanned<String>>>,
    /// MSH-9 patterns such as `ADT^A04` or `ADT^A0*`; a pattern without `^` matches the
    /// message code with any trigger. Absent = every type.
    #[serde(default)]
    pub message_types: Option<Vec<Spanned<String>>>,
    /// Pattern for MSH-3.1 (sending application).
    #[serde(default)]
    pub sending_application: Option<Spanned<String>>,
    /// Pattern for MSH-4.1 (sending facility).
    #[serde(default)]
    pub sending_facility: Option<Spanned<String>>,
    /// Pattern for MSH-5.1 (receiving application).
    #[serde(default)]
    pub receiving_application: Option<Spanned<String>>,
    /// Pattern for MSH-6.1 (receiving facility).
    #[serde(default)]
    pub receiving_facility: Option<Spanned<String>>,
    /// Conditions on field values, all of which must hold, e.g. `PID-3.4 == "RIVERSIDE"`.
    #[serde(default)]
    pub when: Vec<Spanned<String>>,
    /// Destinations that get a copy of every matching message.
    pub destinations: Vec<Spanned<String>>,
    /// Filter and transform steps run in order on each matching message before it is sent
    /// (`[[route.step]]`).
    #[serde(default, rename = "step")]
    pub steps: Vec<Spanned<StepConfig>>,
}

/// A route step (`[[route.step]]`): a WASM component or a Rhai script and its settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// A WebAssembly component (built for wasm32-wasip2), relative to the config's directory.
    #[serde(default)]
    pub wasm: Option<Spanned<PathBuf>>,
    /// A Rhai script, relative to the config's directory.
    #[serde(default)]
    pub script: Option<Spanned<PathBuf>>,
    /// An installed plugin package, `NAME@VERSION` (docs/packages.md): its signature and
    /// content are checked at every load, and each capability its manifest asks for must be
    /// granted by `grants`.
    #[serde(default)]
    pub plugin: Option<Spanned<String>>,
    /// The installed package `plugin` names, found and verified at load.
    #[serde(skip)]
    pub package: Option<crate::package::Installed>,
    /// Settings handed to the step (strings, numbers, lists, tables).
    #[serde(default)]
    pub settings: toml::Table,
    /// CPU deadline per message (WASM: epoch interruption; Rhai: wall clock).
    #[serde(default = "defaults::step_deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Memory cap per WASM instance, in bytes.
    #[serde(default = "defaults::step_memory")]
    pub memory_bytes: u64,
    /// Capabilities granted to a WASM step; none by default.
    #[serde(default)]
    pub grants: GrantsConfig,
    /// WASM only: reuse an instance across messages instead of a fresh one per message
    /// (faster; but whatever the plugin keeps in memory carries from one patient's message
    /// to the next, so only for trusted plugins). A trap discards the instance.
    #[serde(default)]
    pub reuse_instance: bool,
}

/// What a route grants a WASM step (`grants = { ... }`). The default grants nothing.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Environment variables the plugin may read.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The real wall clock (otherwise frozen at the Unix epoch).
    #[serde(default)]
    pub clock: bool,
    /// Real randomness (otherwise a fixed sequence).
    #[serde(default)]
    pub random: bool,
}

impl StepConfig {
    /// The step's file, resolved against the config's directory.
    pub fn file(&self, config: &Config) -> Option<PathBuf> {
        if let Some(p) = &self.package {
            return Some(p.component());
        }
        let base = config.source.parent().unwrap_or(FsPath::new(""));
        self.wasm
            .as_ref()
            .or(self.script.as_ref())
            .map(|p| base.join(p.get_ref()))
    }
}

/// The smallest `max_fields` a listener accepts: MSH has 25 fields in HL7 v2.8 (21 in v2.5),
/// and a limit that refuses a well-formed MSH would refuse every message.
const MIN_MAX_FIELDS: usize = 25;

mod defaults {
    use std::time::Duration;

    /// A key that was not given (checked per kind at load).
    pub fn unset() -> toml::Spanned<String> {
        toml::Spanned::new(0..0, String::new())
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub fn mllp_release() -> u8 {
        1
    }
    pub fn reload_debounce() -> Duration {
        Duration::from_millis(300)
    }
    pub fn max_connections() -> usize {
        256
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_frame_size() -> usize {
        16 * 1024 * 1024
    }
    pub fn max_segments() -> usize {
        courier_hl7::DEFAULT_MAX_SEGMENTS
    }
    pub fn max_fields() -> usize {
        courier_hl7::DEFAULT_MAX_FIELDS
    }
    pub fn charset() -> toml::Spanned<String> {
        toml::Spanned::new(0..0, "UTF-8".to_owned())
    }
    pub fn ack_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn queue_capacity() -> usize {
        1000
    }
    pub fn claim_batch() -> usize {
        32
    }
    pub fn admin_max_body() -> usize {
        64 * 1024
    }
    pub fn alert_check_every() -> Duration {
        Duration::from_secs(10)
    }
    pub fn plugins_dir() -> toml::Spanned<std::path::PathBuf> {
        toml::Spanned::new(0..0, std::path::PathBuf::from("plugins"))
    }
    pub fn step_deadline() -> Duration {
        Duration::from_millis(100)
    }
    pub fn step_memory() -> u64 {
        64 * 1024 * 1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn retention() -> Duration {
        Duration::from_secs(30 * 24 * 3600)
    }
    pub fn prune_interval() -> Duration {
        Duration::from_secs(600)
    }
    pub fn delivery_wait() -> Duration {
        Duration::from_secs(30)
    }
    pub fn retry_initial() -> Duration {
        Duration::from_secs(1)
    }
    pub fn retry_max() -> Duration {
        Duration::from_secs(60)
    }
}

/// A route's matching rules, compiled at load.
#[derive(Debug, Clone)]
pub struct CompiledMatch {
    /// Listener names, `None` = all.
    pub listeners: Option<Vec<String>>,
    /// MSH-9 patterns, `None` = all.
    pub message_types: Option<Vec<Pattern>>,
    /// MSH-3.1 .. MSH-6.1 patterns, in that order.
    pub msh: [Option<Pattern>; 4],
    /// Field conditions, all must hold.
    pub when: Vec<Condition>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &FsPath) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &FsPath) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = line_col(text, span.start);
            ConfigError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
                text: text.lines().nth(line - 1).unwrap_or("").trim().to_owned(),
            }
        })?;
        config.source = file.to_owned();
        let validator = Validator { text, file };
        validator.validate(&config)?;
        validator.load_tls(&mut config)?;
        validator.resolve_plugins(&mut config)?;
        Ok(config)
    }

    /// The compiled matching rules of route `index` (validated at load, so this cannot fail
    /// for a loaded config).
    pub fn compiled_match(&self, index: usize) -> Result<CompiledMatch, ConfigError> {
        let v = Validator {
            text: "",
            file: &self.source,
        };
        v.compile_route(index, &self.routes[index])
    }
}

impl Validator<'_> {
    fn validate_alerts(&self, c: &Config) -> Result<(), ConfigError> {
        if let Some(url) = &c.alerts.webhook
            && !url.get_ref().starts_with("http://")
        {
            return Err(self.err(
                url.span(),
                "alerts.webhook".into(),
                format!(
                    "`{}` is not an http:// address (https webhooks are not supported yet; relay through a local receiver)",
                    url.get_ref()
                ),
            ));
        }
        if c.alerts.check_every.is_zero() {
            return Err(self.err(0..0, "alerts.check_every".into(), "must be greater than 0"));
        }
        let mut names = HashSet::new();
        for (i, r) in c.alert_rules.iter().enumerate() {
            let rule = r.get_ref();
            let key = |k: &str| format!("alert[{i}].{k}");
            if rule.name.trim().is_empty() || !names.insert(rule.name.as_str()) {
                return Err(self.err(
                    r.span(),
                    key("name"),
                    format!("alert names must be unique and not empty (`{}`)", rule.name),
                ));
            }
            let needs_destination = matches!(
                rule.when,
                AlertKind::QueueDepth | AlertKind::DeadLetters | AlertKind::DestinationDown
            );
            if needs_destination {
                let Some(d) = &rule.destination else {
                    return Err(self.err(
                        r.span(),
                        key("destination"),
                        "this rule watches a destination: name it",
                    ));
                };
                if !c
                    .destinations
                    .iter()
                    .any(|x| x.get_ref().name == *d.get_ref())
                {
                    return Err(self.err(
                        d.span(),
                        key("destination"),
                        format!("no destination named `{}`", d.get_ref()),
                    ));
                }
            }
            if rule.when == AlertKind::ListenerSilent {
                let Some(l) = &rule.listener else {
                    return Err(self.err(
                        r.span(),
                        key("listener"),
                        "this rule watches a listener: name it",
                    ));
                };
                if !c.listeners.iter().any(|x| x.get_ref().name == *l.get_ref()) {
                    return Err(self.err(
                        l.span(),
                        key("listener"),
                        format!("no listener named `{}`", l.get_ref()),
                    ));
                }
            }
            if let Some(route) = &rule.route
                && !c
                    .routes
                    .iter()
                    .any(|x| x.get_ref().name == *route.get_ref())
            {
                return Err(self.err(
                    route.span(),
                    key("route"),
                    format!("no route named `{}`", route.get_ref()),
                ));
            }
        }
        Ok(())
    }
}

impl Validator<'_> {
    /// The keys of a listener's kind are there, and no other kind's.
    fn validate_listener_kind(
        &self,
        c: &Config,
        i: usize,
        l: &Spanned<ListenerConfig>,
    ) -> Result<(), ConfigError> {
        let lc = l.get_ref();
        let key = |k: &str| format!("listener[{i}].{k}");
        let kind = match lc.kind {
            ListenerKind::Mllp => "mllp",
            ListenerKind::Http => "http",
            ListenerKind::File => "file",
        };
        let only_file = [
            ("directory", lc.directory.is_some()),
            ("pattern", lc.pattern.is_some()),
            ("settle", lc.settle.is_some()),
            ("poll_interval", lc.poll_interval.is_some()),
        ];
        if lc.kind != ListenerKind::File
            && let Some((k, _)) = only_file.iter().find(|(_, set)| *set)
        {
            return Err(self.err(
                    l.span(),
                    key(k),
                    format!("`{k}` applies to file listeners (kind = \"file\"); this one is kind = \"{kind}\""),
                ));
        }
        if lc.kind != ListenerKind::Mllp && lc.mllp_release != 1 {
            return Err(self.err(
                l.span(),
                key("mllp_release"),
                format!("applies to MLLP listeners; this one is kind = \"{kind}\""),
            ));
        }
        if lc.kind == ListenerKind::File {
            if !lc.bind.get_ref().is_empty() {
                return Err(self.err(
                    lc.bind.span(),
                    key("bind"),
                    "a file listener binds no address; it watches `directory`",
                ));
            }
            if lc.tls.is_some() {
                return Err(self.err(l.span(), key("tls"), "a file listener has no TLS"));
            }
            if lc.allow.is_some() {
                return Err(self.err(
                    l.span(),
                    key("allow"),
                    "a file listener has no peers to allow",
                ));
            }
            if lc.directory.is_none() {
                return Err(self.err(
                    l.span(),
                    key("directory"),
                    "a file listener needs directory = \"path/to/inbox\"",
                ));
            }
            if !c.store.enabled {
                return Err(self.err(
                    l.span(),
                    key("kind"),
                    "a file listener moves each file away once its messages are stored, so it needs the store ([store] enabled = true)",
                ));
            }
            if lc.ack_policy == AckPolicy::AfterDelivery {
                return Err(self.err(
                    l.span(),
                    key("ack_policy"),
                    "a file has no sender waiting for the destinations' answer; use \"after-store\" or \"after-processing\"",
                ));
            }
            if lc.settle().is_zero() || lc.poll_interval().is_zero() {
                return Err(self.err(
                    l.span(),
                    key("settle"),
                    "settle and poll_interval must be greater than 0",
                ));
            }
            if let Some(p) = &lc.pattern
                && p.get_ref().trim().is_empty()
            {
                return Err(self.err(
                    p.span(),
                    key("pattern"),
                    "must not be empty (use \"*\" for every file)",
                ));
            }
        }
        Ok(())
    }

    /// The keys of a destination's kind are there, and no other kind's.
    fn validate_destination_kind(
        &self,
        i: usize,
        d: &Spanned<DestinationConfig>,
    ) -> Result<(), ConfigError> {
        let dc = d.get_ref();
        let key = |k: &str| format!("destination[{i}].{k}");
        let (kind, allowed): (&str, &[&str]) = match dc.kind {
            DestinationKind::Mllp => ("mllp", &["address"]),
            DestinationKind::File => ("file", &["directory", "name_pattern", "format"]),
            DestinationKind::Http => ("http", &["url", "headers", "format"]),
        };
        let present = [
            ("address", !dc.address.get_ref().is_empty()),
            ("directory", dc.directory.is_some()),
            ("name_pattern", dc.name_pattern.is_some()),
            ("url", dc.url.is_some()),
            ("headers", dc.headers.is_some()),
            ("format", dc.format.is_some()),
        ];
        for (k, set) in present {
            if set && !allowed.contains(&k) {
                return Err(self.err(
                    d.span(),
                    key(k),
                    format!("`{k}` does not apply to a destination of kind = \"{kind}\""),
                ));
            }
        }
        if dc.kind != DestinationKind::Mllp && dc.mllp_release != 1 {
            return Err(self.err(
                d.span(),
                key("mllp_release"),
                format!("applies to MLLP destinations; this one is kind = \"{kind}\""),
            ));
        }
        match dc.kind {
            DestinationKind::Mllp => {}
            DestinationKind::File => {
                if dc.directory.is_none() {
                    return Err(self.err(
                        d.span(),
                        key("directory"),
                        "a file destination needs directory = \"path/to/outbox\"",
                    ));
                }
                if dc.tls.is_some() {
                    return Err(self.err(d.span(), key("tls"), "a file destination has no TLS"));
                }
                if let Some(p) = &dc.name_pattern
                    && let Err(m) = crate::connectors::file_out::check_pattern(p.get_ref())
                {
                    return Err(self.err(p.span(), key("name_pattern"), m));
                }
            }
            DestinationKind::Http => {
                let Some(url) = &dc.url else {
                    return Err(self.err(
                        d.span(),
                        key("url"),
                        "an http destination needs url = \"http://host:port/path\"",
                    ));
                };
                match crate::connectors::http_out::parse_url(url.get_ref()) {
                    Err(m) => return Err(self.err(url.span(), key("url"), m)),
                    Ok(u) if u.https && dc.tls.is_none() => {
                        return Err(self.err(
                            url.span(),
                            key("url"),
                            "an https:// URL needs tls = { ca = \"ca.pem\" } (the CA the server's certificate chains to)",
                        ));
                    }
                    Ok(u) if !u.https && dc.tls.is_some() => {
                        return Err(self.err(
                            url.span(),
                            key("url"),
                            "tls is set but the URL is http://; use https://",
                        ));
                    }
                    Ok(_) => {}
                }
                if let Some(h) = &dc.headers {
                    for (name, value) in h.get_ref() {
                        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                            || hyper::header::HeaderValue::from_str(&value.0).is_err()
                        {
                            return Err(self.err(
                                h.span(),
                                key(&format!("headers.{name}")),
                                "not a valid HTTP header name and value",
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

struct Validator<'a> {
    text: &'a str,
    file: &'a FsPath,
}

impl Validator<'_> {
    fn err(&self, span: Range<usize>, key: String, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: line_col(self.text, span.start).0,
            key,
            message: message.into(),
        }
    }

    fn validate(&self, c: &Config) -> Result<(), ConfigError> {
        self.validate_alerts(c)?;
        if let Some(a) = &c.admin {
            let bind = &a.get_ref().bind;
            if bind.get_ref().parse::<SocketAddr>().is_err() {
                return Err(self.err(
                    bind.span(),
                    "admin.bind".into(),
                    format!(
                        "`{}` is not an IP address and port, e.g. 127.0.0.1:8575",
                        bind.get_ref()
                    ),
                ));
            }
            if let Some(t) = &a.get_ref().token
                && t.0.len() < ADMIN_TOKEN_MIN_LEN
            {
                return Err(self.err(
                    a.span(),
                    "admin.token".into(),
                    format!("must be at least {ADMIN_TOKEN_MIN_LEN} characters"),
                ));
            }
            if a.get_ref().max_body == 0 {
                return Err(self.err(a.span(), "admin.max_body".into(), "must be greater than 0"));
            }
        }
        let mut listener_names = HashSet::new();
        for (i, l) in c.listeners.iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            if l.get_ref().name.trim().is_empty() {
                return Err(self.err(l.span(), key("name"), "must not be empty"));
            }
            if !listener_names.insert(l.get_ref().name.as_str()) {
                return Err(self.err(
                    l.span(),
                    key("name"),
                    format!("duplicate listener name `{}`", l.get_ref().name),
                ));
            }
            self.validate_listener_kind(c, i, l)?;
            let bind = &l.get_ref().bind;
            if l.get_ref().kind != ListenerKind::File
                && bind.get_ref().parse::<SocketAddr>().is_err()
            {
                return Err(self.err(
                    if bind.span().is_empty() {
                        l.span()
                    } else {
                        bind.span()
                    },
                    key("bind"),
                    format!(
                        "`{}` is not an IP address and port, e.g. 127.0.0.1:2575",
                        bind.get_ref()
                    ),
                ));
            }
            if l.get_ref().max_connections == 0 {
                return Err(self.err(l.span(), key("max_connections"), "must be at least 1"));
            }
            if l.get_ref().max_frame_size < 64 {
                return Err(self.err(l.span(), key("max_frame_size"), "must be at least 64 bytes"));
            }
            if l.get_ref().max_segments == 0 {
                return Err(self.err(
                    l.span(),
                    key("max_segments"),
                    "must be at least 1 (the MSH segment)",
                ));
            }
            if l.get_ref().max_fields < MIN_MAX_FIELDS {
                return Err(self.err(
                    l.span(),
                    key("max_fields"),
                    format!(
                        "must be at least {MIN_MAX_FIELDS}, so that an MSH segment with all \
                         its fields fits"
                    ),
                ));
            }
            match l.get_ref().mllp_release {
                1 => {}
                2 if !c.store.enabled => {
                    return Err(self.err(
                        l.span(),
                        key("mllp_release"),
                        "release 2 acknowledges a durable commit, so it needs the store ([store] enabled = true)",
                    ));
                }
                2 if l.get_ref().ack_policy != AckPolicy::AfterStore => {
                    return Err(self.err(
                        l.span(),
                        key("mllp_release"),
                        "release 2 answers with a commit acknowledgement once the message is stored; use ack_policy = \"after-store\"",
                    ));
                }
                2 => {}
                n => {
                    return Err(self.err(
                        l.span(),
                        key("mllp_release"),
                        format!("{n} is not an MLLP release; use 1 or 2"),
                    ));
                }
            }
            let cs = &l.get_ref().default_charset;
            if parse_charset(cs.get_ref()).is_none() {
                return Err(self.err(
                    cs.span(),
                    key("default_charset"),
                    format!(
                        "unknown character set `{}`; use UTF-8, ASCII or 8859/1",
                        cs.get_ref()
                    ),
                ));
            }
            if l.get_ref().max_connections_per_ip == Some(0) {
                return Err(self.err(
                    l.span(),
                    key("max_connections_per_ip"),
                    "must be at least 1 (leave it out for no per-address limit)",
                ));
            }
            if let Some(allow) = &l.get_ref().allow {
                if allow.is_empty() {
                    return Err(self.err(
                        l.span(),
                        key("allow"),
                        "an empty allow list would refuse every connection; leave it out to allow any source",
                    ));
                }
                for (j, entry) in allow.iter().enumerate() {
                    if let Err(m) = courier_mllp::parse_allow(entry.get_ref()) {
                        return Err(self.err(entry.span(), key(&format!("allow[{j}]")), m));
                    }
                }
            }
            if let Some(tls) = &l.get_ref().tls
                && tls.get_ref().handshake_timeout.is_zero()
            {
                return Err(self.err(
                    tls.span(),
                    key("tls.handshake_timeout"),
                    "must be greater than 0",
                ));
            }
        }

        let mut dest_names = HashSet::new();
        for (i, d) in c.destinations.iter().enumerate() {
            let key = |k: &str| format!("destination[{i}].{k}");
            let dc = d.get_ref();
            if dc.name.trim().is_empty() {
                return Err(self.err(d.span(), key("name"), "must not be empty"));
            }
            if !dest_names.insert(dc.name.as_str()) {
                return Err(self.err(
                    d.span(),
                    key("name"),
                    format!("duplicate destination name `{}`", dc.name),
                ));
            }
            self.validate_destination_kind(i, d)?;
            if dc.kind == DestinationKind::Mllp && !valid_host_port(dc.address.get_ref()) {
                return Err(self.err(
                    if dc.address.span().is_empty() {
                        d.span()
                    } else {
                        dc.address.span()
                    },
                    key("address"),
                    format!(
                        "`{}` is not host:port, e.g. 127.0.0.1:2576",
                        dc.address.get_ref()
                    ),
                ));
            }
            if dc.queue_capacity == 0 {
                return Err(self.err(d.span(), key("queue_capacity"), "must be at least 1"));
            }
            if dc.retry.initial.is_zero() || dc.retry.max < dc.retry.initial {
                return Err(self.err(
                    d.span(),
                    key("retry"),
                    "retry.initial must be > 0 and retry.max >= retry.initial",
                ));
            }
            if dc.retry.max_attempts == Some(0) {
                return Err(self.err(
                    d.span(),
                    key("retry.max_attempts"),
                    "must be at least 1 (leave it out to retry forever)",
                ));
            }
            if !matches!(dc.mllp_release, 1 | 2) {
                return Err(self.err(
                    d.span(),
                    key("mllp_release"),
                    format!("{} is not an MLLP release; use 1 or 2", dc.mllp_release),
                ));
            }
            if dc.ack_timeout.is_zero() {
                return Err(self.err(d.span(), key("ack_timeout"), "must be greater than 0"));
            }
            if !(1..=1000).contains(&dc.claim_batch) {
                return Err(self.err(
                    d.span(),
                    key("claim_batch"),
                    format!("{} is out of range; use 1 to 1000", dc.claim_batch),
                ));
            }
            match (&dc.ordering, &dc.order_key) {
                (OrderingConfig::ByKey, None) => {
                    return Err(self.err(
                        d.span(),
                        key("order_key"),
                        "ordering = \"by-key\" needs order_key, e.g. order_key = \"PID-3.1\"",
                    ));
                }
                (_, Some(k)) => {
                    if let Err(e) = courier_hl7::Path::parse(k.get_ref()) {
                        return Err(self.err(k.span(), key("order_key"), e.to_string()));
                    }
                }
                _ => {}
            }
        }

        let mut route_names = HashSet::new();
        for (i, r) in c.routes.iter().enumerate() {
            let rc = r.get_ref();
            let key = |k: &str| format!("route[{i}].{k}");
            if rc.name.trim().is_empty() {
                return Err(self.err(r.span(), key("name"), "must not be empty"));
            }
            if !route_names.insert(rc.name.as_str()) {
                return Err(self.err(
                    r.span(),
                    key("name"),
                    format!("duplicate route name `{}`", rc.name),
                ));
            }
            if rc.destinations.is_empty() {
                return Err(self.err(
                    r.span(),
                    key("destinations"),
                    "a route needs at least one destination",
                ));
            }
            for (j, d) in rc.destinations.iter().enumerate() {
                if !dest_names.contains(d.get_ref().as_str()) {
                    return Err(self.err(
                        d.span(),
                        key(&format!("destinations[{j}]")),
                        format!("no destination named `{}`", d.get_ref()),
                    ));
                }
            }
            for (j, l) in rc.listeners.iter().flatten().enumerate() {
                if !listener_names.contains(l.get_ref().as_str()) {
                    return Err(self.err(
                        l.span(),
                        key(&format!("listeners[{j}]")),
                        format!("no listener named `{}`", l.get_ref()),
                    ));
                }
            }
            for (j, st) in rc.steps.iter().enumerate() {
                let sc = st.get_ref();
                let k = key(&format!("step[{j}]"));
                let named = [sc.wasm.is_some(), sc.script.is_some(), sc.plugin.is_some()];
                if named.iter().filter(|n| **n).count() != 1 {
                    return Err(self.err(
                        st.span(),
                        k,
                        "a step names exactly one of wasm = \"file.wasm\", script = \"file.rhai\" or plugin = \"NAME@VERSION\"",
                    ));
                }
                if sc.deadline.is_zero() || sc.memory_bytes < 1024 * 1024 {
                    return Err(self.err(
                        st.span(),
                        k,
                        "deadline must be > 0 and memory_bytes at least 1 MiB",
                    ));
                }
                if sc.script.is_some()
                    && (!sc.grants.env.is_empty() || sc.grants.clock || sc.grants.random)
                {
                    return Err(self.err(
                        st.span(),
                        k,
                        "grants apply to WASM steps only; scripts have no capabilities",
                    ));
                }
                if sc.script.is_some() && sc.reuse_instance {
                    return Err(self.err(
                        st.span(),
                        format!("{k}.reuse_instance"),
                        "reuse_instance applies to WASM steps only (a script always runs in a fresh scope)",
                    ));
                }
            }
            self.compile_route(i, r)?;
        }
        Ok(())
    }

    /// Finds and re-verifies every installed package a route step names, checks that the
    /// route grants each capability its manifest asks for, and checks the step's settings
    /// against the manifest's schema (the step loader fills in its defaults).
    fn resolve_plugins(&self, c: &mut Config) -> Result<(), ConfigError> {
        use crate::package;
        let uses = c.routes.iter().any(|r| {
            r.get_ref()
                .steps
                .iter()
                .any(|s| s.get_ref().plugin.is_some())
        });
        if !uses {
            return Ok(());
        }
        let base = c.source.parent().unwrap_or(FsPath::new("")).to_owned();
        let dir = base.join(c.plugins.dir.get_ref());
        let mut trusted = Vec::new();
        for (i, k) in c.plugins.trusted_keys.iter().enumerate() {
            trusted.push(
                package::TrustedKey::parse(k.get_ref())
                    .map_err(|e| self.err(k.span(), format!("plugins.trusted_keys[{i}]"), e))?,
            );
        }
        for (i, r) in c.routes.iter_mut().enumerate() {
            let rc = r.get_mut();
            for (j, st) in rc.steps.iter_mut().enumerate() {
                let st_span = st.span();
                let sc = st.get_mut();
                let Some(p) = &sc.plugin else { continue };
                let key = |sub: &str| format!("route[{i}].step[{j}].{sub}");
                let (name, version) = package::parse_ref(p.get_ref())
                    .map_err(|e| self.err(p.span(), key("plugin"), e))?;
                let installed = package::load_installed(&dir, &name, &version, &trusted)
                    .map_err(|e| self.err(p.span(), key("plugin"), e.to_string()))?;
                if let Err(cap) = installed.manifest.check_grants(&sc.grants) {
                    return Err(self.err(
                        st_span.clone(),
                        key("grants"),
                        format!(
                            "plugin {} asks for the capability `{cap}`, which this route does not grant; grant it with {} if the route should give it, or use another plugin",
                            installed.manifest.id(),
                            cap.grant_hint()
                        ),
                    ));
                }
                installed
                    .manifest
                    .apply_settings(&mut sc.settings.clone())
                    .map_err(|e| self.err(st_span.clone(), key("settings"), e))?;
                sc.package = Some(installed);
            }
        }
        Ok(())
    }

    /// Resolves the TLS paths against the config file's directory, then loads and checks
    /// every listener's and destination's certificates and keys, so that a missing or bad
    /// file is a config error naming the key and the file.
    fn load_tls(&self, c: &mut Config) -> Result<(), ConfigError> {
        let base = c.source.parent().unwrap_or(FsPath::new("")).to_owned();
        let resolve = |p: &Spanned<PathBuf>| Spanned::new(p.span(), base.join(p.get_ref()));
        for (i, l) in c.listeners.iter_mut().enumerate() {
            let l = l.get_mut();
            l.allow_parsed = l
                .allow
                .iter()
                .flatten()
                .filter_map(|a| courier_mllp::parse_allow(a.get_ref()).ok())
                .collect();
            let Some(tls) = &mut l.tls else { continue };
            let table = tls.span();
            let t = tls.get_mut();
            t.cert = resolve(&t.cert);
            t.key = resolve(&t.key);
            t.client_ca = t.client_ca.as_ref().map(resolve);
            let keys = [
                ("cert", Some(&t.cert)),
                ("key", Some(&t.key)),
                ("client_ca", t.client_ca.as_ref()),
            ];
            let loaded = courier_mllp::ServerTls::load(courier_mllp::ServerTlsFiles {
                cert: t.cert.get_ref().clone(),
                key: t.key.get_ref().clone(),
                client_ca: t.client_ca.as_ref().map(|p| p.get_ref().clone()),
            })
            .map_err(|e| self.tls_err(&format!("listener[{i}].tls"), table, &keys, &e))?;
            l.tls_loaded = Some(loaded);
        }
        for l in c.listeners.iter_mut() {
            let l = l.get_mut();
            l.directory = l.directory.as_ref().map(resolve);
        }
        for (i, d) in c.destinations.iter_mut().enumerate() {
            let d = d.get_mut();
            d.directory = d.directory.as_ref().map(resolve);
            let Some(tls) = &mut d.tls else { continue };
            let table = tls.span();
            let t = tls.get_mut();
            t.ca = resolve(&t.ca);
            t.cert = t.cert.as_ref().map(resolve);
            t.key = t.key.as_ref().map(resolve);
            let prefix = format!("destination[{i}].tls");
            if t.cert.is_some() != t.key.is_some() {
                return Err(self.err(
                    table.clone(),
                    prefix,
                    "a client certificate needs both cert and key",
                ));
            }
            let keys = [
                ("ca", Some(&t.ca)),
                ("cert", t.cert.as_ref()),
                ("key", t.key.as_ref()),
            ];
            let loaded = courier_mllp::ClientTls::load(courier_mllp::ClientTlsFiles {
                ca: t.ca.get_ref().clone(),
                cert: t.cert.as_ref().map(|p| p.get_ref().clone()),
                key: t.key.as_ref().map(|p| p.get_ref().clone()),
                server_name: t.server_name.as_ref().map(|n| n.get_ref().clone()),
            })
            .map_err(|e| {
                if let (courier_mllp::TlsError::ServerName { .. }, Some(n)) = (&e, &t.server_name) {
                    return self.err(n.span(), format!("{prefix}.server_name"), e.to_string());
                }
                self.tls_err(&prefix, table.clone(), &keys, &e)
            })?;
            // Without `server_name`, the address's (or URL's) host is the name: check it now.
            let (target, span, k) = match (&d.kind, &d.url) {
                (DestinationKind::Http, Some(u)) => (
                    crate::connectors::http_out::parse_url(u.get_ref())
                        .map(|u| u.host_port())
                        .unwrap_or_default(),
                    u.span(),
                    "url",
                ),
                _ => (d.address.get_ref().clone(), d.address.span(), "address"),
            };
            if let Err(e) = loaded.server_name_for(&target) {
                return Err(self.err(
                    span,
                    format!("destination[{i}].{k}"),
                    format!("{e}; set tls.server_name to the name on the receiver's certificate"),
                ));
            }
            d.tls_loaded = Some(loaded);
        }
        Ok(())
    }

    /// A TLS load error as a config error at the key whose file it names.
    fn tls_err(
        &self,
        prefix: &str,
        table: Range<usize>,
        keys: &[(&str, Option<&Spanned<PathBuf>>)],
        error: &courier_mllp::TlsError,
    ) -> ConfigError {
        let path = match error {
            courier_mllp::TlsError::Read { path, .. }
            | courier_mllp::TlsError::Pem { path, .. }
            | courier_mllp::TlsError::Rejected { path, .. } => Some(path),
            courier_mllp::TlsError::ServerName { .. } => None,
        };
        let found = keys
            .iter()
            .find_map(|(k, p)| p.filter(|p| Some(p.get_ref()) == path).map(|p| (*k, p)));
        match found {
            Some((k, p)) => self.err(p.span(), format!("{prefix}.{k}"), error.to_string()),
            None => self.err(table, prefix.to_owned(), error.to_string()),
        }
    }

    fn compile_route(
        &self,
        i: usize,
        r: &Spanned<RouteConfig>,
    ) -> Result<CompiledMatch, ConfigError> {
        let rc = r.get_ref();
        let key = |k: &str| format!("route[{i}].{k}");
        let pattern = |p: &Spanned<String>, k: String| {
            Pattern::new(p.get_ref()).map_err(|m| self.err(p.span(), k, m))
        };
        let message_types = match &rc.message_types {
            None => None,
            Some(v) => Some(
                v.iter()
                    .enumerate()
                    .map(|(j, p)| pattern(p, key(&format!("message_types[{j}]"))))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let msh_keys = [
            ("sending_application", &rc.sending_application),
            ("sending_facility", &rc.sending_facility),
            ("receiving_application", &rc.receiving_application),
            ("receiving_facility", &rc.receiving_facility),
        ];
        let mut msh: [Option<Pattern>; 4] = Default::default();
        for (slot, (k, p)) in msh.iter_mut().zip(msh_keys) {
            if let Some(p) = p {
                *slot = Some(pattern(p, key(k))?);
            }
        }
        let when = rc
            .when
            .iter()
            .enumerate()
            .map(|(j, w)| {
                Condition::parse(w.get_ref())
                    .map_err(|m| self.err(w.span(), key(&format!("when[{j}]")), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledMatch {
            listeners: rc
                .listeners
                .as_ref()
                .map(|v| v.iter().map(|s| s.get_ref().clone()).collect()),
            message_types,
            msh,
            when,
        })
    }
}

/// Maps a config charset name to the model's charset.
pub fn parse_charset(name: &str) -> Option<courier_hl7::Charset> {
    match name.trim().to_ascii_uppercase().as_str() {
        "UTF-8" | "UTF8" | "UNICODE UTF-8" => Some(courier_hl7::Charset::Utf8),
        "ASCII" => Some(courier_hl7::Charset::Ascii),
        "8859/1" | "ISO-8859-1" | "LATIN1" | "LATIN-1" => Some(courier_hl7::Charset::Latin1),
        _ => None,
    }
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, FsPath::new("test.toml"))
    }

    const BASE: &str = r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "emr"
address = "127.0.0.1:2576"

[[route]]
name = "adt"
message_types = ["ADT^A0*"]
destinations = ["emr"]
"#;

    /// The `Invalid` error's line, key and message for a config.
    fn invalid(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected an invalid-value error, got {other:?}"),
        }
    }

    #[test]
    fn connector_kinds_need_their_keys_and_refuse_others() {
        let route = "\n[[route]]\nname = \"r\"\ndestinations = [\"d\"]\n";
        let dest = |body: &str| format!("[[destination]]\nname = \"d\"\n{body}\n{route}");
        let (line, key, msg) = invalid(&dest("kind = \"file\""));
        assert_eq!((line, key.as_str()), (1, "destination[0].directory"));
        assert!(msg.contains("needs directory"), "{msg}");
        let (_, key, msg) = invalid(&dest(
            "kind = \"file\"\ndirectory = \"out\"\nurl = \"http://x:1/\"",
        ));
        assert_eq!(key, "destination[0].url");
        assert!(msg.contains("kind = \"file\""), "{msg}");
        let (line, key, msg) = invalid(&dest(
            "kind = \"file\"\ndirectory = \"out\"\nname_pattern = \"{pid}.hl7\"",
        ));
        assert_eq!((line, key.as_str()), (5, "destination[0].name_pattern"));
        assert!(msg.contains("unknown placeholder `{pid}`"), "{msg}");
        let (_, key, _) = invalid(&dest("kind = \"http\""));
        assert_eq!(key, "destination[0].url");
        let (line, key, msg) = invalid(&dest("kind = \"http\"\nurl = \"https://portal:443/x\""));
        assert_eq!((line, key.as_str()), (4, "destination[0].url"));
        assert!(msg.contains("needs tls"), "{msg}");
        let (_, key, msg) = invalid(&dest("kind = \"http\"\nurl = \"ftp://portal/x\""));
        assert_eq!(key, "destination[0].url");
        assert!(msg.contains("not an http:// or https://"), "{msg}");
        let (_, key, _) = invalid(&dest(
            "kind = \"mllp\"\naddress = \"h:1\"\nformat = \"json\"",
        ));
        assert_eq!(key, "destination[0].format");
        let (_, key, _) = invalid(&dest("address = \"h:1\"\ndirectory = \"x\""));
        assert_eq!(key, "destination[0].directory");
        assert!(parse(&dest("kind = \"http\"\nurl = \"http://127.0.0.1:8080/hl7\"\nformat = \"json\"\nheaders = { X-A = \"b\" }")).is_ok());
        assert!(
            parse(&dest(
                "kind = \"file\"\ndirectory = \"out\"\nformat = \"json\""
            ))
            .is_ok()
        );

        let mllp = "[[destination]]\nname = \"d\"\naddress = \"h:1\"\n";
        let listener = |body: &str| format!("[[listener]]\nname = \"l\"\n{body}\n{mllp}{route}");
        let (_, key, msg) = invalid(&listener("kind = \"file\""));
        assert_eq!(key, "listener[0].directory");
        assert!(msg.contains("needs directory"), "{msg}");
        let (_, key, _) = invalid(&listener(
            "kind = \"file\"\ndirectory = \"in\"\nbind = \"127.0.0.1:0\"",
        ));
        assert_eq!(key, "listener[0].bind");
        let (_, key, msg) = invalid(&listener("bind = \"127.0.0.1:0\"\nsettle = \"2s\""));
        assert_eq!(key, "listener[0].settle");
        assert!(msg.contains("file listeners"), "{msg}");
        let (_, key, _) = invalid(&listener("kind = \"http\""));
        assert_eq!(key, "listener[0].bind");
        let (_, key, msg) = invalid(&format!(
            "[store]\nenabled = false\n{}",
            listener("kind = \"file\"\ndirectory = \"in\"")
        ));
        assert_eq!(key, "listener[0].kind");
        let (_, key, _) = invalid(&listener(
            "kind = \"file\"\ndirectory = \"in\"\nack_policy = \"after-delivery\"",
        ));
        assert_eq!(key, "listener[0].ack_policy");
        assert!(msg.contains("needs the store"), "{msg}");
        let c = parse(&listener(
            "kind = \"file\"\ndirectory = \"in\"\npattern = \"*.hl7\"",
        ))
        .unwrap();
        let l = c.listeners[0].get_ref();
        assert_eq!(l.directory.as_ref().unwrap().get_ref(), FsPath::new("in"));
        assert_eq!(l.settle(), Duration::from_secs(1));
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = parse(BASE).unwrap();
        let l = c.listeners[0].get_ref();
        assert_eq!(l.max_connections, 256);
        assert_eq!(l.max_frame_size, 16 * 1024 * 1024);
        assert_eq!((l.max_segments, l.max_fields), (10_000, 1_000));
        let opts = l.parse_options();
        assert_eq!((opts.max_segments, opts.max_fields), (10_000, 1_000));
        assert_eq!(l.line_endings, LineEndingsConfig::Strict);
        let d = c.destinations[0].get_ref();
        assert_eq!(d.queue_capacity, 1000);
        assert_eq!(d.retry.max_attempts, None);
        assert!(c.compiled_match(0).is_ok());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = BASE.replace("bind = ", "bnd = \"x\"\nbind = ");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("test.toml:4:1: unknown field `bnd`"), "{e}");
        assert!(e.contains("| bnd = \"x\""), "{e}");
    }

    #[test]
    fn unknown_destination_is_named_with_line() {
        let text = BASE.replace(
            r#"destinations = ["emr"]"#,
            "destinations = [\"emr\", \"lis\"]",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(
            e,
            "test.toml:13: route[0].destinations[1]: no destination named `lis`"
        );
    }

    #[test]
    fn bad_condition_and_bind_are_refused() {
        let text = BASE.replace(
            r#"destinations = ["emr"]"#,
            "destinations = [\"emr\"]\nwhen = ['PID-3.4 === \"X\"']",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("test.toml:14: route[0].when[0]:"), "{e}");
        let e = parse(&BASE.replace("127.0.0.1:0", "localhost")).unwrap_err();
        assert!(e.to_string().contains("listener[0].bind"), "{e}");
    }

    #[test]
    fn wrong_type_is_reported_at_its_line() {
        let text = BASE.replace(
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\nmax_connections = \"many\"",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("test.toml:5:"), "{e}");
        assert!(e.contains("max_connections"), "{e}");
    }

    #[test]
    fn message_limits_are_read_and_checked_naming_the_key() {
        let with = |keys: &str| {
            BASE.replace(
                "bind = \"127.0.0.1:0\"",
                &format!("bind = \"127.0.0.1:0\"\n{keys}"),
            )
        };
        let c = parse(&with("max_segments = 50\nmax_fields = 30")).unwrap();
        let opts = c.listeners[0].get_ref().parse_options();
        assert_eq!((opts.max_segments, opts.max_fields), (50, 30));

        let e = parse(&with("max_segments = 0")).unwrap_err().to_string();
        assert!(
            e.starts_with("test.toml:2: listener[0].max_segments: must be at least 1"),
            "{e}"
        );
        let e = parse(&with("max_fields = 24")).unwrap_err().to_string();
        assert!(
            e.starts_with("test.toml:2: listener[0].max_fields: must be at least 25"),
            "{e}"
        );
        let e = parse(&with("max_fields = -1")).unwrap_err().to_string();
        assert!(e.contains("max_fields"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let text = format!("{BASE}\n[[destination]]\nname = \"emr\"\naddress = \"h:1\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("duplicate destination name `emr`"), "{e}");
    }

    #[test]
    fn allow_lists_and_per_address_limits_are_checked() {
        let with = |extra: &str| {
            BASE.replace(
                "bind = \"127.0.0.1:0\"",
                &format!("bind = \"127.0.0.1:0\"\n{extra}"),
            )
        };
        let c = parse(&with(
            "allow = [\"10.0.0.0/8\", \"::1\"]\nmax_connections_per_ip = 4",
        ))
        .unwrap();
        let l = c.listeners[0].get_ref();
        assert_eq!(l.allow_parsed.len(), 2);
        assert_eq!(l.max_connections_per_ip, Some(4));
        let e = parse(&with("allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml:5: listener[0].allow[1]: `10.0.0.0/33`"),
            "{e}"
        );
        let e = parse(&with("allow = []")).unwrap_err().to_string();
        assert!(e.contains("listener[0].allow: an empty allow list"), "{e}");
        let e = parse(&with("max_connections_per_ip = 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listener[0].max_connections_per_ip"), "{e}");
    }

    #[test]
    fn tls_files_resolve_beside_the_config_and_a_missing_one_names_its_key() {
        let text = BASE.replace(
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\ntls = { cert = \"certs/s.pem\", key = \"certs/s.key\" }",
        );
        let e = Config::parse(&text, FsPath::new("/etc/courier/test.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/courier/test.toml:5: listener[0].tls.cert: cannot read /etc/courier/certs/s.pem"),
            "{e}"
        );
        let text = BASE.replace(
            "address = \"127.0.0.1:2576\"",
            "address = \"127.0.0.1:2576\"\ntls = { ca = \"/nonexistent/ca.pem\" }",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("test.toml:9: destination[0].tls.ca: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let text = BASE.replace(
            "address = \"127.0.0.1:2576\"",
            "address = \"127.0.0.1:2576\"\ntls = { ca = \"ca.pem\", cert = \"c.pem\" }",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("destination[0].tls: a client certificate needs both cert and key"),
            "{e}"
        );
        let text = BASE.replace(
            "address = \"127.0.0.1:2576\"",
            "address = \"127.0.0.1:2576\"\ntls = { ca = \"ca.pem\", verify = false }",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("unknown field `verify`"), "{e}");
    }
}
