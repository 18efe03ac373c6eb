//! The config validation's tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::values::{DAY, parse_size};
use super::*;
use crate::config::*;

const MINIMAL: &str = r#"
state_dir = "/var/lib/sensei"
[student]
path = "/models/student.onnx"
[teacher]
path = "/models/teacher.onnx"
"#;

fn problems(text: &str) -> Vec<ConfigProblem> {
    from_toml(text, Path::new("/etc/sensei/sensei.toml"))
        .expect_err("config should be rejected")
        .problems
}

fn paths(problems: &[ConfigProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../config/sensei.toml");
    let config = from_toml(text, Path::new("/etc/sensei/sensei.toml"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.state_dir, Path::new("/var/lib/sensei"));
    // Both models name their attention output, as the demo models have one: attention KL is on.
    assert_eq!(config.student.attention.as_deref(), Some("attention"));
    assert_eq!(config.teacher.attention.as_deref(), Some("attention"));
}

#[test]
fn minimal_config_gets_defaults() {
    let config = from_toml(MINIMAL, Path::new("/etc/sensei/sensei.toml"))
        .unwrap_or_else(|error| panic!("{error}"));
    let state = Path::new("/var/lib/sensei");
    assert_eq!(config.source, Path::new("/etc/sensei/sensei.toml"));
    assert_eq!(
        config.inbox,
        InboxConfig {
            dir: state.join("inbox"),
            done_dir: state.join("done"),
            quarantine_dir: state.join("quarantine"),
            on_done: OnDone::Move,
            max_file_bytes: 64 * 1024 * 1024,
            quiet: Duration::from_secs(2),
            rescan_interval: Duration::from_secs(60),
            poll: false,
            ts_max_future: Duration::from_secs(86_400),
            ts_max_past: None,
        }
    );
    assert_eq!(config.onnxruntime.library, None);
    for (model, path) in [
        (&config.student, "/models/student.onnx"),
        (&config.teacher, "/models/teacher.onnx"),
    ] {
        assert_eq!(
            *model,
            ModelConfig {
                path: PathBuf::from(path),
                remote: None,
                threads: 1,
                max_batch: 32,
                max_wait: Duration::from_millis(20),
                inputs: Vec::new(),
                output: "logits".to_owned(),
                attention: None,
            }
        );
    }
    assert_eq!(
        config.sampling,
        SamplingConfig {
            policy: SamplingPolicy::Uniform,
            floor: 0.2,
            rate: 0.1,
            seed: 0,
            max_per_minute: 600,
            queue: 256,
        }
    );
    assert_eq!(
        config.compare,
        CompareConfig {
            task: Task::Classification,
            output_kind: OutputKind::Logits,
            pooling: Pooling::None,
            mask_input: None,
            non_finite: NonFinitePolicy::Reject,
        }
    );
    assert_eq!(
        config.segments,
        SegmentConfig {
            keys: Vec::new(),
            max_values: 100,
            max_value_bytes: 64,
        }
    );
    assert_eq!(
        config.store,
        StoreConfig {
            path: state.join("sensei.db"),
            record_retention: Duration::from_secs(30 * 86_400),
            window: Duration::from_secs(15 * 60),
            max_bytes: None,
            synchronous: Synchronous::Normal,
        }
    );
    assert_eq!(
        config.log,
        LogConfig {
            format: LogFormat::Auto,
            filter: "info,ort=warn".to_owned(),
        }
    );
}

#[test]
fn the_failure_back_off_and_its_receivers_are_validated() {
    let config = from_toml(MINIMAL, Path::new("/etc/sensei/sensei.toml"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.redistill.max_backoff, 7 * DAY);
    assert_eq!(config.redistill.alert_after_failures, 2);
    assert!(config.redistill.alert_receivers.is_empty());
    let text = format!(
        "{MINIMAL}[receivers.ops]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\
         [redistill]\nmin_interval = \"2h\"\nmax_backoff = \"1h\"\n\
         alert_receivers = [\"ops\", \"pager\"]\nalert_after_failures = -1\n"
    );
    let found = problems(&text);
    assert_eq!(
        paths(&found),
        [
            "redistill.max_backoff",
            "redistill.alert_receivers[1]",
            "redistill.alert_after_failures"
        ],
        "{found:?}"
    );
    assert!(
        found[0].message.contains("at least redistill.min_interval"),
        "{found:?}"
    );
    assert!(
        found[1].message.contains("no receiver \"pager\""),
        "{found:?}"
    );
}

#[test]
fn challengers_are_validated_with_their_key_paths() {
    let text = format!(
        "{MINIMAL}[shadow]\nagreement_floor = 1.5\n\
         [[challengers]]\nname = \"int8\"\npath = \"int8.onnx\"\nthreads = 0\n\
         [[challengers]]\nname = \"int8\"\npath = \"other.onnx\"\nattention = \"logits\"\n\
         [[challengers]]\nname = \"candidate-3\"\n\
         [[challengers]]\nname = \"a b\"\npath = \"x.onnx\"\n"
    );
    let problems = problems(&text);
    assert_eq!(
        paths(&problems),
        [
            "shadow.agreement_floor",
            "challengers[0].threads",
            "challengers[1].attention",
            "challengers[2].name",
            "challengers[2].path",
            "challengers[3].name",
            "challengers[1].name",
        ],
        "{problems:?}"
    );
    let good = format!("{MINIMAL}[[challengers]]\nname = \"int8\"\npath = \"int8.onnx\"\n");
    let config = Config::from_toml(&good, Path::new("/srv/line4/sensei.toml")).unwrap();
    assert_eq!(config.challengers.len(), 1);
    let c = &config.challengers[0];
    assert_eq!(c.path, Path::new("/srv/line4/int8.onnx"));
    assert_eq!(
        (c.output.as_str(), c.attention.as_deref(), c.threads),
        ("logits", None, 1)
    );
    assert_eq!(config.shadow.agreement_floor, 0.95);
    assert!(config.shadow.candidate);
    let unknown = format!("{MINIMAL}[[challengers]]\nname = \"a\"\npth = \"x\"\n");
    let found = super::tests::problems(&unknown);
    assert_eq!(paths(&found), ["challengers"], "{found:?}");
    assert!(found[0].message.contains("pth"), "{found:?}");
}

#[test]
fn store_synchronous_is_normal_or_full() {
    let full = Config::from_toml(
        &format!("{MINIMAL}[store]\nsynchronous = \"full\"\n"),
        Path::new("/etc/sensei/sensei.toml"),
    )
    .unwrap();
    assert_eq!(full.store.synchronous, Synchronous::Full);
    let found = problems(&format!("{MINIMAL}[store]\nsynchronous = \"off\"\n"));
    assert_eq!(paths(&found), ["store.synchronous"], "{found:?}");
    assert!(found[0].message.contains("\"full\""), "{found:?}");
}

#[test]
fn unknown_key_is_rejected_with_its_path() {
    let text = format!("{MINIMAL}threds = 4\n");
    let problems = problems(&text);
    assert_eq!(paths(&problems), ["teacher.threds"]);
    assert!(problems[0].message.contains("unknown field `threds`"));
    assert!(problems[0].message.contains("line 7, column 1"));
}

/// An unknown table does not hide the bad values beside it: all come back in one round.
#[test]
fn unknown_keys_are_listed_with_every_other_problem() {
    let text = format!(
        "{MINIMAL}[detect2]\nwindow = 5\n[sampling]\nrate = 1.5\n[detect]\narl0 = -3\nmin_shiftt = 0.1\n"
    );
    let found = problems(&text);
    let paths = paths(&found);
    for expected in [
        "detect2",
        "detect.min_shiftt",
        "sampling.rate",
        "detect.arl0",
    ] {
        assert!(paths.contains(&expected), "{expected} missing: {found:?}");
    }
    // A required key of the wrong type is named once, by its type error.
    let text = MINIMAL.replace("path = \"/models/teacher.onnx\"", "path = 3");
    let found = problems(&text);
    assert_eq!(super::tests::paths(&found), ["teacher.path"], "{found:?}");
}

#[test]
fn wrong_type_is_reported_with_its_path() {
    let text = MINIMAL.replace("[teacher]", "[teacher]\nthreads = \"four\"");
    let problems = problems(&text);
    assert_eq!(paths(&problems), ["teacher.threads"]);
    assert!(problems[0].message.contains("invalid type"));
}

#[test]
fn every_semantic_problem_is_reported_together() {
    let text = r#"
[inbox]
on_done = "archive"
max_file_size = "12 XB"
quiet = "5"
[student]
threads = 0
max_batch = 5000
inputs = ["x", "mask", "x", ""]
output = ""
[teacher]
path = "teacher.onnx"
max_wait = "-5ms"
[sampling]
rate = 1.5
queue = -1
[compare]
task = "embedding"
mask_input = "attention_mask"
[segments]
keys = ["line", "line"]
max_values = 0
[store]
window = "500ms"
[log]
format = "xml"
"#;
    let problems = problems(text);
    assert_eq!(
        paths(&problems),
        [
            "state_dir",
            "inbox.on_done",
            "inbox.max_file_size",
            "inbox.quiet",
            "student.path",
            "student.threads",
            "student.max_batch",
            "student.inputs[2]",
            "student.inputs[3]",
            "student.output",
            "teacher.max_wait",
            "sampling.rate",
            "sampling.queue",
            "compare.mask_input",
            "segments.keys[1]",
            "segments.max_values",
            "store.window",
            "log.format",
        ],
        "{problems:#?}"
    );
    let message = |path: &str| {
        problems
            .iter()
            .find(|p| p.path == path)
            .map(|p| p.message.as_str())
            .unwrap_or_default()
    };
    assert_eq!(message("student.threads"), "must be at least 1, got 0");
    assert_eq!(message("sampling.rate"), "must be within 0..=1, got 1.5");
    assert_eq!(
        message("compare.mask_input"),
        "requires compare.pooling = \"mean\""
    );
    assert!(
        message("inbox.max_file_size").starts_with("cannot parse \"12 XB\": unknown unit"),
        "{problems:#?}"
    );
    assert_eq!(
        message("inbox.on_done"),
        "unknown value \"archive\", expected one of \"move\", \"delete\""
    );
    assert_eq!(
        message("store.window"),
        "must be at least 1s, got \"500ms\""
    );
}

#[test]
fn error_display_lists_every_problem() {
    let error =
        from_toml("[sampling]\nrate = -0.5\n", Path::new("/etc/sensei.toml")).expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "invalid config /etc/sensei.toml:\n  \
         state_dir: required: the directory for the database, inbox and done files\n  \
         student.path: required: the student model's .onnx file\n  \
         teacher.path: required: the teacher model's .onnx file, or teacher.url and teacher.model for a teacher on an inference server\n  \
         sampling.rate: must be within 0..=1, got -0.5"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let text = r#"
state_dir = "state"
[inbox]
dir = "../drop"
[onnxruntime]
library = "lib/libonnxruntime.so"
[student]
path = "models/student.onnx"
[teacher]
path = "/opt/models/teacher.onnx"
"#;
    let config = from_toml(text, Path::new("/srv/line4/sensei.toml"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.state_dir, Path::new("/srv/line4/state"));
    assert_eq!(config.inbox.dir, Path::new("/srv/line4/../drop"));
    assert_eq!(config.inbox.done_dir, Path::new("/srv/line4/state/done"));
    assert_eq!(config.store.path, Path::new("/srv/line4/state/sensei.db"));
    assert_eq!(
        config.onnxruntime.library.as_deref(),
        Some(Path::new("/srv/line4/lib/libonnxruntime.so"))
    );
    assert_eq!(
        config.student.path,
        Path::new("/srv/line4/models/student.onnx")
    );
    assert_eq!(config.teacher.path, Path::new("/opt/models/teacher.onnx"));
}

#[test]
fn task_specific_keys_are_checked() {
    let text = format!(
        "{MINIMAL}[compare]\ntask = \"regression\"\noutput_kind = \"probabilities\"\npooling = \"mean\"\n"
    );
    assert_eq!(
        paths(&problems(&text)),
        ["compare.output_kind", "compare.pooling"]
    );
    let text = format!(
        "{MINIMAL}[compare]\ntask = \"embedding\"\npooling = \"mean\"\nmask_input = \"attention_mask\"\n"
    );
    let config = from_toml(&text, Path::new("/etc/sensei/sensei.toml"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.compare.mask_input.as_deref(), Some("attention_mask"));
}

#[test]
fn sampling_rate_accepts_both_ends() {
    for rate in ["0.0", "1", "1.0"] {
        let text = format!("{MINIMAL}[sampling]\nrate = {rate}\n");
        from_toml(&text, Path::new("/etc/sensei/sensei.toml"))
            .unwrap_or_else(|error| panic!("rate {rate}: {error}"));
    }
    let text = format!("{MINIMAL}[sampling]\nrate = nan\n");
    assert_eq!(paths(&problems(&text)), ["sampling.rate"]);
}

#[test]
fn load_reports_unreadable_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("missing.toml");
    let error = load(&path).expect_err("missing file");
    assert_eq!(error.problems.len(), 1);
    assert_eq!(error.problems[0].path, "");
    assert!(error.problems[0].message.contains("missing.toml"));

    let path = dir.path().join("sensei.toml");
    std::fs::write(&path, MINIMAL.replace("/models/", "models/")).expect("write");
    let config = load(&path).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.student.path, dir.path().join("models/student.onnx"));
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration(" 15 m "), Ok(Duration::from_secs(900)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
}

#[test]
fn bad_durations_are_rejected() {
    let error = |text: &str| parse_duration(text).expect_err(text);
    assert!(error("15").starts_with("missing unit"));
    assert!(error("15 weeks").starts_with("unknown unit \"weeks\""));
    assert!(error("15M").starts_with("unknown unit \"M\""));
    assert!(error("-5s").starts_with("expected a whole number"));
    assert!(error("1.5s").starts_with("unknown unit \".5s\""));
    assert!(error("").starts_with("expected a whole number"));
    assert!(error("s").starts_with("expected a whole number"));
    assert_eq!(error("99999999999999999999s"), "too large");
    assert_eq!(error("18446744073709551615d"), "too large");
    assert_eq!(
        parse_duration("18446744073709551615ms"),
        Ok(Duration::from_millis(u64::MAX))
    );
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("1048576"), Ok(1_048_576));
    assert_eq!(parse_size("10 B"), Ok(10));
    assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
    assert_eq!(parse_size("64 MiB"), Ok(64 * 1024 * 1024));
    assert_eq!(parse_size("2 GiB"), Ok(2 * 1024 * 1024 * 1024));
    assert_eq!(parse_size("3 KB"), Ok(3_000));
    assert_eq!(parse_size("5 MB"), Ok(5_000_000));
    assert_eq!(parse_size("1 GB"), Ok(1_000_000_000));
}

#[test]
fn bad_sizes_are_rejected() {
    let error = |text: &str| parse_size(text).expect_err(text);
    assert!(error("12 XB").starts_with("unknown unit \"XB\""));
    assert!(error("12 mib").starts_with("unknown unit \"mib\""));
    assert!(error("-1 MiB").starts_with("expected a whole number"));
    assert!(error("MiB").starts_with("expected a whole number"));
    assert!(error("1.5 GiB").starts_with("unknown unit \".5 GiB\""));
    assert_eq!(error("18446744073709551616"), "too large");
    assert_eq!(error("17179869184 GiB"), "too large");
}

#[test]
fn integer_sizes_are_bytes() {
    let text = MINIMAL.replace("[student]", "[inbox]\nmax_file_size = 4096\n[student]");
    let config = from_toml(&text, Path::new("/etc/sensei/sensei.toml"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.inbox.max_file_bytes, 4096);
    for bad in ["-1", "0", "\"0 MiB\""] {
        let text = MINIMAL.replace(
            "[student]",
            &format!("[inbox]\nmax_file_size = {bad}\n[student]"),
        );
        assert_eq!(paths(&problems(&text)), ["inbox.max_file_size"], "{bad}");
    }
}

#[test]
fn secret_files_are_one_line_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let ok = file("ok", b"  s3cret \nignored\n");
    assert_eq!(super::super::read_secret(&ok).unwrap().expose(), "s3cret");
    let error = |p: &Path| super::super::read_secret(p).expect_err("refused");
    let big = file("big", &vec![b'a'; 64 * 1024 + 1]);
    assert!(error(&big).ends_with("is larger than 64 KiB; a secret file holds one line"));
    // A device that never ends costs 64 KiB, not the machine.
    assert!(error(Path::new("/dev/zero")).contains("is larger than 64 KiB"));
    assert!(error(&file("empty", b"\n  \n")).ends_with("is empty"));
    let latin1 = error(&file("latin1", b"p\xe4ss\n"));
    assert!(latin1.ends_with("is not UTF-8 text"), "{latin1}");
    assert!(!latin1.contains("p\u{fffd}ss"), "{latin1}");
    assert!(error(&dir.path().join("missing")).starts_with("cannot read"));

    // Through the config: the problem carries the key path.
    let text = format!(
        "{MINIMAL}[http]\nlisten = \"127.0.0.1:9477\"\ntoken_file = {:?}\n",
        big.display().to_string()
    );
    let found = problems(&text);
    assert_eq!(paths(&found), ["http.token_file"]);
}

#[test]
fn a_config_file_that_is_not_text_or_is_huge_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let message = |content: &[u8]| {
        let p = dir.path().join("sensei.toml");
        std::fs::write(&p, content).unwrap();
        let e = load(&p).expect_err("refused");
        assert_eq!(e.problems.len(), 1);
        e.problems[0].message.clone()
    };
    let m = message(b"state_dir = \"/x\"\n\xff\xfe");
    assert!(m.ends_with("is not UTF-8 text (line 2, byte 17)"), "{m}");
    let m = message(&vec![b'#'; 4 * 1024 * 1024 + 1]);
    assert!(
        m.ends_with("is larger than 4 MiB; is it the config file?"),
        "{m}"
    );
    let e = load(Path::new("/dev/zero")).expect_err("refused");
    assert!(e.problems[0].message.contains("larger than 4 MiB"));
}

const STUDENT_ONLY: &str = r#"
state_dir = "/var/lib/sensei"
[student]
path = "/models/student.onnx"
"#;

#[test]
fn a_teacher_on_an_inference_server_is_read() {
    let text = format!(
        "{STUDENT_ONLY}[teacher]\nurl = \"https://triton.example:8000/\"\nmodel = \"teacher\"\nversion = \"3\"\ntimeout = \"2s\"\n"
    );
    let config =
        from_toml(&text, Path::new("/etc/sensei/sensei.toml")).unwrap_or_else(|e| panic!("{e}"));
    let remote = config.teacher.remote.as_ref().expect("a remote teacher");
    assert_eq!(remote.url, "https://triton.example:8000");
    assert_eq!(remote.model, "teacher");
    assert_eq!(remote.version.as_deref(), Some("3"));
    assert_eq!(remote.timeout, Duration::from_secs(2));
    assert_eq!(config.teacher.path, PathBuf::new());
    assert_eq!(
        config.teacher.location(),
        "https://triton.example:8000/v2/models/teacher/versions/3"
    );
    let text = format!("{STUDENT_ONLY}[teacher]\nurl = \"http://127.0.0.1:8080\"\nmodel = \"t\"\n");
    let config =
        from_toml(&text, Path::new("/etc/sensei/sensei.toml")).unwrap_or_else(|e| panic!("{e}"));
    let remote = config.teacher.remote.expect("a remote teacher");
    assert_eq!(
        (remote.version, remote.timeout),
        (None, Duration::from_secs(10))
    );
    assert_eq!(
        (remote.retries, remote.backoff, remote.in_flight),
        (2, Duration::from_millis(200), 2)
    );
    assert_eq!(
        (remote.breaker_after, remote.breaker_open),
        (3, Duration::from_secs(30))
    );
    assert_eq!(remote.tensors, crate::config::TensorEncoding::Auto);
    let text = format!("{text}tensors = \"binary\"\n");
    let config =
        from_toml(&text, Path::new("/etc/sensei/sensei.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.teacher.remote.expect("a remote teacher").tensors,
        crate::config::TensorEncoding::Binary
    );
    let text = format!(
        "{STUDENT_ONLY}[teacher]\nurl = \"http://h\"\nmodel = \"t\"\nretries = 11\nin_flight = 0\nbreaker_after = 0\nbreaker_open = \"0s\"\nbackoff = \"soon\"\ntensors = \"protobuf\"\n"
    );
    assert_eq!(
        paths(&problems(&text)),
        [
            "teacher.retries",
            "teacher.backoff",
            "teacher.in_flight",
            "teacher.breaker_after",
            "teacher.breaker_open",
            "teacher.tensors"
        ]
    );
}

#[test]
fn a_remote_teacher_is_checked_key_by_key() {
    let message = |text: &str, key: &str| -> String {
        let problems = problems(text);
        problems
            .iter()
            .find(|p| p.path == key)
            .map(|p| p.message.clone())
            .unwrap_or_else(|| panic!("no problem at {key}: {problems:#?}"))
    };
    // Both a file and a server.
    let both = format!("{MINIMAL}url = \"http://127.0.0.1:8000\"\nmodel = \"t\"\n");
    assert!(message(&both, "teacher.url").contains("exclude each other"));
    // Neither.
    let neither = format!("{STUDENT_ONLY}[teacher]\nthreads = 2\n");
    assert_eq!(
        message(&neither, "teacher.path"),
        "required: the teacher model's .onnx file, or teacher.url and teacher.model for a teacher on an inference server"
    );
    // A server without a model name, with a bad scheme, with credentials, with a query.
    let no_model = format!("{STUDENT_ONLY}[teacher]\nurl = \"http://127.0.0.1:8000\"\n");
    assert!(message(&no_model, "teacher.model").starts_with("required with teacher.url"));
    let ftp = format!("{STUDENT_ONLY}[teacher]\nurl = \"ftp://host/\"\nmodel = \"t\"\n");
    assert!(message(&ftp, "teacher.url").contains("must be http or https, not ftp"));
    let secret =
        format!("{STUDENT_ONLY}[teacher]\nurl = \"https://me:hunter2@host\"\nmodel = \"t\"\n");
    let said = message(&secret, "teacher.url");
    assert!(
        said.contains("user name or password") && !said.contains("hunter2"),
        "{said}"
    );
    let query = format!("{STUDENT_ONLY}[teacher]\nurl = \"http://host/?a=1\"\nmodel = \"t\"\n");
    assert!(message(&query, "teacher.url").contains("query"));
    let not_a_url = format!("{STUDENT_ONLY}[teacher]\nurl = \"localhost\"\nmodel = \"t\"\n");
    assert!(message(&not_a_url, "teacher.url").contains("is not a URL"));
    // Names that would change the request's path, a zero timeout.
    let bad = format!(
        "{STUDENT_ONLY}[teacher]\nurl = \"http://host\"\nmodel = \"a/b\"\nversion = \"..\"\ntimeout = \"0s\"\n"
    );
    assert_eq!(
        paths(&problems(&bad)),
        ["teacher.model", "teacher.version", "teacher.timeout"]
    );
    // Server keys without a server, and on the student.
    let orphans = format!("{MINIMAL}model = \"t\"\ntimeout = \"1s\"\n");
    assert_eq!(
        paths(&problems(&orphans)),
        ["teacher.model", "teacher.timeout"]
    );
    let student = "state_dir = \"/s\"\n[student]\nurl = \"http://host\"\nmodel = \"s\"\n[teacher]\npath = \"/t.onnx\"\n";
    let problems = problems(student);
    assert_eq!(
        paths(&problems),
        ["student.url", "student.model", "student.path"]
    );
    assert!(problems[0].message.contains("only [teacher] may be served"));
}

#[test]
fn a_challenger_on_an_inference_server_is_checked_as_the_teacher_is_and_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "tok-c4a1\n").unwrap();
    let source = dir.path().join("sensei.toml");
    let good = format!(
        "{MINIMAL}[[challengers]]\nname = \"int8\"\npath = \"int8.onnx\"\n\
         [[challengers]]\nname = \"big\"\nurl = \"http://127.0.0.1:8000/\"\nmodel = \"big\"\n\
         version = \"2\"\ntimeout = \"500ms\"\nbreaker_after = 5\ntensors = \"json\"\n\
         token_file = \"token\"\nattention = \"attention\"\n"
    );
    let config = from_toml(&good, &source).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.challengers[0].remote.is_none());
    let big = &config.challengers[1];
    assert_eq!(big.path, PathBuf::new());
    let remote = big.remote.as_ref().expect("a challenger on a server");
    assert_eq!(
        (remote.section.as_str(), remote.model_url().as_str()),
        (
            "challengers[1]",
            "http://127.0.0.1:8000/v2/models/big/versions/2"
        )
    );
    assert_eq!(
        (remote.timeout, remote.breaker_after, remote.tensors),
        (
            Duration::from_millis(500),
            5,
            crate::config::TensorEncoding::Json
        )
    );
    assert_eq!(remote.token.as_ref().map(|t| t.expose()), Some("tok-c4a1"));
    assert!(!format!("{config:?}").contains("tok-c4a1"));
    // The teacher's defaults, and the teacher's batches.
    let model = big.model_config(&config.teacher);
    assert_eq!(model.remote.as_ref().map(|r| r.retries), Some(2));
    assert_eq!(model.max_batch, config.teacher.max_batch);
    assert_eq!(model.location(), remote.model_url());

    let bad = format!(
        "{MINIMAL}[[challengers]]\nname = \"both\"\npath = \"a.onnx\"\nurl = \"http://h\"\nmodel = \"a\"\n\
         [[challengers]]\nname = \"neither\"\n\
         [[challengers]]\nname = \"nameless-server\"\nurl = \"ftp://h\"\nthreads = 2\n\
         [[challengers]]\nname = \"orphans\"\npath = \"o.onnx\"\ntimeout = \"1s\"\ntoken_file = \"missing\"\n"
    );
    let found = from_toml(&bad, &source).unwrap_err().problems;
    assert_eq!(
        paths(&found),
        [
            "challengers[0].url",
            "challengers[1].path",
            "challengers[2].url",
            "challengers[2].model",
            "challengers[2].threads",
            "challengers[3].timeout",
            "challengers[3].token_file",
        ],
        "{found:#?}"
    );
    let said = |i: usize| found[i].message.as_str();
    assert!(
        said(0).starts_with("challenger \"both\": ") && said(0).contains("exclude each other"),
        "{}",
        said(0)
    );
    assert_eq!(
        said(1),
        "challenger \"neither\": required: the challenger's .onnx file, or challengers[1].url and \
         challengers[1].model for a challenger on an inference server"
    );
    assert!(
        said(2).contains("must be http or https, not ftp"),
        "{}",
        said(2)
    );
    assert!(
        said(3).starts_with("challenger \"nameless-server\": required with challengers[2].url"),
        "{}",
        said(3)
    );
    assert!(
        said(4).contains("only applies to a challenger run here"),
        "{}",
        said(4)
    );
    assert!(
        said(5).contains("only applies with challengers[3].url"),
        "{}",
        said(5)
    );
}

