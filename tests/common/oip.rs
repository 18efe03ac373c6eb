//! Real Open Inference Protocol servers for the remote-teacher tests, serving ONNX models with
//! ONNX Runtime on loopback, stopped by their pid: KServe's Python model server
//! (`tests/servers/kserve_teacher.py`, in `.venv/oip-kserve`) and NVIDIA Triton Inference
//! Server with its Python backend (`tests/servers/triton_teacher.py`, the `tritonserver` of
//! PyPI's `nvidia-pytriton`, in `.venv/oip-triton`). `scripts/test.sh` installs both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http_get, repo, wait_until};

/// Which inference server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    KServe,
    Triton,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::KServe => "kserve",
            Kind::Triton => "triton",
        }
    }

    /// The Python of the server's virtual environment (`SENSEI_OIP_KSERVE_PYTHON`,
    /// `SENSEI_OIP_TRITON_PYTHON` override it).
    pub fn python(self) -> PathBuf {
        let name = self.name();
        if let Some(p) = std::env::var_os(format!("SENSEI_OIP_{}_PYTHON", name.to_uppercase())) {
            return PathBuf::from(p);
        }
        let p = repo().join(format!(".venv/oip-{name}/bin/python"));
        assert!(
            p.is_file(),
            "the {name} inference server is not installed: run scripts/test.sh (or python3 -m \
             venv .venv/oip-{name} && .venv/oip-{name}/bin/pip install -r \
             tests/servers/requirements-{name}.txt); {} missing",
            p.display()
        );
        p
    }
}

/// An inference server on a free loopback port.
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    child: Option<Child>,
    models: Vec<(String, PathBuf)>,
    flags: Vec<String>,
    /// Triton's model repository and backends.
    workdir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Serves each `(name, .onnx file)`, with extra flags of the script (`--delay`,
    /// `--fail-every`); its log and files in `dir`.
    pub fn start(kind: Kind, models: &[(&str, PathBuf)], flags: &[&str], dir: &Path) -> Server {
        let mut server = Server {
            kind,
            port: free_port(),
            child: None,
            models: models
                .iter()
                .map(|(n, p)| (n.to_string(), p.clone()))
                .collect(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            workdir: dir.join(format!("{}-server", kind.name())),
            log: dir.join(format!("{}.log", kind.name())),
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
        let name = self.kind.name();
        let mut command = Command::new(self.kind.python());
        command
            .arg(repo().join(format!("tests/servers/{name}_teacher.py")))
            .args(["--http_port", &self.port.to_string()]);
        if self.kind == Kind::Triton {
            std::fs::create_dir_all(&self.workdir).expect("server dir");
            command.arg("--workdir").arg(&self.workdir);
        }
        for (model, path) in &self.models {
            command
                .arg("--model")
                .arg(format!("{model}={}", path.display()));
        }
        let child = command
            .args(&self.flags)
            .env("ORT_DISABLE_TELEMETRY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start the {name} server: {e}"));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let log = self.log.clone();
        let child = self.child.as_mut().expect("started");
        wait_until(
            Duration::from_secs(90),
            &format!("the {name} server ready"),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the {name} server exited ({status}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::net::TcpStream::connect(&addr).is_ok()
                    && http_get(&addr, "/v2/health/ready", &[]).0 == 200
            },
        );
    }

    /// Stops the server's process where it is (SIGSTOP, by its pid): it keeps its port, the
    /// kernel still accepts connections for it, and nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT, by its pid).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .args([format!("-{name}"), child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {}", child.id());
    }

    /// Kills the server (SIGKILL, by its pid) and waits for it. Triton's backend stubs exit
    /// when their server is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test CA with a server certificate for 127.0.0.1 and a client certificate, made by
/// `openssl` in `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn make(dir: &std::path::Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sensei test CA",
        ]);
        openssl(dir, &ca);
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let (key, csr, pem, extfile, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
                format!("/CN=sensei test {name}"),
            );
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &req);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &extfile,
                ],
            );
        }
        Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// Debian's nginx in front of a server: TLS with the test CA's server certificate, a client
/// certificate required, and `Authorization: Bearer TOKEN` required (401 otherwise).
pub struct Nginx {
    pub port: u16,
    child: Child,
}

impl Nginx {
    pub fn start(dir: &std::path::Path, pki: &Pki, token: &str, upstream: u16) -> Nginx {
        let nginx = super::which("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
            .expect("nginx (Debian package nginx; scripts/test.sh installs it)");
        let port = free_port();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let conf = format!(
            r#"
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location / {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            proxy_pass http://127.0.0.1:{upstream};
        }}
    }}
}}
"#,
            dir = dir.display(),
            server_cert = pki.server_cert.display(),
            server_key = pki.server_key.display(),
            ca = pki.ca.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut n = Nginx { port, child };
        let error_log = dir.join("error.log");
        wait_until(Duration::from_secs(20), "nginx listening", || {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(&error_log).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        n
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master, by its pid: it stops its worker and exits (a SIGKILL would
        // leave the worker behind).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
