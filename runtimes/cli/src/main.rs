//! `peerpouch`: the command line.

use std::process::ExitCode;

mod demo;

fn usage() -> &'static str {
    "usage: peerpouch <command>\n\ncommands:\n  demo    replicate sample documents between two in-process databases, both ways, and print each step\n"
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
