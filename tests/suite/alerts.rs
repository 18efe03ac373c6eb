//! Alerts against real receivers: mail through aiosmtpd, Alertmanager's API, a webhook and a
//! command; an SMTP outage; a SIGKILL while firing; bad alert configs in `sensei check`.

use std::time::Duration;

use crate::common::Site;
use crate::common::alerting::{
    Alertmanager, SmtpServer, Webhook, alerts_section, create_db, evaluated_at, free_port,
    insert_drift, now_ms, resolve_all, wait_evaluations,
};
use crate::common::wait_until;

const WAIT: Duration = Duration::from_secs(30);

fn output(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn email_receiver(name: &str, port: u16) -> String {
    format!(
        "[receivers.{name}]\ntype = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"sensei <sensei@site.example>\"\nto = [\"maintenance@site.example\"]\ntimeout = \"2s\"\n"
    )
}

fn outbox(site: &Site, sql: &str) -> i64 {
    site.query_i64(&format!("SELECT {sql} FROM alert_outbox"))
}

#[test]
fn a_drift_in_two_segments_is_one_mail_and_alertmanager_sees_it_fire_and_resolve() {
    let smtp_dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start(free_port(), &smtp_dir.path().join("maildir"));
    let am = Alertmanager::start();
    let site = Site::new();
    site.write_config(&format!(
        "{}{}[receivers.am]\ntype = \"alertmanager\"\nurl = \"{}\"\ntimeout = \"2s\"\n\
         runbook_url = \"https://wiki.example.com/sensei/{{rule}}/{{signal}}\"\n\
         [[rules]]\nname = \"student-disagrees\"\nsignal = \"disagreement\"\nsegment = \"line=*\"\n\
         severity = \"critical\"\nrepeat_interval = \"1h\"\nreceivers = [\"mail\", \"am\"]\naction = \"redistill\"\n\
         [[rules]]\nname = \"fleet-disagrees\"\nsignal = \"disagreement\"\nsegment = \"*\"\n\
         repeat_interval = \"1h\"\nreceivers = [\"am\"]\n",
        alerts_section(""),
        email_receiver("mail", smtp.port),
        am.url()
    ));
    let daemon = site.start();
    let db = site.db();
    let t0 = now_ms() - 60_000;
    // One transaction, as the detectors commit a file's events: one evaluation sees them all.
    db.execute_batch("BEGIN").unwrap();
    insert_drift(&db, "disagreement", "line=A", t0);
    insert_drift(&db, "disagreement", "line=B", t0 + 1000);
    // Another signal and the aggregate: not this rule's business.
    insert_drift(&db, "kl", "line=A", t0);
    insert_drift(&db, "disagreement", "*", t0);
    db.execute_batch("COMMIT").unwrap();

    wait_until(WAIT, "the firing mail", || !smtp.mails().is_empty());
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let mail = &mails[0];
    assert_eq!(
        mail.subject,
        "[sensei] FIRING CRITICAL: disagreement drift on 2 segments: line=A, line=B (test-site)"
    );
    assert_eq!(mail.content_type, "multipart/alternative");
    for text in ["line=A", "line=B", "0.2240 [0.1490, 0.3150]", "0.03400"] {
        assert!(mail.plain.contains(text), "{text} missing:\n{}", mail.plain);
    }
    assert!(
        mail.plain
            .contains("What sensei did: queued a re-distillation job")
            && mail.plain.contains("it has not started yet"),
        "{}",
        mail.plain
    );
    assert!(
        mail.plain.contains("http://127.0.0.1:9477/"),
        "{}",
        mail.plain
    );
    assert!(
        !mail.plain.contains("*  "),
        "the aggregate is listed:\n{}",
        mail.plain
    );
    assert!(mail.html.contains("<td>line=B</td>"), "{}", mail.html);
    assert!(
        mail.html.contains("href=\"http://127.0.0.1:9477/\""),
        "{}",
        mail.html
    );
    let key: String = db
        .query_row(
            "SELECT dedup_key FROM alert_outbox WHERE receiver = 'mail' AND kind = 'firing'",
            [],
            |r| r.get(0),
        )
        .expect("outbox row");
    assert_eq!(mail.headers.get("X-Sensei-Dedup-Key"), Some(&key));
    assert!(
        mail.headers
            .get("Message-ID")
            .is_some_and(|id| id.contains(&key)),
        "{:?}",
        mail.headers
    );
    // The rule's action is recorded for the re-distillation loop.
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM alert_actions WHERE action = 'redistill' AND rule = 'student-disagrees'"
        ),
        1
    );

    let ours = |alerts: &[serde_json::Value]| -> Vec<serde_json::Value> {
        alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == "student-disagrees")
            .cloned()
            .collect()
    };
    wait_until(WAIT, "two alerts active in Alertmanager", || {
        let a = ours(&am.alerts());
        a.len() == 2 && a.iter().all(|a| a["status"]["state"] == "active")
    });
    let mut segments: Vec<String> = ours(&am.alerts())
        .iter()
        .map(|a| a["labels"]["segment"].as_str().unwrap_or("").to_owned())
        .collect();
    segments.sort();
    assert_eq!(segments, ["line=A", "line=B"]);
    let alert = &ours(&am.alerts())[0];
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["signal"], "disagreement");
    assert_eq!(alert["annotations"]["dedup_key"], key.as_str());
    // Labels say what drifts; the episode is an annotation, beside the runbook.
    let alert_id: String = db
        .query_row(
            "SELECT alert_id FROM alert_outbox WHERE dedup_key = ?1",
            [&key],
            |r| r.get(0),
        )
        .unwrap();
    let mut labels: Vec<&str> = alert["labels"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            "alertname",
            "detector",
            "instance",
            "segment",
            "severity",
            "signal",
            "source"
        ]
    );
    assert_eq!(alert["annotations"]["sensei_alert_id"], alert_id.as_str());
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "https://wiki.example.com/sensei/student-disagrees/disagreement"
    );
    // The all-segments aggregate is segment="all".
    wait_until(WAIT, "the aggregate's alert in Alertmanager", || {
        am.alerts()
            .iter()
            .any(|a| a["labels"]["alertname"] == "fleet-disagrees")
    });
    let fleet: Vec<serde_json::Value> = am
        .alerts()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "fleet-disagrees")
        .collect();
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    assert_eq!(fleet[0]["labels"]["segment"], "all");
    assert_eq!(fleet[0]["labels"]["severity"], "warning");

    // Back in control: a resolution mail, and Alertmanager no longer has them active.
    resolve_all(&db, now_ms());
    wait_until(WAIT, "the resolution mail", || smtp.mails().len() >= 2);
    let mails = smtp.mails();
    // On failure, say which notifications the mails were and how their deliveries went.
    let story = || {
        let rows: Vec<String> = db
            .prepare(
                "SELECT receiver, kind, dedup_key, status, attempts, COALESCE(last_error, '')
                 FROM alert_outbox ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok(format!(
                    "{} {} {} {} attempts={} {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let sent: Vec<String> = mails
            .iter()
            .map(|m| format!("{} {:?}", m.subject, m.headers.get("X-Sensei-Dedup-Key")))
            .collect();
        format!("mails: {sent:#?}\noutbox: {rows:#?}")
    };
    assert_eq!(mails.len(), 2, "{}", story());
    assert!(
        mails[1]
            .subject
            .starts_with("[sensei] RESOLVED: disagreement drift on 2 segments"),
        "{}",
        story()
    );
    assert_ne!(mails[1].headers.get("X-Sensei-Dedup-Key"), Some(&key));
    wait_until(WAIT, "the alerts resolved in Alertmanager", || {
        ours(&am.alerts())
            .iter()
            .all(|a| a["status"]["state"] != "active")
    });
    wait_until(WAIT, "the aggregate's resolution delivered", || {
        outbox(&site, "SUM(status = 'sent')") == 6
    });
    assert_eq!(outbox(&site, "COUNT(*)"), 6);
    drop(daemon);
}

#[test]
fn a_mail_held_up_by_an_smtp_outage_arrives_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut smtp = SmtpServer::start(free_port(), &dir.path().join("maildir"));
    let site = Site::new();
    site.write_config(&format!(
        "{}{}[[rules]]\nname = \"any-drift\"\nreceivers = [\"mail\"]\n",
        alerts_section(""),
        email_receiver("mail", smtp.port)
    ));
    let daemon = site.start();
    smtp.stop();
    let db = site.db();
    insert_drift(&db, "disagreement", "line=A", now_ms());

    // The notification waits in the outbox and is retried.
    wait_until(WAIT, "several failed attempts", || {
        outbox(&site, "MAX(attempts)") >= 3
    });
    assert_eq!(outbox(&site, "SUM(status = 'pending')"), 1);
    for command in [&["alert", "outbox"][..], &["status"][..]] {
        let text = output(&site.sensei(command));
        assert!(
            text.contains("mail") && text.contains("UNDELIVERED"),
            "{command:?}: {text}"
        );
    }

    smtp.restart();
    wait_until(WAIT, "the mail after the outage", || {
        !smtp.mails().is_empty()
    });
    wait_until(WAIT, "the outbox row marked sent", || {
        outbox(&site, "SUM(status = 'sent')") == 1
    });
    wait_evaluations(&db, 5);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert!(
        mails[0].subject.contains("FIRING WARNING"),
        "{}",
        mails[0].subject
    );
    drop(daemon);
}

#[test]
fn a_daemon_killed_while_firing_does_not_notify_again() {
    let hook = Webhook::start();
    let site = Site::new();
    let token = site.root().join("hook-token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let commands = site.root().join("commands.jsonl");
    site.write_config(&format!(
        "{}[receivers.hook]\ntype = \"webhook\"\nurl = \"{}\"\ntoken_file = {:?}\n\
         [receivers.script]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >> \\\"$0\\\"; echo >> \\\"$0\\\"\", {:?}]\n\
         [[rules]]\nname = \"kl-rises\"\nsignal = \"kl\"\nsegment = \"*\"\nreceivers = [\"hook\", \"script\"]\n",
        alerts_section(""),
        hook.url(),
        token.display().to_string(),
        commands.display().to_string()
    ));
    // The drift happened before the daemon started.
    create_db(&site.db_path());
    let db = site.db();
    insert_drift(&db, "kl", "*", now_ms() - 5000);
    let daemon = site.start();
    let lines = || {
        std::fs::read_to_string(&commands)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    wait_until(WAIT, "the webhook and the command", || {
        hook.received().len() == 1 && lines() == 1
    });
    let request = &hook.received()[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(
        request.headers.get("authorization").map(String::as_str),
        Some("Bearer s3cret-token")
    );
    let doc: serde_json::Value = serde_json::from_str(&request.body).expect("JSON body");
    assert_eq!(doc["status"], "firing");
    assert_eq!(doc["rule"], "kl-rises");
    assert_eq!(doc["drifts"][0]["segment"], "*");
    assert_eq!(doc["drifts"][0]["baseline_value"], 0.034);
    assert_eq!(
        request.headers.get("idempotency-key"),
        doc["dedup_key"].as_str().map(str::to_owned).as_ref()
    );
    let from_command: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&commands).unwrap().trim())
            .expect("stdin JSON");
    assert_eq!(from_command["dedup_key"], doc["dedup_key"]);
    // The token never reaches the log.
    assert!(!daemon.log_text().contains("s3cret"));

    // Both deliveries recorded (a kill between a delivery and its record is the one window in
    // which a notification may repeat, with the same dedup key; that is not what this tests).
    wait_until(WAIT, "both deliveries recorded", || {
        outbox(&site, "SUM(status = 'sent')") == 2
    });
    daemon.kill();
    let before = evaluated_at(&db);
    let daemon = site.start();
    wait_until(WAIT, "evaluations after the restart", || {
        evaluated_at(&db) > before
    });
    wait_evaluations(&db, 5);
    assert_eq!(hook.received().len(), 1);
    assert_eq!(lines(), 1);
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM alert_state WHERE rule = 'kl-rises' AND status = 'firing'"
        ),
        1
    );
    drop(daemon);
}

