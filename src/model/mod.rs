//! ONNX Runtime: finding and loading the shared library, opening model sessions, reading their
//! input/output specs and running batches. This is the only module that touches `ort`.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), once per process: ONNX Runtime
//! allows one environment per process, ever, so it lives in a process-wide cell. A library named
//! by the config key is the only one tried; without the key the search order is
//! `ORT_DYLIB_PATH`, the binary's directory, then system library directories. When nothing
//! loads, the error names every place searched and why each failed.
//!
//! `pair`: the student and the teacher loaded together and checked for comparability.
//! `remote`: a teacher or a challenger on an inference server (Open Inference Protocol);
//! [`Teacher`] is a local or a remote teacher.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorElementType;
use ort::value::{TensorRef, ValueType};
use sha2::{Digest, Sha256};

use crate::config::{ModelConfig, OnnxRuntimeConfig};
use crate::record::{ElemType, InputSpec, Record, TensorData};

mod pair;
mod remote;

pub use remote::{ConnectFailure, ReachChange, RemoteModel, remote_sha256};

pub use pair::{
    Models, comparable, compatibility_notes, compatibility_problems, load_models, model_problems,
    shape_display, trial_run,
};

/// The loaded ONNX Runtime: where it came from and its version.
pub struct Runtime {
    env: Environment,
    pub library: PathBuf,
    pub version: String,
}

impl Runtime {
    /// The ONNX Runtime environment, for code that builds its own sessions (the benchmarks'
    /// plain-ONNX-Runtime baseline).
    pub fn environment(&self) -> &Environment {
        &self.env
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("version", &self.version)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    RuntimeNotFound(String),
    #[error("cannot load {role} model {path}: {message}")]
    Load {
        role: String,
        path: PathBuf,
        message: String,
    },
    #[error("{role} model {path}: {message}")]
    Spec {
        role: String,
        path: PathBuf,
        message: String,
    },
    #[error("{role} model inference failed: {message}")]
    Run { role: String, message: String },
    /// A model on an inference server that cannot be used: `url` is the model's address.
    #[error("{role} model {url}: {message}")]
    Remote {
        role: String,
        url: String,
        message: String,
    },
    /// A model on an inference server that could not answer this time: no connection, a
    /// timeout, transient errors past the retries, or the circuit breaker open.
    #[error("{role} model {url} is out of reach: {message}")]
    Unreachable {
        role: String,
        url: String,
        message: String,
    },
}

impl ModelError {
    /// The model's server could not be reached (the samples are skipped, not failed).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ModelError::Unreachable { .. })
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Loads ONNX Runtime (once per process) and returns it. A later call with a different
/// configured path returns the library already loaded: a process cannot swap it.
pub fn runtime(config: &OnnxRuntimeConfig) -> Result<&'static Runtime, ModelError> {
    static LOADING: Mutex<()> = Mutex::new(());
    init_once(&RUNTIME, &LOADING, || load_runtime(config))
}

/// The value in `cell`, made by `load` if the cell is empty. Loads are serialised by `loading`,
/// and a caller that waited for another's load takes its value. Unserialised, a thread that found
/// the cell empty while another was loading would build its environment after the other's and be
/// refused (ort: "only one environment is allowed per process"); threads that open models in
/// parallel, as tests do, hit that. A failed load leaves the cell empty for the next caller.
fn init_once<T, E>(
    cell: &'static OnceLock<T>,
    loading: &Mutex<()>,
    load: impl FnOnce() -> Result<T, E>,
) -> Result<&'static T, E> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let _loading = loading.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let value = load()?;
    Ok(cell.get_or_init(|| value))
}

