//! Which student serves: `[student] path`, unless `sensei promote` (or the re-distillation loop)
//! has promoted another model. A promotion copies the model into `<state_dir>/models/` and names
//! it in `<state_dir>/models/student.json`, the pointer read here; `crate::redistill::promote`
//! writes it. The pointer records which `[student] path` it overrides, so editing that path in
//! the config wins over an older promotion.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Config;

/// `<state_dir>/models/student.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    pub path: PathBuf,
    pub sha256: String,
    /// The `[student] path` this promotion overrides.
    pub configured: PathBuf,
}

pub fn pointer_path(state_dir: &Path) -> PathBuf {
    state_dir.join("models").join("student.json")
}

pub fn read_pointer(state_dir: &Path) -> Option<Pointer> {
    let bytes = std::fs::read(pointer_path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Serves the promoted student, if a promotion of this config's `[student] path` exists and its
/// file is there. Called by [`Config::load`].
pub fn apply_promoted_student(config: &mut Config) {
    if let Some(p) = read_pointer(&config.state_dir)
        && p.configured == config.student.path
        && p.path.is_file()
    {
        config.student.path = p.path;
    }
}
