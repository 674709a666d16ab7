//! `peerpouch`: the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod demo;
mod peers;
mod progress;
mod stop;

/// Share CouchDB-style databases peer to peer over WebRTC, with a CouchDB server as the
/// meeting point ("hub").
#[derive(Parser, Debug)]
#[command(name = "peerpouch", version, about, long_about = None)]
struct Cli {
    /// Log more (-v: what happens, -vv: protocol detail) to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Two nodes on 127.0.0.1 UDP meet on an in-process hub and replicate sample documents over
    /// a WebRTC data channel, both ways, printing each step and checking the result.
    Demo(commands::LinkArgs),
    /// Serve a local database to peers until interrupted (Ctrl-C unshares it).
    Share(commands::ShareArgs),
    /// List the shares on a hub (and follow them with --watch).
    Shares {
        /// The hub: a CouchDB database URL (it must exist: the first `share` creates it).
        #[arg(long)]
        hub: String,
        /// Keep printing shares as they come and go, until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        http: commands::HttpArgs,
    },
    /// Replicate SOURCE into TARGET. Each is a local database file, an http(s):// CouchDB
    /// database URL, or a share on a hub: peer+http(s)://host/hubdb#SHARE (an id or a name).
    Replicate(commands::ReplicateArgs),
    /// Print this peer's certificate fingerprint (what sharers see and may allow), making its
    /// identity on first use.
    Id {
        #[command(flatten)]
        identity: peers::IdentityArgs,
        /// Print JSON (the fingerprint and the identity file).
        #[arg(long)]
        json: bool,
    },
    /// Create and inspect documents in a local database file.
    Docs {
        /// The local database file (created if missing).
        path: PathBuf,
        #[command(subcommand)]
        op: DocsOp,
    },
}

#[derive(Subcommand, Debug)]
enum DocsOp {
    /// Write a document (JSON; `-` reads it from stdin). Prints its id and new rev.
    Put {
        /// The document.
        doc: String,
    },
    /// Write many documents: a JSON array, or one JSON document per line, from stdin.
    Bulk,
    /// Attach a file to a document (created if missing) as a new revision, read and written a
    /// range at a time: a file of any size, in bounded memory. Prints its id, new rev and the
    /// attachment's digest and length.
    Attach {
        /// The document's id.
        id: String,
        /// The attachment's name.
        name: String,
        /// The file (`-` reads stdin, which is then held whole).
        file: std::path::PathBuf,
        /// Its MIME type.
        #[arg(long = "type", default_value = "application/octet-stream")]
        content_type: String,
    },
    /// Print a document.
    Get {
        /// Its id.
        id: String,
        /// A specific revision.
        #[arg(long)]
        rev: Option<String>,
        /// Include `_conflicts`.
        #[arg(long)]
        conflicts: bool,
        /// Include attachment bodies (base64) instead of stubs.
        #[arg(long)]
        attachments: bool,
    },
    /// List every document (id and winning rev; with --include-docs the documents).
    All {
        /// Print whole documents.
        #[arg(long)]
        include_docs: bool,
    },
    /// Delete a document (its current revision).
    Delete {
        /// Its id.
        id: String,
    },
    /// Print database information (doc count, update sequence).
    Info,
    /// Check the whole file (SQLite's integrity check, every revision tree); exit 1 on damage.
    Check,
}

/// What the log shows at each `-v`. Without one, nothing: a person sees the CLI's own lines
/// alone, which already say what went wrong; the libraries' warnings (a lost link, a failed hub
/// request) repeat them in another voice. `RUST_LOG` overrides it.
fn log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "off",
        1 => "peerpouch=info,peerpouch_smol=info,peerpouch_couch=info,peerpouch_sqlite=info,peerpouch_cli=info,warn",
        _ => "peerpouch=debug,peerpouch_smol=debug,peerpouch_couch=debug,peerpouch_sqlite=debug,peerpouch_cli=debug,info",
    }
}

/// Colour in the log only on a terminal, and never when `NO_COLOR` is set to anything but the
/// empty string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(cli.verbose))),
        )
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    stop::install();
    let result = match cli.command {
        Command::Demo(link) => demo::run(&link).map_err(commands::CliError::Failed),
        Command::Share(args) => commands::share(args),
        Command::Shares {
            hub,
            watch,
            json,
            http,
        } => commands::shares(&hub, watch, json, &http),
        Command::Replicate(args) => commands::replicate(args),
        Command::Docs { path, op } => commands::docs(&path, op),
        Command::Id { identity, json } => peers::id(&identity, json).map_err(Into::into),
    };
    // Whatever happened, the files are whole before the process ends (see `stop`).
    stop::close_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerpouch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_without_v_and_louder_with_each() {
        assert_eq!(log_filter(0), "off");
        assert!(log_filter(1).contains("peerpouch=info") && log_filter(1).ends_with("warn"));
        assert!(log_filter(2).contains("peerpouch=debug"));
        assert_eq!(log_filter(9), log_filter(2));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".into())));
        // NO_COLOR set to the empty string does not count (no-color.org).
        assert!(colour(true, Some("".into())));
    }
}
