//! The command line as a user meets it: output into a pipe that closes early, the help text,
//! the version, the config from `SENSEI_CONFIG`, and `-v`/`-q`/`--log-format`.

use std::process::{Command, Output, Stdio};

use crate::common::{Site, jsonl, repo, sensei_bin};

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A site whose database holds a replayed file.
fn site_with_records() -> Site {
    let site = Site::new();
    site.write_config("");
    let file = site.root().join("a.jsonl");
    std::fs::write(&file, jsonl("a", 40)).unwrap();
    let out = site.sensei(&["replay", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(site.records(), 40);
    site
}

/// Every command that prints, into a pipe whose reader has gone (as `| head -1` leaves it once
/// it has its line): the write fails with EPIPE, and the command ends quietly with status 0
/// instead of a panic (status 101). The reader is closed before the command starts, so every
/// write it makes meets the closed pipe.
#[test]
fn output_into_a_closed_pipe_ends_the_command_quietly() {
    let site = site_with_records();
    let html = site.root().join("report.html");
    let commands: Vec<Vec<&str>> = vec![
        vec!["report", "--out", html.to_str().unwrap(), "--json"],
        vec!["report", "--out", html.to_str().unwrap()],
        vec!["status", "--json"],
        vec!["status"],
        vec!["check"],
        vec!["alert", "outbox"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(sensei_bin())
            .arg("--config")
            .arg(site.config_path())
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// As in a shell pipeline: the reader takes the first line of `sensei status --json` and goes
/// away; the command is not hurt by it.
#[test]
fn a_reader_that_takes_one_line_and_leaves_does_not_make_a_panic() {
    use std::io::BufRead;
    let site = site_with_records();
    let mut child = Command::new(sensei_bin())
        .arg("--config")
        .arg(site.config_path())
        .args(["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "{\n");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

fn help(args: &[&str]) -> String {
    let out = Command::new(sensei_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sensei --help` lists the commands one line each (the details are in each command's own
/// help), and every positional argument says what it is.
#[test]
fn the_help_has_one_line_per_command_and_every_argument_explained() {
    let top = help(&["--help"]);
    let commands: Vec<&str> = top
        .split("Commands:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{top}"))
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .collect();
    let names: Vec<&str> = commands
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "run",
            "replay",
            "baseline",
            "check",
            "report",
            "status",
            "export",
            "redistill",
            "promote",
            "rollback",
            "alert",
            "demo",
            "help"
        ],
        "{top}"
    );
    for line in &commands {
        assert!(line.len() <= 100, "too long for one line: {line:?}");
    }
    for flag in [
        "-c, --config <FILE>",
        "[env: SENSEI_CONFIG",
        "-v, --verbose",
        "-q, --quiet",
    ] {
        assert!(top.contains(flag), "{flag}: {top}");
    }
    assert!(top.contains("--log-format <FORMAT>"), "{top}");
    // A command's own help has its details.
    let replay = help(&["replay", "--help"]);
    assert!(replay.contains("Files are not moved"), "{replay}");
    // Every positional argument has a line of its own that explains it.
    for (command, arg) in [
        ("replay", "<PATH>..."),
        ("baseline", "<DATA>..."),
        ("promote", "<MODEL>"),
    ] {
        let h = help(&[command, "--help"]);
        let arguments = h
            .split("Arguments:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{h}"));
        let lines: Vec<&str> = arguments.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(arg))
            .unwrap_or_else(|| panic!("{arg}: {h}"));
        // On the argument's line (`-h`) or the next one (`--help`).
        let same = lines[at].trim_start().trim_start_matches(arg).trim();
        let explanation = if same.is_empty() {
            lines.get(at + 1).map_or("", |l| l.trim())
        } else {
            same
        };
        assert!(
            explanation.len() > 10
                && !explanation.starts_with('<')
                && !explanation.starts_with('-'),
            "{command} {arg} has no help: {arguments}"
        );
    }
}

/// `-V` is the program's version, at the top level; a subcommand does not pass itself off as a
/// program of its own.
#[test]
fn the_version_is_the_programs() {
    let out = Command::new(sensei_bin()).arg("-V").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("sensei {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(sensei_bin())
        .args(["status", "-V"])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!t.contains("sensei-status"), "{t}");
    assert_eq!(out.status.code(), Some(2), "{t}");
}

/// The config file comes from `-c`, else from `SENSEI_CONFIG`, else the default path.
#[test]
fn the_config_comes_from_c_or_sensei_config() {
    let site = site_with_records();
    let status = |args: &[&str], env: Option<&std::path::Path>| {
        let mut c = Command::new(sensei_bin());
        c.args(args).env_remove("SENSEI_CONFIG");
        if let Some(p) = env {
            c.env("SENSEI_CONFIG", p);
        }
        c.output().unwrap()
    };
    let out = status(&["status", "--json"], Some(&site.config_path()));
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"], 40, "{v}");

    // -c wins over the environment, before or after the command.
    let missing = site.root().join("missing.toml");
    let config = site.config_path();
    for args in [
        ["-c", config.to_str().unwrap(), "status"],
        ["status", "-c", config.to_str().unwrap()],
    ] {
        let out = status(&args, Some(&missing));
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // A missing file named by the environment is the config problem it is.
    let out = status(&["status"], Some(&missing));
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains(missing.to_str().unwrap()),
        "{}",
        text(&out)
    );
}

/// `-v` adds the info lines, `-q` leaves only errors, `--log-format json` makes every line JSON.
#[test]
fn verbosity_and_log_format_apply_to_a_command() {
    let site = Site::new();
    site.write_config("");
    // Replays file `name` holding `n` records with ids from `ids`.
    let replay_records = |extra: &[&str], name: &str, ids: &str, n: usize| {
        let file = site.root().join(name);
        std::fs::write(&file, jsonl(ids, n)).unwrap();
        Command::new(sensei_bin())
            .arg("--config")
            .arg(site.config_path())
            .args(extra)
            .arg("replay")
            .arg(&file)
            .env_remove("SENSEI_LOG")
            .output()
            .unwrap()
    };
    let replay = |extra: &[&str], name: &str| replay_records(extra, name, name, 5);
    let plain = replay(&[], "a.jsonl");
    assert!(plain.status.success(), "{}", text(&plain));
    assert!(
        !String::from_utf8_lossy(&plain.stderr).contains("File committed."),
        "{}",
        text(&plain)
    );
    let verbose = replay(&["-v", "--log-format", "json"], "b.jsonl");
    assert!(verbose.status.success(), "{}", text(&verbose));
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("File committed.")),
        "{stderr}"
    );
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    let text_lines = replay(&["-v", "--log-format", "text"], "c.jsonl");
    let stderr = String::from_utf8_lossy(&text_lines.stderr);
    assert!(stderr.contains("File committed."), "{stderr}");
    assert!(!stderr.trim_start().starts_with('{'), "{stderr}");
    // A file whose records were counted before, but one, makes a warning; -q leaves it out.
    let again = |extra: &[&str], name: &str, n: usize| replay_records(extra, name, "a.jsonl", n);
    let warned = again(&[], "d.jsonl", 6);
    assert!(
        String::from_utf8_lossy(&warned.stderr).contains("WARN"),
        "a warning is expected: {}",
        text(&warned)
    );
    let quiet = again(&["-q"], "e.jsonl", 7);
    assert!(quiet.status.success(), "{}", text(&quiet));
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
}

/// `sensei demo` writes a config of its own per stream; a `--config` given to it would be
/// ignored, so it is refused.
#[test]
fn the_demo_refuses_a_config_it_would_not_read() {
    let out = Command::new(sensei_bin())
        .args(["demo", "--config", "/etc/sensei/sensei.toml", "--models"])
        .arg(repo().join("models/demo"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("takes no --config"), "{}", text(&out));
}
