//! Confinement for hosts that run other people's SQL (issue #9): with `SQLITE_BACKUP_ALLOW` set,
//! every location, destination, temp_dir, notify URL and S3 endpoint outside it is refused
//! before anything happens. Driven through the real sqlite3 CLI and Debian's python3, the way
//! a Datasette-like host runs a visitor's SQL. Also the two neighbours from the same issue: the
//! snapshot of a database on another VFS (memdb), and ping URLs whose token a URL parser would
//! take for a host name.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::calls::{to_file_err, to_file_sql};
use common::http::HttpServer;
use common::s3server::S3Server;
use common::*;
use serde_json::{json, Value};

const ALLOW: &str = "SQLITE_BACKUP_ALLOW";
const OUTSIDE: &str = "is outside SQLITE_BACKUP_ALLOW";

/// A host's layout, all below one temp dir: `allowed/` (the only entry of the policy),
/// `allowed-evil/` (a prefix sibling), `outside/`, the served database `app.db` (outside the
/// allowed directory), a backup in `allowed/` and one in `outside/`.
struct Host {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    allowed: PathBuf,
    outside: PathBuf,
    db: PathBuf,
    home: PathBuf,
}

fn host() -> Host {
    let tmp = tempdir();
    let root = tmp.path().canonicalize().unwrap();
    let allowed = root.join("allowed");
    let outside = root.join("outside");
    let home = root.join("home");
    for dir in [&allowed, &outside, &home, &root.join("allowed-evil")] {
        fs::create_dir(dir).unwrap();
    }
    let db = root.join("app.db");
    make_sample_db(&db, Journal::Rollback, 20);
    let conn = open(&db);
    for dir in [&allowed, &outside] {
        call_json(
            &conn,
            &format!(
                "SELECT backup_to_file({})",
                path_lit(dir.join("seed.db.gz"))
            ),
        );
    }
    Host {
        _tmp: tmp,
        root,
        allowed,
        outside,
        db,
        home,
    }
}

impl Host {
    /// The sqlite3 CLI on app.db with `allow` as the policy, running `sql`.
    fn run(&self, allow: &str, sql: &str) -> Output {
        sqlite3_cli_clean_env(&self.db, &["-bail"], sql, &self.home, &[(ALLOW, allow)])
    }

    fn policy(&self) -> String {
        self.allowed.display().to_string()
    }

    /// `sql` must fail naming the policy, and change nothing below the root (no file created,
    /// replaced or removed; the served database unchanged).
    #[track_caller]
    fn refused(&self, allow: &str, sql: &str, expect: &str) {
        let before = tree(&self.root);
        let out = self.run(allow, sql);
        assert!(!out.ok(), "{sql}: not refused: {}", out.stdout);
        assert!(out.stderr.contains(expect), "{sql}: {}", out.stderr);
        assert_eq!(tree(&self.root), before, "{sql}: files changed");
    }
}

/// Every entry below `dir` (links not followed) with its size and modification time.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path, (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn inside_the_allowed_directory_everything_works() {
    let h = host();
    let a = &h.allowed;
    fs::create_dir(a.join("sub")).unwrap();
    let sql = format!(
        "SELECT backup_to_file({}, '{{\"temp_dir\": {}}}');
         SELECT verify_backup({});
         SELECT restore_backup({}, {});
         SELECT json_object('n', count(*)) FROM backup_list({});
         SELECT backup_prune({}, '{{\"keep_last\": 5}}');",
        path_lit(a.join("sub/../b-%Y.db.gz")),
        serde_json::to_string(a.to_str().unwrap()).unwrap(),
        path_lit(a.join("seed.db.gz")),
        path_lit(a.join("seed.db.gz")),
        path_lit(a.join("restored.db")),
        path_lit(a),
        path_lit(a),
    );
    let out = h.run(&format!("  {}\n/nonexistent/other ", h.policy()), &sql);
    out.assert_ok();
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    assert!(lines[3]["n"].as_u64() >= Some(2), "{}", out.stdout);
    assert_eq!(digest(&a.join("restored.db")), digest(&h.db));
}