fn load_runtime(config: &OnnxRuntimeConfig) -> Result<Runtime, ModelError> {
    let mut report = String::new();
    for candidate in library_candidates(config) {
        let (origin, path) = match candidate {
            Candidate::File { origin, path } => (origin, path),
            Candidate::Nothing { origin, why } => {
                let _ = writeln!(report, "  - {origin}: {why}");
                continue;
            }
        };
        if !path.is_file() {
            let _ = writeln!(report, "  - {origin}: {} does not exist", path.display());
            continue;
        }
        match try_load(&path) {
            Ok(rt) => return Ok(rt),
            Err(why) => {
                let _ = writeln!(report, "  - {origin}: {}: {why}", path.display());
            }
        }
    }
    if config.library.is_some() {
        return Err(ModelError::RuntimeNotFound(format!(
            "the configured ONNX Runtime library (libonnxruntime.so, version >= 1.{}) is not usable:\n{report}\
             While [onnxruntime] library is set, no other place is searched. Install the library \
             with scripts/setup-onnxruntime.sh and set the key to the file it prints, or remove \
             the key to search ORT_DYLIB_PATH, the binary's directory and the system paths.",
            ort::MINOR_VERSION
        )));
    }
    Err(ModelError::RuntimeNotFound(format!(
        "no usable ONNX Runtime library (libonnxruntime.so, version >= 1.{}) was found. Searched:\n{report}\
         Install it with scripts/setup-onnxruntime.sh, then set [onnxruntime] library in the config \
         or ORT_DYLIB_PATH to the file it prints.",
        ort::MINOR_VERSION
    )))
}

fn try_load(path: &Path) -> Result<Runtime, String> {
    // Read the version ourselves first: ort only checks the minor version and its error for a
    // file that is not ONNX Runtime at all is less clear than ours.
    let version = library_version(path)?;
    let builder = ort::init_from(path).map_err(|e| e.to_string())?;
    let env = builder
        .with_name("sensei")
        .with_telemetry(false)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Runtime {
        env,
        library: path.to_path_buf(),
        version,
    })
}

/// Asks the library for its version string through the stable C entry point `OrtGetApiBase`.
fn library_version(path: &Path) -> Result<String, String> {
    // SAFETY: loading a shared library runs its initialisers; the file is the operator's
    // configured ONNX Runtime (or a system one), the same trust as linking it.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }
            .map_err(|_| "not an ONNX Runtime library (no OrtGetApiBase symbol)".to_string())?;
    // SAFETY: the returned pointer is to a static struct inside the library, which stays loaded
    // (ort keeps its own handle; the C string is copied before `lib` drops).
    let version = unsafe {
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let ptr = ((*base).GetVersionString)();
        if ptr.is_null() {
            return Err("GetVersionString returned null".into());
        }
        std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned()
    };
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor < ort::MINOR_VERSION {
        return Err(format!(
            "version {version} is too old (sensei needs ONNX Runtime >= 1.{})",
            ort::MINOR_VERSION
        ));
    }
    Ok(version)
}

enum Candidate {
    File { origin: String, path: PathBuf },
    Nothing { origin: String, why: String },
}

/// Every place the library may be, in search order. A configured library is the only one: an
/// operator who names a file means that file, and a missing or broken one must be an error, not
/// quietly replaced by whatever else is installed.
fn library_candidates(config: &OnnxRuntimeConfig) -> Vec<Candidate> {
    let mut out = Vec::new();
    match &config.library {
        Some(p) => {
            out.push(Candidate::File {
                origin: "config key onnxruntime.library".into(),
                path: p.clone(),
            });
            return out;
        }
        None => out.push(Candidate::Nothing {
            origin: "config key onnxruntime.library".into(),
            why: "not set".into(),
        }),
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => out.push(Candidate::File {
            origin: "ORT_DYLIB_PATH".into(),
            path: PathBuf::from(p),
        }),
        _ => out.push(Candidate::Nothing {
            origin: "ORT_DYLIB_PATH".into(),
            why: "not set".into(),
        }),
    }
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(("next to the binary".into(), dir.clone()));
        if let Some(prefix) = dir.parent() {
            dirs.push(("the install prefix".into(), prefix.join("lib/sensei")));
        }
    }
    for d in [
        "/usr/lib/sensei",
        "/usr/local/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(("system path".into(), PathBuf::from(d)));
    }
    for (origin, dir) in dirs {
        let found = libraries_in(&dir);
        if found.is_empty() {
            out.push(Candidate::Nothing {
                origin: format!("{origin} {}", dir.display()),
                why: "no libonnxruntime.so*".into(),
            });
        }
        for path in found {
            out.push(Candidate::File {
                origin: origin.clone(),
                path,
            });
        }
    }
    out
}

