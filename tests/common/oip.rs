//! Real Open Inference Protocol servers for the remote-teacher tests: KServe's Python model
//! server (`tests/servers/kserve_teacher.py`, installed by `scripts/test.sh` into
//! `.venv/oip-kserve`) serving ONNX models with ONNX Runtime, on loopback, stopped by its pid.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http_get, repo, wait_until};

/// The Python of the servers' virtual environment (`SENSEI_OIP_PYTHON` overrides it).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SENSEI_OIP_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo().join(".venv/oip-kserve/bin/python");
    assert!(
        p.is_file(),
        "KServe's model server is not installed: run scripts/test.sh (or python3 -m venv \
         .venv/oip-kserve && .venv/oip-kserve/bin/pip install -r tests/servers/requirements-kserve.txt); \
         {} missing",
        p.display()
    );
    p
}

/// A KServe model server on a free loopback port.
pub struct KServe {
    pub port: u16,
    child: Option<Child>,
    models: Vec<(String, PathBuf)>,
    flags: Vec<String>,
    pub log: PathBuf,
}

impl KServe {
    /// Serves each `(name, .onnx file)`, with extra flags of the script (`--delay`, `--fail-every`).
    pub fn start(models: &[(&str, PathBuf)], flags: &[&str], log_dir: &std::path::Path) -> KServe {
        let mut server = KServe {
            port: free_port(),
            child: None,
            models: models
                .iter()
                .map(|(n, p)| (n.to_string(), p.clone()))
                .collect(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            log: log_dir.join("kserve.log"),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port, and waits until it says it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let mut command = Command::new(python());
        command
            .arg(repo().join("tests/servers/kserve_teacher.py"))
            .args(["--http_port", &self.port.to_string()]);
        for (name, path) in &self.models {
            command
                .arg("--model")
                .arg(format!("{name}={}", path.display()));
        }
        let child = command
            .args(&self.flags)
            .env("ORT_DISABLE_TELEMETRY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the KServe model server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let log = self.log.clone();
        let child = self.child.as_mut().expect("started");
        wait_until(Duration::from_secs(60), "the KServe server ready", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the KServe server exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(&addr).is_ok()
                && http_get(&addr, "/v2/health/ready", &[]).0 == 200
        });
    }

    /// Kills the server (SIGKILL, by its pid) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KServe {
    fn drop(&mut self) {
        self.kill();
    }
}
