//! The alert configuration's tests.

use super::*;

#[test]
fn segment_patterns() {
    let agg = SegmentPattern::parse("*");
    assert!(agg.matches("*") && !agg.matches("line=A"));
    let glob = SegmentPattern::parse("line=*");
    assert!(glob.matches("line=A") && glob.matches("line=B,shift=2"));
    assert!(!glob.matches("*") && !glob.matches("shift=1"));
    let exact = SegmentPattern::parse("line=A");
    assert!(exact.matches("line=A") && !exact.matches("line=AB"));
    assert!(SegmentPattern::parse("line=?").matches("line=C"));
    assert!(!SegmentPattern::parse("line=?").matches("line=CD"));
    assert!(SegmentPattern::parse("*shift=2").matches("line=A,shift=2"));
}

fn check(text: &str, base: &Path) -> (AlertConfig, Vec<ConfigProblem>) {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        alerts: RawAlerts,
        #[serde(default)]
        receivers: BTreeMap<String, RawReceiver>,
        #[serde(default)]
        rules: Vec<RawRule>,
    }
    let doc: Doc = toml::from_str(text).expect("toml");
    let mut problems = Vec::new();
    let config = validate(doc.alerts, doc.receivers, doc.rules, base, &mut problems);
    (config, problems)
}

#[test]
fn passwords_are_read_from_files_and_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("smtp-password"),
        "hunter2-secret\nignored\n",
    )
    .unwrap();
    let (config, problems) = check(
        "[receivers.mail]\ntype = \"email\"\nsmtp_host = \"mail.example.com\"\ntls = \"tls\"\n\
         username = \"sensei\"\npassword_file = \"smtp-password\"\nfrom = \"sensei@example.com\"\n\
         to = [\"ops@example.com\"]\n[[rules]]\nname = \"all\"\nreceivers = [\"mail\"]\n",
        dir.path(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let ReceiverKind::Email(email) = &config.receivers["mail"].kind else {
        panic!("not email");
    };
    assert_eq!((email.port, email.tls), (465, SmtpTls::Implicit));
    assert_eq!(
        email.password.as_ref().map(Secret::expose),
        Some("hunter2-secret")
    );
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let rule = &config.rules[0];
    assert_eq!(
        (rule.signal, rule.segment.as_ref(), rule.send_resolved),
        (None, None, true)
    );
    assert_eq!(rule.repeat_interval, Some(Duration::from_secs(4 * 3600)));
}

#[test]
fn every_alert_problem_has_its_key_path() {
    let (_, problems) = check(
        "[alerts]\ndashboard_url = \"ftp://x\"\nretry_initial = \"10m\"\nretry_max = \"1m\"\n\
         [receivers.hook]\ntype = \"webhook\"\nurl = \"http://h/\"\nsmtp_host = \"x\"\n\
         [receivers.page]\ntype = \"command\"\ncommand = []\n\
         [receivers.odd]\ntype = \"pigeon\"\n\
         [[rules]]\nname = \"a\"\nreceivers = [\"hook\"]\naction = \"reboot\"\nseverity = \"dire\"\n\
         [[rules]]\nname = \"a\"\nreceivers = []\ndetector = \"magic\"\nfor = \"soon\"\n",
        Path::new("/etc/sensei"),
    );
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "alerts.dashboard_url",
            "alerts.retry_max",
            "receivers.hook.smtp_host",
            "receivers.odd.type",
            "receivers.page.command",
            "rules[0].severity",
            "rules[0].action",
            "rules[1].name",
            "rules[1].detector",
            "rules[1].for",
            "rules[1].receivers",
        ],
        "{problems:#?}"
    );
}

#[test]
fn loopback_hosts() {
    for h in ["localhost", "127.0.0.1", "127.3.4.5", "::1", "[::1]"] {
        assert!(is_loopback_host(h), "{h}");
    }
    for h in ["mail.example.com", "10.0.0.1", "localhost.example.com"] {
        assert!(!is_loopback_host(h), "{h}");
    }
}
