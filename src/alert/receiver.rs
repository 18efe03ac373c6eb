//! Delivering one notification to one receiver: email (lettre), webhook and Alertmanager
//! (reqwest), and a command (argv, no shell, the document on stdin).
//!
//! Each delivery is bounded by the receiver's `timeout`, so a receiver that hangs costs one
//! timeout and a retry, never a stuck alert task. Every delivery carries the notification's
//! dedup key where a receiver can see it: the `Message-ID` and `X-Sensei-Dedup-Key` headers of
//! a mail, the `Idempotency-Key` header of a webhook, the `dedup_key` annotation in
//! Alertmanager, and `$SENSEI_DEDUP_KEY` for a command.

use std::process::Stdio;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::notification::{Notification, segment_text, signal_text};
use super::rule::Kind;
use crate::config::alerts::{EmailReceiver, Receiver, ReceiverKind, SmtpTls};
use crate::record::segment_label;
use crate::time::{now_ms, rfc3339};

/// Why a delivery failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// A receiver ready to deliver.
pub struct Sender {
    pub receiver: Receiver,
    http: Option<reqwest::Client>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    /// How long an alert posted to Alertmanager stays active without being posted again.
    pub alert_lifetime: Duration,
}

impl Sender {
    pub fn new(receiver: &Receiver, alert_lifetime: Duration) -> Result<Sender, SendError> {
        let (http, smtp) = match &receiver.kind {
            ReceiverKind::Email(e) => (None, Some(smtp_transport(e, receiver.timeout)?)),
            ReceiverKind::Webhook { .. } | ReceiverKind::Alertmanager { .. } => {
                let client = reqwest::Client::builder()
                    .timeout(receiver.timeout)
                    .connect_timeout(receiver.timeout)
                    .user_agent(concat!("sensei/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| SendError::Failed(format!("HTTP client: {e}")))?;
                (Some(client), None)
            }
            ReceiverKind::Command { .. } => (None, None),
        };
        Ok(Sender {
            receiver: receiver.clone(),
            http,
            smtp,
            alert_lifetime,
        })
    }

    pub fn name(&self) -> &str {
        &self.receiver.name
    }

    pub fn is_alertmanager(&self) -> bool {
        matches!(self.receiver.kind, ReceiverKind::Alertmanager { .. })
    }

    /// Delivers `n`, within the receiver's timeout.
    pub async fn send(&self, n: &Notification) -> Result<(), SendError> {
        let timeout = self.receiver.timeout;
        match tokio::time::timeout(timeout, self.send_inner(n)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(timeout)),
        }
    }

    async fn send_inner(&self, n: &Notification) -> Result<(), SendError> {
        match &self.receiver.kind {
            ReceiverKind::Email(e) => self.email(e, n).await,
            ReceiverKind::Webhook { url, token } => {
                let body = serde_json::to_value(n)
                    .map_err(|e| SendError::Failed(format!("encoding: {e}")))?;
                self.post(url, token.as_ref().map(|t| t.expose()), &n.dedup_key, &body)
                    .await
            }
            ReceiverKind::Alertmanager {
                url,
                token,
                runbook_url,
            } => {
                let body = alertmanager_alerts(n, now_ms(), self.alert_lifetime, runbook_url);
                let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
                self.post(
                    &endpoint,
                    token.as_ref().map(|t| t.expose()),
                    &n.dedup_key,
                    &body,
                )
                .await
            }
            ReceiverKind::Command { argv } => command(argv, n).await,
        }
    }

    async fn post(
        &self,
        url: &str,
        token: Option<&str>,
        dedup_key: &str,
        body: &Value,
    ) -> Result<(), SendError> {
        let Some(client) = &self.http else {
            return Err(SendError::Failed("no HTTP client".into()));
        };
        let mut request = client
            .post(url)
            .header("Idempotency-Key", dedup_key)
            .header("X-Sensei-Dedup-Key", dedup_key)
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            // reqwest's Display of a URL error can include the URL, never the token.
            SendError::Failed(format!("POST {url}: {}", error_chain(&e)))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        Err(SendError::Failed(format!(
            "POST {url}: HTTP {status}: {}",
            text.trim()
        )))
    }

    async fn email(&self, e: &EmailReceiver, n: &Notification) -> Result<(), SendError> {
        let Some(smtp) = &self.smtp else {
            return Err(SendError::Failed("no SMTP transport".into()));
        };
        let message = email_message(e, n)?;
        smtp.send(message).await.map(|_| ()).map_err(|err| {
            SendError::Failed(format!("SMTP {}:{}: {}", e.host, e.port, error_chain(&err)))
        })
    }
}

/// An error with its sources, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

fn smtp_transport(
    e: &EmailReceiver,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, SendError> {
    let builder = match e.tls {
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.host),
        SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.host),
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            e.host.clone(),
        )),
    }
    .map_err(|err| SendError::Failed(format!("SMTP {}: {err}", e.host)))?;
    let mut builder = builder.port(e.port).timeout(Some(timeout));
    if let (Some(user), Some(password)) = (&e.username, &e.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.build())
}

