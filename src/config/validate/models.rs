//! `[onnxruntime]`, `[student]`, `[teacher]` and `[compare]`: the library, each model and how to
//! run it, and how teacher and student outputs are compared.

use std::path::PathBuf;
use std::time::Duration;

use super::super::raw::{self, RawModel, RawRemote};
use super::super::{
    CompareConfig, ModelConfig, NonFinitePolicy, OnnxRuntimeConfig, OutputKind, Pooling,
    RemoteConfig, Secret, Task, TensorEncoding, read_secret,
};
use super::Check;

const DEFAULT_THREADS: i64 = 1;
const DEFAULT_MAX_BATCH: i64 = 32;
const MAX_BATCH_LIMIT: i64 = 4096;
const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(20);
const DEFAULT_OUTPUT: &str = "logits";
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of a model on an inference server, `url` first, and whether each is set.
pub(super) fn remote_keys(raw: &RawRemote) -> [(&'static str, bool); 15] {
    [
        ("url", raw.url.is_some()),
        ("model", raw.model.is_some()),
        ("version", raw.version.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("retries", raw.retries.is_some()),
        ("backoff", raw.backoff.is_some()),
        ("in_flight", raw.in_flight.is_some()),
        ("breaker_after", raw.breaker_after.is_some()),
        ("breaker_open", raw.breaker_open.is_some()),
        ("tensors", raw.tensors.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("client_cert_file", raw.client_cert_file.is_some()),
        ("client_key_file", raw.client_key_file.is_some()),
        ("token_file", raw.token_file.is_some()),
        ("token_credential", raw.token_credential.is_some()),
    ]
}

/// An inference server's base URL: `http://` or `https://`, a host, no query or fragment; the
/// trailing slash removed.
fn server_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "\"{text}\": the scheme must be http or https, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("\"{text}\" has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "\"{text}\": a query or fragment has no place in the server's address"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the server's address must not carry a user name or password (the URL is logged)"
                .into(),
        );
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

impl Check<'_> {
    pub(super) fn onnxruntime(&mut self, raw: raw::RawOnnxRuntime) -> OnnxRuntimeConfig {
        OnnxRuntimeConfig {
            library: raw
                .library
                .map(|library| self.path("onnxruntime.library", library)),
        }
    }

    pub(super) fn model(&mut self, section: &str, mut raw: RawModel) -> ModelConfig {
        let key = |name: &str| format!("{section}.{name}");
        let raw_remote = raw.take_remote();
        let remote_keys = remote_keys(&raw_remote);
        let remote = if section == "teacher" {
            self.remote(section, &raw_remote)
        } else {
            for (name, _) in remote_keys.iter().filter(|(_, set)| *set) {
                self.problem(
                    &key(name),
                    format!(
                        "the {section} runs on this machine: only [teacher] may be served by an inference server"
                    ),
                );
            }
            None
        };
        let path = match (raw.path, &remote) {
            (Some(_), Some(_)) => {
                self.problem(
                    &key("url"),
                    format!(
                        "{section}.path and {section}.url exclude each other: give the local .onnx file or the inference server, not both"
                    ),
                );
                PathBuf::new()
            }
            (Some(path), None) => self.path(&key("path"), path),
            (None, Some(_)) => PathBuf::new(),
            // The server's address is wrong: that is the problem to fix, not a missing file.
            (None, None) if raw_remote.url.is_some() && section == "teacher" => PathBuf::new(),
            (None, None) => {
                let alternative = if section == "teacher" {
                    ", or teacher.url and teacher.model for a teacher on an inference server"
                } else {
                    ""
                };
                self.problem(
                    &key("path"),
                    format!("required: the {section} model's .onnx file{alternative}"),
                );
                PathBuf::new()
            }
        };
        let threads = self.integer(&key("threads"), raw.threads, DEFAULT_THREADS, 1, 1024);
        let max_batch = self.integer(
            &key("max_batch"),
            raw.max_batch,
            DEFAULT_MAX_BATCH,
            1,
            MAX_BATCH_LIMIT,
        );
        let max_wait = self.duration(
            &key("max_wait"),
            raw.max_wait,
            DEFAULT_MAX_WAIT,
            Duration::ZERO,
        );
        let inputs = self.names(&key("inputs"), raw.inputs.unwrap_or_default());
        let (output, attention) = self.outputs(section, raw.output, raw.attention);
        ModelConfig {
            path,
            remote,
            threads,
            max_batch,
            max_wait,
            inputs,
            output,
            attention,
        }
    }

    /// `url`, `model`, `version` and the keys of how requests are sent, under `section`
    /// (`teacher`, or `challengers[N]`): a model on an inference server. `None` when `url` is
    /// absent (the other keys then need it) or when a key is invalid.
    pub(super) fn remote(&mut self, section: &str, raw: &RawRemote) -> Option<RemoteConfig> {
        let key = |name: &str| format!("{section}.{name}");
        let Some(url) = &raw.url else {
            for (name, set) in remote_keys(raw).into_iter().skip(1) {
                if set {
                    self.problem(
                        &key(name),
                        format!("only applies with {section}.url (a model on an inference server)"),
                    );
                }
            }
            return None;
        };
        let url = match server_url(url) {
            Ok(url) => Some(url),
            Err(why) => {
                self.problem(&key("url"), why);
                None
            }
        };
        let model = match &raw.model {
            None => {
                self.problem(
                    &key("model"),
                    format!("required with {section}.url: the model's name on the server"),
                );
                None
            }
            Some(name) => self.path_segment(&key("model"), name),
        };
        let version = match &raw.version {
            None => Some(None),
            Some(v) => self.path_segment(&key("version"), v).map(Some),
        };
        let timeout = self.duration(
            &key("timeout"),
            raw.timeout.clone(),
            DEFAULT_REMOTE_TIMEOUT,
            Duration::from_millis(1),
        );
        let retries = self.integer(&key("retries"), raw.retries, 2, 0, 10);
        let backoff = self.duration(
            &key("backoff"),
            raw.backoff.clone(),
            Duration::from_millis(200),
            Duration::ZERO,
        );
        let in_flight = self.integer(&key("in_flight"), raw.in_flight, 2, 1, 64);
        let breaker_after = self.integer(&key("breaker_after"), raw.breaker_after, 3, 1, 1000);
        let breaker_open = self.duration(
            &key("breaker_open"),
            raw.breaker_open.clone(),
            Duration::from_secs(30),
            Duration::from_millis(1),
        );
        let tensors = self.choice(
            &key("tensors"),
            raw.tensors.clone(),
            TensorEncoding::Auto,
            &[
                ("auto", TensorEncoding::Auto),
                ("binary", TensorEncoding::Binary),
                ("json", TensorEncoding::Json),
            ],
        );
        let ca_file = raw.ca_file.clone().map(|p| self.path(&key("ca_file"), p));
        let client_identity = match (&raw.client_cert_file, &raw.client_key_file) {
            (Some(cert), Some(k)) => Some((
                self.path(&key("client_cert_file"), cert.clone()),
                self.path(&key("client_key_file"), k.clone()),
            )),
            (None, None) => None,
            (Some(_), None) => {
                self.problem(
                    &key("client_key_file"),
                    format!("required with {section}.client_cert_file: the certificate's key"),
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    &key("client_cert_file"),
                    format!("required with {section}.client_key_file: the key's certificate"),
                );
                None
            }
        };
        let token = self.remote_token(section, raw);
        Some(RemoteConfig {
            section: section.to_owned(),
            url: url?,
            model: model?,
            version: version?,
            timeout,
            retries,
            backoff,
            in_flight,
            breaker_after,
            breaker_open,
            tensors,
            ca_file,
            client_identity,
            token,
        })
    }

    /// The bearer token, from `token_file` or the systemd credential `token_credential`
    /// (`$CREDENTIALS_DIRECTORY/NAME`): read now, so a missing file is a config problem.
    fn remote_token(&mut self, section: &str, raw: &RawRemote) -> Option<Secret> {
        let key = |name: &str| format!("{section}.{name}");
        let (key, path) = match (&raw.token_file, &raw.token_credential) {
            (None, None) => return None,
            (Some(_), Some(_)) => {
                self.problem(
                    &key("token_credential"),
                    format!(
                        "set either {section}.token_file or {section}.token_credential, not both"
                    ),
                );
                return None;
            }
            (Some(file), None) => (
                key("token_file"),
                self.path(&key("token_file"), file.clone()),
            ),
            (None, Some(name)) => {
                let key = key("token_credential");
                if name.is_empty() || name.contains('/') {
                    self.problem(
                        &key,
                        format!("\"{name}\" is not a credential name (no slashes, not empty)"),
                    );
                    return None;
                }
                match std::env::var_os("CREDENTIALS_DIRECTORY") {
                    Some(dir) => (key, PathBuf::from(dir).join(name)),
                    None => {
                        self.problem(
                            &key,
                            format!(
                                "credential \"{name}\" is set but $CREDENTIALS_DIRECTORY is not (it is set by systemd's LoadCredential=)"
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        read_secret(&path)
            .map_err(|message| self.problem(&key, message))
            .ok()
    }

    /// A model name or version that goes into a URL path as it is.
    fn path_segment(&mut self, key: &str, value: &str) -> Option<String> {
        let valid = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value != "."
            && value != "..";
        if valid {
            Some(value.to_owned())
        } else {
            self.problem(
                key,
                format!(
                    "\"{value}\" is not a model name or version: letters, digits, '-', '_' and '.' only"
                ),
            );
            None
        }
    }

    /// A model's compared output and optional attention output, under `section`; the two must
    /// differ.
    pub(super) fn outputs(
        &mut self,
        section: &str,
        output: Option<String>,
        attention: Option<String>,
    ) -> (String, Option<String>) {
        let output = self.name(&format!("{section}.output"), output, DEFAULT_OUTPUT);
        let attention_key = format!("{section}.attention");
        let attention = attention.map(|attention| self.name(&attention_key, Some(attention), ""));
        if attention.as_deref() == Some(output.as_str()) && !output.is_empty() {
            self.problem(
                &attention_key,
                format!("must differ from {section}.output (both are \"{output}\")"),
            );
        }
        (output, attention)
    }

    pub(super) fn compare(&mut self, raw: raw::RawCompare) -> CompareConfig {
        let task = self.choice(
            "compare.task",
            raw.task,
            Task::Classification,
            &[
                ("classification", Task::Classification),
                ("embedding", Task::Embedding),
                ("regression", Task::Regression),
            ],
        );
        let output_kind = self.choice(
            "compare.output_kind",
            raw.output_kind,
            OutputKind::Logits,
            &[
                ("logits", OutputKind::Logits),
                ("probabilities", OutputKind::Probabilities),
            ],
        );
        if output_kind != OutputKind::Logits && task != Task::Classification {
            self.problem(
                "compare.output_kind",
                "only applies to compare.task = \"classification\"",
            );
        }
        let pooling = self.choice(
            "compare.pooling",
            raw.pooling,
            Pooling::None,
            &[("none", Pooling::None), ("mean", Pooling::Mean)],
        );
        if pooling != Pooling::None && task != Task::Embedding {
            self.problem(
                "compare.pooling",
                "only applies to compare.task = \"embedding\"",
            );
        }
        let mask_input = raw
            .mask_input
            .map(|mask| self.name("compare.mask_input", Some(mask), ""));
        if mask_input.is_some() && pooling != Pooling::Mean {
            self.problem("compare.mask_input", "requires compare.pooling = \"mean\"");
        }
        let non_finite = self.choice(
            "compare.non_finite",
            raw.non_finite,
            NonFinitePolicy::Reject,
            &[
                ("reject", NonFinitePolicy::Reject),
                ("allow", NonFinitePolicy::Allow),
            ],
        );
        CompareConfig {
            task,
            output_kind,
            pooling,
            mask_input,
            non_finite,
        }
    }
}
