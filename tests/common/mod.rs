//! Helpers for the integration tests: a temporary sensei installation (config, inbox, state),
//! the real `sensei` binary as a child process, and records written in the field formats.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ONNX Runtime library installed by `scripts/setup-onnxruntime.sh`.
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let p = repo().join(".ort/libonnxruntime.so.1.32.0");
    assert!(
        p.is_file(),
        "ONNX Runtime is not installed: run scripts/setup-onnxruntime.sh first ({} missing)",
        p.display()
    );
    p
}

pub fn fixture_model(name: &str) -> PathBuf {
    repo().join("tests/fixtures/models").join(name)
}

pub fn sensei_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sensei"))
}

/// Polls `cond` until it holds or `timeout` passes. Waiting on an observable condition (a row
/// in the database, a file in done/) rather than sleeping a fixed time.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary sensei installation.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub extra: String,
    pub student: PathBuf,
    pub teacher: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        Site::with_models(fixture_model("student.onnx"), fixture_model("teacher.onnx"))
    }

    pub fn with_models(student: PathBuf, teacher: PathBuf) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        Site {
            dir,
            extra: String::new(),
            student,
            teacher,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn inbox(&self) -> PathBuf {
        self.root().join("state/inbox")
    }
    pub fn done(&self) -> PathBuf {
        self.root().join("state/done")
    }
    pub fn quarantine(&self) -> PathBuf {
        self.root().join("state/quarantine")
    }
    pub fn db_path(&self) -> PathBuf {
        self.root().join("state/sensei.db")
    }
    pub fn config_path(&self) -> PathBuf {
        self.root().join("sensei.toml")
    }

    /// Writes the config: the base settings, then `sections` (whole TOML tables that replace
    /// the defaults below when they name the same table).
    pub fn write_config(&self, sections: &str) -> PathBuf {
        let has = |t: &str| sections.contains(&format!("[{t}]"));
        let mut s = format!(
            "state_dir = \"state\"\n[onnxruntime]\nlibrary = {:?}\n",
            ort_library().display().to_string()
        );
        if !has("inbox") {
            s.push_str("[inbox]\nquiet = \"300ms\"\nmax_file_size = \"1 MiB\"\n");
        }
        if !has("student") {
            s.push_str(&format!(
                "[student]\npath = {:?}\nattention = \"attention\"\nmax_batch = 16\n",
                self.student.display().to_string()
            ));
        }
        if !has("teacher") {
            s.push_str(&format!(
                "[teacher]\npath = {:?}\nattention = \"attention\"\n",
                self.teacher.display().to_string()
            ));
        }
        if !has("sampling") {
            s.push_str(
                "[sampling]\nrate = 0.5\nseed = 3\nmax_per_minute = 1000000\nqueue = 100000\n",
            );
        }
        if !has("segments") {
            s.push_str("[segments]\nkeys = [\"line\"]\n");
        }
        s.push_str(sections);
        let path = self.config_path();
        std::fs::write(&path, s).expect("write config");
        path
    }

    /// Writes `content` to `<root>/staging/<name>` and renames it into the inbox (the
    /// documented way to deliver a file).
    pub fn deliver(&self, name: &str, content: &[u8]) -> PathBuf {
        let staging = self.root().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(self.inbox()).unwrap();
        let tmp = staging.join(name);
        std::fs::write(&tmp, content).unwrap();
        let target = self.inbox().join(name);
        std::fs::rename(&tmp, &target).unwrap();
        target
    }

    pub fn db(&self) -> Connection {
        let c = Connection::open(self.db_path()).expect("open db");
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }

    /// `PRAGMA integrity_check` of the database: "ok" when SQLite finds nothing wrong.
    pub fn integrity_check(&self) -> String {
        self.db()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check")
    }

    /// `SELECT <expr>` as an i64, 0 when the database does not exist yet.
    pub fn query_i64(&self, sql: &str) -> i64 {
        if !self.db_path().exists() {
            return 0;
        }
        let c = self.db();
        c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    pub fn records(&self) -> i64 {
        self.query_i64("SELECT COUNT(*) FROM records")
    }

    pub fn ledger_count(&self, status: &str) -> i64 {
        self.query_i64(&format!(
            "SELECT COUNT(*) FROM files WHERE status = '{status}'"
        ))
    }

    pub fn sensei(&self, args: &[&str]) -> Output {
        Command::new(sensei_bin())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env_remove("ORT_DYLIB_PATH")
            .output()
            .expect("run sensei")
    }

    /// Starts `sensei run` and waits until it watches the inbox.
    pub fn start(&self) -> Daemon {
        let log = self.root().join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(sensei_bin())
            .arg("--config")
            .arg(self.config_path())
            .arg("run")
            .env("SENSEI_LOG", "info,ort=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn sensei run");
        let d = Daemon { child, log };
        wait_until(Duration::from_secs(30), "daemon watching the inbox", || {
            d.log_text().contains("Watching the inbox")
        });
        d
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One series of the daemon's `/metrics`, e.g.
    /// `sensei_files_finished_total{outcome="failed"}`; `None` when it is not exposed.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, text) = http_get(&self.http_addr(), "/metrics", &[]);
        assert_eq!(status, 200, "{text}");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .and_then(|(_, v)| v.parse().ok())
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        signal(self.child.id(), "KILL");
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// A deterministic input for the fixture models: x = [8, 8] floats from a seed.
pub fn input(seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..8)
        .map(|_| {
            (0..8)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) % 1000) as f32 / 1000.0
                })
                .collect()
        })
        .collect()
}

/// A JSON Lines file of `n` records with ids `<prefix>-<i>`, alternating line A/B.
pub fn jsonl(prefix: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let rec = serde_json::json!({
            "id": format!("{prefix}-{i}"),
            "ts": format!("2026-03-02T06:{:02}:{:02}Z", (i / 60) % 60, i % 60),
            "segment": {"line": if i % 2 == 0 { "A" } else { "B" }},
            "inputs": {"x": input(i as u64 + prefix.len() as u64 * 1000)},
        });
        writeln!(out, "{rec}").unwrap();
    }
    out
}

// --- Operations: the daemon with a custom environment, signals, HTTP, external tools. ---

impl Site {
    /// Starts `sensei run` with extra environment variables and waits until it watches the inbox.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        let log = self.root().join(format!(
            "daemon-env-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(sensei_bin());
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("run")
            .env("SENSEI_LOG", "info,ort=warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sensei run");
        let d = Daemon { child, log };
        wait_until(Duration::from_secs(30), "daemon watching the inbox", || {
            d.log_text().contains("Watching the inbox")
        });
        d
    }
}

impl Daemon {
    /// Sends a signal (`"TERM"`, `"HUP"`, …) without waiting.
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the HTTP server listens on, from its log line (waits for it).
    pub fn http_addr(&self) -> String {
        let mut addr = String::new();
        wait_until(Duration::from_secs(30), "HTTP listening", || {
            let text = self.log_text();
            let Some(line) = text.lines().find(|l| l.contains("HTTP listening")) else {
                return false;
            };
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            addr = v["fields"]["listen"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            !addr.is_empty()
        });
        addr
    }
}

/// A plain HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A TCP port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of an external program, if installed.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

// --- Alerts: real SMTP, Alertmanager and webhook receivers, drift events in the database. ---

pub mod alerting;

// --- A teacher on an inference server: KServe and Triton over the Open Inference Protocol. ---

pub mod oip;
