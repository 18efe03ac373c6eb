//! `sensei check`: the config, the ONNX Runtime library, both models and their compatibility,
//! the challengers, the re-distillation command, the database and the directories, with every
//! problem listed at once.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::model::{Interface, Model, OutputSpec, Teacher, compatibility_notes, load_models};
use crate::store::{Reader, SCHEMA_VERSION};

/// Result of `sensei check`: what was found and every problem.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            let _ = writeln!(s, "{l}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "OK: no problems found.");
        } else {
            let _ = writeln!(s, "{} problem(s):", self.problems.len());
            for p in &self.problems {
                let _ = writeln!(s, "  - {}", p.replace('\n', "\n    "));
            }
        }
        s
    }
}

/// Validates the config file, the ONNX Runtime library, both models and their compatibility,
/// the database and the directories. Leaves nothing behind (a writability probe is removed).
pub fn check(config_path: &Path) -> CheckReport {
    let mut r = CheckReport::default();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            r.lines.push(format!("config: {}", config_path.display()));
            r.problems.extend(e.problems.iter().map(|p| {
                if p.path.is_empty() {
                    p.message.clone()
                } else {
                    format!("{}: {}", p.path, p.message)
                }
            }));
            return r;
        }
    };
    r.lines
        .push(format!("config: {} (valid)", config_path.display()));
    match load_models(&config) {
        Ok(models) => {
            r.lines.push(format!(
                "onnxruntime: {} (version {})",
                models.runtime.library.display(),
                models.runtime.version
            ));
            r.lines.push(model_line(&models.student));
            match &models.teacher {
                Teacher::Local(m) => r.lines.push(model_line(m)),
                Teacher::Remote(m) => r.lines.push(format!(
                    "teacher: {} on an inference server ({}); inputs: {}; output: {} {}; attention: {}",
                    m.location,
                    m.served_by,
                    inputs_display(&m.inputs),
                    m.output.name,
                    crate::model::shape_display(&m.output.shape),
                    attention_display(m.attention.as_ref())
                )),
            }
            for note in compatibility_notes(&models.student, &models.teacher) {
                r.lines.push(format!("note: {note}"));
            }
            check_challengers(&config, &models, &mut r);
        }
        Err(problems) => r.problems.extend(problems),
    }
    if let Some(problem) = redistill_program_problem(
        &config.redistill.command,
        std::env::var_os("PATH").as_deref(),
    ) {
        r.problems.push(format!("redistill.command: {problem}"));
    }
    let db = &config.store.path;
    if let Some(problem) = link_problem(db) {
        r.problems
            .push(format!("store.path {}: {problem}", db.display()));
    } else if db.exists() {
        match Reader::open(db).and_then(|rd| rd.schema_version()) {
            Ok(v) if v > SCHEMA_VERSION => r.problems.push(format!(
                "database {}: schema version {v} is newer than this sensei ({SCHEMA_VERSION})",
                db.display()
            )),
            Ok(v) => r.lines.push(format!(
                "database: {} (schema version {v}{})",
                db.display(),
                if v < SCHEMA_VERSION {
                    ", will be migrated at start"
                } else {
                    ""
                }
            )),
            Err(e) => r.problems.push(format!("database {}: {e}", db.display())),
        }
    } else {
        r.lines
            .push(format!("database: {} (will be created)", db.display()));
        check_creatable(db.parent(), "database directory", &mut r);
    }
    for (what, dir) in [
        ("state_dir", &config.state_dir),
        ("inbox.dir", &config.inbox.dir),
        ("inbox.done_dir", &config.inbox.done_dir),
        ("inbox.quarantine_dir", &config.inbox.quarantine_dir),
    ] {
        if let Some(problem) = link_problem(dir) {
            r.problems
                .push(format!("{what} {}: {problem}", dir.display()));
        } else if dir.is_dir() {
            if !writable(dir) {
                r.problems
                    .push(format!("{what} {}: not writable", dir.display()));
            }
        } else if dir.exists() {
            r.problems.push(format!(
                "{what} {}: exists but is not a directory",
                dir.display()
            ));
        } else {
            check_creatable(Some(dir), what, &mut r);
        }
    }
    r
}

/// A local model: its file, hash, size, inputs and outputs.
fn model_line(m: &Model) -> String {
    format!(
        "{}: {} (sha256 {}, {} bytes); inputs: {}; output: {} {}; attention: {}",
        m.role,
        m.path.display(),
        &m.sha256[..12],
        m.size_bytes,
        inputs_display(&m.inputs),
        m.output.name,
        crate::model::shape_display(&m.output.shape),
        attention_display(m.attention.as_ref())
    )
}