/// `libonnxruntime.so`, `libonnxruntime.so.1`, `libonnxruntime.so.1.32.0` in `dir`, newest
/// version first.
fn libraries_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "libonnxruntime.so" || n.starts_with("libonnxruntime.so."))
        })
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found
}

/// The spec of one output sensei reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub name: String,
    /// Shape without the batch axis; `None` for dynamic dims.
    pub shape: Vec<Option<usize>>,
}

/// The outputs of one batch, copied out of ONNX Runtime's buffers.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    pub batch: usize,
    /// Per-record shape of the compared output.
    pub output_shape: Vec<usize>,
    pub output: Vec<f32>,
    /// Per-record attention shape `[heads, seq, seq]` and data, when the model exposes it.
    pub attention: Option<(Vec<usize>, Vec<f32>)>,
    pub elapsed: Duration,
}

impl BatchOutput {
    pub fn output_of(&self, i: usize) -> &[f32] {
        let n: usize = self.output_shape.iter().product();
        &self.output[i * n..(i + 1) * n]
    }

    pub fn attention_of(&self, i: usize) -> Option<&[f32]> {
        self.attention.as_ref().map(|(shape, data)| {
            let n: usize = shape.iter().product();
            &data[i * n..(i + 1) * n]
        })
    }
}

/// One loaded model and its session. `run` needs `&mut self`: one `Model` per worker thread.
pub struct Model {
    session: Session,
    pub role: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
    pub inputs: Vec<InputSpec>,
    pub output: OutputSpec,
    pub attention: Option<OutputSpec>,
}

