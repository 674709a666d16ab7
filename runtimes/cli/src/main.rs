//! `peerpouch`: the command line.

use std::process::ExitCode;

mod demo;

fn usage() -> &'static str {
    "usage: peerpouch <command>\n\ncommands:\n  demo    two nodes on 127.0.0.1 UDP meet on an in-process hub and replicate sample documents\n          over a WebRTC data channel, both ways, printing each step\n"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => match demo::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("peerpouch demo failed: {e}");
                ExitCode::FAILURE
            }
        },
        Some("-h") | Some("--help") | Some("help") => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("peerpouch: unknown command {other:?}\n\n{}", usage());
            ExitCode::from(2)
        }
        None => {
            eprint!("{}", usage());
            ExitCode::from(2)
        }
    }
}
