//! What the CLI's end-to-end tests share: running the `ferry` binary on a directory.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `ferry --dir DIR ARGS...` and returns what it did.
pub fn ferry(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("FERRY_DIR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout, trimmed.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = ferry(dir, args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