/// The mail: subject, plain-text and HTML parts, and the dedup key as `Message-ID` (mail
/// systems drop a second message with the same id) and `X-Sensei-Dedup-Key`. Notifications of
/// one alert episode share a `References` header, so mail clients thread them.
pub fn email_message(e: &EmailReceiver, n: &Notification) -> Result<Message, SendError> {
    let parse = |s: &str| {
        s.parse::<Mailbox>()
            .map_err(|err| SendError::Failed(format!("address {s}: {err}")))
    };
    let domain = parse(&e.from)?.email.domain().to_owned();
    let mut builder = Message::builder()
        .from(parse(&e.from)?)
        .subject(n.subject())
        .message_id(Some(format!("<{}@{domain}>", n.dedup_key)))
        .references(format!("<{}@{domain}>", n.alert_id))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Sensei-Dedup-Key"),
            n.dedup_key.clone(),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Sensei-Alert"),
            format!(
                "{}; status={}; severity={}",
                n.alert_id,
                n.status,
                n.severity.as_str()
            ),
        ));
    for to in &e.to {
        builder = builder.to(parse(to)?);
    }
    builder
        .multipart(MultiPart::alternative_plain_html(n.text(), n.html()))
        .map_err(|err| SendError::Failed(format!("building the mail: {err}")))
}

/// The Alertmanager `POST /api/v2/alerts` body: one alert per drift, labelled by rule, signal,
/// segment and detector (Alertmanager groups them again by its own routes). A firing alert
/// ends `lifetime` after it is posted unless posted again; a resolved one ends when it resolved.
///
/// Labels identify the alert, so they stay the same from one episode to the next: the
/// episode's id (`sensei_alert_id`), the dedup key and everything that changes within an
/// episode are annotations. The all-segments aggregate is `segment="all"`, as in `/metrics`.
/// `runbook_url` becomes the `runbook_url` annotation, `{rule}` and `{signal}` filled in.
pub fn alertmanager_alerts(
    n: &Notification,
    now: i64,
    lifetime: Duration,
    runbook_url: &str,
) -> Value {
    let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX / 2);
    if let Some(f) = &n.redistill {
        return redistill_alert(n, f, now, lifetime_ms, runbook_url);
    }
    let alerts: Vec<Value> = n
        .drifts
        .iter()
        .map(|d| {
            let e = &d.event;
            let ends_at = if n.firing() {
                now.saturating_add(lifetime_ms)
            } else {
                e.resolved_at.or(n.resolved_at).unwrap_or(now)
            };
            let mut alert = json!({
                "labels": {
                    "alertname": n.rule,
                    "severity": n.severity.as_str(),
                    "signal": e.signal,
                    "segment": segment_label(&e.segment),
                    "detector": e.detector,
                    "instance": n.instance,
                    "source": "sensei",
                },
                "annotations": {
                    "summary": format!("{} drift on {}", e.signal, segment_text(&e.segment)),
                    "description": format!(
                        "{} on {}: baseline {}, current {}{}; statistic {} over threshold {} ({}).",
                        signal_text(&e.signal),
                        segment_text(&e.segment),
                        super::notification::number(e.baseline_value),
                        super::notification::number(e.current_value),
                        match (e.current_low, e.current_high) {
                            (Some(lo), Some(hi)) => format!(
                                " [{}, {}]",
                                super::notification::number(Some(lo)),
                                super::notification::number(Some(hi))
                            ),
                            _ => String::new(),
                        },
                        super::notification::number(Some(e.statistic)),
                        super::notification::number(Some(e.threshold)),
                        e.detector,
                    ),
                    "dedup_key": n.dedup_key,
                    "sensei_alert_id": n.alert_id,
                    "runbook_url": runbook(runbook_url, &n.rule, &e.signal),
                    "group_summary": n.summary,
                    "action": n.action.as_ref().map_or(String::new(), |a| format!("{} {} (#{})", a.action, a.status, a.id)),
                },
                "startsAt": rfc3339(d.since),
                "endsAt": rfc3339(ends_at),
            });
            if let Some(url) = &n.dashboard_url {
                alert["generatorURL"] = json!(url);
            }
            if n.kind == Kind::Test {
                alert["labels"]["test"] = json!("true");
            }
            alert
        })
        .collect();
    Value::Array(alerts)
}

