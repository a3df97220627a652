//! Typed configuration: one serde tree with defaults in code, unknown keys rejected (the TOML parser
//! reports line and column), and a `validate()` pass. `--dev` builds the same structure in code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{CertLoginFrom, IdentityRule, SanType};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to listen on with TLS (the management network only). There is no plaintext listener.
    pub listen: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub network: NetworkConfig,
    pub audit: AuditConfig,
    pub admin: AdminConfig,
    /// Virtual hosts created at start.
    pub vhosts: Vec<String>,
    /// Users (certificate identities) and their permissions, created at start.
    pub users: Vec<UserConfig>,
    /// Vhosts whose every delivery carries the publisher's identity.
    pub publisher_header: PublisherHeaderConfig,
    /// Per-publisher flow control: how far a publisher may run ahead of a queue's consumers.
    pub flow: FlowConfig,
    /// A cluster node (opt-in; without it Warren is a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::config::ClusterConfig>,
    /// A RabbitMQ definitions file imported at every start (what exists is kept).
    pub definitions: DefinitionsConfig,
    /// The Prometheus endpoint (off unless `listen` is set; `warren --dev` turns it on).
    pub metrics: MetricsConfig,
    /// How Warren's own log lines look and where they go besides stderr.
    pub log: LogConfig,
}

/// `[log]`: the line format on stderr (the journal under systemd) and an optional log file, for log
/// pipelines written for RabbitMQ. The level is `WARREN_LOG` (an env-filter: `info`, `warren=debug`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The lines on stderr.
    pub format: LogFormat,
    /// Also append lines to this file (created 0640; reopened on SIGHUP, for logrotate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The lines in `file` (default: RabbitMQ 3.13's, as in `/var/log/rabbitmq/rabbit@HOST.log`).
    pub file_format: FileLogFormat,
}

/// A log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Warren's structured lines: RFC 3339 time, level, target, message, `key=value` fields.
    #[default]
    Warren,
    /// RabbitMQ 3.9+'s default: `2026-12-07 01:24:47.123456+00:00 [info] <0.1234.0> message`.
    Rabbitmq,
    /// RabbitMQ 3.7/3.8's (lager): `2026-12-07 01:24:47.123 [info] <0.1234.0> message`.
    #[serde(rename = "rabbitmq-3.8")]
    Rabbitmq38,
}

/// The log file's format: a [`LogFormat`] whose default is RabbitMQ's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileLogFormat(pub LogFormat);

impl Default for FileLogFormat {
    fn default() -> Self {
        FileLogFormat(LogFormat::Rabbitmq)
    }
}

/// `[metrics]`: where Prometheus scrapes `/metrics` and `/metrics/per-object` (plain HTTP: put it
/// on the management network or loopback; it serves read-only figures, never AMQP).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Serve it over TLS with the broker's certificate, requiring a client certificate from the
    /// broker's CA as AMQP does (Prometheus's `tls_config` with `cert_file` and `key_file`).
    pub tls: bool,
}

/// `[definitions]`: `load_at_boot = "FILE"`, a RabbitMQ definitions file (admin/import.rs)
/// imported at every start, after the broker's own definitions; what already exists is kept, so
/// changes made since with brokerctl stand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefinitionsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_at_boot: Option<PathBuf>,
}

/// Per-publisher flow control (broker/src/flow.rs, docs/operations.md): a connection publishing into
/// a queue that is behind gets `credit` messages there, returned one per message the queue moves out
/// plus `growth_per_second`; while it has none left and other connections move messages, its socket
/// is not read for up to `max_pause_ms` at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Off: publishers are never paused (only the memory alarm holds them back).
    pub enabled: bool,
    /// A queue is behind with more than this many ready messages (in memory or paged).
    pub behind_messages: u64,
    /// Messages a publisher may add to a behind queue before it must wait for credit.
    pub credit: u32,
    /// Growth of a behind queue allowed per publisher per second beyond what leaves it.
    pub growth_per_second: u32,
    /// The longest a connection goes unread for flow control before it reads again.
    pub max_pause_ms: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            enabled: true,
            behind_messages: 16_384,
            credit: 2_048,
            growth_per_second: 2_000,
            max_pause_ms: 200,
        }
    }
}