#[test]
fn a_hanging_webhook_times_out_and_is_retried_until_it_answers() {
    let hook = Webhook::start();
    hook.set_hang(true);
    let site = Site::new();
    site.write_config(&format!(
        "{}[receivers.hook]\ntype = \"webhook\"\nurl = \"{}\"\ntimeout = \"300ms\"\n\
         [[rules]]\nname = \"confidence-falls\"\nsignal = \"confidence\"\nreceivers = [\"hook\"]\n",
        alerts_section(""),
        hook.url()
    ));
    let daemon = site.start();
    let db = site.db();
    insert_drift(&db, "confidence", "line=B", now_ms());
    wait_until(WAIT, "timed-out attempts", || {
        outbox(&site, "MAX(attempts)") >= 2
    });
    let error: String = db
        .query_row("SELECT last_error FROM alert_outbox", [], |r| r.get(0))
        .expect("last_error");
    assert!(error.contains("timed out"), "{error}");
    assert!(hook.received().is_empty());
    assert_eq!(outbox(&site, "SUM(status = 'pending')"), 1);

    hook.set_hang(false);
    wait_until(WAIT, "delivery once the webhook answers", || {
        outbox(&site, "SUM(status = 'sent')") == 1
    });
    let received = hook.received();
    assert_eq!(received.len(), 1);
    let doc: serde_json::Value = serde_json::from_str(&received[0].body).expect("JSON");
    assert_eq!(doc["drifts"][0]["signal"], "confidence");
    drop(daemon);
}

