//! `sensei check`: every problem listed, exit 78; the loaded library and its version shown.

use crate::common::{Site, fixture_model};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn a_good_setup_passes_and_names_the_library_and_its_version() {
    let site = Site::new();
    site.write_config("");
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("onnxruntime: ") && text.contains("(version 1.32.0)"),
        "{text}"
    );
    assert!(
        text.contains(
            "inputs: x float32 [8, 8]; output: logits [10]; attention: attention [4, 8, 8]"
        ),
        "{text}"
    );
    assert!(text.contains("OK: no problems found."), "{text}");
    // check creates nothing.
    assert!(!site.db_path().exists());
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_78() {
    let site = Site::new();
    site.write_config(
        "[compare]\ntask = \"sorting\"\nnon_finite = \"maybe\"\n[log]\nverbosity = 3\n",
    );
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(text.contains("log.verbosity"), "{text}");
}

#[test]
fn semantic_config_problems_are_all_reported() {
    let site = Site::new();
    site.write_config("[sampling]\nrate = 1.5\nqueue = 0\n");
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("sampling.rate") && text.contains("sampling.queue"),
        "{text}"
    );
}

#[test]
fn model_problems_are_all_reported() {
    let site = Site::with_models(
        fixture_model("renamed_output.onnx"),
        fixture_model("five_classes.onnx"),
    );
    site.write_config("");
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    // The student has no 'logits' output; named with what it does have.
    assert!(
        text.contains(
            "output 'logits' does not exist (the model's outputs: class_scores, attention)"
        ),
        "{text}"
    );
}

#[test]
fn incomparable_outputs_are_a_problem() {
    let site = Site::with_models(
        fixture_model("student.onnx"),
        fixture_model("five_classes.onnx"),
    );
    site.write_config("");
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains(
            "outputs are not comparable: student 'logits' is [10], teacher 'logits' is [5]"
        ),
        "{text}"
    );
}

/// Points the config's `[onnxruntime] library` at `library`.
fn use_library(cfg: &std::path::Path, library: &std::path::Path) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("library = "))
        .unwrap()
        .to_string();
    let replaced = text.replace(
        &line,
        &format!("library = {:?}", library.display().to_string()),
    );
    std::fs::write(cfg, replaced).unwrap();
}

#[test]
fn a_missing_runtime_names_every_place_searched() {
    let site = Site::new();
    let cfg = site.write_config("");
    let missing = site.root().join("nowhere/libonnxruntime.so.1.32.0");
    use_library(&cfg, &missing);
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(text.contains("no usable ONNX Runtime library"), "{text}");
    assert!(
        text.contains(&format!(
            "config key onnxruntime.library: {} does not exist",
            missing.display()
        )),
        "{text}"
    );
    assert!(text.contains("ORT_DYLIB_PATH: not set"), "{text}");
    assert!(text.contains("next to the binary"), "{text}");
    assert!(text.contains("scripts/setup-onnxruntime.sh"), "{text}");
}

#[test]
fn a_file_that_is_not_onnx_runtime_is_refused_clearly() {
    let site = Site::new();
    let cfg = site.write_config("");
    let fake = site.root().join("libonnxruntime.so.1.99.0");
    std::fs::write(&fake, b"not a shared library").unwrap();
    use_library(&cfg, &fake);
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains(&format!(
            "config key onnxruntime.library: {}",
            fake.display()
        )),
        "{text}"
    );
}

/// The example config, pointed at the demo models: `check` finds the attention output it names
/// on both models, so attention KL is on (a config without it passes with "attention: none").
#[test]
fn the_example_config_turns_attention_kl_on_for_the_demo_models() {
    let site = Site::new();
    site.write_config("");
    let demo = crate::common::repo().join("models/demo");
    let state = site.root().join("state");
    let text = std::fs::read_to_string(crate::common::repo().join("config/sensei.toml"))
        .unwrap()
        .replace(
            "/var/lib/sensei/models/student.onnx",
            demo.join("student.onnx").to_str().unwrap(),
        )
        .replace(
            "/var/lib/sensei/models/teacher.onnx",
            demo.join("teacher.onnx").to_str().unwrap(),
        )
        .replace("/var/lib/sensei", state.to_str().unwrap())
        .replace(
            "[onnxruntime]\n",
            &format!(
                "[onnxruntime]\nlibrary = {:?}\n",
                crate::common::ort_library().display().to_string()
            ),
        );
    std::fs::write(site.config_path(), text).unwrap();
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    let models: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("student: ") || l.starts_with("teacher: "))
        .collect();
    assert_eq!(models.len(), 2, "{text}");
    for line in models {
        assert!(
            line.ends_with("attention: attention [4, 8, 8]"),
            "{line}\n{text}"
        );
    }
}
