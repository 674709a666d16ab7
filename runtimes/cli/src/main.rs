//! `peerpouch`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod demo;

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
    Demo,
    /// Serve a local database to peers until interrupted (Ctrl-C unshares it).
    Share {
        /// The hub: a CouchDB database URL (created if missing).
        #[arg(long)]
        hub: String,
        /// The local database file (created if missing).
        #[arg(long)]
        db: PathBuf,
        /// A name peers can open the share by.
        #[arg(long)]
        name: Option<String>,
        /// JSON peers see in the share list.
        #[arg(long)]
        info: Option<String>,
        /// Refuse writes from peers.
        #[arg(long)]
        read_only: bool,
        /// Ask on the terminal before accepting each peer.
        #[arg(long)]
        ask: bool,
        /// Peers must know this key (give it to them out of band).
        #[arg(long, env = "PEERPOUCH_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Print events as JSON lines.
        #[arg(long)]
        json: bool,
    },
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
    Replicate {
        /// Where documents come from.
        source: String,
        /// Where they go.
        target: String,
        /// Keep going: follow new changes until interrupted.
        #[arg(long)]
        live: bool,
        /// Print progress and the summary as JSON lines.
        #[arg(long)]
        json: bool,
        /// The key the share requires, if any.
        #[arg(long, env = "PEERPOUCH_KEY", hide_env_values = true)]
        key: Option<String>,
        /// What the sharer sees about us (JSON).
        #[arg(long)]
        info: Option<String>,
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
        Command::Demo => demo::run().map_err(commands::CliError::Failed),
        Command::Share {
            hub,
            db,
            name,
            info,
            read_only,
            ask,
            key,
            json,
        } => commands::share(commands::ShareArgs {
            hub,
            db,
            name,
            info,
            read_only,
            ask,
            key,
            json,
        }),
        Command::Shares { hub, watch, json } => commands::shares(&hub, watch, json),
        Command::Replicate {
            source,
            target,
            live,
            json,
            key,
            info,
        } => commands::replicate(commands::ReplicateArgs {
            source,
            target,
            live,
            json,
            key,
            info,
        }),
        Command::Docs { path, op } => commands::docs(&path, op),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerpouch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