/// Where every delivery carries the `x-warren-publisher` header (the publisher's authenticated
/// identity). Elsewhere a consumer asks for it with the `x-warren-publisher` consume or queue argument.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublisherHeaderConfig {
    pub vhosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle of the CA(s) client certificates must chain to. System roots are never used.
    pub ca_bundle: PathBuf,
    /// PEM server certificate chain.
    pub cert: PathBuf,
    /// PEM private key; must be mode 0600 (or stricter) and owned by the broker's user.
    pub key: PathBuf,
    /// PEM certificate revocation lists checked for client certificates (reloaded with SIGHUP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
    /// A CRL past its nextUpdate: "warn" (use it, log a warning) or "refuse" (do not start; a
    /// reload keeps the running configuration).
    #[serde(default)]
    pub crl_expired: crate::crl::ExpiredCrl,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame the broker accepts and proposes in connection.tune (octets, at least 4096).
    pub frame_max: u32,
    /// Highest channel number proposed in connection.tune.
    pub channel_max: u16,
    /// Heartbeat interval proposed in connection.tune (seconds; 0 disables).
    pub heartbeat: u16,
    /// Time allowed for the TLS handshake (milliseconds).
    pub tls_handshake_timeout_ms: u64,
    /// Time allowed from the protocol header to connection.open-ok (milliseconds).
    pub amqp_handshake_timeout_ms: u64,
    /// Largest message body accepted (octets); larger publishes fail with 406 as in RabbitMQ.
    pub max_message_size: u64,
    /// Consumers one channel may hold (unset: unlimited, as RabbitMQ's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consumers_per_channel: Option<u32>,
    /// Queues one vhost may hold (unset: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queues_per_vhost: Option<u32>,
    /// Connections one vhost may have open (unset: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_vhost: Option<u32>,
    /// Connections that have not finished negotiating (accept to connection.open-ok), in total.
    pub max_pending_connections: usize,
    /// Connections that have not finished negotiating, per source address.
    pub max_pending_per_ip: usize,
    /// Memory alarm threshold as a fraction of the machine's RAM (RabbitMQ's vm_memory_high_watermark).
    pub memory_high_watermark: f64,
    /// Free disk space below which publishers are blocked (default: 1 GiB or the memory threshold,
    /// whichever is larger — RabbitMQ's advice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_free_limit_bytes: Option<u64>,
    /// Memory alarm threshold in bytes; overrides `memory_high_watermark` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_high_watermark_bytes: Option<u64>,
    /// Memory a queue may give its ready messages before it pages newer ones out to spill files
    /// under `DATA_DIR/spill` and keeps only counters for them (a queue can lower it with
    /// `x-max-in-memory-bytes`, `x-max-in-memory-length` or `x-queue-mode: lazy`).
    pub queue_memory_budget_bytes: u64,
    /// Above this fraction of the memory alarm's mark, every queue with a backlog pages its new
    /// messages (RabbitMQ's vm_memory_high_watermark_paging_ratio). Above 1, only budgets page.
    pub memory_paging_ratio: f64,
}

/// The admin API brokerctl talks to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unix socket path (mode 0600); default `DATA_DIR/admin.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// A file Warren writes its process id to once its listeners are bound (and removes at
    /// shutdown), for `rabbitmqctl wait PIDFILE` and init systems; none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
}

impl Config {
    pub fn admin_socket(&self) -> PathBuf {
        self.admin
            .socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.sock"))
    }
}

/// Where the audit log goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `"stderr"` or a file path (created 0600, appended to).
    pub path: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: "stderr".to_string(),
        }
    }
}

/// Which peers may connect at all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Source networks (CIDR) allowed to connect, checked before the TLS handshake; empty allows all
    /// (the listen address already limits who can reach the broker).
    pub allow: Vec<ipnet::IpNet>,
}

/// How clients are identified.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `common_name` (default), `distinguished_name` or `subject_alternative_name`.
    pub cert_login_from: CertLoginFrom,
    /// With `subject_alternative_name`: `dns`, `email` or `uri`.
    pub cert_login_san_type: SanType,
    /// With `subject_alternative_name`: which name of that type (0 = the first).
    pub cert_login_san_index: usize,
    /// Also offer PLAIN and AMQPLAIN, for OpenStack configurations that cannot switch to EXTERNAL: the
    /// user name must equal the certificate's identity and the password must match the hash set with
    /// `brokerctl change_password`. Off by default; a password never replaces a certificate.
    pub password_bridge: bool,
}

impl AuthConfig {
    pub(crate) fn identity_rule(&self) -> IdentityRule {
        IdentityRule {
            from: self.cert_login_from,
            san_type: self.cert_login_san_type,
            san_index: self.cert_login_san_index,
        }
    }
}

/// Users declared in the configuration are (re)created at every start; users added with brokerctl
/// live in the definitions file. The types are the storage crate's definitions.
pub use warren_storage::definitions::{
    PermissionDefinition as PermissionConfig, TopicPermissionDefinition as TopicPermissionConfig,
    UserDefinition as UserConfig,
};

