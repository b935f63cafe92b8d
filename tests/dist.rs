//! What `make dist` ships, loaded and run the way users will: the glibc ceiling of every build,
//! `auditwheel show`, the release tarball in Debian's `sqlite3` CLI, the wheel in a fresh venv
//! (stdlib `sqlite3`), in apsw and in sqlite-utils, the error on a Python that cannot load
//! extensions, the npm packages in Node, checksums.txt and sqlpkg.json, and the aarch64 build
//! under qemu-user. Needs dist/out (`make dist`), so `#[ignore]`d; `make dist-test` runs them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const ARCHES: &[&str] = &["x86_64", "aarch64"];

fn out() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/out");
    assert!(
        dir.join("checksums.txt").is_file(),
        "{} has no release artefacts: run `make dist`",
        dir.display()
    );
    dir
}

/// The architectures `make dist` built (each one must then pass every check below).
fn built() -> Vec<&'static str> {
    let arches: Vec<&str> = ARCHES
        .iter()
        .copied()
        .filter(|a| {
            out()
                .join("build")
                .join(a)
                .join("sqlite_backup.so")
                .is_file()
        })
        .collect();
    assert!(arches.contains(&"x86_64"), "no x86_64 build in dist/out");
    arches
}

/// Runs `cmd` with `stdin`, returns (success, stdout, stderr).
fn sh(cmd: &mut Command, stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[track_caller]
fn sh_ok(cmd: &mut Command, stdin: &str) -> String {
    let (ok, stdout, stderr) = sh(cmd, stdin);
    assert!(ok, "{cmd:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

fn wheel(arch: &str) -> PathBuf {
    out().join(format!(
        "sqlite_backup_ext-{VERSION}-py3-none-manylinux_2_17_{arch}.whl"
    ))
}

fn tarball(arch: &str) -> String {
    format!("sqlite-backup-{VERSION}-loadable-linux-{arch}.tar.gz")
}

/// The highest `GLIBC_x.y` version among the symbols `objdump -T` lists.
fn max_glibc(so: &Path) -> (u32, u32) {
    let dump = sh_ok(Command::new("objdump").arg("-T").arg(so), "");
    dump.split_whitespace()
        .filter_map(|w| w.trim_start_matches('(').strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let v = v.trim_end_matches(')');
            let mut parts = v.split('.');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .max()
        .expect("objdump -T lists GLIBC_ symbols")
}

#[test]
#[ignore = "needs dist/out: run make dist-test"]
fn every_build_needs_glibc_2_17_at_most() {
    for arch in built() {
        let so = out().join("build").join(arch).join("sqlite_backup.so");
        let max = max_glibc(&so);
        assert!(max <= (2, 17), "{arch}: needs GLIBC_{}.{}", max.0, max.1);
        // Each file is the architecture it is named for.
        let header = sh_ok(Command::new("objdump").arg("-f").arg(&so), "");
        let want = if arch == "x86_64" {
            "x86-64"
        } else {
            "aarch64"
        };
        assert!(header.contains(want), "{arch}: {header}");
        // build.rs's -z nodelete survived zig's linker (hosts that dlclose must not unmap us).
        let dynamic = sh_ok(Command::new("readelf").arg("-d").arg(&so), "");
        assert!(dynamic.contains("NODELETE"), "{arch}: {dynamic}");
    }
    // The check itself sees what it must: the plain build of this machine (glibc 2.36) needs more.
    assert!(
        max_glibc(&built_ext()) > (2, 17),
        "the ceiling check sees nothing"
    );
}

#[test]
#[ignore = "needs dist/out: run make dist-test"]
fn auditwheel_calls_each_wheel_manylinux_2_17() {
    for arch in built() {
        let report = sh_ok(
            Command::new(venv().join("bin/auditwheel"))
                .arg("show")
                .arg(wheel(arch)),
            "",
        );
        let report = report.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            report.contains(&format!(
                "consistent with the following platform tag: \"manylinux_2_17_{arch}\""
            )),
            "{arch}: {report}"
        );
    }
}

#[test]
#[ignore = "needs dist/out: run make dist-test"]
fn checksums_cover_every_artefact_and_match() {
    let out = out();
    let listed = fs::read_to_string(out.join("checksums.txt")).unwrap();
    let mut names = Vec::new();
    for line in listed.lines() {
        let (hash, name) = line.split_once("  ").expect("sha256sum format");
        let bytes = fs::read(out.join(name)).unwrap();
        assert_eq!(sha256_hex(&bytes), hash, "{name}");
        names.push(name.to_string());
    }
    let mut files: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n != "checksums.txt")
        .collect();
    files.sort();
    names.sort();
    assert_eq!(names, files);
    for arch in built() {
        let npm_arch = if arch == "x86_64" { "x64" } else { "arm64" };
        for want in [
            tarball(arch),
            wheel(arch)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string(),
            format!("sqlite-backup-ext-linux-{npm_arch}-{VERSION}.tgz"),
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }
    for want in [
        format!("sqlite-backup-ext-{VERSION}.tgz"),
        "sqlpkg.json".to_string(),
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

#[test]
#[ignore = "needs dist/out: run make dist-test"]
fn sqlpkg_json_names_the_tarballs() {
    let spec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out().join("sqlpkg.json")).unwrap()).unwrap();
    assert_eq!(spec["owner"], "sqlite-backup");
    assert_eq!(spec["name"], "sqlite-backup");
    assert_eq!(spec["version"], VERSION);
    assert!(spec["assets"]["path"].is_string(), "{spec}");
    let files = spec["assets"]["files"].as_object().unwrap();
    for arch in built() {
        let key = if arch == "x86_64" {
            "linux-amd64"
        } else {
            "linux-arm64"
        };
        assert_eq!(files[key], tarball(arch).as_str(), "{spec}");
    }
    assert_eq!(files.len(), built().len(), "{spec}");
}

/// A sample database and, after the caller's host made `backup.db.gz` from it, the checks.
fn sample(dir: &Path) -> PathBuf {
    let db = dir.join("app.db");
    make_sample_db(&db, Journal::Wal, 50);
    db
}

fn assert_backup_of(db: &Path, backup: &Path) {
    let restored = decompress_to(backup, backup.parent().unwrap(), "restored.db");
    assert_eq!(digest(&restored), digest(db));
}

#[test]
#[ignore = "needs dist/out: run make dist-test"]
fn the_tarball_loads_in_the_sqlite3_cli() {
    let dir = tempdir();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(out().join(tarball("x86_64")))
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(list(dir.path()), ["sqlite_backup.so"]);
    let db = sample(dir.path());
    let backup = dir.path().join("backup.db.gz");
    let stdout = sh_ok(
        Command::new(SQLITE3)
            .arg("-bail")
            .arg("-cmd")
            .arg(format!(
                ".load {}",
                dir.path().join("sqlite_backup").display()
            ))
            .arg(&db),
        &format!(
            "SELECT json_extract(backup_to_file({b}), '$.destination') IS NOT NULL;\n\
             SELECT json_extract(verify_backup({b}), '$.ok');\n",
            b = path_lit(&backup)
        ),
    );
    assert_eq!(stdout, "1\n1\n");
    assert_backup_of(&db, &backup);
}

#[test]
#[ignore = "needs dist/out and qemu-user (make dist-tools): run make dist-test"]
fn the_aarch64_build_runs_a_backup_under_qemu() {
    if !built().contains(&"aarch64") {
        eprintln!("no aarch64 build in dist/out (make dist ARCH=x86_64): nothing to run");
        return;
    }
    // An aarch64 build is shipped only if it ran here: no qemu or no arm64 sqlite3 is a failure.
    let root = PathBuf::from(
        std::env::var_os("SQLITE_BACKUP_ARM64_ROOT").unwrap_or_else(|| ".tools/arm64/root".into()),
    );
    let sqlite3 = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(&root)
        .join("usr/bin/sqlite3");
    assert!(
        sqlite3.is_file(),
        "no arm64 sqlite3 at {} to run the aarch64 build: run `make dist-tools`",
        sqlite3.display()
    );
    let root = sqlite3
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    let dir = tempdir();
    let db = sample(dir.path());
    let backup = dir.path().join("backup.db.gz");
    let so = out().join("build/aarch64/sqlite_backup");
    let stdout = sh_ok(
        Command::new("qemu-aarch64-static")
            .arg("-L")
            .arg(root)
            .arg(&sqlite3)
            .arg("-bail")
            .arg("-cmd")
            .arg(format!(".load {}", so.display()))
            .arg(&db),
        &format!(
            "SELECT backup_debug() LIKE '%Target: aarch64-unknown-linux-gnu%';\n\
             SELECT json_extract(backup_to_file({b}), '$.destination') IS NOT NULL;\n\
             SELECT json_extract(verify_backup({b}), '$.ok');\n",
            b = path_lit(&backup)
        ),
    );
    assert_eq!(stdout, "1\n1\n1\n");
    assert_backup_of(&db, &backup);
}

/// `pip install --no-index --no-deps --target DIR` of the x86_64 wheel, with the tools venv's pip.
fn wheel_into(dir: &Path) -> PathBuf {
    let site = dir.join("site");
    sh_ok(
        Command::new(venv().join("bin/pip"))
            .args(["install", "-q", "--no-index", "--no-deps", "--target"])
            .arg(&site)
            .arg(wheel("x86_64")),
        "",
    );
    site
}

const PY_BACKUP: &str = r#"
import json, os, sys
import sqlite_backup_ext
db, backup = sys.argv[1], sys.argv[2]
conn = connect(db)
sqlite_backup_ext.load(conn)
assert os.path.isfile(sqlite_backup_ext.loadable_path()), sqlite_backup_ext.loadable_path()
assert sqlite_backup_ext.__version__ == os.environ["VERSION"], sqlite_backup_ext.__version__
cur = conn.cursor()
made = json.loads(list(cur.execute("SELECT backup_to_file(?)", (backup,)))[0][0])
checked = json.loads(list(cur.execute("SELECT verify_backup(?)", (backup,)))[0][0])
assert checked["ok"] is True, checked
# Loading was enabled only for the call: SQL still may not load extensions.
try:
    list(cur.execute("SELECT load_extension(?)", (sqlite_backup_ext.loadable_path(),)))
    raise SystemExit("extension loading was left enabled")
except Exception as e:
    assert "not authorized" in str(e), e
# One that had loading on keeps it on.
conn2 = connect(":memory:")
conn2.enable_load_extension(True)
sqlite_backup_ext.load(conn2)
try:
    list(conn2.cursor().execute("SELECT load_extension('/nonexistent/x')"))
except Exception as e:
    assert "not authorized" not in str(e), e
print(made["destination"] == backup)
"#;

#[test]
#[ignore = "needs dist/out: run make dist-test"]
fn the_wheel_installs_offline_in_a_fresh_venv_and_loads_in_stdlib_sqlite3() {
    let dir = tempdir();
    let env = dir.path().join("venv");
    sh_ok(Command::new(PYTHON3).args(["-m", "venv"]).arg(&env), "");
    sh_ok(
        Command::new(env.join("bin/pip"))
            .args(["install", "-q", "--no-index"])
            .arg(wheel("x86_64")),
        "",
    );
    let db = sample(dir.path());
    let backup = dir.path().join("backup.db.gz");
    let script = format!("import sqlite3\nconnect = sqlite3.connect\n{PY_BACKUP}");
    let stdout = sh_ok(
        Command::new(env.join("bin/python"))
            .arg("-")
            .arg(&db)
            .arg(&backup)
            .env("VERSION", VERSION),
        &script,
    );
    assert_eq!(stdout, "True\n");
    assert_backup_of(&db, &backup);
}

#[test]
#[ignore = "needs dist/out and the tools venv: run make dist-test"]
fn the_wheel_loads_in_apsw() {
    let dir = tempdir();
    let site = wheel_into(dir.path());
    let db = sample(dir.path());
    let backup = dir.path().join("backup.db.gz");
    let script = format!("import apsw\nconnect = apsw.Connection\n{PY_BACKUP}");
    let stdout = sh_ok(
        Command::new(venv().join("bin/python"))
            .arg("-")
            .arg(&db)
            .arg(&backup)
            .env("PYTHONPATH", &site)
            .env("VERSION", VERSION),
        &script,
    );
    assert_eq!(stdout, "True\n");
    assert_backup_of(&db, &backup);
}

#[test]
#[ignore = "needs dist/out and the tools venv: run make dist-test"]
fn sqlite_utils_picks_the_wheel_up_as_a_plugin() {
    let dir = tempdir();
    let site = wheel_into(dir.path());
    let db = sample(dir.path());
    let stdout = sh_ok(
        Command::new(venv().join("bin/python"))
            .arg("-")
            .arg(&db)
            .env("PYTHONPATH", &site),
        "import sys, sqlite_utils\n\
         db = sqlite_utils.Database(sys.argv[1])\n\
         print(db.execute('SELECT backup_version()').fetchone()[0])\n",
    );
    assert!(stdout.contains(VERSION), "{stdout}");
}

#[test]
#[ignore = "needs dist/out: run make dist-test"]
fn a_python_that_cannot_load_extensions_gets_an_error_that_says_what_to_use() {
    // pyenv builds Python without --enable-loadable-sqlite-extensions.
    let Some(home) = std::env::var_os("HOME") else {
        panic!("no HOME to find pyenv in");
    };
    let versions = Path::new(&home).join(".pyenv/versions");
    let pythons: Vec<PathBuf> = fs::read_dir(&versions)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin/python3"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    let probe = "import sqlite3\nprint(hasattr(sqlite3.Connection, 'enable_load_extension'))";
    let Some(python) = pythons.iter().find(|p| {
        let (ok, stdout, _) = sh(Command::new(p).arg("-"), probe);
        ok && stdout.trim() == "False"
    }) else {
        eprintln!(
            "SKIPPED: no Python without extension loading under {} (pyenv) on this machine",
            versions.display()
        );
        return;
    };
    let dir = tempdir();
    let site = wheel_into(dir.path());
    let stdout = sh_ok(
        Command::new(python).arg("-").env("PYTHONPATH", &site),
        "import sqlite3, sqlite_backup_ext\n\
         try:\n\
         \x20   sqlite_backup_ext.load(sqlite3.connect(':memory:'))\n\
         except sqlite_backup_ext.LoadError as e:\n\
         \x20   print(e)\n",
    );
    for want in [
        "cannot load extensions",
        "/usr/bin/python3",
        "apsw",
        "sqlean.py",
    ] {
        assert!(stdout.contains(want), "{want}: {python:?}: {stdout}");
    }
}

#[test]
#[ignore = "needs dist/out and tests/node/node_modules: run make dist-test"]
fn the_npm_packages_install_offline_and_load_in_better_sqlite3() {
    let better =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules/better-sqlite3");
    assert!(
        better.is_dir(),
        "better-sqlite3 is missing: run `cd tests/node && npm ci` (make dist-test does)"
    );
    let dir = tempdir();
    let project = dir.path().join("project");
    fs::create_dir(&project).unwrap();
    fs::write(
        project.join("package.json"),
        r#"{"name": "t", "version": "1.0.0", "private": true}"#,
    )
    .unwrap();
    sh_ok(
        Command::new("npm")
            .args([
                "install",
                "--offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .arg(out().join(format!("sqlite-backup-ext-{VERSION}.tgz")))
            .arg(out().join(format!("sqlite-backup-ext-linux-x64-{VERSION}.tgz")))
            .current_dir(&project)
            .env("npm_config_cache", dir.path().join("npm-cache")),
        "",
    );
    let pkg: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(project.join("node_modules/sqlite-backup-ext-linux-x64/package.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pkg["os"], serde_json::json!(["linux"]));
    assert_eq!(pkg["cpu"], serde_json::json!(["x64"]));
    assert_eq!(pkg["libc"], serde_json::json!(["glibc"]));
    let db = sample(dir.path());
    let backup = dir.path().join("backup.db.gz");
    fs::write(
        project.join("cjs.cjs"),
        r#"
const Database = require(process.env.BETTER);
const ext = require("sqlite-backup-ext");
const db = new Database(process.argv[2]);
ext.load(db);
const made = JSON.parse(db.prepare("SELECT backup_to_file(?) AS r").get(process.argv[3]).r);
const checked = JSON.parse(db.prepare("SELECT verify_backup(?) AS r").get(process.argv[3]).r);
if (checked.ok !== true) throw new Error(JSON.stringify(checked));
console.log(made.destination === process.argv[3], ext.getLoadablePath().endsWith("/sqlite_backup.so"));
"#,
    )
    .unwrap();
    let stdout = sh_ok(
        Command::new("node")
            .arg("cjs.cjs")
            .arg(&db)
            .arg(&backup)
            .current_dir(&project)
            .env("BETTER", &better),
        "",
    );
    assert_eq!(stdout, "true true\n");
    assert_backup_of(&db, &backup);

    // The ES module and the types are there; node:sqlite where this Node has it (22.5+).
    fs::write(
        project.join("esm.mjs"),
        r#"
import { createRequire } from "node:module";
import ext, { load, getLoadablePath } from "sqlite-backup-ext";
const require = createRequire(import.meta.url);
if (ext.load !== load || typeof getLoadablePath() !== "string") throw new Error("exports");
let sqlite;
try { sqlite = require("node:sqlite"); } catch { console.log("no node:sqlite"); process.exit(0); }
const db = new sqlite.DatabaseSync(":memory:", { allowExtension: true });
load(db);
console.log(db.prepare("SELECT backup_version() AS v").get().v);
"#,
    )
    .unwrap();
    let stdout = sh_ok(
        Command::new("node")
            .arg("--no-warnings")
            .arg("esm.mjs")
            .current_dir(&project),
        "",
    );
    assert!(
        stdout == "no node:sqlite\n" || stdout.contains(VERSION),
        "{stdout}"
    );
    assert!(project
        .join("node_modules/sqlite-backup-ext/index.d.ts")
        .is_file());
}
