//! `[log]`, `[http]` and `[daemon]`: how sensei runs as a service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::raw;
use super::super::{DaemonConfig, HttpConfig, LogConfig, LogFormat, Secret};
use super::Check;
use super::values::SECOND;

const DEFAULT_LOG_FILTER: &str = "info,ort=warn";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9477";
/// `[http] header_timeout` when not set.
const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl Check<'_> {
    pub(super) fn log(&mut self, log: raw::RawLog) -> LogConfig {
        LogConfig {
            format: self.choice(
                "log.format",
                log.format,
                LogFormat::Auto,
                &[
                    ("auto", LogFormat::Auto),
                    ("text", LogFormat::Text),
                    ("json", LogFormat::Json),
                ],
            ),
            filter: self.name("log.filter", log.filter, DEFAULT_LOG_FILTER),
        }
    }

    pub(super) fn daemon(&mut self, daemon: raw::RawDaemon) -> DaemonConfig {
        DaemonConfig {
            drain_timeout: self.duration(
                "daemon.drain_timeout",
                daemon.drain_timeout,
                30 * SECOND,
                SECOND,
            ),
        }
    }

    /// `[http]`: the address, the optional bearer token (read now, so a missing file is a config
    /// problem like any other) and the rule that a non-loopback address needs a token.
    pub(super) fn http(&mut self, raw: raw::RawHttp) -> HttpConfig {
        let listen_text = raw.listen.unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_owned());
        let listen = if listen_text.is_empty() {
            None
        } else {
            match listen_text.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.problem(
                        "http.listen",
                        format!(
                            "cannot parse \"{listen_text}\": expected an IP address and port such as \"{DEFAULT_HTTP_LISTEN}\" or \"[::1]:9477\", or \"\" to turn HTTP off"
                        ),
                    );
                    None
                }
            }
        };
        let token = match (raw.token_file, raw.token_credential) {
            (Some(_), Some(_)) => {
                self.problem(
                    "http.token_credential",
                    "set either http.token_file or http.token_credential, not both",
                );
                None
            }
            (Some(file), None) => {
                let path = self.path("http.token_file", file);
                self.token("http.token_file", &path)
            }
            (None, Some(name)) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) if !name.is_empty() && !name.contains('/') => {
                    self.token("http.token_credential", &PathBuf::from(dir).join(name))
                }
                Some(_) => {
                    self.problem(
                        "http.token_credential",
                        format!("\"{name}\" is not a credential name (no slashes, not empty)"),
                    );
                    None
                }
                None => {
                    self.problem(
                        "http.token_credential",
                        format!(
                            "credential \"{name}\" is set but $CREDENTIALS_DIRECTORY is not (it is set by systemd's LoadCredential=)"
                        ),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        let allow_open = raw.allow_non_loopback_without_token.unwrap_or(false);
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && token.is_none()
            && !allow_open
        {
            self.problem(
                "http.listen",
                format!(
                    "{addr} is not a loopback address and no token is set: set http.token_file (or http.token_credential), or http.allow_non_loopback_without_token = true to serve the API to the network unauthenticated"
                ),
            );
        }
        let header_timeout = self.duration(
            "http.header_timeout",
            raw.header_timeout,
            DEFAULT_HTTP_HEADER_TIMEOUT,
            Duration::from_millis(100),
        );
        let max_connections =
            self.integer("http.max_connections", raw.max_connections, 64, 1, 65_536);
        HttpConfig {
            listen,
            token,
            allow_non_loopback_without_token: allow_open,
            header_timeout,
            max_connections,
        }
    }

    /// Reads a bearer token: the first line of the file, which must not be empty.
    fn token(&mut self, key: &str, path: &Path) -> Option<Secret> {
        super::super::read_secret(path)
            .map_err(|message| self.problem(key, message))
            .ok()
    }
}
