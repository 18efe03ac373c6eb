//! A model on an inference server, over the Open Inference Protocol (the KServe v2 REST
//! protocol that NVIDIA Triton, KServe and Seldon MLServer all speak): the model's metadata
//! (`GET /v2/models/NAME[/versions/V]`) read and checked as a local file's inputs and outputs
//! are, and batches sent to `POST …/infer` with JSON or binary tensors. The teacher and the
//! challengers on servers (`[[challengers]] url`) are such models.
//!
//! The teacher's thread (and the remote shadow worker's, for challengers) is a plain thread that
//! waits for each answer, as it waits for ONNX Runtime with a local model; the HTTP client needs
//! an async runtime, so the model owns a small one of its own. Loading may happen on a thread of
//! the daemon's runtime, where blocking on another runtime is refused: there the request runs on
//! a scoped plain thread, and a runtime dropped there is shut down in the background.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use super::{BatchOutput, ModelError, OutputSpec, hex};
use crate::config::{ModelConfig, RemoteConfig, TensorEncoding};
use crate::record::{ElemType, InputSpec, Record, TensorData};

/// Longest wait for the metadata when the model is loaded (the requests have their own
/// `timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The least an answer may be before it is refused as too long (see [`RemoteModel::answer_limit`]).
const MIN_ANSWER_LIMIT: usize = 64 << 20;

/// A model served by an inference server. `run` needs `&mut self`, as a local model's does.
pub struct RemoteModel {
    pub role: String,
    /// `BASE/v2/models/NAME[/versions/V]`, for messages and the log.
    pub location: String,
    /// Stands for the model's content in the database (teacher samples are keyed by it): the
    /// sha256 of the model's address on the server.
    pub sha256: String,
    pub inputs: Vec<InputSpec>,
    pub output: OutputSpec,
    pub attention: Option<OutputSpec>,
    /// What the server says it runs (`platform`, `versions`), for `sensei check`.
    pub served_by: String,
    /// Whether requests use the binary tensor extension (`teacher.tensors`).
    pub binary: bool,
    /// The last reach announced (`None` before the first), and a change not yet taken.
    announced: Option<bool>,
    reach_change: Option<ReachChange>,
    config: RemoteConfig,
    breaker: Breaker,
    client: reqwest::Client,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for RemoteModel {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a thread of the daemon's runtime may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Why [`RemoteModel::try_connect`] found no usable model.
#[derive(Debug)]
pub struct ConnectFailure {
    pub error: ModelError,
    /// False when the server did not answer (it may later); true when it answered and the
    /// model cannot be used as configured.
    pub answered: bool,
}

/// The teacher's server went out of reach or answered again (`Teacher::take_reach_change`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReachChange {
    pub out_of_reach: bool,
    /// Unix ms.
    pub at_ms: i64,
    /// Batches in a row that found the server out of reach, and how many open the breaker.
    pub failures: u32,
    pub breaker_after: u32,
}

/// A tensor's description in the model's metadata.
#[derive(Debug, Deserialize)]
struct TensorMetadata {
    name: String,
    datatype: String,
    shape: Vec<i64>,
}

#[derive(Debug, Deserialize)]
struct ModelMetadata {
    // Servers send `null` for what they do not know (KServe: `"versions": null`).
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    versions: Option<Vec<String>>,
    #[serde(default)]
    inputs: Option<Vec<TensorMetadata>>,
    #[serde(default)]
    outputs: Option<Vec<TensorMetadata>>,
}

#[derive(Debug, Deserialize)]
struct InferResponse {
    outputs: Vec<OutputTensor>,
}

#[derive(Debug, Deserialize)]
struct OutputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Absent when the tensor's bytes follow the JSON header (`binary_data_size`).
    #[serde(default)]
    data: FlatData,
    #[serde(default)]
    parameters: Option<TensorParameters>,
}

#[derive(Debug, Default, Deserialize)]
struct TensorParameters {
    #[serde(default)]
    binary_data_size: Option<usize>,
}

/// The server's metadata (`GET /v2`): only whether it speaks the binary tensor extension.
#[derive(Debug, Deserialize)]
struct ServerMetadata {
    #[serde(default)]
    extensions: Option<Vec<String>>,
}

/// The header of the binary tensor extension: the length of the JSON that starts the body.
const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// Tensor data as the protocol allows it: flat, or nested arrays in row-major order.
#[derive(Debug, Default)]
struct FlatData(Vec<f32>);

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        Flatten(&mut out).deserialize(deserializer)?;
        Ok(FlatData(out))
    }
}