#[test]
fn a_remote_teachers_token_is_read_at_load_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "tok-51e7\n").unwrap();
    let base = "state_dir = \"/s\"\n[student]\npath = \"/s.onnx\"\n[teacher]\nurl = \"https://h\"\nmodel = \"t\"\n";
    let config = from_toml(
        &format!("{base}token_file = \"token\"\nca_file = \"ca.pem\"\n"),
        &dir.path().join("sensei.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let remote = config.teacher.remote.as_ref().unwrap();
    assert_eq!(remote.token.as_ref().map(|t| t.expose()), Some("tok-51e7"));
    assert_eq!(
        remote.ca_file.as_deref(),
        Some(dir.path().join("ca.pem").as_path())
    );
    assert!(!format!("{config:?}").contains("tok-51e7"));
    let problems = from_toml(
        &format!(
            "{base}token_file = \"missing\"\ntoken_credential = \"x\"\nclient_cert_file = \"c.pem\"\n"
        ),
        &dir.path().join("sensei.toml"),
    )
    .unwrap_err()
    .problems;
    assert_eq!(
        paths(&problems),
        ["teacher.client_key_file", "teacher.token_credential"]
    );
    let missing = from_toml(
        &format!("{base}token_file = \"missing\"\n"),
        &dir.path().join("sensei.toml"),
    )
    .unwrap_err()
    .problems;
    assert_eq!(paths(&missing), ["teacher.token_file"]);
}

#[test]
fn record_time_bounds_and_segment_limits_are_read_and_checked() {
    let text = MINIMAL.replace(
        "[student]",
        "[inbox]\nts_max_future = \"2h\"\nts_max_past = \"30d\"\n\
         [segments]\nkeys = [\"line\"]\nmax_value_bytes = 128\n[student]",
    );
    let config = from_toml(&text, Path::new("/etc/sensei/sensei.toml"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.inbox.ts_max_future, Duration::from_secs(7200));
    assert_eq!(
        config.inbox.ts_max_past,
        Some(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(config.segments.max_value_bytes, 128);
    let text = MINIMAL.replace(
        "[student]",
        "[inbox]\nts_max_future = \"soon\"\nts_max_past = \"0s\"\n\
         [segments]\nkeys = [\"line\", \"a,b\", \"c=d\", \"50%\"]\nmax_value_bytes = 8\n[student]",
    );
    let problems = problems(&text);
    assert_eq!(
        paths(&problems),
        [
            "inbox.ts_max_future",
            "inbox.ts_max_past",
            "segments.keys[1]",
            "segments.keys[2]",
            "segments.keys[3]",
            "segments.max_value_bytes",
        ],
        "{problems:#?}"
    );
}

#[test]
fn the_false_alarm_budget_is_parsed_and_its_mistakes_are_listed_with_the_others() {
    let config = from_toml(MINIMAL, Path::new("/etc/sensei/sensei.toml")).expect("valid");
    assert_eq!(config.detect.false_alarms.events, 1.0);
    assert_eq!(
        config.detect.false_alarms.period,
        std::time::Duration::from_secs(90 * 86_400)
    );
    assert_eq!(config.detect.arl0.for_family("kl"), None);
    assert_eq!(config.detect.family_alpha, None);
    let text = format!(
        "{MINIMAL}[detect]\nfalse_alarms = \"2.5 per 1h\"\narl0 = {{ disagreement = 50000 }}\n"
    );
    let config = from_toml(&text, Path::new("/etc/sensei/sensei.toml")).expect("valid");
    assert_eq!(config.detect.false_alarms.events, 2.5);
    assert_eq!(config.detect.false_alarms.period.as_secs(), 3600);
    assert_eq!(config.detect.arl0.for_family("disagreement"), Some(50_000));
    assert_eq!(config.detect.arl0.for_family("kl"), None);
    let text = format!("{MINIMAL}[detect]\narl0 = 20000\n");
    let config = from_toml(&text, Path::new("/etc/sensei/sensei.toml")).expect("valid");
    assert_eq!(config.detect.arl0.for_family("kl"), Some(20_000));
    for (bad, says) in [
        ("1 per", "N per <duration>"),
        ("one per 90d", "not a number"),
        ("0 per 90d", "above 0"),
        ("1 per 90x", "unknown unit"),
        ("1 per 10s", "at least 1m"),
    ] {
        let text = format!(
            "{MINIMAL}[detect]\nfalse_alarms = \"{bad}\"\narl0 = {{ klx = 5 }}\n[sampling]\nrate = 2\n"
        );
        let found = problems(&text);
        let p = paths(&found);
        assert!(p.contains(&"detect.false_alarms"), "{bad}: {found:?}");
        assert!(p.contains(&"detect.arl0.klx"), "{bad}: {found:?}");
        assert!(p.contains(&"sampling.rate"), "{bad}: {found:?}");
        let message = &found
            .iter()
            .find(|f| f.path == "detect.false_alarms")
            .unwrap()
            .message;
        assert!(message.contains(says), "{bad}: {message}");
    }
}