/// A rule names a signal family (every feature) or one member: `input_psi` fires on the PSI of
/// feature 4, `input_psi[3]` does not; `sensei check` accepts both forms and says what is wrong
/// with a bad one.
#[test]
fn a_rule_on_a_signal_family_fires_on_each_feature_and_one_on_a_member_only_on_it() {
    let hook = Webhook::start();
    let site = Site::new();
    let rules = "[[rules]]\nname = \"input-shift\"\nsignal = \"input_psi\"\nreceivers = [\"hook\"]\n\
         [[rules]]\nname = \"feature-3\"\nsignal = \"input_psi[3]\"\nreceivers = [\"hook\"]\n";
    let receiver = format!(
        "[receivers.hook]\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    );
    site.write_config(&format!(
        "{}{receiver}{rules}[[rules]]\nname = \"bad\"\nsignal = \"input_psi[x]\"\nreceivers = [\"hook\"]\n\
         [[rules]]\nname = \"old\"\nsignal = \"confidence_ks\"\nreceivers = [\"hook\"]\n",
        alerts_section("")
    ));
    let text = output(&site.sensei(&["check"]));
    assert!(
        !text.contains("rules[0]") && !text.contains("rules[1]"),
        "{text}"
    );
    assert!(
        text.contains("rules[2].signal: \"input_psi[x]\": the index \"x\" is not a feature number"),
        "{text}"
    );
    assert!(
        text.contains("rules[3].signal: unknown signal \"confidence_ks\""),
        "{text}"
    );

    site.write_config(&format!("{}{receiver}{rules}", alerts_section("")));
    let daemon = site.start();
    let db = site.db();
    insert_drift(&db, "input_psi[4]", "*", now_ms() - 1000);
    wait_until(WAIT, "the input-shift notification", || {
        !hook.received().is_empty()
    });
    wait_evaluations(&db, 3);
    let received = hook.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    let doc: serde_json::Value = serde_json::from_str(&received[0].body).expect("JSON");
    assert_eq!(doc["rule"], "input-shift");
    assert_eq!(doc["drifts"][0]["signal"], "input_psi[4]");
    drop(daemon);
}

#[test]
fn alert_test_sends_a_test_notification() {
    let hook = Webhook::start();
    let site = Site::new();
    site.write_config(&format!(
        "{}[receivers.hook]\ntype = \"webhook\"\nurl = \"{}\"\n",
        alerts_section(""),
        hook.url()
    ));
    let out = site.sensei(&["alert", "test", "--receiver", "hook"]);
    assert_eq!(out.status.code(), Some(0), "{}", output(&out));
    let received = hook.received();
    assert_eq!(received.len(), 1);
    let doc: serde_json::Value = serde_json::from_str(&received[0].body).expect("JSON");
    assert_eq!(doc["kind"], "test");

    let out = site.sensei(&["alert", "test", "--receiver", "nobody"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        output(&out).contains("no receiver \"nobody\""),
        "{}",
        output(&out)
    );
}

#[test]
fn bad_alert_configs_are_all_reported_by_check() {
    let site = Site::new();
    site.write_config(
        "[receivers.mail]\ntype = \"email\"\nsmtp_host = \"mail.example.com\"\nusername = \"sensei\"\n\
         password_file = \"/nonexistent/smtp-password\"\nfrom = \"sensei@example.com\"\nto = [\"ops@example.com\"]\n\
         [receivers.hook]\ntype = \"webhook\"\nurl = \"not a url\"\n\
         [receivers.relay]\ntype = \"email\"\nsmtp_host = \"mail.example.com\"\ntls = \"none\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n\
         [[rules]]\nname = \"r\"\nreceivers = [\"mail\", \"pager\"]\nsignal = \"vibes\"\n",
    );
    let out = site.sensei(&["check"]);
    let text = output(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    for expected in [
        "receivers.mail.password_file: cannot read /nonexistent/smtp-password",
        "receivers.hook.url: cannot parse URL \"not a url\"",
        "receivers.relay.tls: \"none\"",
        "rules[0].receivers[1]: unknown receiver \"pager\"",
        "rules[0].signal: unknown signal \"vibes\"",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
}

#[test]
fn smtp_passwords_come_from_systemd_credentials() {
    let site = Site::new();
    site.write_config(
        "[receivers.mail]\ntype = \"email\"\nsmtp_host = \"mail.example.com\"\nusername = \"sensei\"\n\
         password_credential = \"smtp-password\"\nfrom = \"sensei@example.com\"\nto = [\"ops@example.com\"]\n\
         [[rules]]\nname = \"all\"\nreceivers = [\"mail\"]\n",
    );
    let credentials = site.root().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let check = || {
        std::process::Command::new(crate::common::sensei_bin())
            .arg("--config")
            .arg(site.config_path())
            .arg("check")
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .env_remove("ORT_DYLIB_PATH")
            .output()
            .expect("sensei check")
    };
    let out = check();
    let text = output(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("receivers.mail.password_credential: cannot read"),
        "{text}"
    );
    std::fs::write(credentials.join("smtp-password"), "correct horse\n").unwrap();
    let out = check();
    let text = output(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("correct horse"), "{text}");
}