/// Appends every number of a (possibly nested) array to the vector.
struct Flatten<'a>(&'a mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of numbers")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// An error's message with its causes (reqwest's own says only "error sending request").
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The first 300 characters of a response body, on one line.
fn excerpt(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

fn elem_type(datatype: &str) -> Option<ElemType> {
    match datatype {
        "FP32" => Some(ElemType::F32),
        "INT64" => Some(ElemType::I64),
        _ => None,
    }
}

fn dims(shape: &[i64]) -> Vec<Option<usize>> {
    shape.iter().map(|&d| usize::try_from(d).ok()).collect()
}

impl RemoteModel {
    /// Reads the model's metadata from the server and checks that the configured inputs and
    /// outputs exist with types sensei can use, as [`super::Model::load`] does for a file. A
    /// server that does not answer, a model it does not have and every mismatch are errors that
    /// name the model's URL.
    pub fn connect(role: &str, config: &ModelConfig) -> Result<RemoteModel, ModelError> {
        Self::try_connect(role, config).map_err(|f| f.error)
    }

    /// [`RemoteModel::connect`], saying on failure whether the server answered at all: one
    /// that did not (down, still starting, a proxy without its upstream: no connection, a
    /// timeout, HTTP 502, 503 or 504) may answer a later try.
    pub fn try_connect(role: &str, config: &ModelConfig) -> Result<RemoteModel, ConnectFailure> {
        let Some(remote) = config.remote.clone() else {
            return Err(ConnectFailure {
                error: ModelError::Remote {
                    role: role.into(),
                    url: String::new(),
                    message: "no server configured".into(),
                },
                answered: true,
            });
        };
        let location = remote.model_url();
        let fail = |message: String| ConnectFailure {
            error: ModelError::Remote {
                role: role.into(),
                url: location.clone(),
                message,
            },
            answered: true,
        };
        // A failure below drops the runtime on the way out, perhaps on a thread of the daemon's
        // runtime, where a plain drop would panic.
        let runtime = OwnedRuntime(Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| fail(format!("cannot start the HTTP client: {e}")))?,
        ));
        let client = http_client(&remote).map_err(fail)?;
        let metadata = {
            let client = client.clone();
            let url = location.clone();
            let timeout = remote.timeout.max(CONNECT_TIMEOUT);
            block_on(runtime.get(), async move {
                // (message, whether the server answered)
                let response = client
                    .get(&url)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| (format!("the server does not answer: {}", chain(&e)), false))?;
                let status = response.status();
                let body = response
                    .text()
                    .await
                    .map_err(|e| (format!("reading the metadata: {}", chain(&e)), false))?;
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err((
                        format!(
                            "the server has no such model (HTTP 404: {})",
                            excerpt(&body)
                        ),
                        true,
                    ));
                }
                if !status.is_success() {
                    return Err((
                        format!(
                            "the server refused the metadata request (HTTP {status}: {})",
                            excerpt(&body)
                        ),
                        !matches!(status.as_u16(), 502..=504),
                    ));
                }
                serde_json::from_str::<ModelMetadata>(&body).map_err(|e| {
                    (
                        format!(
                            "the model's metadata is not Open Inference Protocol JSON ({e}): {}",
                            excerpt(&body)
                        ),
                        true,
                    )
                })
            })
            .map_err(|(message, answered)| ConnectFailure {
                answered,
                ..fail(message)
            })?
        };
        let (inputs, output, attention) = check_metadata(config, &metadata).map_err(fail)?;
        let binary = match remote.tensors {
            TensorEncoding::Binary => true,
            TensorEncoding::Json => false,
            TensorEncoding::Auto => {
                let client = client.clone();
                let url = format!("{}/v2", remote.url);
                block_on(runtime.get(), async move {
                    lists_binary_extension(&client, &url).await
                })
            }
        };
        let served_by = format!(
            "platform {}, versions [{}], {} tensors",
            match metadata.platform.as_deref() {
                None | Some("") => "unknown",
                Some(platform) => platform,
            },
            metadata.versions.as_deref().unwrap_or_default().join(", "),
            if binary { "binary" } else { "JSON" }
        );
        Ok(RemoteModel {
            role: role.into(),
            sha256: remote_sha256(&remote),
            location,
            inputs,
            output,
            attention,
            served_by,
            binary,
            announced: None,
            reach_change: None,
            breaker: Breaker::new(remote.breaker_after, remote.breaker_open),
            config: remote,
            client,
            runtime: runtime.take(),
        })
    }

    /// Requests this model keeps in flight at once.
    pub fn in_flight(&self) -> usize {
        self.config.in_flight.max(1)
    }

    /// The body that `run` posts for `batch` and, with binary tensors, the length of its JSON
    /// header (`Inference-Header-Content-Length`): for the benchmark of JSON against binary
    /// tensors, which sends the same bytes from a plain client loop.
    pub fn encode_request(
        &self,
        batch: &[&Record],
    ) -> Result<(Vec<u8>, Option<usize>), ModelError> {
        self.request_body(batch)
            .map(|r| (r.body, r.header_length))
            .map_err(|m| self.failed(m))
    }

    /// Sends one batch and waits for the answer. All records must have equal input shapes and
    /// have been validated against `self.inputs`.
    pub fn run(&mut self, batch: &[&Record]) -> Result<BatchOutput, ModelError> {
        let mut results = self.run_many(&[batch.to_vec()]);
        results.pop().unwrap_or_else(|| {
            Err(ModelError::Run {
                role: self.role.clone(),
                message: "no result".into(),
            })
        })
    }

    /// Sends each batch as its own request, all at once, and waits for every answer: each
    /// request waits at most `timeout`, and a transient error (no connection, HTTP 429, 502,
    /// 503, 504) is tried again up to `retries` times after a growing, jittered back-off. While
    /// the circuit breaker is open nothing is sent; when it is due to close, the first batch
    /// probes the server. One result per batch, in order; a batch that could not be answered is
    /// [`ModelError::Unreachable`].
    pub fn run_many(&mut self, batches: &[Vec<&Record>]) -> Vec<Result<BatchOutput, ModelError>> {
        let now = Instant::now();
        let send = match self.breaker.gate(now) {
            Gate::Closed => batches.len(),
            Gate::Probe => batches.len().min(1),
            Gate::Open(_) => 0,
        };
        let mut results: Vec<Option<Result<BatchOutput, ModelError>>> =
            batches.iter().map(|_| None).collect();
        let mut requests = Vec::new();
        for (i, batch) in batches.iter().enumerate().take(send) {
            match self.request_body(batch) {
                Ok(body) => requests.push((i, body, self.answer_limit(batch.len()))),
                Err(message) => results[i] = Some(Err(self.failed(message))),
            }
        }
        let answers = match &self.runtime {
            Some(runtime) if !requests.is_empty() => {
                let policy = Policy {
                    url: format!("{}/infer", self.location),
                    timeout: self.config.timeout,
                    retries: self.config.retries,
                    backoff: self.config.backoff,
                };
                let client = self.client.clone();
                block_on(runtime, async move {
                    let mut set = tokio::task::JoinSet::new();
                    for (i, body, limit) in requests {
                        let (client, policy) = (client.clone(), policy.clone());
                        set.spawn(
                            async move { (i, policy.send(&client, body, limit, i as u64).await) },
                        );
                    }
                    let mut answers = Vec::new();
                    while let Some(answer) = set.join_next().await {
                        if let Ok(answer) = answer {
                            answers.push(answer);
                        }
                    }
                    answers
                })
            }
            _ => Vec::new(),
        };
        let mut reached = false;
        let mut unreachable = false;
        for (i, answer) in answers {
            let result = match answer {
                Ok(answer) => {
                    reached = true;
                    self.read_answer(&answer, batches[i].len())
                }
                Err(Failure::Answered(message)) => {
                    reached = true;
                    Err(self.failed(message))
                }
                Err(Failure::Unreachable(message)) => {
                    unreachable = true;
                    Err(self.unreachable(message))
                }
            };
            results[i] = Some(result);
        }
        let now = Instant::now();
        let teacher = self.role == "teacher";
        if reached {
            if self.breaker.success() {
                if teacher {
                    tracing::info!(url = %self.location, "The teacher's inference server answers again; sampled records go to it.");
                } else {
                    tracing::info!(model = %self.role, url = %self.location, "The inference server of a shadow model answers again; it runs on the sampled records again.");
                }
            }
            self.announce(false);
        } else if unreachable && self.breaker.failure(now) {
            self.announce(true);
            if teacher {
                tracing::warn!(
                    url = %self.location,
                    after = self.config.breaker_after,
                    probe_every = ?self.config.breaker_open,
                    "The teacher's inference server is out of reach; sampled records are skipped (records.sampled = 5) until a probe finds it again."
                );
            } else {
                tracing::warn!(
                    model = %self.role,
                    url = %self.location,
                    after = self.config.breaker_after,
                    probe_every = ?self.config.breaker_open,
                    "The inference server of a shadow model is out of reach; its comparisons are skipped (counted in shadow_skips) until a probe finds it again. The student and the teacher are unaffected."
                );
            }
        }
        let open = match self.breaker.gate(now) {
            Gate::Open(left) => format!(
                "the circuit breaker is open (the server was out of reach {} times in a row); the next probe in {:.1}s",
                self.breaker.failures,
                left.as_secs_f64()
            ),
            _ => "not sent: the circuit breaker allows one probe at a time".into(),
        };
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(self.unreachable(open.clone()))))
            .collect()
    }

    /// The longest answer read for a batch of `n`: twice the outputs' values at 32 bytes each
    /// (a dynamic dimension counted as 1), and never less than 64 MiB. A longer answer, or one
    /// that does not end, is refused before it fills the memory.
    fn answer_limit(&self, n: usize) -> usize {
        let values = |spec: &OutputSpec| -> usize {
            spec.shape
                .iter()
                .map(|d| d.unwrap_or(1))
                .fold(1usize, usize::saturating_mul)
        };
        let per_record =
            values(&self.output).saturating_add(self.attention.as_ref().map_or(0, values));
        n.saturating_mul(per_record)
            .saturating_mul(64)
            .max(MIN_ANSWER_LIMIT)
    }

    fn announce(&mut self, out_of_reach: bool) {
        if self.announced == Some(out_of_reach) {
            return;
        }
        self.announced = Some(out_of_reach);
        self.reach_change = Some(ReachChange {
            out_of_reach,
            at_ms: crate::time::now_ms(),
            failures: self.breaker.failures,
            breaker_after: self.breaker.after,
        });
    }

    /// See [`super::Teacher::take_reach_change`].
    pub fn take_reach_change(&mut self) -> Option<ReachChange> {
        self.reach_change.take()
    }

    fn failed(&self, message: String) -> ModelError {
        ModelError::Run {
            role: self.role.clone(),
            message: format!("{}: {message}", self.location),
        }
    }

    fn unreachable(&self, message: String) -> ModelError {
        ModelError::Unreachable {
            role: self.role.clone(),
            url: self.location.clone(),
            message,
        }
    }

    /// An answer's body read and checked: the outputs sensei reads, of the batch's size and
    /// the metadata's shapes.
    fn read_answer(&self, answer: &Answer, n: usize) -> Result<BatchOutput, ModelError> {
        let (json, mut binary) = match answer.header_length {
            None => (&answer.body[..], &[][..]),
            Some(length) if length <= answer.body.len() => answer.body.split_at(length),
            Some(length) => {
                return Err(self.failed(format!(
                    "the answer's {HEADER_LENGTH} is {length}, the body has {} bytes",
                    answer.body.len()
                )));
            }
        };
        let response: InferResponse = serde_json::from_slice(json).map_err(|e| {
            self.failed(format!(
                "the answer is not Open Inference Protocol JSON ({e}): {}",
                excerpt(&String::from_utf8_lossy(json))
            ))
        })?;
        let mut outputs = response.outputs;
        // Binary tensors follow the header in the order of the outputs that have them.
        for tensor in &mut outputs {
            let Some(size) = tensor.parameters.as_ref().and_then(|p| p.binary_data_size) else {
                continue;
            };
            if size > binary.len() {
                return Err(self.failed(format!(
                    "output '{}' has binary_data_size {size}, {} bytes are left in the answer",
                    tensor.name,
                    binary.len()
                )));
            }
            let (bytes, rest) = binary.split_at(size);
            binary = rest;
            tensor.data = FlatData(
                decode_binary(&tensor.datatype, bytes)
                    .map_err(|m| self.failed(format!("output '{}': {m}", tensor.name)))?,
            );
        }
        let elapsed = answer.elapsed;
        let mut take = |spec: &OutputSpec| -> Result<(Vec<usize>, Vec<f32>), String> {
            let at = outputs
                .iter()
                .position(|o| o.name == spec.name)
                .ok_or_else(|| format!("the answer has no output '{}'", spec.name))?;
            let tensor = outputs.swap_remove(at);
            checked_output(tensor, spec, n)
        };
        let (output_shape, output) = take(&self.output).map_err(|m| self.failed(m))?;
        let attention = match &self.attention {
            Some(spec) => Some(take(spec).map_err(|m| self.failed(m))?),
            None => None,
        };
        Ok(BatchOutput {
            batch: n,
            output_shape,
            output,
            attention,
            elapsed,
        })
    }

    /// One inference request: every input stacked into `[n, …]`, and the outputs sensei
    /// reads; the numbers in the JSON or, with the binary tensor extension, the raw
    /// little-endian bytes after a JSON header.
    fn request_body(&self, batch: &[&Record]) -> Result<Request, String> {
        use std::fmt::Write as _;
        let n = batch.len();
        let mut body = String::from("{\"inputs\":[");
        let mut bytes: Vec<u8> = Vec::new();
        for (k, spec) in self.inputs.iter().enumerate() {
            let first = batch[0]
                .inputs
                .get(&spec.name)
                .ok_or_else(|| format!("record lacks input '{}'", spec.name))?;
            let mut shape = vec![n];
            shape.extend(&first.shape);
            let (datatype, width) = match spec.elem_type {
                ElemType::F32 => ("FP32", 4),
                ElemType::I64 => ("INT64", 8),
            };
            if k > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                "{{\"name\":{},\"shape\":{},\"datatype\":\"{datatype}\",",
                serde_json::Value::from(spec.name.as_str()),
                serde_json::Value::from(shape.clone())
            );
            if self.binary {
                let size = shape.iter().product::<usize>() * width;
                let _ = write!(body, "\"parameters\":{{\"binary_data_size\":{size}}}}}");
                bytes.reserve(size);
            } else {
                body.push_str("\"data\":[");
            }
            let mut first_value = true;
            for record in batch {
                let tensor = record
                    .inputs
                    .get(&spec.name)
                    .ok_or_else(|| format!("record lacks input '{}'", spec.name))?;
                if tensor.shape != first.shape {
                    return Err(format!(
                        "records of different shapes in one batch for '{}'",
                        spec.name
                    ));
                }
                match (&tensor.data, self.binary) {
                    (TensorData::F32(values), true) => {
                        values.iter().for_each(|v| bytes.extend(v.to_le_bytes()))
                    }
                    (TensorData::I64(values), true) => {
                        values.iter().for_each(|v| bytes.extend(v.to_le_bytes()))
                    }
                    (TensorData::F32(values), false) => {
                        for v in values {
                            if !first_value {
                                body.push(',');
                            }
                            first_value = false;
                            // JSON has no NaN or infinity: the records were validated. The
                            // shortest text that reads back as the same float32.
                            let _ = write!(body, "{v}");
                        }
                    }
                    (TensorData::I64(values), false) => {
                        for v in values {
                            if !first_value {
                                body.push(',');
                            }
                            first_value = false;
                            let _ = write!(body, "{v}");
                        }
                    }
                }
            }
            if !self.binary {
                body.push_str("]}");
            }
        }
        body.push_str("],\"outputs\":[");
        let wanted = std::iter::once(&self.output).chain(self.attention.as_ref());
        for (k, spec) in wanted.enumerate() {
            if k > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                "{{\"name\":{}{}}}",
                serde_json::Value::from(spec.name.as_str()),
                if self.binary {
                    ",\"parameters\":{\"binary_data\":true}"
                } else {
                    ""
                }
            );
        }
        body.push(']');
        if self.binary {
            // Triton reads the flag on each output, KServe's model server the request's.
            body.push_str(",\"parameters\":{\"binary_data_output\":true}");
        }
        body.push('}');
        if !self.binary {
            return Ok(Request {
                body: body.into_bytes(),
                header_length: None,
            });
        }
        let header_length = body.len();
        let mut all = body.into_bytes();
        all.extend(bytes);
        Ok(Request {
            body: all,
            header_length: Some(header_length),
        })
    }
}