impl Model {
    /// Opens `config.path` with the configured threads and checks that the configured inputs
    /// and outputs exist with types sensei can use. Every problem is listed in one error.
    pub fn load(rt: &Runtime, role: &str, config: &ModelConfig) -> Result<Model, ModelError> {
        let bytes = std::fs::read(&config.path).map_err(|e| ModelError::Load {
            role: role.into(),
            path: config.path.clone(),
            message: e.to_string(),
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let session = open_session(rt, config.threads, &bytes).map_err(|e| ModelError::Load {
            role: role.into(),
            path: config.path.clone(),
            message: e.to_string(),
        })?;
        let spec_err = |message: String| ModelError::Spec {
            role: role.into(),
            path: config.path.clone(),
            message,
        };

        let mut problems = Vec::new();
        let mut inputs = Vec::new();
        let wanted: Vec<&str> = if config.inputs.is_empty() {
            session.inputs().iter().map(|o| o.name()).collect()
        } else {
            config.inputs.iter().map(String::as_str).collect()
        };
        let available: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        for name in &wanted {
            match session.inputs().iter().find(|o| o.name() == *name) {
                None => problems.push(format!(
                    "input '{name}' does not exist (the model's inputs: {})",
                    available.join(", ")
                )),
                Some(o) => match input_spec(name, o.dtype()) {
                    Ok(spec) => inputs.push(spec),
                    Err(msg) => problems.push(msg),
                },
            }
        }
        for o in session.inputs() {
            if !wanted.contains(&o.name()) {
                problems.push(format!(
                    "the model needs input '{}' but the config feeds only: {}",
                    o.name(),
                    wanted.join(", ")
                ));
            }
        }
        let out_names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let find_output = |name: &str, problems: &mut Vec<String>| -> Option<OutputSpec> {
            match session.outputs().iter().find(|o| o.name() == name) {
                None => {
                    problems.push(format!(
                        "output '{name}' does not exist (the model's outputs: {})",
                        out_names.join(", ")
                    ));
                    None
                }
                Some(o) => match output_spec(name, o.dtype()) {
                    Ok(spec) => Some(spec),
                    Err(msg) => {
                        problems.push(msg);
                        None
                    }
                },
            }
        };
        let output = find_output(&config.output, &mut problems);
        let attention = config
            .attention
            .as_deref()
            .and_then(|name| find_output(name, &mut problems));
        if let Some(att) = &attention
            && att.shape.len() != 3
        {
            problems.push(format!(
                "attention output '{}' must be [batch, heads, seq, seq], has rank {}",
                att.name,
                att.shape.len() + 1
            ));
        }
        if !problems.is_empty() {
            return Err(spec_err(problems.join("; ")));
        }
        let Some(output) = output else {
            return Err(spec_err("no output".into()));
        };
        Ok(Model {
            session,
            role: role.into(),
            path: config.path.clone(),
            sha256,
            size_bytes: bytes.len() as u64,
            inputs,
            output,
            attention,
        })
    }

    /// Runs one batch. All records must have equal input shapes (the batcher guarantees it) and
    /// have been validated against `self.inputs`.
    pub fn run(&mut self, batch: &[&Record]) -> Result<BatchOutput, ModelError> {
        let run_err = |message: String| ModelError::Run {
            role: self.role.clone(),
            message,
        };
        if batch.is_empty() {
            return Err(run_err("empty batch".into()));
        }
        let n = batch.len();
        // Stack each input into one contiguous buffer: [n, ...record shape].
        let mut stacked: Vec<(String, Vec<i64>, TensorData)> =
            Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let first = batch[0]
                .inputs
                .get(&spec.name)
                .ok_or_else(|| run_err(format!("record lacks input '{}'", spec.name)))?;
            let mut shape = vec![n as i64];
            shape.extend(first.shape.iter().map(|&d| d as i64));
            let per = first.data.len();
            let mut data = match spec.elem_type {
                ElemType::F32 => TensorData::F32(Vec::with_capacity(per * n)),
                ElemType::I64 => TensorData::I64(Vec::with_capacity(per * n)),
            };
            for r in batch {
                let t = r
                    .inputs
                    .get(&spec.name)
                    .ok_or_else(|| run_err(format!("record lacks input '{}'", spec.name)))?;
                if t.shape != first.shape {
                    return Err(run_err(format!(
                        "records of different shapes in one batch for '{}'",
                        spec.name
                    )));
                }
                match (&mut data, &t.data) {
                    (TensorData::F32(d), TensorData::F32(s)) => d.extend_from_slice(s),
                    (TensorData::I64(d), TensorData::I64(s)) => d.extend_from_slice(s),
                    _ => {
                        return Err(run_err(format!(
                            "input '{}' has the wrong element type",
                            spec.name
                        )));
                    }
                }
            }
            stacked.push((spec.name.clone(), shape, data));
        }

        let started = Instant::now();
        let result = run_session(
            &mut self.session,
            &stacked,
            &self.output.name,
            self.attention.as_ref().map(|a| a.name.as_str()),
        );
        let elapsed = started.elapsed();
        let (output_shape, output, attention) = result.map_err(|e| run_err(e.to_string()))?;
        let check = |shape: &[i64], what: &str| -> Result<Vec<usize>, ModelError> {
            if shape.first().copied() != Some(n as i64) {
                return Err(run_err(format!(
                    "{what} has batch dimension {:?}, expected {n}",
                    shape.first()
                )));
            }
            Ok(shape[1..].iter().map(|&d| d.max(0) as usize).collect())
        };
        let output_shape = check(&output_shape, "output")?;
        let attention = match attention {
            Some((shape, data)) => Some((check(&shape, "attention")?, data)),
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
}

/// What the compatibility checks read of a model: its inputs and the outputs sensei compares.
pub trait Interface {
    fn inputs(&self) -> &[InputSpec];
    fn output(&self) -> &OutputSpec;
    fn attention(&self) -> Option<&OutputSpec>;
}

impl Interface for Model {
    fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }
    fn output(&self) -> &OutputSpec {
        &self.output
    }
    fn attention(&self) -> Option<&OutputSpec> {
        self.attention.as_ref()
    }
}

impl Interface for RemoteModel {
    fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }
    fn output(&self) -> &OutputSpec {
        &self.output
    }
    fn attention(&self) -> Option<&OutputSpec> {
        self.attention.as_ref()
    }
}

/// The teacher: an ONNX file run here, or a model on an inference server (`[teacher] url`).
/// Both answer a batch with the same [`BatchOutput`].
// One teacher per pipeline: the size of the enum does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Teacher {
    Local(Model),
    Remote(RemoteModel),
}