#[test]
fn local_paths_outside_are_refused_before_anything_happens() {
    let h = host();
    let (a, o) = (&h.allowed, &h.outside);
    std::os::unix::fs::symlink(o, a.join("link")).unwrap();
    std::os::unix::fs::symlink(o.join("new.db"), a.join("dangling")).unwrap();
    let seed = path_lit(a.join("seed.db.gz"));
    let p = h.policy();
    let p = format!("{p} {}", h.root.join("later").display());
    for (sql, expect) in [
        // Destinations: outside, `..`, a symlinked directory, a prefix sibling.
        (
            format!("SELECT backup_to_file({})", path_lit(o.join("x.gz"))),
            "destination directory",
        ),
        (
            format!(
                "SELECT backup_to_file({})",
                path_lit(a.join("../outside/x.gz"))
            ),
            OUTSIDE,
        ),
        (
            format!("SELECT backup_to_file({})", path_lit(a.join("link/x.gz"))),
            OUTSIDE,
        ),
        (
            format!("SELECT backup_to_file({})", path_lit(a.join("dangling"))),
            OUTSIDE,
        ),
        (
            format!(
                "SELECT backup_to_file({})",
                path_lit(h.root.join("allowed-evil/x.gz"))
            ),
            OUTSIDE,
        ),
        // `keep` would prune the directory of a destination that is the allowed dir itself.
        (
            format!(
                "SELECT backup_to_file({}, '{{\"keep\": {{\"keep_last\": 1}}}}')",
                path_lit(a)
            ),
            "destination directory",
        ),
        // Restores: over a file outside, through a dangling link, into the served database.
        (
            format!(
                "SELECT restore_backup({seed}, {})",
                path_lit(o.join("r.db"))
            ),
            "dest_path",
        ),
        (
            format!(
                "SELECT restore_backup({seed}, {})",
                path_lit(a.join("dangling"))
            ),
            "dest_path",
        ),
        (
            format!(
                "SELECT restore_backup({seed}, {}, '{{\"overwrite\": true}}')",
                path_lit(&h.db)
            ),
            "dest_path",
        ),
        (
            format!("SELECT restore_backup({seed})"),
            "the database restored into",
        ),
        // A policy entry that does not exist yet, as the restore target: its copy would be
        // written beside it, in the parent directory.
        (
            format!(
                "SELECT restore_backup({seed}, {})",
                path_lit(h.root.join("later"))
            ),
            "dest_path directory",
        ),
        // Reading and deleting outside.
        (
            format!("SELECT verify_backup({})", path_lit(o.join("seed.db.gz"))),
            OUTSIDE,
        ),
        (
            format!(
                "SELECT restore_backup({}, {})",
                path_lit(o.join("seed.db.gz")),
                path_lit(a.join("r.db"))
            ),
            "location",
        ),
        (
            format!("SELECT * FROM backup_list({})", path_lit(o)),
            "backup_list: location",
        ),
        (
            format!("SELECT * FROM backup_list({})", path_lit(a.join("link"))),
            OUTSIDE,
        ),
        (
            format!(
                "SELECT backup_prune({}, '{{\"keep_last\": 0}}')",
                path_lit(o)
            ),
            OUTSIDE,
        ),
        (
            format!(
                "SELECT backup_prune({}, '{{\"keep_last\": 0}}')",
                path_lit(a.join(".."))
            ),
            OUTSIDE,
        ),
        // temp_dir outside, for each function that takes it.
        (
            format!(
                "SELECT backup_to_file({}, '{{\"temp_dir\": {}}}')",
                path_lit(a.join("t.gz")),
                serde_json::to_string(o.to_str().unwrap()).unwrap()
            ),
            "option 'temp_dir'",
        ),
        (
            format!(
                "SELECT verify_backup({seed}, '{{\"temp_dir\": {}}}')",
                serde_json::to_string(a.join("link").to_str().unwrap()).unwrap()
            ),
            "option 'temp_dir'",
        ),
    ] {
        h.refused(&p, &sql, expect);
    }
    assert!(o.join("seed.db.gz").exists());
    assert!(!o.join("new.db").exists());
}

