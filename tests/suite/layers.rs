//! The crate's layers, as `src/lib.rs` lists them, hold: no module names a module above it in a
//! `crate::` path (imports and paths in code alike; comments are not code), and no code outside
//! `src/store/` talks to SQLite except tests, which set up their fixtures with their own
//! connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The numbered layer lines of the `# Layers` section of `src/lib.rs`, in order: every
/// [`module`] named there, with its position.
fn layer_order(lib: &str) -> BTreeMap<String, usize> {
    let section = lib
        .split("//! # Layers")
        .nth(1)
        .and_then(|rest| rest.split("//! # ").next())
        .expect("src/lib.rs has a `# Layers` section");
    let mut order = BTreeMap::new();
    for name in section.split("[`").skip(1) {
        let name = name.split('`').next().unwrap_or_default();
        let position = order.len();
        order.entry(name.to_string()).or_insert(position);
    }
    order
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without `//` comments (doc comments included), which may name any module.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal ("http://…") is not a comment; the paths this
            // test looks for never follow one on the same line.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file names in `crate::` paths.
fn named_modules(code: &str) -> Vec<String> {
    code.split("crate::")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

/// The top-level module a file of `src/` belongs to (`store` for `src/store/ledger.rs`).
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .expect("a path under src")
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

/// The code before a file's `#[cfg(test)]` module (test modules close every file here), or
/// nothing for a file of tests.
fn non_test_code(relative: &Path, text: &str) -> String {
    if relative.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    code(text.split("#[cfg(test)]").next().unwrap_or(text))
}

#[test]
fn no_module_imports_a_module_of_a_higher_layer() {
    let root = src();
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("src/lib.rs");
    let order = layer_order(&lib);
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut declared = Vec::new();
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        let module = module_of(relative);
        if module == "lib" || module == "main" {
            continue;
        }
        declared.push(module.clone());
        let Some(&own) = order.get(&module) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a readable source file");
        for named in named_modules(&code(&text)) {
            match order.get(&named) {
                Some(&other) if other > own => {
                    upward.push(format!("{} names crate::{named}", relative.display()))
                }
                Some(_) => {}
                None => upward.push(format!(
                    "{} names crate::{named}, which src/lib.rs does not place in a layer",
                    relative.display()
                )),
            }
        }
    }
    let unplaced: Vec<&String> = declared
        .iter()
        .filter(|m| !order.contains_key(*m))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from the layers of src/lib.rs: {unplaced:?}"
    );
    assert!(
        order.len() >= 20,
        "the layers of src/lib.rs name {} modules; the parse is wrong",
        order.len()
    );
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "imports from a lower layer to a higher one:\n{}",
        upward.join("\n")
    );
}

#[test]
fn only_the_store_talks_to_sqlite() {
    let root = src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut outside = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        if module_of(relative) == "store" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("a readable source file");
        if non_test_code(relative, &text).contains("rusqlite") {
            outside.push(relative.display().to_string());
        }
    }
    assert!(outside.is_empty(), "SQLite outside src/store/: {outside:?}");
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The parse itself: a doc comment may name anything, code may not.
    let text =
        "//! see crate::daemon\nuse crate::store::Store; // crate::http\nlet u = \"http://x\";";
    assert_eq!(named_modules(&code(text)), ["store"]);
    let order = layer_order(
        "//! # Layers\n//! 1. A: [`record`], [`store`].\n//! 2. B: [`daemon`].\n//! # Modules\n//! [`cli`]",
    );
    assert_eq!(
        order.into_iter().collect::<Vec<_>>(),
        [
            ("daemon".to_string(), 2),
            ("record".to_string(), 0),
            ("store".to_string(), 1)
        ]
    );
    assert_eq!(
        non_test_code(
            Path::new("alert/mod.rs"),
            "use a;\n#[cfg(test)]\nmod tests { rusqlite }"
        ),
        "use a;"
    );
}