/// The runbook link of one alert: `{rule}` and `{signal}` (the signal's family) filled in.
fn runbook(template: &str, rule: &str, signal: &str) -> String {
    let family = signal.split('[').next().unwrap_or(signal);
    template.replace("{rule}", rule).replace("{signal}", family)
}

/// The one Alertmanager alert of a failing re-distillation: labelled by the rule
/// (`redistill-failing`); the streak's first job is an annotation. A firing one is posted again while the
/// streak lasts (as drift alerts are); a resolved one ends when it was resolved.
fn redistill_alert(
    n: &Notification,
    f: &super::notification::RedistillFailure,
    now: i64,
    lifetime_ms: i64,
    runbook_url: &str,
) -> Value {
    let ends_at = if n.firing() {
        now.saturating_add(lifetime_ms)
    } else {
        n.resolved_at.unwrap_or(now)
    };
    let mut alert = json!({
        "labels": {
            "alertname": n.rule,
            "severity": n.severity.as_str(),
            "instance": n.instance,
            "source": "sensei",
        },
        "annotations": {
            "summary": n.summary,
            "description": format!(
                "{} jobs in a row failed; job {} {}: {}. Log: {}. Next job at {} at the earliest.",
                f.failures,
                f.last_job,
                f.last_status,
                f.last_detail,
                f.log.as_deref().unwrap_or("–"),
                rfc3339(f.next_allowed_at)
            ),
            "dedup_key": n.dedup_key,
            "sensei_alert_id": n.alert_id,
            "first_job": f.first_job.to_string(),
            "runbook_url": runbook(runbook_url, &n.rule, ""),
        },
        "startsAt": rfc3339(n.fired_at),
        "endsAt": rfc3339(ends_at),
    });
    if let Some(url) = &n.dashboard_url {
        alert["generatorURL"] = json!(url);
    }
    Value::Array(vec![alert])
}