#[test]
fn an_empty_or_malformed_policy_refuses_everything() {
    let h = host();
    let sql = format!(
        "SELECT verify_backup({})",
        path_lit(h.allowed.join("seed.db.gz"))
    );
    for (allow, expect) in [
        ("", "set but empty"),
        ("  \n\t", "set but empty"),
        ("allowed", "entry 'allowed' is not an absolute directory"),
        (
            &format!("{} https:///SECRETTOKEN", h.policy()),
            "everything is refused",
        ),
        (
            &format!("{} s3://Bad_Bucket", h.policy()),
            "everything is refused",
        ),
    ] {
        h.refused(allow, &sql, expect);
        let out = h.run(allow, &sql);
        assert_no_secret(&out.stderr, &["SECRETTOKEN"]);
    }
    // Unset: no confinement.
    let out = sqlite3_cli_clean_env(&h.db, &["-bail"], &sql, &h.home, &[]);
    out.assert_ok();
}

#[test]
fn notify_urls_outside_are_refused_and_never_contacted() {
    let h = host();
    let ping = HttpServer::start(200);
    let dest = h.allowed.join("n.gz");
    let call = |url: &str| {
        to_file_sql(
            &dest,
            &json!({"notify": url, "notify_style": "healthchecks"}),
        )
    };
    let allowed_url = ping.url("/ok/");
    let policy = format!("{} {allowed_url}", h.policy());
    for url in [
        ping.url("/SECRETTOKEN"),
        ping.url("/ok-evil/SECRETTOKEN"),
        ping.url("/ok/../SECRETTOKEN"),
        format!("http://localhost:{}/ok/SECRETTOKEN", ping.port()),
        format!("http://x@127.0.0.1:{}/ok/SECRETTOKEN", ping.port()),
    ] {
        h.refused(&policy, &call(&url), "notify URL");
        let out = h.run(&policy, &call(&url));
        assert_no_secret(&out.stderr, &["SECRETTOKEN"]);
    }
    // A policy without URL entries refuses every notify URL.
    h.refused(&h.policy(), &call(&ping.url("/ok/t")), "notify URL");
    assert!(ping.requests().is_empty(), "{:?}", ping.requests());
    assert!(!dest.exists());

    let out = h.run(&policy, &call(&ping.url("/ok/t")));
    out.assert_ok();
    let targets: Vec<String> = ping.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/ok/t/start", "/ok/t"]);

    // An allowed monitor that redirects elsewhere: reported, not followed.
    fs::remove_file(&dest).unwrap();
    let redirector = HttpServer::redirecting(ping.url("/stolen"));
    let policy = format!("{} {}", h.policy(), redirector.url("/"));
    let out = h.run(&policy, &call(&redirector.url("/t")));
    out.assert_ok();
    let result: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(result["notify"]["result"]["status"], 302, "{result}");
    assert_eq!(result["notify"]["result"]["ok"], false, "{result}");
    assert_eq!(redirector.requests().len(), 2);
    assert_eq!(ping.requests().len(), 2, "{:?}", ping.requests());
}

