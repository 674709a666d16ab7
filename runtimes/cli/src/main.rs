//! `peerpouch`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod demo;
mod peers;

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
        /// The hub: a CouchDB database URL.
        #[arg(long)]
        hub: String,
        /// Keep printing shares as they come and go, until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    let filter = match cli.verbose {
        0 => "warn",
        1 => "peerpouch=info,peerpouch_smol=info,peerpouch_cli=info,warn",
        _ => "peerpouch=debug,peerpouch_smol=debug,peerpouch_couch=debug,peerpouch_cli=debug,info",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let result = match cli.command {
        Command::Demo(link) => demo::run(&link).map_err(commands::CliError::Failed),
        Command::Share(args) => commands::share(args),
        Command::Shares { hub, watch, json } => commands::shares(&hub, watch, json),
        Command::Replicate(args) => commands::replicate(args),
        Command::Docs { path, op } => commands::docs(&path, op),
        Command::Id { identity, json } => peers::id(&identity, json).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerpouch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