/// Runs the command with the document on stdin; success is exit status 0.
async fn command(argv: &[String], n: &Notification) -> Result<(), SendError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(SendError::Failed("empty command".into()));
    };
    let payload = serde_json::to_vec(n).map_err(|e| SendError::Failed(format!("encoding: {e}")))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("SENSEI_DEDUP_KEY", &n.dedup_key)
        .env("SENSEI_ALERT_ID", &n.alert_id)
        .env("SENSEI_ALERT_STATUS", &n.status)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // The caller's timeout drops this future; the child must not outlive it.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SendError::Failed(format!("starting {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is its own business: only its exit counts.
        let _ = stdin.write_all(&payload).await;
        let _ = stdin.shutdown().await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| SendError::Failed(format!("waiting for {program}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .trim()
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(SendError::Failed(format!(
            "{program} exited with {}: {tail}",
            output.status
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::alerts::Severity;

    fn doc() -> Notification {
        Notification {
            version: crate::alert::notification::VERSION,
            dedup_key: "r.1.1".into(),
            alert_id: "r.1".into(),
            status: "firing".into(),
            kind: Kind::Firing,
            rule: "r".into(),
            severity: Severity::Warning,
            instance: "site".into(),
            summary: "kl drift on line=A".into(),
            fired_at: 1,
            resolved_at: None,
            created_at: 1,
            dashboard_url: None,
            action: None,
            drifts: Vec::new(),
            redistill: None,
        }
    }

    fn command_sender(argv: &[&str], timeout: Duration) -> Sender {
        let receiver = Receiver {
            name: "cmd".into(),
            timeout,
            kind: ReceiverKind::Command {
                argv: argv.iter().map(|s| s.to_string()).collect(),
            },
        };
        Sender::new(&receiver, Duration::from_secs(300)).expect("sender")
    }

    #[tokio::test]
    async fn command_gets_the_document_on_stdin_and_the_key_in_its_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let script = format!(
            "cat > {0}; echo >> {0}; echo \"$SENSEI_DEDUP_KEY\" >> {0}",
            out.display()
        );
        let sender = command_sender(&["sh", "-c", &script], Duration::from_secs(10));
        sender.send(&doc()).await.expect("delivered");
        let text = std::fs::read_to_string(&out).expect("output");
        let (json, key) = text.trim_end().rsplit_once('\n').expect("two parts");
        assert_eq!(key, "r.1.1");
        let back: Notification = serde_json::from_str(json).expect("JSON on stdin");
        assert_eq!(back, doc());
    }

    #[tokio::test]
    async fn command_failure_and_hang_are_errors() {
        let failing = command_sender(
            &["sh", "-c", "echo broken pipe >&2; exit 3"],
            Duration::from_secs(10),
        );
        let error = failing.send(&doc()).await.expect_err("exit 3");
        assert!(error.to_string().contains("broken pipe"), "{error}");
        let hanging = command_sender(&["sleep", "30"], Duration::from_millis(200));
        let started = std::time::Instant::now();
        let error = hanging.send(&doc()).await.expect_err("timeout");
        assert!(matches!(error, SendError::Timeout(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = command_sender(&["/nonexistent/pager"], Duration::from_secs(1));
        assert!(missing.send(&doc()).await.is_err());
    }

    #[test]
    fn alertmanager_alerts_end_when_resolved() {
        let mut n = doc();
        n.drifts = vec![crate::alert::rule::Drift {
            since: 1_000,
            event: crate::store::DriftEvent {
                id: 1,
                signal: "kl".into(),
                segment: "line=A".into(),
                detector: "cusum".into(),
                detected_at: 2_000,
                detected_at_record: 10,
                estimated_change_record: None,
                estimated_change_at: None,
                statistic: 5.0,
                threshold: 4.0,
                baseline_value: Some(0.1),
                current_value: Some(0.3),
                current_low: None,
                current_high: None,
                p_value: None,
                effect_size: None,
                baseline_version: None,
                resolved_at: None,
                alarms: 1,
                last_alarm_record: None,
            },
        }];
        let runbook = "https://wiki.example.com/sensei/{rule}/{signal}";
        let firing = alertmanager_alerts(&n, 10_000, Duration::from_secs(300), runbook);
        assert_eq!(firing[0]["labels"]["segment"], "line=A");
        assert_eq!(
            firing[0]["annotations"]["runbook_url"],
            format!("https://wiki.example.com/sensei/{}/kl", n.rule)
        );
        assert_eq!(firing[0]["startsAt"], "1970-01-01T00:00:01Z");
        assert_eq!(firing[0]["endsAt"], "1970-01-01T00:05:10Z");
        n.status = "resolved".into();
        n.kind = Kind::Resolved;
        n.drifts[0].event.resolved_at = Some(9_000);
        let resolved = alertmanager_alerts(&n, 10_000, Duration::from_secs(300), runbook);
        assert_eq!(resolved[0]["endsAt"], "1970-01-01T00:00:09Z");
        assert_eq!(resolved[0]["labels"], firing[0]["labels"]);
    }

    /// The labels identify the alert across episodes: the episode's id is an annotation, and
    /// the all-segments aggregate is `segment="all"`.
    #[test]
    fn alertmanager_labels_carry_no_episode_and_name_the_aggregate_all() {
        let mut n = doc();
        let mut event = crate::store::DriftEvent {
            id: 1,
            signal: "input_psi[4]".into(),
            segment: crate::record::ALL_SEGMENTS.into(),
            detector: "psi".into(),
            detected_at: 2_000,
            detected_at_record: 10,
            estimated_change_record: None,
            estimated_change_at: None,
            statistic: 1.5,
            threshold: 1.0,
            baseline_value: None,
            current_value: None,
            current_low: None,
            current_high: None,
            p_value: Some(0.001),
            effect_size: Some(0.3),
            baseline_version: None,
            resolved_at: None,
            alarms: 1,
            last_alarm_record: None,
        };
        n.drifts = vec![crate::alert::rule::Drift {
            since: 1_000,
            event: event.clone(),
        }];
        let default = crate::config::alerts::DEFAULT_RUNBOOK_URL;
        let first = alertmanager_alerts(&n, 10_000, Duration::from_secs(300), default);
        let labels = first[0]["labels"].as_object().unwrap();
        assert_eq!(labels["segment"], "all");
        assert!(!labels.contains_key("sensei_alert_id"), "{labels:?}");
        assert_eq!(first[0]["annotations"]["sensei_alert_id"], n.alert_id);
        assert_eq!(first[0]["annotations"]["runbook_url"], default);
        // The next episode of the same drift is the same Alertmanager alert.
        n.alert_id = format!("{}.99999", n.rule);
        n.dedup_key = format!("{}.99999.1", n.rule);
        event.id = 2;
        n.drifts[0].event = event;
        let second = alertmanager_alerts(&n, 20_000, Duration::from_secs(300), default);
        assert_eq!(second[0]["labels"], first[0]["labels"]);
        assert_ne!(
            second[0]["annotations"]["sensei_alert_id"],
            first[0]["annotations"]["sensei_alert_id"]
        );
    }
}
