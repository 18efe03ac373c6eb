//! The TOML config: structural parse and validation (`Config::from_toml`).
//!
//! Contract: any text is either a config whose values are within their documented ranges and
//! whose paths are absolute (the source is absolute, so relative paths resolve against its
//! directory), or an error that names at least one problem, each with a message.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sensei::config::Config;

/// Where the fuzzed text claims to come from: a directory that does not exist, so a relative
/// `token_file` or password file is never found.
const SOURCE: &str = "/nonexistent/sensei-fuzz/sensei.toml";

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match Config::from_toml(text, Path::new(SOURCE)) {
        Ok(config) => check_config(&config),
        Err(error) => {
            assert!(!error.problems.is_empty(), "an error without problems");
            for problem in &error.problems {
                assert!(
                    !problem.message.trim().is_empty(),
                    "problem at {:?} without a message",
                    problem.path
                );
            }
            let rendered = error.to_string();
            assert!(
                rendered.starts_with("invalid config ") && rendered.lines().count() > 1,
                "error renders without its problems: {rendered:?}"
            );
        }
    }
});

fn check_config(config: &Config) {
    for (key, path) in [
        ("state_dir", &config.state_dir),
        ("inbox.dir", &config.inbox.dir),
        ("inbox.done_dir", &config.inbox.done_dir),
        ("inbox.quarantine_dir", &config.inbox.quarantine_dir),
        ("student.path", &config.student.path),
        ("teacher.path", &config.teacher.path),
        ("store.path", &config.store.path),
        ("redistill.work_dir", &config.redistill.work_dir),
    ] {
        assert!(path.is_absolute(), "{key} = {path:?} is not absolute");
    }
    let sampling = &config.sampling;
    assert!(
        (0.0..=1.0).contains(&sampling.rate),
        "sampling.rate {}",
        sampling.rate
    );
    assert!(
        (0.0..=1.0).contains(&sampling.floor),
        "sampling.floor {}",
        sampling.floor
    );
    assert!(
        sampling.max_per_minute >= 1 && sampling.queue >= 1,
        "{sampling:?}"
    );
    for model in [&config.student, &config.teacher] {
        assert!(
            (1..=1024).contains(&model.threads),
            "threads {}",
            model.threads
        );
        assert!(
            (1..=4096).contains(&model.max_batch),
            "max_batch {}",
            model.max_batch
        );
        assert!(!model.output.trim().is_empty(), "empty output name");
        assert!(
            model.attention.as_deref() != Some(model.output.as_str()),
            "attention and output are both {:?}",
            model.output
        );
    }
    assert!(config.inbox.max_file_bytes >= 1, "inbox.max_file_size 0");
    assert!(
        config.inbox.rescan_interval.as_secs() >= 1,
        "inbox.rescan_interval"
    );
    assert!(config.store.window.as_secs() >= 1, "store.window");
    assert!(
        config.store.record_retention.as_secs() >= 1,
        "store.record_retention"
    );
    assert!(config.segments.max_values >= 1, "segments.max_values 0");
    let detect = &config.detect;
    for (key, value) in [
        (
            "detect.min_shift_disagreement",
            detect.min_shift_disagreement,
        ),
        ("detect.min_shift_error", detect.min_shift_error),
        ("detect.family_alpha", detect.family_alpha),
        ("detect.min_ks", detect.min_ks),
        ("detect.min_class_shift", detect.min_class_shift),
        ("redistill.gate_margin", config.redistill.gate_margin),
        ("redistill.gate_alpha", config.redistill.gate_alpha),
        (
            "redistill.gate_lab_tolerance",
            config.redistill.gate_lab_tolerance,
        ),
    ] {
        assert!(
            value > 0.0 && value < 1.0,
            "{key} = {value} is not a fraction"
        );
    }
    for (key, value) in [
        ("detect.min_shift_sd", detect.min_shift_sd),
        ("detect.min_psi", detect.min_psi),
    ] {
        assert!(
            value.is_finite() && value > 0.0,
            "{key} = {value} is not positive"
        );
    }
    assert!(
        (100..=10_000_000).contains(&detect.arl0),
        "detect.arl0 {}",
        detect.arl0
    );
    assert!(
        (20..=1_000_000).contains(&detect.window_records),
        "detect.window_records {}",
        detect.window_records
    );
    let redistill = &config.redistill;
    assert!(
        (0.05..=0.5).contains(&redistill.holdout),
        "redistill.holdout {}",
        redistill.holdout
    );
    assert!(
        (1..=1000).contains(&redistill.keep_students),
        "redistill.keep_students"
    );
    assert!(redistill.min_samples >= 2, "redistill.min_samples");
    assert!(redistill.timeout.as_secs() >= 1, "redistill.timeout");
    if let Some(program) = redistill.command.first() {
        assert!(
            !program.is_empty(),
            "redistill.command with an empty program"
        );
        for needed in ["{dataset}", "{output}"] {
            assert!(
                redistill.command.iter().any(|arg| arg.contains(needed)),
                "redistill.command without {needed}"
            );
        }
    }
    if let Some(addr) = config.http.listen
        && !addr.ip().is_loopback()
    {
        assert!(
            config.http.token.is_some() || config.http.allow_non_loopback_without_token,
            "http.listen = {addr} is open to the network without a token"
        );
    }
}
