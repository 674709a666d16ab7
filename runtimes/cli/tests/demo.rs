//! `peerpouch demo` runs the main job end to end and reports its checks.

use std::process::Command;

#[test]
fn demo_succeeds_and_reports_every_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_peerpouch"))
        .arg("demo")
        .output()
        .expect("run peerpouch demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "ok: bob has every document",
        "ok: the attachment arrived byte for byte",
        "ok: both pick the same winner and list the same conflict",
        "ok: revision trees are identical",
        "ok: bob's new document reached alice",
    ] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
}

#[test]
fn unknown_command_fails_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_peerpouch"))
        .arg("frobnicate")
        .output()
        .expect("run peerpouch");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: peerpouch"));
}