impl Teacher {
    /// Opens the teacher's file, or reads its metadata from the server.
    pub fn load(rt: &Runtime, config: &ModelConfig) -> Result<Teacher, ModelError> {
        match config.remote {
            Some(_) => RemoteModel::connect("teacher", config).map(Teacher::Remote),
            None => Model::load(rt, "teacher", config).map(Teacher::Local),
        }
    }

    pub fn run(&mut self, batch: &[&Record]) -> Result<BatchOutput, ModelError> {
        match self {
            Teacher::Local(m) => m.run(batch),
            Teacher::Remote(m) => m.run(batch),
        }
    }

    /// How many batches [`Teacher::run_many`] runs at once: 1 here, `in_flight` on a server.
    pub fn in_flight(&self) -> usize {
        match self {
            Teacher::Local(_) => 1,
            Teacher::Remote(m) => m.in_flight(),
        }
    }

    /// Runs several batches: one after the other here, as concurrent requests on a server.
    /// One result per batch, in order.
    pub fn run_many(&mut self, batches: &[Vec<&Record>]) -> Vec<Result<BatchOutput, ModelError>> {
        match self {
            Teacher::Local(m) => batches.iter().map(|b| m.run(b)).collect(),
            Teacher::Remote(m) => m.run_many(batches),
        }
    }

    /// For a model on a server: whether it went out of reach (the circuit breaker opened) or
    /// answered again since the last call. The first answer after a start also counts, so that
    /// an episode left open by a stop is closed.
    pub fn take_reach_change(&mut self) -> Option<ReachChange> {
        match self {
            Teacher::Local(_) => None,
            Teacher::Remote(m) => m.take_reach_change(),
        }
    }

    /// The file's sha256, or for a model on a server the sha256 of its address: what the
    /// database knows the teacher by.
    pub fn sha256(&self) -> &str {
        match self {
            Teacher::Local(m) => &m.sha256,
            Teacher::Remote(m) => &m.sha256,
        }
    }

    /// The file's path or the model's URL.
    pub fn location(&self) -> String {
        match self {
            Teacher::Local(m) => m.path.display().to_string(),
            Teacher::Remote(m) => m.location.clone(),
        }
    }
}

impl Interface for Teacher {
    fn inputs(&self) -> &[InputSpec] {
        match self {
            Teacher::Local(m) => &m.inputs,
            Teacher::Remote(m) => &m.inputs,
        }
    }
    fn output(&self) -> &OutputSpec {
        match self {
            Teacher::Local(m) => &m.output,
            Teacher::Remote(m) => &m.output,
        }
    }
    fn attention(&self) -> Option<&OutputSpec> {
        match self {
            Teacher::Local(m) => m.attention.as_ref(),
            Teacher::Remote(m) => m.attention.as_ref(),
        }
    }
}

type RawOutputs = (Vec<i64>, Vec<f32>, Option<(Vec<i64>, Vec<f32>)>);