#[test]
fn s3_buckets_prefixes_and_endpoints_outside_are_refused() {
    let s3 = S3Server::start();
    s3.create_bucket("bkt");
    s3.create_bucket("other");
    let h = host();
    let opts = s3.options_json();
    let o = lit(opts.to_string());
    let endpoint = s3.endpoint();
    let policy = format!("s3://bkt/ok {endpoint}/ {}", h.policy());
    let stored = |sql: &str| {
        let before = tree(s3.root());
        let out = h.run(&policy, sql);
        assert!(!out.ok(), "{sql}: not refused: {}", out.stdout);
        assert!(out.stderr.contains(OUTSIDE), "{sql}: {}", out.stderr);
        assert_eq!(tree(s3.root()), before, "{sql}: objects changed");
    };
    let ok = h.run(
        &policy,
        &format!("SELECT backup_to_s3('s3://bkt/ok', 'a.db.gz', {o});"),
    );
    ok.assert_ok();
    assert!(s3.object_path("bkt", "ok/a.db.gz").exists());
    fs::create_dir_all(s3.root().join("bkt/okay")).unwrap();
    fs::write(s3.root().join("bkt/okay/keep.db.gz"), b"x").unwrap();
    for sql in [
        format!("SELECT backup_to_s3('s3://bkt/okay', 'a.db.gz', {o})"),
        format!("SELECT backup_to_s3('bkt', 'ok/a.db.gz', {o})"),
        format!("SELECT backup_to_s3('other', 'a.db.gz', {o})"),
        format!("SELECT backup_to_s3('s3://bkt/ok/..', 'a.db.gz', {o})"),
        format!("SELECT verify_backup('s3://bkt/okay/keep.db.gz', {o})"),
        format!("SELECT restore_backup('s3://other/x.gz', NULL, {o})"),
        format!("SELECT * FROM backup_list('s3://bkt', {o})"),
        format!("SELECT backup_prune('s3://bkt/okay', json_patch({o}, '{{\"keep_last\": 0}}'))"),
    ] {
        stored(&sql);
    }
    assert!(s3.root().join("bkt/okay/keep.db.gz").exists());

    // The endpoint option is where signed requests go: it must be listed too. A listener
    // stands in for a rogue endpoint and must hear nothing.
    let rogue = HttpServer::start(200);
    let mut rogue_opts = opts.clone();
    rogue_opts["endpoint"] = json!(rogue.url(""));
    let r = lit(rogue_opts.to_string());
    for sql in [
        format!("SELECT backup_to_s3('s3://bkt/ok', 'b.db.gz', {r})"),
        format!("SELECT verify_backup('s3://bkt/ok/a.db.gz', {r})"),
        format!("SELECT * FROM backup_list('s3://bkt/ok', {r})"),
        format!("SELECT backup_prune('s3://bkt/ok', json_patch({r}, '{{\"keep_last\": 0}}'))"),
    ] {
        h.refused(&policy, &sql, "option 'endpoint'");
    }
    assert!(rogue.requests().is_empty(), "{:?}", rogue.requests());
    assert!(s3.object_path("bkt", "ok/a.db.gz").exists());

    // A profile of the host's ~/.aws has its own endpoint and account: the host chooses it.
    let mut profile_opts = opts.clone();
    profile_opts["profile"] = json!("internal");
    let sql = format!(
        "SELECT backup_to_s3('s3://bkt/ok', 'c.db.gz', {})",
        lit(profile_opts.to_string())
    );
    h.refused(
        &policy,
        &sql,
        "option 'profile' is refused under SQLITE_BACKUP_ALLOW",
    );
}

/// What a Datasette-like host does: Python's sqlite3 with the extension loaded and the policy
/// set in its own environment before loading, running a visitor's SELECTs one by one.
#[test]
fn a_python_host_running_untrusted_selects() {
    let h = host();
    let script = r#"
import json, os, sqlite3, sys
os.environ["SQLITE_BACKUP_ALLOW"] = sys.argv[1]
conn = sqlite3.connect(sys.argv[2], isolation_level=None)
conn.enable_load_extension(True)
conn.load_extension(os.environ["EXT"])
conn.enable_load_extension(False)
os.chdir(sys.argv[4])
for sql in json.loads(sys.argv[3]):
    try:
        rows = conn.execute(sql).fetchall()
        print(json.dumps({"ok": True}))
    except sqlite3.Error as e:
        print(json.dumps({"ok": False, "message": str(e)}))
"#;
    let a = &h.allowed;
    let monitor = HttpServer::start(200);
    let evil = [
        format!(
            "SELECT backup_to_file({})",
            path_lit(h.root.join("www/x.db"))
        ),
        format!(
            "SELECT restore_backup({}, {}, '{{\"overwrite\": true}}')",
            path_lit(a.join("seed.db.gz")),
            path_lit(&h.db)
        ),
        format!(
            "SELECT backup_prune({}, '{{\"keep_last\": 0}}')",
            path_lit(&h.outside)
        ),
        "SELECT * FROM backup_list('/etc')".to_string(),
        "SELECT verify_backup('/etc/passwd')".to_string(),
        // Relative to the process's directory, which is the allowed one.
        "SELECT backup_to_file('../outside/rel.db.gz')".to_string(),
        format!(
            "SELECT backup_to_file({}, {})",
            path_lit(a.join("x.gz")),
            lit(json!({"notify": monitor.url("/latest/meta-data")}).to_string())
        ),
    ];
    let good = "SELECT backup_to_file('ok.db.gz')".to_string();
    let mut all = evil.to_vec();
    all.push(good);
    let before = tree(&h.outside);
    let digest_before = digest(&h.db);
    let out = python(
        script,
        &[
            &h.policy(),
            h.db.to_str().unwrap(),
            &serde_json::to_string(&all).unwrap(),
            a.to_str().unwrap(),
        ],
    );
    out.assert_ok();
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), all.len(), "{}", out.stdout);
    for (sql, line) in all.iter().zip(&lines).take(evil.len()) {
        assert_eq!(line["ok"], false, "{sql}: {line}");
        let message = line["message"].as_str().unwrap();
        assert!(message.contains(OUTSIDE), "{sql}: {message}");
    }
    assert_eq!(lines[evil.len()]["ok"], true, "{}", out.stdout);
    assert!(a.join("ok.db.gz").exists());
    assert!(!a.join("x.gz").exists());
    assert_eq!(tree(&h.outside), before);
    assert_eq!(digest(&h.db), digest_before);
    assert!(monitor.requests().is_empty(), "{:?}", monitor.requests());
}

