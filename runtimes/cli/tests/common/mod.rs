//! What the CLI's test files share: the binary, the test hub, unique names, scratch
//! directories, output lines on a channel, and the command every test starts from.
#![allow(dead_code)] // Each test file uses its own part.

use std::io::Write;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use serde_json::Value;

/// The `peerpouch` binary this build made.
pub const BIN: &str = env!("CARGO_BIN_EXE_peerpouch");
/// Deadline for one expected line of output (a failure, not a synchronisation).
pub const LINE_DEADLINE: Duration = Duration::from_secs(60);

/// The pouchdb-server test hub's base URL (`PEERPOUCH_TEST_HUB`, set by `.ci/test`).
pub fn hub_base() -> String {
    std::env::var("PEERPOUCH_TEST_HUB")
        .unwrap_or_else(|_| {
            panic!(
                "PEERPOUCH_TEST_HUB is not set: run the tests through `.ci/test`, or \
                 `source .ci/hub.sh && hub_start` first"
            )
        })
        .trim_end_matches('/')
        .to_string()
}

/// `prefix-` and 12 random hex digits: names that no other run or test uses.
pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    format!(
        "{prefix}-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// A scratch directory, removed with everything in it when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new() -> Dir {
        let p = std::env::temp_dir().join(unique("peerpouch-cli-test"));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    /// The path of `name` in it, as a string for the command line.
    pub fn db(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lines `r` gives (a child's stdout or stderr), on a channel, read by a thread of their own.
pub fn lines(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// The configuration directory of every `peerpouch` the tests start (default identity, allow
/// lists): inside the build's temporary directory, never the user's home.
pub fn config_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-test-config")
}

/// `peerpouch args` as every test starts it: on loopback only, whatever the product's default
/// (every interface), with its identity in [`config_home`].
pub fn peerpouch(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("PEERPOUCH_BIND", "127.0.0.1:0")
        .env("XDG_CONFIG_HOME", config_home())
        .env_remove("PEERPOUCH_IDENTITY");
    c
}

/// Runs `peerpouch args` to its end with `stdin` as its input (then end of input).
pub fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = peerpouch(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs `peerpouch args`, which must succeed; its stdout as JSON lines.
pub fn ok_json(args: &[&str], stdin: Option<&str>) -> Vec<Value> {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "peerpouch {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