/// The `ort` part of a run, returning `ort::Result` so builder/run errors convert in one place.
fn run_session(
    session: &mut Session,
    stacked: &[(String, Vec<i64>, TensorData)],
    output: &str,
    attention: Option<&str>,
) -> ort::Result<RawOutputs> {
    let mut inputs = Vec::with_capacity(stacked.len());
    for (name, shape, data) in stacked {
        let value: ort::session::SessionInputValue<'_> = match data {
            TensorData::F32(v) => TensorRef::from_array_view((shape.clone(), v.as_slice()))?.into(),
            TensorData::I64(v) => TensorRef::from_array_view((shape.clone(), v.as_slice()))?.into(),
        };
        inputs.push((std::borrow::Cow::Borrowed(name.as_str()), value));
    }
    let outputs = session.run(inputs)?;
    let extract = |name: &str| -> ort::Result<(Vec<i64>, Vec<f32>)> {
        let value = outputs
            .get(name)
            .ok_or_else(|| ort::Error::new(format!("output '{name}' missing from the run")))?;
        let (shape, data) = value.try_extract_tensor::<f32>()?;
        Ok((shape.iter().copied().collect(), data.to_vec()))
    };
    let (shape, data) = extract(output)?;
    let attention = match attention {
        Some(name) => Some(extract(name)?),
        None => None,
    };
    Ok((shape, data, attention))
}

fn open_session(rt: &Runtime, threads: usize, bytes: &[u8]) -> ort::Result<Session> {
    Session::builder(&rt.env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(threads)?
        .with_inter_threads(1)?
        .commit_from_memory(bytes)
}

fn dims(shape: &[i64]) -> Vec<Option<usize>> {
    shape
        .iter()
        .map(|&d| if d < 0 { None } else { Some(d as usize) })
        .collect()
}

fn input_spec(name: &str, ty: &ValueType) -> Result<InputSpec, String> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return Err(format!("input '{name}' is not a tensor"));
    };
    let elem_type = match ty {
        TensorElementType::Float32 => ElemType::F32,
        TensorElementType::Int64 => ElemType::I64,
        other => {
            return Err(format!(
                "input '{name}' has element type {other:?}; sensei feeds float32 and int64"
            ));
        }
    };
    if shape.is_empty() {
        return Err(format!(
            "input '{name}' is a scalar; sensei needs a batch axis"
        ));
    }
    Ok(InputSpec {
        name: name.into(),
        elem_type,
        shape: dims(&shape[1..]),
    })
}

fn output_spec(name: &str, ty: &ValueType) -> Result<OutputSpec, String> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return Err(format!("output '{name}' is not a tensor"));
    };
    if *ty != TensorElementType::Float32 {
        return Err(format!(
            "output '{name}' has element type {ty:?}; sensei reads float32"
        ));
    }
    if shape.is_empty() {
        return Err(format!(
            "output '{name}' is a scalar; sensei needs a batch axis"
        ));
    }
    Ok(OutputSpec {
        name: name.into(),
        shape: dims(&shape[1..]),
    })
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn threads_asking_at_once_share_one_load() {
        static CELL: OnceLock<usize> = OnceLock::new();
        static LOADING: Mutex<()> = Mutex::new(());
        static LOADS: AtomicUsize = AtomicUsize::new(0);
        let start = Barrier::new(8);
        let values: Vec<usize> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let value = init_once(&CELL, &LOADING, || {
                            Ok::<_, ()>(LOADS.fetch_add(1, Ordering::SeqCst))
                        });
                        *value.expect("the load succeeds")
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(LOADS.load(Ordering::SeqCst), 1);
        assert_eq!(values, vec![0; 8]);
    }

    #[test]
    fn a_failed_load_is_tried_again_by_the_next_caller() {
        static CELL: OnceLock<&str> = OnceLock::new();
        static LOADING: Mutex<()> = Mutex::new(());
        assert_eq!(
            init_once(&CELL, &LOADING, || Err("missing")),
            Err("missing")
        );
        assert_eq!(
            init_once(&CELL, &LOADING, || Ok::<_, &str>("loaded")),
            Ok(&"loaded")
        );
        assert_eq!(
            init_once(&CELL, &LOADING, || Err("not asked")),
            Ok(&"loaded")
        );
    }
}