/// A database on the memdb VFS whose name is also a real file on disk: the backup must hold
/// the memdb content. `vacuum` reopened the name with the default VFS and copied the disk file.
#[test]
fn a_memdb_database_is_backed_up_from_memory_not_from_a_file_of_the_same_name() {
    let tmp = tempdir();
    let dir = tmp.path().canonicalize().unwrap();
    let disk = dir.join("shadow.db");
    let plain = sqlite3_plain(
        &disk,
        "CREATE TABLE t(v); INSERT INTO t VALUES ('from disk');",
    );
    plain.assert_ok();
    let uri = format!("file:{}?vfs=memdb", disk.display());
    let out = sqlite3_cli(
        Path::new(&uri),
        &["-bail"],
        &format!(
            "CREATE TABLE t(v); INSERT INTO t VALUES ('from memory');
             SELECT json_extract(backup_to_file({}), '$.method');
             SELECT backup_to_file({}, '{{\"method\": \"vacuum\"}}');",
            path_lit(dir.join("auto.db")),
            path_lit(dir.join("vacuum.db")),
        ),
        None,
    );
    assert_eq!(
        out.stdout.trim(),
        "stream",
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("uses VFS 'memdb'"), "{}", out.stderr);
    let read = sqlite3_plain(&dir.join("auto.db"), "SELECT v FROM t;");
    read.assert_ok();
    assert_eq!(read.stdout.trim(), "from memory");
    assert!(!dir.join("vacuum.db").exists());
}

/// `http:/HOST/TOKEN`, `https:HOST`, `http:\\HOST`: URL parsers take what follows for a host
/// name (and look it up in DNS). They must be refused as written, without any request.
#[test]
fn ping_urls_without_a_written_host_are_refused_before_any_lookup() {
    let tmp = tempdir();
    let dir = tmp.path();
    let db = dir.join("app.db");
    make_sample_db(&db, Journal::Rollback, 5);
    let ping = HttpServer::start(200);
    let port = ping.port();
    let conn = open(&db);
    for url in [
        format!("http:/127.0.0.1:{port}/SECRETTOKEN"),
        format!("http:/localhost:{port}/SECRETTOKEN"),
        format!("http:127.0.0.1:{port}/SECRETTOKEN"),
        format!("http:\\\\127.0.0.1:{port}/SECRETTOKEN"),
        format!("http://\t127.0.0.1:{port}/SECRETTOKEN"),
        format!("http:///127.0.0.1:{port}/SECRETTOKEN"),
    ] {
        let err = to_file_err(&conn, &dir.join("x.gz"), &json!({"notify": url}));
        assert!(err.contains("invalid monitoring URL"), "{url}: {err}");
        assert_no_secret(&err, &["SECRETTOKEN"]);
        assert!(!dir.join("x.gz").exists(), "{url}: backed up anyway");
    }
    assert!(ping.requests().is_empty(), "{:?}", ping.requests());
}
