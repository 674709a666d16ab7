//! `peerpouch demo` runs the main job end to end and reports its checks.

use std::process::Command;

/// Runs `peerpouch demo ARGS` and returns its output; it must succeed.
fn demo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peerpouch"))
        .arg("demo")
        .args(args)
        .output()
        .expect("run peerpouch demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn demo_succeeds_and_reports_every_check() {
    let stdout = demo(&[]);
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

/// The demo through coturn (`PEERPOUCH_TEST_TURN=ADDR|USER|PASS`, as `.ci/test` exports it),
/// relay-only over TCP: the link says so and every check holds.
#[test]
fn demo_through_a_turn_server_over_tcp() {
    let Ok(turn) = std::env::var("PEERPOUCH_TEST_TURN") else {
        assert!(
            std::env::var("PEERPOUCH_TEST_TURN_OPTIONAL").as_deref() == Ok("1"),
            "PEERPOUCH_TEST_TURN is not set: run through .ci/test (or set \
             PEERPOUCH_TEST_TURN_OPTIONAL=1 to skip)"
        );
        return;
    };
    let mut parts = turn.splitn(3, '|');
    let (addr, user, pass) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let url = format!("turn:{user}:{pass}@{addr}?transport=tcp");
    let stdout = demo(&["--relay-only", "--ice-server", &url]);
    assert!(stdout.contains("via relay (TURN over TCP)"), "{stdout}");
    assert!(
        stdout.contains("ok: revision trees are identical"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(pass),
        "the password is never printed:\n{stdout}"
    );
}