/// The first value `items` yields twice.
fn first_duplicate<'a>(items: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().find(|item| !seen.insert(*item))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5671))],
            data_dir: PathBuf::from("/var/lib/warren"),
            tls: TlsConfig::default(),
            limits: Limits::default(),
            auth: AuthConfig::default(),
            network: NetworkConfig::default(),
            audit: AuditConfig::default(),
            admin: AdminConfig::default(),
            vhosts: vec!["/".to_string()],
            users: Vec::new(),
            publisher_header: PublisherHeaderConfig::default(),
            flow: FlowConfig::default(),
            definitions: DefinitionsConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            cluster: None,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_bundle: PathBuf::from("/etc/warren/ca.pem"),
            cert: PathBuf::from("/etc/warren/server.pem"),
            key: PathBuf::from("/etc/warren/server.key"),
            crls: Vec::new(),
            crl_expired: Default::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            tls_handshake_timeout_ms: 5_000,
            amqp_handshake_timeout_ms: 10_000,
            max_message_size: 16 * 1024 * 1024,
            max_consumers_per_channel: None,
            max_queues_per_vhost: None,
            max_connections_per_vhost: None,
            max_pending_connections: 1024,
            max_pending_per_ip: 64,
            disk_free_limit_bytes: None,
            memory_high_watermark: 0.4,
            memory_high_watermark_bytes: None,
            queue_memory_budget_bytes: 32 << 20,
            memory_paging_ratio: 0.5,
        }
    }
}

