//! Alert configuration: the `[alerts]` section, the `[receivers.NAME]` tables and the `[[rules]]`
//! array, as written (the `Raw*` structs, embedded in the config's raw document) and as validated
//! (the typed structs, part of [`crate::config::Config`]).
//!
//! Validation follows the rest of the config: every problem is reported with its key path, and
//! secrets (SMTP passwords, bearer tokens) are read at load time, so that a missing password
//! file is found by `sensei check` and not by the first drift at night.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigProblem, Secret, parse_duration};
use crate::signal::SignalName;

/// Detectors a drift event can come from (`drift_events.detector`).
pub const DETECTORS: &[&str] = &[
    "bernoulli_cusum",
    "cusum",
    "ks",
    "chi_square",
    "psi",
    "circuit_breaker",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub dashboard_url: Option<String>,
    pub evaluation_interval: Option<String>,
    pub group_interval: Option<String>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub instance: Option<String>,
}

/// The runbook an Alertmanager alert links to unless `runbook_url` says otherwise: the
/// section of the installed alerting guide (docs/alerts.md) on what to do about a drift.
pub const DEFAULT_RUNBOOK_URL: &str = "file:///usr/share/doc/sensei/alerts.md#runbook";

/// One `[receivers.NAME]` table; which keys apply depends on `type`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub timeout: Option<String>,
    // email
    pub smtp_host: Option<String>,
    pub smtp_port: Option<i64>,
    pub tls: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub password_credential: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    // webhook, alertmanager
    pub url: Option<String>,
    pub token_file: Option<String>,
    pub token_credential: Option<String>,
    // alertmanager
    pub runbook_url: Option<String>,
    // command
    pub command: Option<Vec<String>>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    pub signal: Option<String>,
    pub detector: Option<String>,
    pub segment: Option<String>,
    pub severity: Option<String>,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    pub repeat_interval: Option<String>,
    pub send_resolved: Option<bool>,
    pub receivers: Option<Vec<String>>,
    pub action: Option<String>,
}

/// Everything alerting needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertConfig {
    /// Base URL of the dashboard, linked from every notification.
    pub dashboard_url: Option<String>,
    /// How often drift events are read and rules evaluated.
    pub evaluation_interval: Duration,
    /// A firing alert that gains segments is announced again at most this often.
    pub group_interval: Duration,
    /// Outbox retry: the first delay, doubled after every failed attempt up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// This site's name in notifications (default: the host name).
    pub instance: String,
    pub receivers: BTreeMap<String, Receiver>,
    pub rules: Vec<Rule>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            dashboard_url: None,
            evaluation_interval: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            instance: hostname(),
            receivers: BTreeMap::new(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Receiver {
    pub name: String,
    /// Every attempt to deliver one notification is abandoned after this long (and retried).
    pub timeout: Duration,
    pub kind: ReceiverKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReceiverKind {
    Email(EmailReceiver),
    Webhook {
        url: String,
        token: Option<Secret>,
    },
    Alertmanager {
        /// Base URL; alerts go to `<url>/api/v2/alerts`.
        url: String,
        token: Option<Secret>,
        /// The `runbook_url` annotation of every alert; `{rule}` and `{signal}` are replaced by
        /// the alert's rule and signal family.
        runbook_url: String,
    },
    Command {
        argv: Vec<String>,
    },
}

impl ReceiverKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ReceiverKind::Email(_) => "email",
            ReceiverKind::Webhook { .. } => "webhook",
            ReceiverKind::Alertmanager { .. } => "alertmanager",
            ReceiverKind::Command { .. } => "command",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS on the submission port (587).
    StartTls,
    /// TLS from the first byte (465).
    Implicit,
    /// No encryption: allowed only to a loopback host (a local relay).
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailReceiver {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What sensei does itself when a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Request a re-distillation (an `alert_actions` row the closed loop consumes).
    Redistill,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Redistill => "redistill",
        }
    }
}

/// Which drift events a rule looks at and what it does about them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// `None`: every signal; a family without an index: every member of the family.
    pub signal: Option<SignalName>,
    /// `None`: every detector.
    pub detector: Option<String>,
    /// `None`: every segment, the all-segments aggregate `*` included.
    pub segment: Option<SegmentPattern>,
    pub severity: Severity,
    /// How long a drift must stay open before the rule fires.
    pub for_: Duration,
    /// Re-send while firing at this interval; `None`: never.
    pub repeat_interval: Option<Duration>,
    pub send_resolved: bool,
    pub receivers: Vec<String>,
    pub action: Option<Action>,
}

