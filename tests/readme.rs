//! Every ```sql block of README.md runs here, in order, in the real sqlite3 CLI, against a copy of
//! the sample database. A statement followed by a `-- error: TEXT` comment must fail with an error
//! containing TEXT; every other statement must succeed. So the reference cannot drift from the code.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The built extension. `cargo test` rebuilds the cdylib beside the test executables in
/// target/debug/deps (crate-type has lib beside cdylib) but does not copy it up a level.
fn extension() -> PathBuf {
    if let Some(p) = std::env::var_os("SQLITE_BACKUP_EXT") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().expect("deps dir").join("libsqlite_backup.so")
}

struct Statement {
    sql: String,
    expected_error: Option<String>,
}

/// Splits the README's sql blocks into statements with their expected outcome.
fn statements(readme: &str) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = line.trim() == "```sql";
            continue;
        }
        if !in_block {
            continue;
        }
        let trimmed = line.trim();
        if let Some(text) = trimmed.strip_prefix("-- error:") {
            if let Some(last) = out.last_mut() {
                last.expected_error = Some(text.trim().to_string());
            }
            continue;
        }
        if trimmed.starts_with("--") || trimmed.is_empty() || trimmed.starts_with(".load") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            out.push(Statement {
                sql: std::mem::take(&mut current),
                expected_error: None,
            });
        }
    }
    out
}

#[test]
fn readme_sql_examples_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let stmts = statements(&readme);
    assert!(stmts.len() >= 10, "found only {} statements", stmts.len());

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("backups")).expect("backups dir");
    let made = Command::new("sqlite3")
        .arg("app.db")
        .arg(format!(".read {}", root.join("sql/sample.sql").display()))
        .current_dir(dir.path())
        .output()
        .expect("run sqlite3");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let ext = extension();
    for st in &stmts {
        let out = Command::new("sqlite3")
            .arg("-bail")
            .arg("-cmd")
            .arg(format!(".load {}", ext.display()))
            .arg("app.db")
            .arg(&st.sql)
            .current_dir(dir.path())
            .output()
            .expect("run sqlite3");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match &st.expected_error {
            None => assert!(
                out.status.success(),
                "README statement failed:\n{}\n{stderr}",
                st.sql
            ),
            Some(text) => {
                assert!(!out.status.success(), "expected an error:\n{}", st.sql);
                assert!(
                    stderr.contains(text.as_str()),
                    "error for\n{}\nwas {stderr}, README says {text}",
                    st.sql
                );
            }
        }
    }
}