fn inputs_display(inputs: &[crate::record::InputSpec]) -> String {
    inputs
        .iter()
        .map(|i| format!("{} {} {}", i.name, i.elem_type, i.shape_display()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn attention_display(attention: Option<&OutputSpec>) -> String {
    attention.map_or(String::from("none"), |a| {
        format!("{} {}", a.name, crate::model::shape_display(&a.shape))
    })
}

/// Loads every challenger (a local file, or the metadata of a model on an inference server)
/// and checks it can be compared with the teacher. A challenger that cannot is a warning, not a
/// problem: the daemon runs without it (and `check` guards its start).
fn check_challengers(config: &Config, models: &crate::model::Models, r: &mut CheckReport) {
    for c in &config.challengers {
        let role = format!("challenger '{}'", c.name);
        let model_config = c.model_config(&config.teacher);
        let loaded: Result<(String, Box<dyn Interface>), String> = match &model_config.remote {
            None => crate::model::Model::load(models.runtime, &role, &model_config).map(|m| {
                let what = format!(
                    "{} (sha256 {}, {} bytes)",
                    m.path.display(),
                    &m.sha256[..12],
                    m.size_bytes
                );
                (what, Box::new(m) as Box<dyn Interface>)
            }),
            Some(_) => crate::model::RemoteModel::connect(&role, &model_config).map(|m| {
                let what = format!("{} on an inference server ({})", m.location, m.served_by);
                (what, Box::new(m) as Box<dyn Interface>)
            }),
        }
        .map_err(|e| e.to_string())
        .and_then(|(what, m)| {
            crate::model::comparable(config, &role, m.as_ref(), &models.teacher).map(|()| (what, m))
        });
        match loaded {
            Ok((what, m)) => {
                r.lines.push(format!(
                    "{role}: {what}; output: {} {}; attention: {}",
                    m.output().name,
                    crate::model::shape_display(&m.output().shape),
                    attention_display(m.attention())
                ));
                if let (Some(a), Some(t)) = (m.attention(), models.teacher.attention())
                    && a.shape != t.shape
                {
                    r.lines.push(format!(
                        "note: {role}: attention shapes differ ({} vs the teacher's {}): attention KL is not computed",
                        crate::model::shape_display(&a.shape),
                        crate::model::shape_display(&t.shape)
                    ));
                }
            }
            Err(e) => r.lines.push(format!(
                "warning: {e} (it will not run in shadow; the student and the teacher are unaffected)"
            )),
        }
    }
}

/// Why the re-distillation job's program (`command[0]`) could not be started, if it could not:
/// it does not exist, is not an executable file, or is a relative path (the job runs in its own
/// directory, so a relative path would not name the file the operator means). A bare name is
/// looked up in `path` as the job's start would.
fn redistill_program_problem(command: &[String], path: Option<&std::ffi::OsStr>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let program = command.first()?;
    if program.is_empty() || program.contains('{') {
        return None; // validation reports an empty program; a placeholder is known only later
    }
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let given = Path::new(program);
    if given.is_absolute() {
        return match std::fs::metadata(given) {
            Err(e) => Some(format!("the program {program} cannot be used: {e}")),
            Ok(m) if !m.is_file() => Some(format!("the program {program} is not a file")),
            Ok(_) if !executable(given) => Some(format!("the program {program} is not executable")),
            Ok(_) => script_problem(program, &command[1..]),
        };
    }
    if program.contains('/') {
        return Some(format!(
            "the program {program} is a relative path, but the job runs in its own directory \
             under [redistill] work_dir: give an absolute path"
        ));
    }
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    if dirs.iter().any(|d| executable(&d.join(program))) {
        return script_problem(program, &command[1..]);
    }
    Some(format!(
        "the program '{program}' is not an executable file in any directory of PATH ({})",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    ))
}

/// Interpreters whose first argument that is not an option is the script they run.
const INTERPRETERS: &[&str] = &[
    "python", "python3", "sh", "bash", "perl", "ruby", "node", "Rscript",
];

/// Why the script an interpreter is given (`python3 /usr/share/…/redistill.py …`) cannot be
/// run, if it cannot: the interpreter would start, and fail a moment later.
fn script_problem(program: &str, args: &[String]) -> Option<String> {
    let name = Path::new(program).file_name()?.to_str()?;
    let versioned = name
        .strip_prefix("python3.")
        .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit()));
    if !INTERPRETERS.contains(&name) && !versioned {
        return None;
    }
    let script = args.iter().find(|a| !a.starts_with('-'))?;
    if args
        .iter()
        .take_while(|a| a.starts_with('-'))
        .any(|a| a == "-m" || a == "-c")
    {
        return None; // a module or inline code, not a file
    }
    if script.contains('{') {
        return None; // a placeholder, known only when the job starts
    }
    let path = Path::new(script);
    if !path.is_absolute() {
        return Some(format!(
            "the script {script} ({program}'s argument) is a relative path, but the job runs in \
             its own directory under [redistill] work_dir: give an absolute path"
        ));
    }
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Err(e) => Some(format!(
            "the script {script} that {program} is to run cannot be read: {e}"
        )),
        Ok(m) if !m.is_file() => Some(format!("the script {script} is not a file")),
        Ok(_) => None,
    }
}