/// The body of one inference request and, with the binary tensor extension, the length of
/// its JSON header.
#[derive(Debug, Clone)]
struct Request {
    body: Vec<u8>,
    header_length: Option<usize>,
}

/// The body of an answer and, when the server used the binary tensor extension, the length of
/// its JSON header.
#[derive(Debug)]
struct Answer {
    body: Vec<u8>,
    header_length: Option<usize>,
    elapsed: Duration,
}

/// Why a request has no answer to read.
#[derive(Debug)]
enum Failure {
    /// The server answered, but not with a result (HTTP 4xx, 500): the teacher failed.
    Answered(String),
    /// No answer: no connection, a timeout, or transient errors past the retries.
    Unreachable(String),
}

/// How one inference request is sent.
#[derive(Debug, Clone)]
struct Policy {
    url: String,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl Policy {
    /// Posts `body`, trying again after a transient error; the answer's body and the time of
    /// the attempt that got it. A timeout is not tried again: more requests do not help a
    /// server too slow to answer.
    async fn send(
        &self,
        client: &reqwest::Client,
        request: Request,
        limit: usize,
        salt: u64,
    ) -> Result<Answer, Failure> {
        let mut jitter = Jitter::new(salt);
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let post = client.post(&self.url).timeout(self.timeout);
            let post = match request.header_length {
                None => post.header(reqwest::header::CONTENT_TYPE, "application/json"),
                Some(length) => post
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(HEADER_LENGTH, length),
            };
            let sent = post.body(request.body.clone()).send().await;
            let transient = match sent {
                Err(e) if e.is_timeout() => {
                    return Err(Failure::Unreachable(format!(
                        "no answer within {:?} (timeout)",
                        self.timeout
                    )));
                }
                Err(e) if e.is_connect() => format!("cannot connect: {}", chain(&e)),
                Err(e) => return Err(Failure::Unreachable(chain(&e))),
                Ok(response) => {
                    let status = response.status();
                    let header_length = response
                        .headers()
                        .get(HEADER_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    let answer = match read_bounded(response, limit).await {
                        Err(Read::TooLong) => {
                            return Err(Failure::Answered(format!(
                                "HTTP {status}: the answer is longer than {limit} bytes, the most read for this batch"
                            )));
                        }
                        Err(Read::Failed(e)) if e.is_timeout() => {
                            return Err(Failure::Unreachable(format!(
                                "no whole answer within {:?} (timeout)",
                                self.timeout
                            )));
                        }
                        Err(Read::Failed(e)) => {
                            return Err(Failure::Unreachable(format!(
                                "reading the answer: {}",
                                chain(&e)
                            )));
                        }
                        Ok(answer) => answer,
                    };
                    let text = || excerpt(&String::from_utf8_lossy(&answer));
                    match status.as_u16() {
                        200..=299 => {
                            return Ok(Answer {
                                body: answer,
                                header_length,
                                elapsed: started.elapsed(),
                            });
                        }
                        429 | 502 | 503 | 504 => format!("HTTP {status}: {}", text()),
                        _ => return Err(Failure::Answered(format!("HTTP {status}: {}", text()))),
                    }
                }
            };
            if attempt >= self.retries {
                let tries = if self.retries == 0 {
                    String::new()
                } else {
                    format!(" ({} tries)", self.retries + 1)
                };
                return Err(Failure::Unreachable(format!("{transient}{tries}")));
            }
            tokio::time::sleep(backoff(self.backoff, attempt, jitter.next())).await;
            attempt += 1;
        }
    }
}

/// Why an answer's body was not read.
enum Read {
    /// Longer than the limit: said by its `Content-Length`, or found while reading.
    TooLong,
    Failed(reqwest::Error),
}

/// An answer's body, chunk by chunk, refused once it is longer than `limit` bytes.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, Read> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(Read::TooLong);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Read::Failed)? {
        if body.len() + chunk.len() > limit {
            return Err(Read::TooLong);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The wait before retry `attempt` (0 for the first): `base` doubled per attempt, up to a
/// minute, times `jitter` in [0.5, 1) so that clients that failed together do not come back
/// together.
fn backoff(base: Duration, attempt: u32, jitter: f64) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempt.min(16));
    doubled
        .min(Duration::from_secs(60))
        .mul_f64(jitter.clamp(0.5, 1.0))
}

