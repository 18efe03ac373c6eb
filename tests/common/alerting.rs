//! Real receivers for the alert tests: an SMTP server (aiosmtpd, writing a maildir), Debian's
//! Alertmanager, a webhook endpoint in a thread, and drift events written into the database
//! the way the drift detectors write them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::wait_until;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `python3 -m aiosmtpd` on a port, delivering every message into a maildir.
pub struct SmtpServer {
    pub port: u16,
    pub maildir: PathBuf,
    child: Option<Child>,
}

/// One received mail, parsed by Python's `email` package.
#[derive(Debug, serde::Deserialize)]
pub struct Mail {
    pub subject: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub plain: String,
    pub html: String,
    pub content_type: String,
}

impl SmtpServer {
    pub fn start(port: u16, maildir: &Path) -> SmtpServer {
        let mut s = SmtpServer {
            port,
            maildir: maildir.to_path_buf(),
            child: None,
        };
        s.restart();
        s
    }

    /// Starts the server (again) on the same port and maildir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (pip install aiosmtpd)");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(20), "SMTP server listening", || {
            accepts(port)
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
        let port = self.port;
        wait_until(Duration::from_secs(10), "SMTP server gone", || {
            !accepts(port)
        });
    }

    /// Every message delivered so far, in the order the server received them.
    pub fn mails(&self) -> Vec<Mail> {
        const PARSE: &str = r#"
import email, email.policy, json, os, re, sys
def arrival(path):
    # Maildir names are "<seconds>.M<microseconds>P<pid>Q<counter>.<host>", the microseconds
    # not zero-padded: sorted as text, 123456 comes before 99999 of the same second.
    m = re.match(r"(\d+)\.M(\d+)P\d+Q(\d+)", os.path.basename(path))
    return (int(m[1]), int(m[2]), int(m[3])) if m else (os.stat(path).st_mtime_ns, 0, 0)
paths = []
for sub in ("new", "cur"):
    d = os.path.join(sys.argv[1], sub)
    if os.path.isdir(d):
        paths += [os.path.join(d, name) for name in os.listdir(d)]
out = []
for path in sorted(paths, key=arrival):
    with open(path, "rb") as f:
        m = email.message_from_binary_file(f, policy=email.policy.default)
    plain = m.get_body(preferencelist=("plain",))
    html = m.get_body(preferencelist=("html",))
    out.append({
        "subject": str(m["subject"]),
        "headers": {k: str(v) for k, v in m.items()},
        "plain": plain.get_content() if plain else "",
        "html": html.get_content() if html else "",
        "content_type": m.get_content_type(),
    })
print(json.dumps(out))
"#;
        let out = Command::new("python3")
            .args(["-c", PARSE])
            .arg(&self.maildir)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("mail JSON")
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }
}

/// The Alertmanager binary of Debian's `prometheus-alertmanager`.
pub fn alertmanager_binary() -> PathBuf {
    for name in ["prometheus-alertmanager", "alertmanager"] {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("Alertmanager is not installed (apt-get install prometheus-alertmanager)");
}

/// A real Alertmanager on a free port, with clustering off and a route to nowhere.
pub struct Alertmanager {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        Alertmanager::start_on(free_port())
    }

    /// Starts on a given port (one a receiver was already configured with).
    pub fn start_on(port: u16) -> Alertmanager {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n",
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log");
        let child = Command::new(alertmanager_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start alertmanager");
        let am = Alertmanager {
            port,
            child,
            _dir: dir,
        };
        wait_until(Duration::from_secs(30), "Alertmanager ready", || {
            http_get(port, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        am
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET /api/v2/alerts` (active, silenced, inhibited and unprocessed alerts).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.port, "/api/v2/alerts").expect("GET /api/v2/alerts");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("alerts JSON")
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A plain HTTP/1.0 GET; `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

/// One request a [`Webhook`] received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: String,
}

/// An HTTP endpoint in a thread that records every request and answers 200, or, while
/// hanging, reads nothing and never answers.
pub struct Webhook {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl Webhook {
    pub fn start() -> Webhook {
        Webhook::start_answering_after(Duration::ZERO)
    }

    /// A slow receiver: it records each request at once and answers it `delay` later.
    pub fn start_answering_after(delay: Duration) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hanging = hang.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if hanging.load(std::sync::atomic::Ordering::SeqCst) {
                    held.push(stream);
                    continue;
                }
                if let Some(r) = read_request(&stream) {
                    seen.lock().unwrap().push(r);
                }
                std::thread::sleep(delay);
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Webhook {
            port,
            requests,
            hang,
        }
    }

    /// While `true`, connections are accepted and left without an answer.
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn received(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = std::collections::BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Creates (and migrates) the database as the daemon does.
pub fn create_db(path: &Path) {
    sensei::store::Store::open(path).expect("Store::open");
}

/// Writes a drift event as the detectors do; returns its id.
pub fn insert_drift(db: &Connection, signal: &str, segment: &str, detected_at: i64) -> i64 {
    db.execute(
        "INSERT INTO drift_events (signal, segment, detector, detected_at, detected_at_record,
             estimated_change_record, statistic, threshold, baseline_value, current_value,
             current_low, current_high, baseline_version)
         VALUES (?1, ?2, 'bernoulli_cusum', ?3, 4600, 4513, 9.31, 8.02, 0.034, 0.224, 0.149, 0.315, 1)",
        rusqlite::params![signal, segment, detected_at],
    )
    .expect("insert drift event");
    db.last_insert_rowid()
}

/// Resolves every open drift event.
pub fn resolve_all(db: &Connection, at: i64) {
    db.execute(
        "UPDATE drift_events SET resolved_at = ?1 WHERE resolved_at IS NULL",
        [at],
    )
    .expect("resolve");
}

/// The alert evaluator's last evaluation time (0 before the first).
pub fn evaluated_at(db: &Connection) -> i64 {
    db.query_row(
        "SELECT evaluated_at FROM alert_cursor WHERE id = 1",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

/// Waits until the evaluator has run `n` more times: a bounded, observable "a while later".
pub fn wait_evaluations(db: &Connection, n: usize) {
    for _ in 0..n {
        let before = evaluated_at(db);
        wait_until(Duration::from_secs(20), "another alert evaluation", || {
            evaluated_at(db) > before
        });
    }
}

/// The `[alerts]` section for tests: fast evaluation and retries.
pub fn alerts_section(extra: &str) -> String {
    format!(
        "[alerts]\nevaluation_interval = \"200ms\"\ngroup_interval = \"0s\"\nretry_initial = \"200ms\"\nretry_max = \"1s\"\ndashboard_url = \"http://127.0.0.1:9477/\"\ninstance = \"test-site\"\n{extra}"
    )
}
