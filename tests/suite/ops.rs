//! Running sensei as a service: systemd notifications, signals (drain, reload), Prometheus
//! metrics scraped by a real Prometheus, the dashboard and the report in a real browser, and
//! the unit files checked by systemd's own tools.
//!
//! Tests that need an external program (promtool, prometheus, chromium, systemd-analyze) say so
//! and skip only that part when it is not installed (`scripts/test.sh` installs them).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Site, free_port, http_get, jsonl, repo, sensei_bin, wait_until, which};

const WAIT: Duration = Duration::from_secs(60);

/// HTTP on an ephemeral port, so tests run side by side.
const HTTP_ANY_PORT: &str = "[http]\nlisten = \"127.0.0.1:0\"\n";

/// Where screenshots go, to be looked at after a run.
fn screenshot_dir() -> PathBuf {
    let dir = repo().join("target/ops-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_daemon_tells_systemd_ready_watchdog_and_stopping() {
    let site = Site::new();
    site.write_config(HTTP_ANY_PORT);
    let socket_path = site.root().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut messages: Vec<String> = Vec::new();
    let read = |messages: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let daemon = site.start_with_env(&[
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        // 1 s: pings every 0.5 s.
        ("WATCHDOG_USEC", "1000000"),
    ]);
    let deadline = Instant::now() + WAIT;
    while !messages.iter().any(|m| m.lines().any(|l| l == "READY=1")) {
        assert!(Instant::now() < deadline, "no READY=1: {messages:?}");
        read(&mut messages);
    }
    // READY only once the pipeline runs: models loaded and the inbox watched.
    let log = daemon.log_text();
    assert!(log.contains("Models loaded") && log.contains("Watching the inbox"));
    // Work arrives; the heartbeat advances and the pings go on.
    site.deliver("a.jsonl", &jsonl("wd", 100));
    wait_until(WAIT, "records committed", || site.records() == 100);
    let before = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    let deadline = Instant::now() + WAIT;
    while messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() < before + 2 {
        assert!(Instant::now() < deadline, "no watchdog pings: {messages:?}");
        read(&mut messages);
    }
    daemon.signal("TERM");
    let mut daemon = daemon;
    let status = daemon.wait_exit(WAIT);
    read(&mut messages);
    assert!(status.success(), "exit {status:?}");
    let stopping = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1: {messages:?}"));
    let ready = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap();
    assert!(ready < stopping);
    std::mem::forget(daemon);
}

#[test]
fn sigterm_in_the_middle_of_a_backlog_loses_nothing() {
    let site = Site::new();
    site.write_config(&format!(
        "{HTTP_ANY_PORT}[inbox]\nquiet = \"300ms\"\nmax_file_size = \"16 MiB\"\n[daemon]\ndrain_timeout = \"20s\"\n"
    ));
    // A backlog waiting in the inbox before the daemon starts (the catch-up scan takes it).
    let files = 12;
    let per_file = 800;
    std::fs::create_dir_all(site.inbox()).unwrap();
    for f in 0..files {
        std::fs::write(
            site.inbox().join(format!("backlog-{f:02}.jsonl")),
            jsonl(&format!("b{f}"), per_file),
        )
        .unwrap();
    }
    let mut daemon = site.start();
    wait_until(WAIT, "a first file committed", || {
        site.ledger_count("done") >= 1
    });
    let stop_at = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(25));
    assert!(status.success(), "a drained stop exits 0: {status:?}");
    assert!(stop_at.elapsed() < Duration::from_secs(20));
    assert!(daemon.log_text().contains("Stopped."));
    let done_before = site.ledger_count("done");
    assert!(
        done_before < files,
        "the stop came too late to interrupt the backlog ({done_before} of {files} done)"
    );
    // What was committed is whole; what was not is still in the inbox.
    assert_eq!(site.records(), done_before * per_file as i64);
    let left = std::fs::read_dir(site.inbox()).unwrap().count() as i64;
    assert_eq!(left + done_before, files);
    std::mem::forget(daemon);

    let daemon = site.start();
    wait_until(Duration::from_secs(180), "every file done", || {
        site.ledger_count("done") == files
    });
    let total = files * per_file as i64;
    assert_eq!(site.records(), total);
    assert_eq!(
        site.query_i64("SELECT COUNT(DISTINCT record_id) FROM records"),
        total
    );
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = '*'"),
        total
    );
    assert!(daemon.stop().success());
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one_and_a_valid_one_is_applied() {
    let site = Site::new();
    site.write_config(HTTP_ANY_PORT);
    let daemon = site.start();
    site.deliver("one.jsonl", &jsonl("h1", 50));
    wait_until(WAIT, "first file done", || {
        site.done().join("one.jsonl").is_file()
    });

    // A broken config: rejected, logged, and the daemon goes on as before.
    let good = std::fs::read_to_string(site.config_path()).unwrap();
    std::fs::write(site.config_path(), "state_dir = \n[student\n").unwrap();
    daemon.signal("HUP");
    wait_until(WAIT, "the reload rejected", || {
        daemon
            .log_text()
            .contains("The new config is invalid; keeping the running one.")
    });
    site.deliver("two.jsonl", &jsonl("h2", 50));
    wait_until(WAIT, "second file done on the old config", || {
        site.done().join("two.jsonl").is_file()
    });
    assert_eq!(site.records(), 100);

    // A valid, changed config: processed files are now deleted instead of moved.
    std::fs::write(
        site.config_path(),
        good.replace("[inbox]\n", "[inbox]\non_done = \"delete\"\n"),
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(site.config_path())
            .unwrap()
            .contains("on_done")
    );
    daemon.signal("HUP");
    wait_until(WAIT, "the new config applied", || {
        daemon.log_text().contains("The new config is applied.")
    });
    site.deliver("three.jsonl", &jsonl("h3", 50));
    wait_until(WAIT, "third file counted", || site.records() == 150);
    wait_until(WAIT, "third file deleted, not moved", || {
        !site.inbox().join("three.jsonl").exists()
    });
    assert!(!site.done().join("three.jsonl").exists());
    let mut daemon = daemon;
    assert!(daemon.alive());
    assert!(daemon.stop().success());
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    let site = Site::new();
    // A challenger in shadow, so that its families are checked too.
    site.write_config(&format!(
        "{HTTP_ANY_PORT}[[challengers]]\nname = \"lite\"\npath = {:?}\n",
        crate::common::fixture_model("teacher_no_attention.onnx")
            .display()
            .to_string()
    ));
    let daemon = site.start();
    let addr = daemon.http_addr();
    site.deliver("m.jsonl", &jsonl("m", 200));
    wait_until(WAIT, "records committed", || site.records() == 200);

    assert_eq!(http_get(&addr, "/healthz", &[]).0, 200);
    assert_eq!(http_get(&addr, "/readyz", &[]).0, 200);
    let (code, text) = http_get(&addr, "/metrics", &[]);
    assert_eq!(code, 200);
    for needle in [
        "sensei_records_total{segment=\"all\"} 200",
        "sensei_records_total{segment=\"line=A\"} 100",
        "sensei_inference_batch_seconds_count{model=\"student\"}",
        "sensei_inference_batch_seconds_count{model=\"teacher\"}",
        "sensei_files_total{status=\"done\"} 1",
        "sensei_disagreement_rate{segment=\"all\"}",
        "sensei_attention_kl_mean{segment=\"all\"}",
        "sensei_ingest_lag_seconds_count 1",
        "sensei_ready 1",
        "sensei_alerts_firing 0",
        "sensei_alert_outbox_backlog 0",
        "sensei_shadow_samples_total{model=\"lite\"}",
        "sensei_shadow_agreement_rate{model=\"lite\"} 1",
        "sensei_shadow_model_failed{model=\"lite\",kind=\"challenger\"} 0",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    let (code, status) = http_get(&addr, "/api/status", &[]);
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["records"], 200);
    let (code, windows) = http_get(&addr, "/api/windows?segment=line=A&limit=1000", &[]);
    assert_eq!(code, 200);
    let windows: serde_json::Value = serde_json::from_str(&windows).unwrap();
    let sum: i64 = windows["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["records"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 100);
    assert_eq!(http_get(&addr, "/api/windows?since=yesterday", &[]).0, 400);
    let (code, events) = http_get(&addr, "/api/events", &[]);
    assert_eq!(code, 200);
    assert!(events.contains("\"events\""));

    match which("promtool") {
        None => {
            eprintln!("SKIPPED promtool check: promtool not installed (Debian package prometheus)")
        }
        Some(promtool) => {
            let mut child = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let Some(prometheus) = which("prometheus") else {
        eprintln!(
            "SKIPPED the Prometheus scrape: prometheus not installed (Debian package prometheus)"
        );
        assert!(daemon.stop().success());
        return;
    };
    let port = free_port();
    let dir = site.root().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sensei\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut server = ChildGuard(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom = format!("127.0.0.1:{port}");
    let query = |q: &str| -> Option<f64> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let std::io::Result::Ok(stream) = std::net::TcpStream::connect(&prom) else {
            return None;
        };
        drop(stream);
        let (code, body) = http_get(&prom, &path, &[]);
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    wait_until(
        Duration::from_secs(90),
        "Prometheus has the target up",
        || query("up{job=\"sensei\"}") == Some(1.0),
    );
    wait_until(
        Duration::from_secs(60),
        "Prometheus has sensei's records",
        || query("sensei_records_total{segment=\"all\"}") == Some(200.0),
    );
    assert!(query("sensei_ready").is_some_and(|v| v == 1.0));
    let _ = server.0.kill();
    assert!(daemon.stop().success());
}

#[test]
fn the_token_guards_the_api_and_a_non_loopback_address_needs_one() {
    let site = Site::new();
    let token = site.root().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    site.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
        token.display().to_string()
    ));
    let daemon = site.start();
    let addr = daemon.http_addr();
    assert_eq!(http_get(&addr, "/metrics", &[]).0, 401);
    assert_eq!(
        http_get(&addr, "/api/status", &[("Authorization", "Bearer wrong")]).0,
        401
    );
    assert_eq!(
        http_get(
            &addr,
            "/metrics",
            &[("Authorization", "Bearer s3cret-token")]
        )
        .0,
        200
    );
    assert_eq!(http_get(&addr, "/healthz", &[]).0, 200);
    // The page itself holds no data when a token is set.
    let (code, page) = http_get(&addr, "/", &[]);
    assert_eq!(code, 200);
    assert!(page.contains("const INLINE = null"));
    assert!(
        !daemon.log_text().contains("s3cret"),
        "the token was logged"
    );
    assert!(daemon.stop().success());

    site.write_config("[http]\nlisten = \"0.0.0.0:9477\"\n");
    let out = site.sensei(&["check"]);
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("http.listen") && text.contains("not a loopback address"),
        "{text}"
    );
}

/// Headless Chromium: dumps the DOM after the page's scripts ran, and takes a screenshot.
fn chromium(url: &str, screenshot: &Path, profile: &Path) -> Option<(String, String)> {
    let Some(chromium) = which("chromium").or_else(|| which("chromium-browser")) else {
        eprintln!("SKIPPED the browser check: chromium not installed (Debian package chromium)");
        return None;
    };
    let base = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--window-size=1400,1700",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null());
    };
    let mut dump = Command::new(&chromium);
    base(&mut dump);
    let out = dump
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium --dump-dom failed");
    let mut shot = Command::new(&chromium);
    base(&mut shot);
    let status = shot
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run chromium");
    assert!(status.success());
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The page rendered its data: no script errors, charts with points.
fn assert_rendered(dom: &str, console: &str) {
    assert!(!console.contains("Uncaught"), "console errors:\n{console}");
    assert!(
        dom.contains("<pre id=\"errors\"></pre>"),
        "page errors:\n{dom}"
    );
    assert!(
        dom.contains("data-state=\"rendered\""),
        "not rendered:\n{dom}"
    );
    let charted: usize = dom
        .split("data-charted=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(charted > 10, "charts are empty ({charted} marks)");
    assert!(dom.contains("data-role=\"point\""));
    assert!(dom.contains("data-role=\"cell\""), "no heat map cells");
}

#[test]
fn the_dashboard_and_the_report_render_in_a_browser() {
    let site = Site::new();
    site.write_config(&format!(
        "{HTTP_ANY_PORT}[store]\nwindow = \"20s\"\n[[challengers]]\nname = \"lite\"\npath = {:?}\n",
        crate::common::fixture_model("teacher_no_attention.onnx")
            .display()
            .to_string()
    ));
    let daemon = site.start();
    let addr = daemon.http_addr();
    for (i, prefix) in ["d1", "d2", "d3"].iter().enumerate() {
        site.deliver(&format!("d{i}.jsonl"), &jsonl(prefix, 300));
    }
    wait_until(WAIT, "records committed", || site.records() == 900);
    let (code, api) = http_get(&addr, "/api/dashboard", &[]);
    assert_eq!(code, 200);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert!(api["overall"].as_array().unwrap().len() > 5);
    assert_eq!(api["health"]["level"], "watch", "no baseline yet: {api}");

    let shots = screenshot_dir();
    let profile = tempfile::tempdir().unwrap();
    if let Some((dom, console)) = chromium(
        &format!("http://{addr}/"),
        &shots.join("dashboard.png"),
        profile.path(),
    ) {
        assert_rendered(&dom, &console);
        assert!(dom.contains("Teacher–student disagreement over time"));
        assert!(dom.contains("none yet"), "empty sections should say so");
        assert!(
            std::fs::metadata(shots.join("dashboard.png"))
                .unwrap()
                .len()
                > 20_000
        );
    }
    assert!(daemon.stop().success());

    let report = site.root().join("report.html");
    let out = site.sensei(&["report", "--out", report.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        !html.contains("const INLINE = null"),
        "the report inlines its data"
    );
    assert!(
        !html.contains("http://") || !html.contains("src=\"http"),
        "nothing fetched"
    );
    if let Some((dom, console)) = chromium(
        &format!("file://{}", report.display()),
        &shots.join("report.html.png"),
        profile.path(),
    ) {
        assert_rendered(&dom, &console);
        assert!(dom.contains("Lab vs field"));
        assert!(dom.contains("Return on investment"));
        assert!(
            !dom.contains("id=\"report-roi\" hidden"),
            "ROI section hidden"
        );
        assert!(dom.contains("latency per record"));
        assert!(
            !dom.contains("id=\"report-challengers\" hidden"),
            "challengers section hidden"
        );
        assert!(dom.contains("Challengers in shadow"));
        assert!(
            dom.contains("challenger 'lite' is the smallest model"),
            "no verdict in the page"
        );
    }
}

#[test]
fn the_unit_files_verify_and_the_exposure_is_low() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze not installed (Debian package systemd)");
        return;
    };
    let unit = std::fs::read_to_string(repo().join("systemd/sensei.service")).unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/sensei --config /etc/sensei/sensei.toml check",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=sensei",
        "LoadCredential=",
        "MemoryDenyWriteExecute=yes",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(key), "{key} missing from the unit");
    }
    // `verify` requires the ExecStart binaries to exist: point them at the built one.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sensei.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/sensei", sensei_bin().to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .split("Overall exposure level for sensei.service:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure in: {text}"));
    assert!(exposure <= 2.0, "exposure {exposure}");
    for (file, line) in [
        ("systemd/sensei.sysusers", "u sensei"),
        ("systemd/sensei.tmpfiles", "d /var/lib/sensei/inbox"),
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(text.contains(line), "{file}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Kills the child process when dropped (a failed assertion must not leave a server behind).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `scripts/install.sh` puts in place what the example config it installs names: the
/// re-distillation job's script is there and runs, and `sensei check` on a config whose job
/// script is missing says so (the interpreter alone would start and fail a moment later).
#[test]
fn the_install_holds_the_redistill_script_the_example_config_names() {
    let dest = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .arg(dest.path())
        .env("SENSEI_BIN", sensei_bin())
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The runbook Alertmanager alerts link to by default is installed, with its section.
    let default = sensei::config::alerts::DEFAULT_RUNBOOK_URL;
    let (file, anchor) = default
        .strip_prefix("file:///")
        .and_then(|p| p.split_once('#'))
        .expect("a file URL with an anchor");
    let runbook = std::fs::read_to_string(dest.path().join(file))
        .unwrap_or_else(|e| panic!("{default}: {e}"));
    assert!(
        runbook
            .lines()
            .any(|l| l.starts_with("## ") && l[3..].to_lowercase().replace(' ', "-") == anchor),
        "no section #{anchor} in {file}"
    );
    for f in [
        "usr/share/sensei/contrib/grafana/sensei.json",
        "usr/share/sensei/contrib/prometheus/sensei-rules.yml",
    ] {
        assert!(dest.path().join(f).is_file(), "{f} is not installed");
    }
    let config: toml::Table = std::fs::read_to_string(dest.path().join("etc/sensei/sensei.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let command: Vec<String> = config["redistill"]["command"]
        .as_array()
        .expect("the example config has a [redistill] command")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let installed: Vec<&String> = command
        .iter()
        .filter(|a| a.starts_with("/usr/share/sensei/"))
        .collect();
    assert!(!installed.is_empty(), "{command:?}");
    for path in installed {
        let file = dest.path().join(path.trim_start_matches('/'));
        assert!(file.is_file(), "{path} is not installed ({command:?})");
    }
    if which("python3").is_some() {
        let script = dest
            .path()
            .join("usr/share/sensei/tools/distill/redistill.py");
        let help = Command::new("python3")
            .arg(&script)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&help.stdout).into_owned()
            + &String::from_utf8_lossy(&help.stderr);
        // It starts and finds its own package (torch may be missing on this machine).
        assert!(!text.contains("No module named 'sensei_distill'"), "{text}");
    }

    let site = Site::new();
    site.write_config(
        "[redistill]\ncommand = [\"python3\", \"/nonexistent/redistill.py\", \"--dataset\", \"{dataset}\", \"--out\", \"{output}\"]\n",
    );
    let out = site.sensei(&["check"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "redistill.command: the script /nonexistent/redistill.py that python3 is to run cannot be read"
        ),
        "{text}"
    );
}

/// The text of the element with `id` in a dumped DOM, up to the end of its section.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let from = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in:\n{dom}"));
    let rest = &dom[from..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// The table rows of the open drift incidents in a dumped DOM, in page order.
fn incident_rows(dom: &str) -> Vec<&str> {
    section(dom, "incidents")
        .split("<tr data-role=\"incident\">")
        .skip(1)
        .map(|r| &r[..r.find("</tr>").unwrap_or(r.len())])
        .collect()
}

/// A site whose field data drifted (the demo's offset drift, whose records carry their own
/// times, months before today), as an operator opens its dashboard in a browser: each open
/// drift episode is one incident line with its segments, signals, data-time start and change
/// point, the newest first; the drift events are red lines on the charts at their data time;
/// the event list starts with the newest; the alerts and the re-distillation requests read as
/// words, not as stored columns and JSON.
#[test]
fn a_drifted_site_s_dashboard_shows_its_incidents_and_marks_them_on_the_charts() {
    use super::drift::demo;
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config(&format!(
        "{HTTP_ANY_PORT}[store]\nwindow = \"20s\"\n\
         [sampling]\nrate = 0.5\nseed = 7\nmax_per_minute = 1000000\nqueue = 100000\n\
         [alerts]\nevaluation_interval = \"200ms\"\n\
         [receivers.log]\ntype = \"command\"\ncommand = [\"true\"]\n\
         [[rules]]\nname = \"any-drift\"\nreceivers = [\"log\"]\naction = \"redistill\"\n"
    ));
    let out = site.sensei(&["baseline", demo("lab.jsonl").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = site.start();
    let addr = daemon.http_addr();
    site.deliver(
        "offset_drift.jsonl",
        &std::fs::read(demo("streams/offset_drift.jsonl")).unwrap(),
    );
    wait_until(WAIT, "records committed", || site.records() == 450);
    // The rule fired and its re-distillation request was settled (skipped: no [redistill]).
    wait_until(WAIT, "the rule's request settled", || {
        site.query_i64("SELECT COUNT(*) FROM alert_actions WHERE status != 'requested'") > 0
    });

    let (code, api) = http_get(&addr, "/api/dashboard", &[]);
    assert_eq!(code, 200);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    // The newest events first.
    let ids: Vec<i64> = api["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(ids.len() > 1, "{api}");
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ids:?}"
    );
    let newest = site.query_i64("SELECT MAX(id) FROM drift_events");
    assert_eq!(ids[0], newest);
    // Every open event is in one incident, which names its signal and segment.
    let open: Vec<(i64, String, String)> = {
        let db = site.db();
        let mut stmt = db
            .prepare("SELECT id, signal, segment FROM drift_events WHERE resolved_at IS NULL")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!open.is_empty(), "the offset drift left no open event");
    let incidents = api["incidents"].as_array().unwrap();
    for (id, signal, segment) in &open {
        let holding: Vec<&serde_json::Value> = incidents
            .iter()
            .filter(|i| i["event_ids"].as_array().unwrap().contains(&(*id).into()))
            .collect();
        assert_eq!(holding.len(), 1, "event {id} in {holding:?}");
        let i = holding[0];
        assert!(
            i["signals"]
                .as_array()
                .unwrap()
                .contains(&signal.as_str().into())
        );
        assert!(
            i["segments"]
                .as_array()
                .unwrap()
                .contains(&segment.as_str().into())
        );
    }
    // The newest first: by estimated change point (or first alarm).
    let starts: Vec<i64> = incidents
        .iter()
        .map(|i| {
            i["change_record"]
                .as_i64()
                .or(i["start_record"].as_i64())
                .unwrap()
        })
        .collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]), "{starts:?}");
    // Data time is the records' own: the stream's day, not today.
    let first = &incidents[0];
    let day = |ms: i64| sensei::time::rfc3339(ms)[..10].to_owned();
    assert_eq!(day(first["start_data_at"].as_i64().unwrap()), "2026-03-04");
    assert_ne!(day(first["seen_at"].as_i64().unwrap()), "2026-03-04");

    let shots = screenshot_dir();
    let profile = tempfile::tempdir().unwrap();
    let Some((dom, console)) = chromium(
        &format!("http://{addr}/"),
        &shots.join("dashboard-drift.png"),
        profile.path(),
    ) else {
        assert!(daemon.stop().success());
        return;
    };
    assert_rendered(&dom, &console);
    // One incident line per open episode, in the API's order (the newest first), each with
    // its segments, signals, data-time start and change point.
    let rows = incident_rows(&dom);
    assert_eq!(
        rows.len(),
        incidents.len(),
        "{}",
        section(&dom, "incidents")
    );
    for (row, incident) in rows.iter().zip(incidents) {
        let since = incident["start_data_at"].as_i64().unwrap();
        let when = sensei::time::rfc3339(since).replace('T', " ")[..16].to_owned() + "Z";
        assert!(row.contains(&when), "{when} not in {row}");
        for s in incident["signals"].as_array().unwrap() {
            assert!(row.contains(s.as_str().unwrap()), "{s} not in {row}");
        }
        for s in incident["segments"].as_array().unwrap() {
            let s = s.as_str().unwrap();
            let shown = if s == "*" { "all segments" } else { s };
            assert!(row.contains(shown), "{shown} not in {row}");
        }
        if let Some(change) = incident["change_record"].as_i64() {
            assert!(row.contains(&format!("(record {change})")), "{row}");
        }
    }
    let with_line = rows.iter().filter(|r| r.contains("line=")).count();
    assert!(with_line > 0, "no incident names a line: {rows:?}");
    // Drift events are marked on the charts, at their data time.
    let marks: usize = dom
        .split("data-marks=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next()?.parse::<usize>().ok())
        .sum();
    assert!(marks > 0, "no drift marker drawn");
    assert!(dom.contains("data-role=\"event\""));
    // The event list starts with the newest event, both times shown.
    let events = section(&dom, "events");
    assert!(
        events.contains("data time") && events.contains("seen"),
        "{events}"
    );
    let newest_row = events.split("<tr>").nth(2).unwrap_or("");
    let newest_at = api["events"][0]["data_at"].as_i64().unwrap();
    let newest_when = sensei::time::rfc3339(newest_at).replace('T', " ")[..16].to_owned() + "Z";
    assert!(newest_row.contains(&newest_when), "{newest_row}");
    // Alerts and re-distillation in words: no stored JSON, no column names.
    let alerts = section(&dom, "alerts");
    let jobs = section(&dom, "jobs");
    for (name, panel) in [("alerts", alerts), ("jobs", jobs)] {
        for raw in ["{\"", "[{", "_at<", "alert_id<"] {
            assert!(!panel.contains(raw), "{name} shows raw {raw}: {panel}");
        }
    }
    assert!(
        alerts.contains("any-drift") && alerts.contains("firing"),
        "{alerts}"
    );
    assert!(
        jobs.contains("request")
            && jobs.contains("skipped")
            && jobs.contains("[redistill] command is not set"),
        "{jobs}"
    );
    assert!(daemon.stop().success());
}