/// A rule's `segment`: `*` is the all-segments aggregate itself; a pattern with `*` or `?`
/// elsewhere is a glob over segment names (`line=*`); anything else is one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentPattern {
    Aggregate,
    Exact(String),
    Glob(String),
}

impl SegmentPattern {
    pub fn parse(text: &str) -> SegmentPattern {
        if text == crate::record::ALL_SEGMENTS {
            SegmentPattern::Aggregate
        } else if text.contains(['*', '?']) {
            SegmentPattern::Glob(text.to_owned())
        } else {
            SegmentPattern::Exact(text.to_owned())
        }
    }

    pub fn matches(&self, segment: &str) -> bool {
        match self {
            SegmentPattern::Aggregate => segment == crate::record::ALL_SEGMENTS,
            SegmentPattern::Exact(s) => s == segment,
            // A glob never matches the aggregate: `line=*` means each line, not all together.
            SegmentPattern::Glob(g) => {
                segment != crate::record::ALL_SEGMENTS
                    && glob_match(g.as_bytes(), segment.as_bytes())
            }
        }
    }
}

/// `*` matches any run of characters, `?` one character; everything else itself.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The host name, for notifications from this site.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sensei".to_owned())
}

/// Validates the alert sections; problems go to `problems`, each with its key path.
pub(crate) fn validate(
    alerts: RawAlerts,
    receivers: BTreeMap<String, RawReceiver>,
    rules: Vec<RawRule>,
    base: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> AlertConfig {
    let mut v = Validator { base, problems };
    let defaults = AlertConfig::default();
    let dashboard_url = alerts
        .dashboard_url
        .and_then(|u| v.url("alerts.dashboard_url", &u));
    let evaluation_interval = v.duration(
        "alerts.evaluation_interval",
        alerts.evaluation_interval,
        defaults.evaluation_interval,
        Duration::from_millis(100),
    );
    let group_interval = v.duration(
        "alerts.group_interval",
        alerts.group_interval,
        defaults.group_interval,
        Duration::ZERO,
    );
    let retry_initial = v.duration(
        "alerts.retry_initial",
        alerts.retry_initial,
        defaults.retry_initial,
        Duration::from_millis(100),
    );
    let retry_max = v.duration(
        "alerts.retry_max",
        alerts.retry_max,
        defaults.retry_max,
        Duration::from_millis(100),
    );
    if retry_max < retry_initial {
        v.problem(
            "alerts.retry_max",
            "must be at least alerts.retry_initial".to_owned(),
        );
    }
    let instance = match alerts.instance {
        Some(i) if i.trim().is_empty() => {
            v.problem("alerts.instance", "must not be empty".to_owned());
            defaults.instance.clone()
        }
        Some(i) => i,
        None => defaults.instance.clone(),
    };
    let declared: Vec<String> = receivers.keys().cloned().collect();
    let receivers: BTreeMap<String, Receiver> = receivers
        .into_iter()
        .filter_map(|(name, raw)| v.receiver(&name, raw).map(|r| (name, r)))
        .collect();
    let mut names: Vec<String> = Vec::new();
    let mut typed_rules = Vec::new();
    for (i, raw) in rules.into_iter().enumerate() {
        let name = raw.name.clone();
        if let Some(rule) = v.rule(i, raw, &declared, &names) {
            typed_rules.push(rule);
        }
        names.extend(name);
    }
    AlertConfig {
        dashboard_url,
        evaluation_interval,
        group_interval,
        retry_initial,
        retry_max,
        instance,
        receivers,
        rules: typed_rules,
    }
}

struct Validator<'a> {
    base: &'a Path,
    problems: &'a mut Vec<ConfigProblem>,
}

