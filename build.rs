//! Records the git commit and target for backup_debug().
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SQLITE_BACKUP_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=SQLITE_BACKUP_TARGET={target}");
    // Never unmapped once loaded: SQLite dlcloses an extension when the last connection that
    // loaded it closes, and Rust's thread-local destructors registered by our code would then
    // run on unmapped code when the thread exits (SIGSEGV in multi-threaded hosts).
    // (-z is an ELF linker option: Linux only, so other targets still build.)
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