/// A topic-permission pattern with `{username}` and `{vhost}` replaced by the names, escaped so that
/// they match only themselves (user `al.ce` with `^{username}\.` must not match `alxce.x`).
pub(crate) fn expand_topic_pattern(pattern: &str, user: &str, vhost: &str) -> String {
    pattern
        .replace("{username}", &regex::escape(user))
        .replace("{vhost}", &regex::escape(vhost))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates the text of a configuration file (`path` is only named in errors).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if self.listen.is_empty() {
            return invalid("listen: at least one address is required".into());
        }
        if self.limits.frame_max < 4096 {
            return invalid(format!(
                "limits.frame_max: {} is below the AMQP minimum of 4096",
                self.limits.frame_max
            ));
        }
        let wm = self.limits.memory_high_watermark;
        if !(wm > 0.0 && wm <= 1.0) {
            return invalid(format!(
                "limits.memory_high_watermark: {wm} must be a fraction in (0, 1]"
            ));
        }
        let ratio = self.limits.memory_paging_ratio;
        if !(ratio > 0.0 && ratio <= 10.0) {
            return invalid(format!(
                "limits.memory_paging_ratio: {ratio} must be in (0, 10]"
            ));
        }
        if self.limits.max_message_size > 512 * 1024 * 1024 {
            return invalid(
                "limits.max_message_size: at most 536870912 (512 MiB, RabbitMQ's ceiling)".into(),
            );
        }
        let flow = &self.flow;
        if flow.credit == 0 || flow.growth_per_second == 0 {
            return invalid(
                "flow.credit and flow.growth_per_second: must be at least 1 (turn flow control off with flow.enabled = false)".into(),
            );
        }
        if !(1..=10_000).contains(&flow.max_pause_ms) {
            return invalid(format!(
                "flow.max_pause_ms: {} must be between 1 and 10000 (a longer pause would miss heartbeats)",
                flow.max_pause_ms
            ));
        }
        if self.limits.channel_max == 0 {
            return invalid("limits.channel_max: must be at least 1".into());
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate().or_else(invalid)?;
        }
        for vhost in &self.vhosts {
            if let Err(why) = warren_storage::names::check(vhost) {
                return invalid(format!("vhosts: invalid vhost name {vhost:?}: {why}"));
            }
        }
        if let Some(dup) = first_duplicate(self.vhosts.iter()) {
            return invalid(format!("vhosts: {dup:?} is listed twice"));
        }
        if let Some(dup) = first_duplicate(self.users.iter().map(|u| &u.name)) {
            return invalid(format!(
                "users: {dup:?} is defined twice (one [[users]] entry per user)"
            ));
        }
        for user in &self.users {
            if let Err(why) = warren_storage::names::check(&user.name) {
                return invalid(format!("users: invalid user name {:?}: {why}", user.name));
            }
            for t in &user.topic_permissions {
                for re in [&t.write, &t.read] {
                    let re = &expand_topic_pattern(re, &user.name, &t.vhost);
                    if let Err(e) = regex::Regex::new(re) {
                        return invalid(format!(
                            "users.{}: bad topic permission pattern {re:?}: {e}",
                            user.name
                        ));
                    }
                }
            }
            for p in &user.permissions {
                if !self.vhosts.contains(&p.vhost) {
                    return invalid(format!(
                        "users.{}: permission for unknown vhost '{}'",
                        user.name, p.vhost
                    ));
                }
                for re in [&p.configure, &p.write, &p.read] {
                    if let Err(e) = regex::Regex::new(re) {
                        return invalid(format!(
                            "users.{}: bad permission pattern {re:?}: {e}",
                            user.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The configuration `warren --dev` runs with: its own PKI under `data_dir/tls`, vhost `/`, the
    /// user `admin` with full permissions there, the audit log in `data_dir/audit.log`, and a 64 MiB
    /// free-disk limit.
    pub fn dev(data_dir: &Path, listen: SocketAddr) -> Self {
        let pki = crate::pki::DevPki::in_dir(&data_dir.join("tls"));
        Config {
            listen: vec![listen],
            data_dir: data_dir.to_path_buf(),
            tls: TlsConfig {
                ca_bundle: pki.ca_cert,
                cert: pki.server_cert,
                key: pki.server_key,
                // The dev CA's own CRL: `brokerctl ca revoke --dir DATA_DIR/tls` and a SIGHUP
                // refuse a certificate exactly as in production.
                crls: vec![pki.crl],
                crl_expired: Default::default(),
            },
            // A development broker should not refuse to work on a laptop with a few GiB free.
            limits: Limits {
                disk_free_limit_bytes: Some(64 << 20),
                ..Limits::default()
            },
            auth: AuthConfig::default(),
            network: NetworkConfig::default(),
            audit: AuditConfig {
                path: data_dir.join("audit.log").display().to_string(),
            },
            admin: AdminConfig::default(),
            vhosts: vec!["/".to_string()],
            users: vec![UserConfig {
                name: "admin".to_string(),
                tags: vec!["administrator".to_string()],
                permissions: vec![PermissionConfig {
                    vhost: "/".into(),
                    configure: ".*".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                }],
                topic_permissions: Vec::new(),
                password_hash: None,
            }],
            publisher_header: PublisherHeaderConfig::default(),
            flow: FlowConfig::default(),
            definitions: DefinitionsConfig::default(),
            // RabbitMQ's Prometheus port (the next free one when it is taken, see main.rs).
            metrics: MetricsConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 15692))),
                tls: false,
            },
            log: LogConfig::default(),
            cluster: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_position() {
        let err = toml::from_str::<Config>("listen = [\"127.0.0.1:5671\"]\nlisten_plain = true\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("listen_plain") && text.contains("line 2"),
            "{text}"
        );
    }

    #[test]
    fn defaults_round_trip_and_validate() {
        let text = toml::to_string(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        back.validate().unwrap();
        assert_eq!(back.limits.frame_max, 131_072);
    }

    #[test]
    fn validation_catches_bad_limits_and_patterns() {
        let mut c = Config::default();
        c.limits.frame_max = 1000;
        assert!(c.validate().is_err());
        let mut c = Config::dev(Path::new("/tmp/x"), "127.0.0.1:0".parse().unwrap());
        c.users[0].permissions[0].read = "(".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("bad permission pattern"));
    }

    #[test]
    fn flow_settings_are_read_and_checked() {
        let text =
            "listen = [\"127.0.0.1:5671\"]\n[flow]\nbehind_messages = 1000\nmax_pause_ms = 50\n";
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c.flow.behind_messages, 1000);
        assert_eq!(c.flow.credit, FlowConfig::default().credit);
        let mut c = Config::dev(Path::new("/tmp/x"), "127.0.0.1:0".parse().unwrap());
        c.flow.max_pause_ms = 60_000;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("flow.max_pause_ms"));
        c.flow.max_pause_ms = 200;
        c.flow.credit = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("flow.credit"));
    }

    #[test]
    fn duplicate_and_invisible_names_are_refused() {
        let mut c = Config::dev(Path::new("/tmp/x"), "127.0.0.1:0".parse().unwrap());
        c.users.push(c.users[0].clone());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("\"admin\" is defined twice"), "{e}");
        let mut c = Config::dev(Path::new("/tmp/x"), "127.0.0.1:0".parse().unwrap());
        c.vhosts.push("/".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let mut c = Config::dev(Path::new("/tmp/x"), "127.0.0.1:0".parse().unwrap());
        c.users[0].name = "ad\u{202e}min".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("invisible"), "{e}");
        let mut c = Config::dev(Path::new("/tmp/x"), "127.0.0.1:0".parse().unwrap());
        c.vhosts.push("a\u{2028}b".into());
        assert!(c.validate().is_err());
    }
}