/// What a receiver or rule name may be made of (it appears in headers, labels and dedup keys).
const NAME_CHARS: &str = "letters, digits, '-', '_' and '.'";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Validator<'_> {
    fn problem(&mut self, path: &str, message: String) {
        self.problems.push(ConfigProblem {
            path: path.to_owned(),
            message,
        });
    }

    fn duration(
        &mut self,
        key: &str,
        value: Option<String>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(&text) {
            Ok(d) if d < min => {
                self.problem(
                    key,
                    format!("must be at least {}ms, got \"{text}\"", min.as_millis()),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(key, format!("cannot parse \"{text}\": {e}"));
                default
            }
        }
    }

    /// An absolute http(s) URL.
    /// A runbook link: any absolute URL (a wiki page, or the installed docs as `file://`), with
    /// `{rule}` and `{signal}` standing for the alert's rule and signal.
    fn runbook_url(&mut self, key: &str, text: &str) -> Option<String> {
        let filled = text.replace("{rule}", "rule").replace("{signal}", "signal");
        match reqwest::Url::parse(&filled) {
            Ok(_) if !text.chars().any(char::is_whitespace) => Some(text.to_owned()),
            Ok(_) => {
                self.problem(key, format!("\"{text}\" contains white space"));
                None
            }
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "cannot parse URL \"{text}\": {e} (expected e.g. \"https://wiki.example.com/sensei/{{rule}}\")"
                    ),
                );
                None
            }
        }
    }

    fn url(&mut self, key: &str, text: &str) -> Option<String> {
        match reqwest::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Some(text.to_owned())
            }
            Ok(u) => {
                self.problem(
                    key,
                    format!(
                        "\"{text}\" is not an http or https URL (scheme \"{}\")",
                        u.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "cannot parse URL \"{text}\": {e} (expected e.g. \"https://host:port/path\")"
                    ),
                );
                None
            }
        }
    }

    fn path(&self, value: &str) -> PathBuf {
        let p = PathBuf::from(value);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    /// A secret from a file or a systemd credential (`$CREDENTIALS_DIRECTORY/NAME`): the first
    /// line, which must not be empty.
    fn secret(
        &mut self,
        file_key: &str,
        file: Option<String>,
        credential_key: &str,
        credential: Option<String>,
    ) -> Option<Secret> {
        let (key, path) = match (file, credential) {
            (Some(_), Some(_)) => {
                self.problem(
                    credential_key,
                    format!("set either {file_key} or {credential_key}, not both"),
                );
                return None;
            }
            (Some(file), None) => (file_key, self.path(&file)),
            (None, Some(name)) => {
                if name.is_empty() || name.contains('/') {
                    self.problem(
                        credential_key,
                        format!("\"{name}\" is not a credential name (no slashes, not empty)"),
                    );
                    return None;
                }
                match std::env::var_os("CREDENTIALS_DIRECTORY") {
                    Some(dir) => (credential_key, PathBuf::from(dir).join(name)),
                    None => {
                        self.problem(
                            credential_key,
                            format!(
                                "credential \"{name}\" is set but $CREDENTIALS_DIRECTORY is not (it is set by systemd's LoadCredential=)"
                            ),
                        );
                        return None;
                    }
                }
            }
            (None, None) => return None,
        };
        crate::config::read_secret(&path)
            .map_err(|message| self.problem(key, message))
            .ok()
    }

    fn receiver(&mut self, name: &str, raw: RawReceiver) -> Option<Receiver> {
        let key = |k: &str| format!("receivers.{name}.{k}");
        let mut ok = true;
        if !valid_name(name) {
            self.problem(
                &format!("receivers.{name}"),
                format!("a receiver name may hold only {NAME_CHARS}"),
            );
            ok = false;
        }
        let timeout = self.duration(
            &key("timeout"),
            raw.timeout.clone(),
            Duration::from_secs(30),
            Duration::from_millis(100),
        );
        let kind_text = raw.kind.clone();
        let allowed: &[&str] = match kind_text.as_deref() {
            Some("email") => &[
                "smtp_host",
                "smtp_port",
                "tls",
                "username",
                "password_file",
                "password_credential",
                "from",
                "to",
            ],
            Some("webhook") => &["url", "token_file", "token_credential"],
            Some("alertmanager") => &["url", "token_file", "token_credential", "runbook_url"],
            Some("command") => &["command"],
            Some(other) => {
                self.problem(
                    &key("type"),
                    format!(
                        "unknown value \"{other}\", expected one of \"email\", \"webhook\", \"alertmanager\", \"command\""
                    ),
                );
                return None;
            }
            None => {
                self.problem(
                    &key("type"),
                    "required: \"email\", \"webhook\", \"alertmanager\" or \"command\"".to_owned(),
                );
                return None;
            }
        };
        let kind_text = kind_text.unwrap_or_default();
        let present: [(&str, bool); 14] = [
            ("smtp_host", raw.smtp_host.is_some()),
            ("smtp_port", raw.smtp_port.is_some()),
            ("tls", raw.tls.is_some()),
            ("username", raw.username.is_some()),
            ("password_file", raw.password_file.is_some()),
            ("password_credential", raw.password_credential.is_some()),
            ("from", raw.from.is_some()),
            ("to", raw.to.is_some()),
            ("url", raw.url.is_some()),
            ("token_file", raw.token_file.is_some()),
            ("token_credential", raw.token_credential.is_some()),
            ("runbook_url", raw.runbook_url.is_some()),
            ("command", raw.command.is_some()),
            ("type", true),
        ];
        for (k, set) in present {
            if set && k != "type" && !allowed.contains(&k) {
                self.problem(
                    &key(k),
                    format!("does not apply to a receiver of type \"{kind_text}\""),
                );
                ok = false;
            }
        }
        let kind = match kind_text.as_str() {
            "email" => self.email(name, raw).map(ReceiverKind::Email),
            "webhook" | "alertmanager" => {
                let url = match raw.url {
                    Some(u) => self.url(&key("url"), &u),
                    None => {
                        self.problem(&key("url"), "required".to_owned());
                        None
                    }
                };
                let token = self.secret(
                    &key("token_file"),
                    raw.token_file,
                    &key("token_credential"),
                    raw.token_credential,
                );
                let runbook_url = match raw.runbook_url {
                    Some(text) => self.runbook_url(&key("runbook_url"), &text),
                    None => Some(DEFAULT_RUNBOOK_URL.to_owned()),
                };
                url.zip(runbook_url).map(|(url, runbook_url)| {
                    if kind_text == "webhook" {
                        ReceiverKind::Webhook { url, token }
                    } else {
                        ReceiverKind::Alertmanager {
                            url,
                            token,
                            runbook_url,
                        }
                    }
                })
            }
            _ => match raw.command {
                Some(argv) if !argv.is_empty() && !argv[0].is_empty() => {
                    Some(ReceiverKind::Command { argv })
                }
                _ => {
                    self.problem(
                        &key("command"),
                        "required: the program and its arguments, e.g. [\"/usr/local/bin/page\", \"--team\", \"ml\"] (run without a shell)".to_owned(),
                    );
                    None
                }
            },
        };
        match kind {
            Some(kind) if ok => Some(Receiver {
                name: name.to_owned(),
                timeout,
                kind,
            }),
            _ => None,
        }
    }

    fn email(&mut self, name: &str, raw: RawReceiver) -> Option<EmailReceiver> {
        let key = |k: &str| format!("receivers.{name}.{k}");
        let mut ok = true;
        let tls = match raw.tls.as_deref() {
            None | Some("starttls") => SmtpTls::StartTls,
            Some("tls") => SmtpTls::Implicit,
            Some("none") => SmtpTls::None,
            Some(other) => {
                self.problem(
                    &key("tls"),
                    format!(
                        "unknown value \"{other}\", expected one of \"starttls\", \"tls\", \"none\""
                    ),
                );
                ok = false;
                SmtpTls::StartTls
            }
        };
        let host = raw.smtp_host.unwrap_or_default();
        if host.trim().is_empty() {
            self.problem(
                &key("smtp_host"),
                "required: the SMTP server's host name".to_owned(),
            );
            ok = false;
        } else if tls == SmtpTls::None && !is_loopback_host(&host) {
            self.problem(
                &key("tls"),
                format!(
                    "\"none\" sends mail (and any password) unencrypted: allowed only to a loopback host, not \"{host}\"; use \"starttls\" or \"tls\""
                ),
            );
            ok = false;
        }
        let default_port = match tls {
            SmtpTls::StartTls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        };
        let port = match raw.smtp_port {
            None => default_port,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p > 0 => p,
                _ => {
                    self.problem(
                        &key("smtp_port"),
                        format!("must be within 1..=65535, got {p}"),
                    );
                    ok = false;
                    default_port
                }
            },
        };
        let password = self.secret(
            &key("password_file"),
            raw.password_file,
            &key("password_credential"),
            raw.password_credential,
        );
        let has_password_key = password.is_some();
        match (&raw.username, has_password_key) {
            (Some(_), false) => {
                // Either no password key at all, or it failed (and was reported).
                if !self
                    .problems
                    .iter()
                    .any(|p| p.path.starts_with(&key("password")))
                {
                    self.problem(
                        &key("password_file"),
                        "required with username (or password_credential)".to_owned(),
                    );
                }
                ok = false;
            }
            (None, true) => {
                self.problem(&key("username"), "required with a password".to_owned());
                ok = false;
            }
            _ => {}
        }
        let from = match raw.from {
            Some(f) => match f.parse::<lettre::message::Mailbox>() {
                Ok(_) => f,
                Err(e) => {
                    self.problem(&key("from"), format!("\"{f}\" is not a mail address: {e}"));
                    ok = false;
                    f
                }
            },
            None => {
                self.problem(
                    &key("from"),
                    "required: the sender, e.g. \"sensei <sensei@example.com>\"".to_owned(),
                );
                ok = false;
                String::new()
            }
        };
        let to = raw.to.unwrap_or_default();
        if to.is_empty() {
            self.problem(&key("to"), "required: at least one recipient".to_owned());
            ok = false;
        }
        for (i, t) in to.iter().enumerate() {
            if let Err(e) = t.parse::<lettre::message::Mailbox>() {
                self.problem(
                    &format!("{}[{i}]", key("to")),
                    format!("\"{t}\" is not a mail address: {e}"),
                );
                ok = false;
            }
        }
        ok.then_some(EmailReceiver {
            host,
            port,
            tls,
            username: raw.username,
            password,
            from,
            to,
        })
    }

    fn rule(
        &mut self,
        index: usize,
        raw: RawRule,
        receivers: &[String],
        earlier: &[String],
    ) -> Option<Rule> {
        let key = |k: &str| format!("rules[{index}].{k}");
        let mut ok = true;
        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            self.problem(
                &key("name"),
                "required: a name for the rule, unique".to_owned(),
            );
            ok = false;
        } else if !valid_name(&name) {
            self.problem(
                &key("name"),
                format!("\"{name}\": a rule name may hold only {NAME_CHARS}"),
            );
            ok = false;
        } else if earlier.contains(&name) {
            self.problem(
                &key("name"),
                format!("\"{name}\" is used by an earlier rule"),
            );
            ok = false;
        }
        let signal = match raw.signal {
            Some(s) if s == "*" => None,
            Some(s) => match s.parse::<SignalName>() {
                Ok(s) => Some(s),
                Err(e) => {
                    self.problem(&key("signal"), format!("{e}, or \"*\""));
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let detector = match raw.detector {
            Some(d) if d == "*" => None,
            Some(d) if DETECTORS.contains(&d.as_str()) => Some(d),
            Some(d) => {
                self.problem(
                    &key("detector"),
                    format!(
                        "unknown detector \"{d}\", expected \"*\" or one of {}",
                        DETECTORS.join(", ")
                    ),
                );
                ok = false;
                None
            }
            None => None,
        };
        let segment = match raw.segment {
            Some(s) if s.is_empty() => {
                self.problem(&key("segment"), "must not be empty".to_owned());
                ok = false;
                None
            }
            Some(s) => Some(SegmentPattern::parse(&s)),
            None => None,
        };
        let severity = match raw.severity.as_deref() {
            None | Some("warning") => Severity::Warning,
            Some("critical") => Severity::Critical,
            Some("info") => Severity::Info,
            Some(other) => {
                self.problem(
                    &key("severity"),
                    format!(
                        "unknown value \"{other}\", expected one of \"critical\", \"warning\", \"info\""
                    ),
                );
                ok = false;
                Severity::Warning
            }
        };
        let for_ = self.duration(&key("for"), raw.for_, Duration::ZERO, Duration::ZERO);
        let repeat = self.duration(
            &key("repeat_interval"),
            raw.repeat_interval,
            Duration::from_secs(4 * 3600),
            Duration::ZERO,
        );
        let rule_receivers = raw.receivers.unwrap_or_default();
        if rule_receivers.is_empty() {
            self.problem(
                &key("receivers"),
                "required: at least one receiver name".to_owned(),
            );
            ok = false;
        }
        for (i, r) in rule_receivers.iter().enumerate() {
            if !receivers.contains(r) {
                let known: Vec<&str> = receivers.iter().map(String::as_str).collect();
                self.problem(
                    &format!("{}[{i}]", key("receivers")),
                    format!(
                        "unknown receiver \"{r}\" (receivers defined: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                ok = false;
            }
        }
        let action = match raw.action.as_deref() {
            None => None,
            Some("redistill") => Some(Action::Redistill),
            Some(other) => {
                self.problem(
                    &key("action"),
                    format!("unknown value \"{other}\", expected \"redistill\""),
                );
                ok = false;
                None
            }
        };
        ok.then_some(Rule {
            name,
            signal,
            detector,
            segment,
            severity,
            for_,
            repeat_interval: (!repeat.is_zero()).then_some(repeat),
            send_resolved: raw.send_resolved.unwrap_or(true),
            receivers: rule_receivers,
            action,
        })
    }
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
