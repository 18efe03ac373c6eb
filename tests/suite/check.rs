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
    remove_library(&cfg);
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(text.contains("no usable ONNX Runtime library"), "{text}");
    assert!(
        text.contains("config key onnxruntime.library: not set"),
        "{text}"
    );
    assert!(text.contains("ORT_DYLIB_PATH: not set"), "{text}");
    assert!(text.contains("next to the binary"), "{text}");
    assert!(text.contains("scripts/setup-onnxruntime.sh"), "{text}");
}

/// Takes the `[onnxruntime] library` key out of the config.
fn remove_library(cfg: &std::path::Path) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("library = "))
        .unwrap()
        .to_string();
    std::fs::write(cfg, text.replace(&line, "")).unwrap();
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

#[test]
fn symbolic_link_loops_and_dangling_links_in_the_state_paths_are_problems() {
    use std::os::unix::fs::symlink;
    let site = Site::new();
    site.write_config("[inbox]\nquiet = \"300ms\"\nquarantine_dir = \"state/spin/quarantine\"\n");
    let state = site.root().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // inbox -> around -> inbox; done -> a directory that does not exist; the database is a
    // link to itself; quarantine/ lies under a link to itself.
    symlink("around", state.join("inbox")).unwrap();
    symlink("inbox", state.join("around")).unwrap();
    symlink("/nonexistent/sensei-done", state.join("done")).unwrap();
    symlink("sensei.db", state.join("sensei.db")).unwrap();
    symlink("spin", state.join("spin")).unwrap();
    let out = site.sensei(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    for (what, path, problem) in [
        ("inbox.dir", state.join("inbox"), "is a symbolic link loop"),
        (
            "inbox.done_dir",
            state.join("done"),
            "is a dangling symbolic link: it points to /nonexistent/sensei-done",
        ),
        (
            "store.path",
            state.join("sensei.db"),
            "is a symbolic link loop",
        ),
    ] {
        let expected = format!("{what} {}: {} {problem}", path.display(), path.display());
        assert!(text.contains(&expected), "{expected:?} not in {text}");
    }
    let quarantine = format!(
        "inbox.quarantine_dir {}: {} is a symbolic link loop",
        state.join("spin/quarantine").display(),
        state.join("spin").display()
    );
    assert!(text.contains(&quarantine), "{quarantine:?} not in {text}");
}

/// `sensei` with `ORT_DYLIB_PATH` pointing at the real library.
fn sensei_with_ort_env(site: &Site, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::common::sensei_bin())
        .arg("--config")
        .arg(site.config_path())
        .args(args)
        .env("ORT_DYLIB_PATH", crate::common::ort_library())
        .env("SENSEI_LOG", "info,ort=warn")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sensei")
}

#[test]
fn a_configured_runtime_that_is_missing_or_garbage_is_never_replaced_by_another() {
    let site = Site::new();
    let cfg = site.write_config("");
    let garbage = site.root().join("libonnxruntime.so.1.32.0");
    std::fs::write(&garbage, b"\x7fELF not really").unwrap();
    let missing = site.root().join("nowhere/libonnxruntime.so.1.32.0");
    for library in [&missing, &garbage] {
        use_library(&cfg, library);
        for command in ["check", "run"] {
            let out = sensei_with_ort_env(&site, &[command]);
            let text = stdout(&out);
            assert_ne!(out.status.code(), Some(0), "{command}: {text}");
            assert!(
                text.contains("the configured ONNX Runtime library")
                    && text.contains(&format!(
                        "config key onnxruntime.library: {}",
                        library.display()
                    ))
                    && text.contains("no other place is searched"),
                "{command}: {text}"
            );
            assert!(!text.contains("(version 1.32.0)"), "{command}: {text}");
            assert!(
                text.contains("scripts/setup-onnxruntime.sh"),
                "{command}: {text}"
            );
        }
    }
    // Without the key, ORT_DYLIB_PATH is used.
    remove_library(&cfg);
    let out = sensei_with_ort_env(&site, &["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("(version 1.32.0)"), "{text}");
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
