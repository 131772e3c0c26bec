//! What the end-to-end tests of the `loadtest` binary share: the gateway
//! binary of the same profile, and one invocation run to its end.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `gateway` in the directory Cargo put this crate's binary in.
pub fn gateway_bin() -> PathBuf {
    let loadtest = PathBuf::from(env!("CARGO_BIN_EXE_loadtest"));
    let dir = loadtest
        .parent()
        .expect("a binary lives in a directory")
        .to_path_buf();
    let gateway = dir.join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    assert!(
        gateway.is_file(),
        "{} is missing: run `cargo build -p gateway` first (cargo nextest run --workspace builds it)",
        gateway.display()
    );
    gateway
}

/// Runs `loadtest ARGS --gateway-bin <gateway>`; kills it and fails the
/// test after `timeout`. Returns its output once it has exited.
pub fn run_loadtest(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .arg("--gateway-bin")
        .arg(gateway_bin())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the loadtest binary starts");
    let started = Instant::now();
    while child.try_wait().expect("waiting for loadtest").is_none() {
        if started.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("loadtest output");
            panic!(
                "loadtest did not finish within {timeout:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("loadtest output")
}