/// Jitter factors in [0.5, 1): splitmix64 seeded by the clock and a per-request salt.
struct Jitter(u64);

impl Jitter {
    fn new(salt: u64) -> Jitter {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(clock ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        0.5 + 0.5 * ((z >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The circuit breaker: after `after` batches in a row found the server out of reach it opens
/// for `open_for`; then one batch probes the server, which closes it on an answer or opens it
/// again. Time is an argument, so tests need no clock.
#[derive(Debug)]
struct Breaker {
    after: u32,
    open_for: Duration,
    /// Batches in a row that found the server out of reach.
    failures: u32,
    open_until: Option<Instant>,
}

/// What the breaker lets through now.
#[derive(Debug, PartialEq)]
enum Gate {
    Closed,
    /// Open, but due: one batch may probe the server.
    Probe,
    /// Open for this much longer.
    Open(Duration),
}

impl Breaker {
    fn new(after: u32, open_for: Duration) -> Breaker {
        Breaker {
            after: after.max(1),
            open_for,
            failures: 0,
            open_until: None,
        }
    }

    fn gate(&self, now: Instant) -> Gate {
        match self.open_until {
            None => Gate::Closed,
            Some(until) if now >= until => Gate::Probe,
            Some(until) => Gate::Open(until - now),
        }
    }

    /// A batch found the server out of reach; true when this opened a closed breaker.
    fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures < self.after {
            return false;
        }
        let was_open = self.open_until.is_some();
        self.open_until = Some(now + self.open_for);
        !was_open
    }

    /// The server answered; true when this closed an open breaker.
    fn success(&mut self) -> bool {
        self.failures = 0;
        self.open_until.take().is_some()
    }
}

/// Whether the server's metadata lists the binary tensor extension; a server that does not
/// answer it, or not in JSON, gets JSON tensors.
async fn lists_binary_extension(client: &reqwest::Client, url: &str) -> bool {
    let Ok(response) = client.get(url).timeout(CONNECT_TIMEOUT).send().await else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    let Ok(body) = response.bytes().await else {
        return false;
    };
    serde_json::from_slice::<ServerMetadata>(&body)
        .ok()
        .and_then(|m| m.extensions)
        .is_some_and(|e| e.iter().any(|x| x == "binary_tensor_data"))
}

/// The HTTP client of one server: the system's roots and the configured CA, the client
/// certificate, the bearer token on every request (marked sensitive: never in debug output).
fn http_client(remote: &RemoteConfig) -> Result<reqwest::Client, String> {
    let section = &remote.section;
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{section}.{what} {}: {e}", path.display()))
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("sensei/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &remote.ca_file {
        let certificates =
            reqwest::Certificate::from_pem_bundle(&read("ca_file", path)?).map_err(|e| {
                format!(
                    "{section}.ca_file {}: not PEM certificates: {e}",
                    path.display()
                )
            })?;
        if certificates.is_empty() {
            return Err(format!(
                "{section}.ca_file {}: holds no certificate",
                path.display()
            ));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some((cert, key)) = &remote.client_identity {
        let mut pem = read("client_cert_file", cert)?;
        pem.push(b'\n');
        pem.extend(read("client_key_file", key)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            format!(
                "{section}.client_cert_file {} and client_key_file {}: not a PEM certificate and key: {e}",
                cert.display(),
                key.display()
            )
        })?;
        builder = builder.identity(identity);
    }
    if let Some(token) = &remote.token {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(
                |_| format!("{section}.token_file: the token is not a valid HTTP header value"),
            )?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", chain(&e)))
}

/// What the database knows a model on a server by: the sha256 of its address (the server does
/// not tell the content of what it serves).
pub fn remote_sha256(remote: &RemoteConfig) -> String {
    hex(&Sha256::digest(
        format!("oip {}", remote.model_url()).as_bytes(),
    ))
}

/// A runtime that is shut down in the background when dropped: dropping a runtime blocks, which
/// a thread of another runtime may not do.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("taken only when the model is built")
    }

    fn take(mut self) -> Option<tokio::runtime::Runtime> {
        self.0.take()
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` to completion on `runtime`, from a plain thread when called on a thread of
/// another runtime (which may not block).
fn block_on<F>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        runtime.block_on(future)
    }
}

type Specs = (Vec<InputSpec>, OutputSpec, Option<OutputSpec>);

/// The configured inputs and outputs against the server's metadata: every problem in one
/// message, worded as for a local file.
fn check_metadata(config: &ModelConfig, metadata: &ModelMetadata) -> Result<Specs, String> {
    let mut problems = Vec::new();
    let (model_inputs, model_outputs) = (
        metadata.inputs.as_deref().unwrap_or_default(),
        metadata.outputs.as_deref().unwrap_or_default(),
    );
    let available: Vec<&str> = model_inputs.iter().map(|i| i.name.as_str()).collect();
    let wanted: Vec<&str> = if config.inputs.is_empty() {
        available.clone()
    } else {
        config.inputs.iter().map(String::as_str).collect()
    };
    let mut inputs = Vec::new();
    for name in &wanted {
        match model_inputs.iter().find(|i| i.name == *name) {
            None => problems.push(format!(
                "input '{name}' does not exist (the model's inputs: {})",
                available.join(", ")
            )),
            Some(t) => match (elem_type(&t.datatype), t.shape.split_first()) {
                (None, _) => problems.push(format!(
                    "input '{name}' has datatype {}; sensei feeds FP32 and INT64",
                    t.datatype
                )),
                (Some(_), None) => problems.push(format!(
                    "input '{name}' is a scalar; sensei needs a batch axis"
                )),
                (Some(elem_type), Some((_, rest))) => inputs.push(InputSpec {
                    name: t.name.clone(),
                    elem_type,
                    shape: dims(rest),
                }),
            },
        }
    }
    for t in model_inputs {
        if !wanted.contains(&t.name.as_str()) {
            problems.push(format!(
                "the model needs input '{}' but the config feeds only: {}",
                t.name,
                wanted.join(", ")
            ));
        }
    }
    let out_names: Vec<&str> = model_outputs.iter().map(|o| o.name.as_str()).collect();
    let mut find_output = |name: &str| -> Option<OutputSpec> {
        let Some(t) = model_outputs.iter().find(|o| o.name == name) else {
            problems.push(format!(
                "output '{name}' does not exist (the model's outputs: {})",
                out_names.join(", ")
            ));
            return None;
        };
        if t.datatype != "FP32" {
            problems.push(format!(
                "output '{name}' has datatype {}; sensei reads FP32",
                t.datatype
            ));
            return None;
        }
        let Some((_, rest)) = t.shape.split_first() else {
            problems.push(format!(
                "output '{name}' is a scalar; sensei needs a batch axis"
            ));
            return None;
        };
        Some(OutputSpec {
            name: name.into(),
            shape: dims(rest),
        })
    };
    let output = find_output(&config.output);
    let attention = config.attention.as_deref().and_then(&mut find_output);
    if let Some(att) = &attention
        && att.shape.len() != 3
    {
        problems.push(format!(
            "attention output '{}' must be [batch, heads, seq, seq], has rank {}",
            att.name,
            att.shape.len() + 1
        ));
    }
    match output {
        Some(output) if problems.is_empty() => Ok((inputs, output, attention)),
        _ => Err(problems.join("; ")),
    }
}

/// A binary tensor's little-endian bytes as floats.
fn decode_binary(datatype: &str, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let width = match datatype {
        "FP32" => 4,
        "FP64" => 8,
        other => return Err(format!("binary data of type {other}, expected FP32")),
    };
    if !bytes.len().is_multiple_of(width) {
        return Err(format!(
            "{} bytes of binary data is no whole number of {datatype} values",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(width)
        .map(|c| match c.try_into() {
            Ok(four) => f32::from_le_bytes(four),
            Err(_) => c
                .try_into()
                .map_or(f32::NAN, |e| f64::from_le_bytes(e) as f32),
        })
        .collect())
}

/// One output of an answer, checked against its spec: float data, `n` records, the fixed dims
/// of the metadata, as many values as the shape says.
fn checked_output(
    tensor: OutputTensor,
    spec: &OutputSpec,
    n: usize,
) -> Result<(Vec<usize>, Vec<f32>), String> {
    if !matches!(tensor.datatype.as_str(), "FP32" | "FP64" | "FP16") {
        return Err(format!(
            "output '{}' came back as {}, expected FP32",
            spec.name, tensor.datatype
        ));
    }
    let Some((&batch, rest)) = tensor.shape.split_first() else {
        return Err(format!("output '{}' came back as a scalar", spec.name));
    };
    if batch != n as i64 {
        return Err(format!(
            "output '{}' has batch dimension {batch}, expected {n}",
            spec.name
        ));
    }
    let shape: Vec<usize> = rest
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("output '{}' has a negative dimension", spec.name))?;
    let fits = shape.len() == spec.shape.len()
        && shape
            .iter()
            .zip(&spec.shape)
            .all(|(d, s)| s.is_none_or(|s| s == *d));
    if !fits {
        return Err(format!(
            "output '{}' came back shaped {:?}, the metadata says {}",
            spec.name,
            tensor.shape,
            super::shape_display(&spec.shape)
        ));
    }
    let expected = n * shape.iter().product::<usize>();
    if tensor.data.0.len() != expected {
        return Err(format!(
            "output '{}' has {} values for shape {:?} ({expected} expected)",
            spec.name,
            tensor.data.0.len(),
            tensor.shape
        ));
    }
    if tensor.data.0.iter().any(|v| !v.is_finite()) {
        return Err(format!(
            "output '{}' has values that are not finite in float32",
            spec.name
        ));
    }
    Ok((shape, tensor.data.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_a_probe_closes_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Breaker::new(3, 30 * s);
        assert!(!b.failure(t0) && !b.failure(t0));
        // An answer in between starts the count again.
        assert!(!b.success());
        assert!(!b.failure(t0) && !b.failure(t0));
        assert_eq!(b.gate(t0), Gate::Closed);
        assert!(b.failure(t0), "the third failure in a row opens it");
        assert_eq!(b.gate(t0 + 10 * s), Gate::Open(20 * s));
        assert_eq!(b.gate(t0 + 30 * s), Gate::Probe);
        // A failed probe opens it again without a second warning, for another period.
        assert!(!b.failure(t0 + 30 * s));
        assert_eq!(b.gate(t0 + 31 * s), Gate::Open(29 * s));
        assert_eq!(b.gate(t0 + 60 * s), Gate::Probe);
        assert!(b.success(), "an answered probe closes it");
        assert_eq!(b.gate(t0 + 60 * s), Gate::Closed);
        assert!(!b.failure(t0 + 61 * s));
    }

    #[test]
    fn back_off_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(200);
        assert_eq!(backoff(base, 0, 1.0), base);
        assert_eq!(backoff(base, 2, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(base, 2, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(base, 30, 1.0), Duration::from_secs(60));
        let mut jitter = Jitter(7);
        let draws: Vec<f64> = (0..1000).map(|_| jitter.next()).collect();
        assert!(draws.iter().all(|j| (0.5..1.0).contains(j)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.75).abs() < 0.02, "{mean}");
    }

    #[test]
    fn nested_and_flat_data_read_alike() {
        let flat: OutputTensor = serde_json::from_str(
            r#"{"name":"logits","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}"#,
        )
        .unwrap();
        let nested: OutputTensor = serde_json::from_str(
            r#"{"name":"logits","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}"#,
        )
        .unwrap();
        assert_eq!(flat.data.0, vec![1.0, 2.5, 3.0, 4.0]);
        assert_eq!(nested.data.0, flat.data.0);
        assert!(
            serde_json::from_str::<OutputTensor>(
                r#"{"name":"l","shape":[1],"datatype":"FP32","data":["x"]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn answers_of_the_wrong_shape_or_size_are_refused() {
        let spec = OutputSpec {
            name: "logits".into(),
            shape: vec![Some(2)],
        };
        let tensor = |shape: &str, data: &str| -> OutputTensor {
            serde_json::from_str(&format!(
                r#"{{"name":"logits","shape":{shape},"datatype":"FP32","data":{data}}}"#
            ))
            .unwrap()
        };
        assert_eq!(
            checked_output(tensor("[2,2]", "[1,2,3,4]"), &spec, 2).unwrap(),
            (vec![2], vec![1.0, 2.0, 3.0, 4.0])
        );
        let why = |shape: &str, data: &str, n: usize| {
            checked_output(tensor(shape, data), &spec, n).unwrap_err()
        };
        assert!(why("[1,2]", "[1,2]", 2).contains("batch dimension 1, expected 2"));
        assert!(why("[2,3]", "[1,2,3,4,5,6]", 2).contains("the metadata says [2]"));
        assert!(why("[2,2]", "[1,2,3]", 2).contains("3 values"));
        assert!(why("[2,2]", "[1,2,3,1e300]", 2).contains("not finite"));
    }

    /// A model of `x` [2] in, `logits` [2] out, on a server that is never asked.
    fn model(binary: bool) -> RemoteModel {
        RemoteModel {
            role: "teacher".into(),
            location: "http://127.0.0.1:1/v2/models/t".into(),
            sha256: String::new(),
            inputs: vec![InputSpec {
                name: "x".into(),
                elem_type: ElemType::F32,
                shape: vec![Some(2)],
            }],
            output: OutputSpec {
                name: "logits".into(),
                shape: vec![Some(2)],
            },
            attention: None,
            served_by: String::new(),
            binary,
            announced: None,
            reach_change: None,
            config: RemoteConfig {
                section: "teacher".into(),
                url: "http://127.0.0.1:1".into(),
                model: "t".into(),
                version: None,
                timeout: Duration::from_secs(1),
                retries: 0,
                backoff: Duration::ZERO,
                in_flight: 1,
                breaker_after: 1,
                breaker_open: Duration::from_secs(1),
                tensors: TensorEncoding::Auto,
                ca_file: None,
                client_identity: None,
                token: None,
            },
            breaker: Breaker::new(1, Duration::from_secs(1)),
            client: reqwest::Client::new(),
            runtime: None,
        }
    }

    fn record(x: [f32; 2]) -> Record {
        Record {
            id: None,
            ts: None,
            segment: Default::default(),
            inputs: [(
                "x".to_string(),
                crate::record::Tensor::f32(vec![2], x.to_vec()),
            )]
            .into(),
            label: None,
            origin: crate::record::Origin::Line(1),
        }
    }

    #[test]
    fn the_longest_answer_read_grows_with_the_batch_from_a_floor() {
        let mut m = model(false);
        assert_eq!(m.answer_limit(1), MIN_ANSWER_LIMIT);
        // 2 values a record, 64 bytes each.
        assert_eq!(m.answer_limit(1 << 20), 128 << 20);
        m.attention = Some(OutputSpec {
            name: "attention".into(),
            shape: vec![Some(4), None, Some(8)],
        });
        assert_eq!(m.answer_limit(1 << 20), ((2 + 32) * 64) << 20);
        assert_eq!(m.answer_limit(usize::MAX), usize::MAX);
    }

    #[test]
    fn binary_requests_carry_a_json_header_and_the_raw_inputs() {
        let (a, b) = (record([1.0, -2.5]), record([0.1, 3.0]));
        let json = model(false).request_body(&[&a, &b]).unwrap();
        assert_eq!(json.header_length, None);
        let body: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        let data: Vec<f32> = serde_json::from_value(body["inputs"][0]["data"].clone()).unwrap();
        assert_eq!(data, vec![1.0, -2.5, 0.1, 3.0]);

        let binary = model(true).request_body(&[&a, &b]).unwrap();
        let length = binary.header_length.unwrap();
        let (header, raw) = binary.body.split_at(length);
        let header: serde_json::Value = serde_json::from_slice(header).unwrap();
        assert_eq!(header["inputs"][0]["shape"], serde_json::json!([2, 2]));
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], 16);
        assert!(header["inputs"][0].get("data").is_none());
        assert_eq!(header["outputs"][0]["parameters"]["binary_data"], true);
        assert_eq!(header["parameters"]["binary_data_output"], true);
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, vec![1.0, -2.5, 0.1, 3.0]);
    }

    #[test]
    fn binary_answers_are_read_after_their_header_and_checked() {
        let m = model(true);
        let answer = |header: &str, raw: &[f32]| Answer {
            body: header
                .bytes()
                .chain(raw.iter().flat_map(|v| v.to_le_bytes()))
                .collect(),
            header_length: Some(header.len()),
            elapsed: Duration::ZERO,
        };
        let header = r#"{"outputs":[{"name":"logits","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}]}"#;
        let out = m.read_answer(&answer(header, &[0.5, -1.0]), 1).unwrap();
        assert_eq!((out.output_shape, out.output), (vec![2], vec![0.5, -1.0]));
        // Fewer bytes than the header says; a header longer than the body.
        let short = m.read_answer(&answer(header, &[0.5]), 1).unwrap_err();
        assert!(
            short
                .to_string()
                .contains("binary_data_size 8, 4 bytes are left"),
            "{short}"
        );
        let mut long = answer(header, &[0.5, -1.0]);
        long.header_length = Some(long.body.len() + 1);
        assert!(m.read_answer(&long, 1).is_err());
        // A server that answers JSON to a binary request is read as JSON.
        let json = Answer {
            body:
                br#"{"outputs":[{"name":"logits","datatype":"FP32","shape":[1,2],"data":[1,2]}]}"#
                    .to_vec(),
            header_length: None,
            elapsed: Duration::ZERO,
        };
        assert_eq!(m.read_answer(&json, 1).unwrap().output, vec![1.0, 2.0]);
        assert_eq!(
            decode_binary("FP64", &2.5f64.to_le_bytes()).unwrap(),
            vec![2.5]
        );
        assert!(decode_binary("INT64", &[0; 8]).is_err());
        assert!(decode_binary("FP32", &[0; 6]).is_err());
    }

    #[test]
    fn metadata_is_checked_as_a_file_is() {
        let metadata: ModelMetadata = serde_json::from_str(
            r#"{"name":"t","platform":"onnxruntime","versions":null,"inputs":[{"name":"x","datatype":"FP32","shape":[-1,8,8]}],
                "outputs":[{"name":"logits","datatype":"FP32","shape":[-1,4]},{"name":"ids","datatype":"INT64","shape":[-1]}]}"#,
        )
        .unwrap();
        let mut config = ModelConfig {
            path: Default::default(),
            remote: None,
            threads: 1,
            max_batch: 8,
            max_wait: Duration::ZERO,
            inputs: Vec::new(),
            output: "logits".into(),
            attention: None,
        };
        let (inputs, output, attention) = check_metadata(&config, &metadata).unwrap();
        assert_eq!(inputs[0].shape, vec![Some(8), Some(8)]);
        assert_eq!(output.shape, vec![Some(4)]);
        assert!(attention.is_none());
        config.output = "ids".into();
        config.inputs = vec!["y".into()];
        config.attention = Some("logits".into());
        let problems = check_metadata(&config, &metadata).unwrap_err();
        assert!(problems.contains("input 'y' does not exist (the model's inputs: x)"));
        assert!(problems.contains("the model needs input 'x'"));
        assert!(problems.contains("output 'ids' has datatype INT64"));
        assert!(problems.contains("attention output 'logits' must be [batch, heads, seq, seq]"));
    }
}