/// Why `path`, or a directory on the way to it, is a symbolic link that leads nowhere (a loop,
/// or a link to something that does not exist), if one is: `run` could neither open nor create
/// it, though the path merely looks absent.
fn link_problem(path: &Path) -> Option<String> {
    for p in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        // Absent (or behind a broken link further up): look further up.
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            return None;
        }
        let target = std::fs::read_link(p)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return match std::fs::metadata(p) {
            Ok(_) => None,
            // ELOOP
            Err(e) if e.raw_os_error() == Some(40) => Some(format!(
                "{} is a symbolic link loop (it points to {target}, which leads back to it)",
                p.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "{} is a dangling symbolic link: it points to {target}, which does not exist",
                p.display()
            )),
            Err(e) => Some(format!(
                "{} is a symbolic link (to {target}) that cannot be followed: {e}",
                p.display()
            )),
        };
    }
    None
}

/// A missing directory is fine when its nearest existing ancestor is writable.
fn check_creatable(dir: Option<&Path>, what: &str, r: &mut CheckReport) {
    let Some(dir) = dir else { return };
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            if !writable(d) {
                r.problems.push(format!(
                    "{what} {}: cannot be created ({} is not writable)",
                    dir.display(),
                    d.display()
                ));
            }
            return;
        }
        p = d.parent();
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".sensei-check-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn argv(program: &str) -> Vec<String> {
        vec![program.into(), "{dataset}".into(), "{output}".into()]
    }

    #[test]
    fn the_redistill_program_must_be_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("distill.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let path = std::ffi::OsString::from(dir.path());
        let problem = |program: &str| redistill_program_problem(&argv(program), Some(&path));

        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let abs = script.to_str().unwrap();
        assert!(problem(abs).unwrap().ends_with("is not executable"));
        assert!(
            problem("distill.sh")
                .unwrap()
                .contains("not an executable file in any directory of PATH")
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(problem(abs), None);
        assert_eq!(problem("distill.sh"), None, "found on PATH");

        let missing = dir.path().join("missing");
        assert!(
            problem(missing.to_str().unwrap())
                .unwrap()
                .contains("cannot be used")
        );
        assert!(
            problem(dir.path().to_str().unwrap())
                .unwrap()
                .ends_with("is not a file")
        );
        assert!(problem("./distill.sh").unwrap().contains("relative path"));
        assert_eq!(redistill_program_problem(&[], Some(&path)), None, "off");
        assert!(
            redistill_program_problem(&argv("sh"), None).is_some(),
            "no PATH"
        );
    }

    #[test]
    fn the_script_an_interpreter_runs_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let sh = dir.path().join("sh");
        std::fs::write(&sh, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.path().join("redistill.sh");
        let path = std::ffi::OsString::from(dir.path());
        let run = |args: &[&str]| {
            let mut argv = vec!["sh".to_string()];
            argv.extend(args.iter().map(|a| a.to_string()));
            argv.extend(["{dataset}".to_string(), "{output}".to_string()]);
            redistill_program_problem(&argv, Some(&path))
        };
        let s = script.to_str().unwrap();
        let missing = run(&[s]).expect("a missing script is a problem");
        assert!(
            missing.contains(&format!("the script {s} that sh is to run cannot be read")),
            "{missing}"
        );
        assert!(run(&["-e", s]).is_some(), "after options");
        assert!(run(&["redistill.sh"]).unwrap().contains("relative path"));
        std::fs::write(&script, "exit 0\n").unwrap();
        assert_eq!(run(&[s]), None);
        assert_eq!(run(&["-c", "exit 0"]), None, "inline code");
        assert!(script_problem("/usr/bin/python3.12", &["/nonexistent.py".into()]).is_some());
        assert_eq!(
            script_problem("/usr/bin/job", &["/nonexistent".into()]),
            None
        );
    }
}
