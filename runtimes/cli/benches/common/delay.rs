//! User-space delay lines for the benches (`#[path]`-included): `tests/nat/delay.py` run as a
//! child process, stopped (SIGTERM, so it prints its counters) on drop, panics included.

#![allow(dead_code)] // each bench uses its part

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

/// One `delay.py udp|tcp` forwarder: datagrams (or stream bytes) arriving at [`DelayLine::addr`]
/// go to its target `delay` later, replies come back the same way.
pub struct DelayLine {
    /// Where it listens (what a node announces, or what a client connects to).
    pub addr: SocketAddr,
    child: Option<Child>,
    stderr: Option<ChildStderr>,
}

impl DelayLine {
    /// A UDP line to `target`: `delay` each way, a seeded fraction `loss` dropped each way.
    pub fn udp(target: SocketAddr, delay: Duration, loss: f64, seed: u64) -> DelayLine {
        DelayLine::start(&[
            "udp".to_string(),
            "--target".into(),
            target.to_string(),
            "--delay-ms".into(),
            format!("{}", delay.as_secs_f64() * 1e3),
            "--loss".into(),
            loss.to_string(),
            "--seed".into(),
            seed.to_string(),
        ])
    }

    /// A TCP line to `target`: every chunk `delay` later, each way (TCP has no loss here).
    pub fn tcp(target: SocketAddr, delay: Duration) -> DelayLine {
        DelayLine::start(&[
            "tcp".to_string(),
            "--target".into(),
            target.to_string(),
            "--delay-ms".into(),
            format!("{}", delay.as_secs_f64() * 1e3),
        ])
    }

    fn start(args: &[String]) -> DelayLine {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/nat/delay.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&args[0])
            .args(["--listen", "127.0.0.1:0"])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {}: {e}", script.display()));
        let stderr = child.stderr.take();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line_ok = out.read_line(&mut line).is_ok();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok());
        line_ok &= addr.is_some();
        let mut me = DelayLine {
            addr: addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
            child: Some(child),
            stderr,
        };
        if !line_ok {
            let counters = me.stop();
            panic!("delay.py {args:?} did not start: {line:?} {counters}");
        }
        me
    }

    /// Stops it and returns its counters line (`udp A -> B: flows=1 down_dropped=… …`).
    pub fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        // SAFETY: kill on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.kill();
        let _ = child.wait();
        err.trim().to_string()
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The counter `name` of a counters line (`… up_in=123 …`), 0 when absent.
pub fn counter(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}
