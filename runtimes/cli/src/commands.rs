//! The commands behind `share`, `shares`, `replicate` and `docs`, on the async API
//! (`peerpouch-smol`) and the SQLite store.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_channel::Receiver;
use futures_lite::future;
use peerpouch::hub::ShareInfo;
use peerpouch::reach::{IceServer, IceTransportPolicy, ServerKind};
use peerpouch::replicate::{Progress, ReplicationError, ReplicationEvent};
use peerpouch::session::LinkPath;
use peerpouch::{AllDocsRequest, Database, DbError, GetRequest, Rev};
use peerpouch_cli::endpoint::{Endpoint, EndpointError};
use peerpouch_smol::{
    Db, HubSpec, InProcessHub, LinkEvent, PeerConfig, PeerError, PeerNode, ReplicateOptions,
    ShareChange, ShareConfig, Verdict,
};
use serde_json::{json, Value};

use crate::DocsOp;

/// Why a command failed; every one says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// A bad SOURCE/TARGET.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Bad JSON in an argument or on stdin.
    #[error("invalid JSON in {what}: {error}")]
    Json {
        /// Which input.
        what: String,
        /// The parser's message.
        error: String,
    },
    /// The local database file cannot be used.
    #[error("cannot open {path}: {error}")]
    Store {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// From the node (hub unreachable, unknown share, refused, ...).
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// A database refused an operation.
    #[error("{0}")]
    Db(#[from] DbError),
    /// A replication failed or some documents could not be written.
    #[error("{0}")]
    Replication(String),
    /// Something else failed (the demo's checks, say).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// 2 for bad input, 1 for failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Endpoint(_) | CliError::Json { .. } => 2,
            _ => 1,
        }
    }
}

fn parse_json(text: &str, what: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Json {
        what: what.to_string(),
        error: e.to_string(),
    })
}

/// Opens (or creates) the SQLite database at `path`.
fn open_local(path: &Path) -> Result<peerpouch_sqlite::SqliteStore, CliError> {
    peerpouch_sqlite::SqliteStore::open(path).map_err(|e| CliError::Store {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// A name for a local database file (its stem).
fn db_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Ctrl-C and SIGTERM, as a channel (installed once per process).
fn interrupts() -> Receiver<()> {
    let (tx, rx) = async_channel::bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    }) {
        tracing::warn!(error = %e, "cannot catch Ctrl-C");
    }
    rx
}

/// The next item of `stream`, or `None` once interrupted (or when the stream ended).
async fn next_or_interrupt<T>(stream: &Receiver<T>, interrupted: &Receiver<()>) -> Option<T> {
    future::or(async { stream.recv().await.ok() }, async {
        let _ = interrupted.recv().await;
        None
    })
    .await
}

fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// How a command's node reaches peers: the sockets it listens on and the ICE servers it asks.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LinkArgs {
    /// Listen on this UDP address (repeatable; default every interface: 0.0.0.0:0 and [::]:0).
    #[arg(
        long = "bind",
        value_name = "ADDR",
        env = "PEERPOUCH_BIND",
        value_delimiter = ','
    )]
    pub bind: Vec<std::net::SocketAddr>,
    /// A STUN or TURN server (repeatable): stun:HOST:PORT, turn:HOST:PORT?transport=udp|tcp,
    /// turn:USER:PASS@HOST:PORT?transport=tcp.
    #[arg(
        long = "ice-server",
        value_name = "URL",
        env = "PEERPOUCH_ICE_SERVERS",
        value_delimiter = ','
    )]
    pub ice_servers: Vec<String>,
    /// The TURN user name for --ice-server URLs without inline credentials.
    #[arg(long, env = "PEERPOUCH_ICE_USERNAME")]
    pub ice_username: Option<String>,
    /// The TURN password for --ice-server URLs without inline credentials.
    #[arg(long, env = "PEERPOUCH_ICE_CREDENTIAL", hide_env_values = true)]
    pub ice_credential: Option<String>,
    /// Offer only relayed (TURN) candidates: peers never learn this machine's addresses.
    #[arg(long)]
    pub relay_only: bool,
    /// Offer this address to peers instead of the socket's own (a port forward or 1:1 NAT in
    /// front of this machine); repeatable, one per address family.
    #[arg(
        long,
        value_name = "ADDR",
        env = "PEERPOUCH_ANNOUNCE",
        value_delimiter = ','
    )]
    pub announce: Vec<std::net::SocketAddr>,
}

impl LinkArgs {
    /// The node's configuration on `hub` with these options.
    ///
    /// # Errors
    /// [`CliError::Usage`] for an ICE server URL that does not parse, `--relay-only` without
    /// a TURN server.
    pub fn config(&self, hub: HubSpec) -> Result<PeerConfig, CliError> {
        let mut config = PeerConfig::new(hub);
        if !self.bind.is_empty() {
            config = config.bind_all(self.bind.clone());
        }
        let mut servers = Vec::new();
        for url in &self.ice_servers {
            let server = IceServer {
                urls: vec![url.clone()],
                username: self.ice_username.clone(),
                credential: self.ice_credential.clone(),
            };
            server
                .parse()
                .map_err(|e| CliError::Usage(format!("--ice-server: {e}")))?;
            servers.push(server);
        }
        if self.relay_only
            && !servers
                .iter()
                .flat_map(|s| s.parse().unwrap_or_default())
                .any(|u| u.kind == ServerKind::Turn)
        {
            return Err(CliError::Usage(
                "--relay-only needs a TURN server: add --ice-server turn:HOST:PORT?transport=udp"
                    .into(),
            ));
        }
        config = config.ice_servers(servers).announce(self.announce.clone());
        if self.relay_only {
            config = config.ice_transport_policy(IceTransportPolicy::Relay);
        }
        Ok(config)
    }
}

/// `link direct (host <-> host)`, `link via relay (TURN over TCP)`.
fn path_line(path: Option<LinkPath>) -> String {
    match path {
        Some(p) => format!("link {p}"),
        None => "link up".into(),
    }
}

fn path_json(path: Option<LinkPath>) -> Value {
    match path {
        Some(p) => json!({
            "local": p.local.as_str(),
            "remote": p.remote.as_str(),
            "relay": p.relay.map(|t| t.to_string().to_ascii_lowercase()),
            "local_addr": p.local_addr.to_string(),
            "remote_addr": p.remote_addr.to_string(),
        }),
        None => Value::Null,
    }
}

/// `peerpouch share`.
#[derive(clap::Args, Debug)]
pub struct ShareArgs {
    /// The hub: a CouchDB database URL (created if missing).
    #[arg(long)]
    pub hub: String,
    /// The local database file (created if missing).
    #[arg(long)]
    pub db: PathBuf,
    /// A name peers can open the share by.
    #[arg(long)]
    pub name: Option<String>,
    /// JSON peers see in the share list.
    #[arg(long)]
    pub info: Option<String>,
    /// Refuse writes from peers.
    #[arg(long)]
    pub read_only: bool,
    /// Ask on the terminal before accepting each peer.
    #[arg(long)]
    pub ask: bool,
    /// Peers must know this key (give it to them out of band).
    #[arg(long, env = "PEERPOUCH_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub link: LinkArgs,
}

/// Asks on the terminal (stderr for the question, stdin for the answer); no answer refuses.
fn ask_on_terminal(req: &peerpouch_smol::PeerRequest) -> Verdict {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "peer {} wants to connect to {} (info: {}). Accept? [y/N] ",
        req.peer, req.share, req.info
    );
    let _ = err.flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 && matches!(line.trim(), "y" | "Y" | "yes") => Verdict::Accept,
        _ => Verdict::Refuse(Some("refused by the sharer".into())),
    }
}

pub fn share(args: ShareArgs) -> Result<(), CliError> {
    let info = match &args.info {
        Some(t) => parse_json(t, "--info")?,
        None => Value::Null,
    };
    let config = args.link.config(HubSpec::Couch(args.hub.clone()))?;
    let store = open_local(&args.db)?;
    let interrupted = interrupts();
    smol::block_on(async {
        let node = PeerNode::start_with(config)?;
        let name = db_name(&args.db);
        let db = node.add_db(&name, store).await?;
        let mut config = ShareConfig::new().info(info).read_only(args.read_only);
        if let Some(n) = &args.name {
            config = config.name(n.clone());
        }
        if let Some(k) = &args.key {
            config = config.key(k.as_bytes().to_vec());
        }
        if args.ask {
            config = config.ask(ask_on_terminal);
        }
        let links = node.watch_links().await?;
        let id = node.share(&db, config).await?;
        let docs = db.info().await?.doc_count;
        if args.json {
            print_json(&json!({"event": "shared", "share": id, "name": args.name, "docs": docs}));
        } else {
            println!(
                "sharing {} ({docs} docs) as {id}{} on {}; Ctrl-C to stop",
                args.db.display(),
                args.name
                    .as_ref()
                    .map(|n| format!(" named {n:?}"))
                    .unwrap_or_default(),
                node.hub()
            );
        }
        loop {
            match next_or_interrupt(&links, &interrupted).await {
                Some(LinkEvent::Ready { peer, path, .. }) => {
                    if args.json {
                        print_json(&json!({"event": "peer_connected", "peer": peer}));
                        print_json(
                            &json!({"event": "link_ready", "peer": peer, "path": path_json(path)}),
                        );
                    } else {
                        println!("peer {peer} connected, {}", path_line(path));
                    }
                }
                Some(LinkEvent::Closed { peer, reason, .. }) => {
                    if args.json {
                        print_json(
                            &json!({"event": "peer_closed", "peer": peer, "reason": reason}),
                        );
                    } else {
                        println!("peer {peer} left ({reason})");
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let unshared = node.unshare(&id).await;
        node.shutdown().await;
        unshared?;
        if args.json {
            print_json(&json!({"event": "unshared", "share": id}));
        } else {
            println!("unshared {id}");
        }
        Ok(())
    })
}

fn share_json(s: &ShareInfo) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "info": s.info,
        "read_only": s.read_only,
        "expires_at": s.expires_at,
    })
}

fn share_line(s: &ShareInfo) -> String {
    format!(
        "{}  {}{}{}",
        s.id,
        s.name.as_deref().unwrap_or("-"),
        if s.read_only { "  (read-only)" } else { "" },
        if s.info.is_null() {
            String::new()
        } else {
            format!("  {}", s.info)
        }
    )
}

pub fn shares(hub: &str, watch: bool, json_out: bool) -> Result<(), CliError> {
    let interrupted = if watch { Some(interrupts()) } else { None };
    smol::block_on(async {
        let node = PeerNode::start(HubSpec::Couch(hub.to_string()))?;
        let changes = if watch {
            Some(node.watch_shares().await?)
        } else {
            None
        };
        let list = node.shares().await?;
        if json_out && !watch {
            print_json(&Value::Array(list.iter().map(share_json).collect()));
        } else if json_out {
            for s in &list {
                print_json(&json!({"event": "listed", "share": share_json(s)}));
            }
        } else if list.is_empty() {
            println!("no shares on {}", node.hub());
        } else {
            for s in &list {
                println!("{}", share_line(s));
            }
        }
        if let (Some(changes), Some(interrupted)) = (changes, interrupted) {
            loop {
                match next_or_interrupt(&changes, &interrupted).await {
                    Some(ShareChange::Added(s)) if json_out => {
                        print_json(&json!({"event": "added", "share": share_json(&s)}))
                    }
                    Some(ShareChange::Added(s)) => println!("+ {}", share_line(&s)),
                    Some(ShareChange::Removed(id)) if json_out => {
                        print_json(&json!({"event": "removed", "share": id}))
                    }
                    Some(ShareChange::Removed(id)) => println!("- {id}"),
                    None => break,
                }
            }
        }
        node.shutdown().await;
        Ok(())
    })
}

/// `peerpouch replicate`: SOURCE and TARGET are each a local database file, an http(s)://
/// CouchDB database URL, or a share on a hub: peer+http(s)://host/hubdb#SHARE (an id or a name).
#[derive(clap::Args, Debug)]
pub struct ReplicateArgs {
    /// Where documents come from.
    pub source: String,
    /// Where they go.
    pub target: String,
    /// Keep going: follow new changes until interrupted. When a peer's link closes, open the
    /// share again (by its name or id, so a sharer that restarts is found again), with backoff
    /// from 1 s to 32 s, and resume from the last checkpoint.
    #[arg(long)]
    pub live: bool,
    /// Print progress and the summary as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// The key the share requires, if any.
    #[arg(long, env = "PEERPOUCH_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// What the sharer sees about us (JSON).
    #[arg(long)]
    pub info: Option<String>,
    /// Give up on a share whose sharer sends nothing back within this many seconds: it is
    /// probably stale (its sharer crashed).
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub answer_timeout: u64,
    /// Wait this many seconds for a sharer that asks (`share --ask`) to accept us.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub approval_timeout: u64,
    #[command(flatten)]
    pub link: LinkArgs,
}

async fn open_endpoint(
    node: &PeerNode,
    e: &Endpoint,
    is_target: bool,
    info: &Value,
    key: Option<&str>,
    json_out: bool,
) -> Result<Db, CliError> {
    match e {
        Endpoint::Path(p) => {
            let store = open_local(p)?;
            Ok(node.add_db(&p.display().to_string(), store).await?)
        }
        Endpoint::Http(url) => Ok(node.http_db(url, is_target).await?),
        Endpoint::Peer { share, .. } => {
            // Say so while a sharer that asks its user decides.
            let links = node.watch_links().await?;
            let waiting = async {
                while let Ok(e) = links.recv().await {
                    if let LinkEvent::AwaitingApproval { peer, timeout, .. } = e {
                        let secs = timeout.as_secs();
                        if json_out {
                            print_json(&json!({"event": "awaiting_approval", "share": share,
                                "peer": peer, "timeout_seconds": secs}));
                        } else {
                            eprintln!("waiting for the sharer to accept (up to {secs} s)");
                        }
                    }
                }
                future::pending().await
            };
            let opening =
                node.open_with_key(share, info.clone(), key.map(|k| k.as_bytes().to_vec()));
            let db = future::or(opening, waiting).await?;
            if json_out {
                print_json(
                    &json!({"event": "link_ready", "share": share, "path": path_json(db.path())}),
                );
            } else {
                eprintln!("{}", path_line(db.path()));
            }
            Ok(db)
        }
    }
}

/// [`open_endpoint`], except that opening a share ends on Ctrl-C (a sharer that asks its user
/// may take minutes), and with `--live` a share that is not on the hub yet is waited for (as
/// after a disconnect) instead of failing.
#[allow(clippy::too_many_arguments)]
async fn open_endpoint_or_wait(
    node: &PeerNode,
    e: &Endpoint,
    is_target: bool,
    info: &Value,
    key: Option<&str>,
    json_out: bool,
    live: bool,
    interrupted: &Receiver<()>,
) -> Result<Db, CliError> {
    let share = match e {
        Endpoint::Peer { share, .. } => share,
        _ => return open_endpoint(node, e, is_target, info, key, json_out).await,
    };
    let open = || {
        future::or(
            open_endpoint(node, e, is_target, info, key, json_out),
            async {
                let _ = interrupted.recv().await;
                Err(CliError::Failed(format!(
                    "stopped while opening share {share:?}: nothing replicated"
                )))
            },
        )
    };
    if !live {
        return open().await;
    }
    // Watch first, so that a share appearing after the failed open is not missed.
    let changes = node.watch_shares().await?;
    let mut said = false;
    loop {
        match open().await {
            Err(CliError::Peer(PeerError::UnknownShare(_))) => {}
            other => return other,
        }
        if !std::mem::replace(&mut said, true) {
            if json_out {
                print_json(&json!({"event": "waiting_for_share", "share": share}));
            } else {
                eprintln!("no share {share:?} on the hub yet: waiting for it (Ctrl-C to stop)");
            }
        }
        loop {
            match next_or_interrupt(&changes, interrupted).await {
                Some(ShareChange::Added(s))
                    if s.id == *share || s.name.as_deref() == Some(share.as_str()) =>
                {
                    break
                }
                Some(_) => {}
                None => {
                    return Err(CliError::Failed(format!(
                        "stopped while waiting for share {share:?} to appear: nothing replicated"
                    )))
                }
            }
        }
    }
}

fn progress_json(event: &str, p: &Progress) -> Value {
    json!({
        "event": event,
        "changes_read": p.changes_read,
        "docs_read": p.docs_read,
        "docs_written": p.docs_written,
        "doc_write_failures": p.doc_write_failures,
        "doc_read_failures": p.doc_read_failures,
        "last_seq": p.last_seq,
    })
}

/// The figures of earlier runs plus those of the current one (`last_seq` is the current one's).
fn add_progress(before: &Progress, now: &Progress) -> Progress {
    let mut p = now.clone();
    p.changes_read += before.changes_read;
    p.revs_missing += before.revs_missing;
    p.docs_read += before.docs_read;
    p.doc_read_failures += before.doc_read_failures;
    p.docs_written += before.docs_written;
    p.doc_write_failures += before.doc_write_failures;
    p.checkpoints += before.checkpoints;
    p
}

pub fn replicate(args: ReplicateArgs) -> Result<(), CliError> {
    let source = Endpoint::parse(&args.source)?;
    let target = Endpoint::parse(&args.target)?;
    let info = match &args.info {
        Some(t) => parse_json(t, "--info")?,
        None => json!({"app": "peerpouch-cli"}),
    };
    let hubs: Vec<&String> = [&source, &target]
        .into_iter()
        .filter_map(|e| match e {
            Endpoint::Peer { hub, .. } => Some(hub),
            _ => None,
        })
        .collect();
    let hub =
        match hubs.as_slice() {
            [] => HubSpec::InProcess(InProcessHub::new()),
            [one] => HubSpec::Couch((*one).clone()),
            [a, b] if a == b => HubSpec::Couch((*a).clone()),
            _ => return Err(CliError::Usage(
                "SOURCE and TARGET are shares on two different hubs: replicate through a local \
                 database in two steps"
                    .into(),
            )),
        };
    let config = args
        .link
        .config(hub)?
        .answer_timeout(Duration::from_secs(args.answer_timeout))
        .approval_timeout(Duration::from_secs(args.approval_timeout));
    let interrupted = interrupts();
    let bar = !args.json && std::io::stderr().is_terminal();
    smol::block_on(async {
        let node = PeerNode::start_with(config)?;
        let result = async {
            let key = args.key.as_deref();
            let (live, int) = (args.live, &interrupted);
            let mut src =
                open_endpoint_or_wait(&node, &source, false, &info, key, args.json, live, int).await?;
            let mut tgt =
                open_endpoint_or_wait(&node, &target, true, &info, key, args.json, live, int).await?;
            let options = ReplicateOptions {
                live: args.live,
                ..Default::default()
            };
            let started = Instant::now();
            // What earlier runs did: a live replication whose peer's link closes reconnects and
            // runs again (resuming from its checkpoint), and its figures add up.
            let mut before = Progress::default();
            let mut cancelled = false;
            enum RunEnd {
                Done(Progress),
                Lost(String),
            }
            let end = 'runs: loop {
                let mut rep = node.replicate(&src, &tgt, options.clone()).await?;
                let run = loop {
                    let next = future::or(async { Some(rep.next_event().await) }, async {
                        let _ = interrupted.recv().await;
                        None
                    })
                    .await;
                    let event = match next {
                        Some(Some(e)) => e,
                        Some(None) => break Err(CliError::Peer(PeerError::Stopped)),
                        None if !cancelled => {
                            cancelled = true;
                            rep.cancel().await;
                            continue;
                        }
                        None => continue,
                    };
                    match event {
                        ReplicationEvent::Started { since, .. } if args.json => {
                            print_json(&json!({"event": "started", "since": since}));
                        }
                        ReplicationEvent::Progressed(p) | ReplicationEvent::CaughtUp(p) => {
                            let p = add_progress(&before, &p);
                            if args.json {
                                print_json(&progress_json("progress", &p));
                            } else if bar {
                                eprint!(
                                    "\r\x1b[2K{} docs written, {} changes read{}",
                                    p.docs_written,
                                    p.changes_read,
                                    if args.live { " (live)" } else { "" }
                                );
                            }
                        }
                        ReplicationEvent::Completed(p) | ReplicationEvent::Cancelled(p) => {
                            break Ok(RunEnd::Done(p));
                        }
                        ReplicationEvent::Failed {
                            error: ReplicationError::EndpointLost { reason, .. },
                            progress,
                        } if args.live && !cancelled => {
                            before = add_progress(&before, &progress);
                            if bar {
                                eprintln!();
                            }
                            break Ok(RunEnd::Lost(reason));
                        }
                        ReplicationEvent::Failed { error, progress } => {
                            if bar {
                                eprintln!();
                            }
                            break Err(CliError::Replication(format!(
                                "replication failed after {} docs: {error}",
                                before.docs_written + progress.docs_written
                            )));
                        }
                        _ => {}
                    }
                };
                match run {
                    Ok(RunEnd::Done(p)) => break Ok(add_progress(&before, &p)),
                    Err(e) => break Err(e),
                    // The peer's link closed: open it again, with backoff, until it answers or
                    // the user interrupts (the sharer may be restarting).
                    Ok(RunEnd::Lost(reason)) => {
                        if args.json {
                            print_json(&json!({"event": "link_lost", "reason": reason}));
                        } else {
                            eprintln!("{reason}");
                        }
                        let mut attempt = 0u32;
                        loop {
                            attempt = attempt.saturating_add(1);
                            let wait = Duration::from_secs(1 << (attempt - 1).min(5));
                            if args.json {
                                print_json(&json!({"event": "reconnecting", "attempt": attempt, "in_seconds": wait.as_secs()}));
                            } else {
                                eprintln!("reconnecting in {} s (attempt {attempt})", wait.as_secs());
                            }
                            let waited = future::or(
                                async {
                                    smol::Timer::after(wait).await;
                                    true
                                },
                                async {
                                    let _ = interrupted.recv().await;
                                    false
                                },
                            )
                            .await;
                            if !waited {
                                cancelled = true;
                                break 'runs Ok(before.clone());
                            }
                            let reopened = future::or(async {
                                if matches!(source, Endpoint::Peer { .. }) {
                                    src = open_endpoint(&node, &source, false, &info, key, args.json).await?;
                                }
                                if matches!(target, Endpoint::Peer { .. }) {
                                    tgt = open_endpoint(&node, &target, true, &info, key, args.json).await?;
                                }
                                Ok::<bool, CliError>(true)
                            }, async {
                                let _ = interrupted.recv().await;
                                Ok(false)
                            })
                            .await;
                            match reopened {
                                Ok(true) => continue 'runs,
                                // Ctrl-C while opening (a sharer that asks may take minutes).
                                Ok(false) => {
                                    cancelled = true;
                                    break 'runs Ok(before.clone());
                                }
                                Err(e) if args.json => print_json(&json!({"event": "reconnect_failed", "error": e.to_string()})),
                                Err(e) => eprintln!("reconnecting failed: {e}"),
                            }
                        }
                    }
                }
            };
            let p = end?;
            let secs = started.elapsed().as_secs_f64();
            if bar {
                eprintln!();
            }
            if args.json {
                let mut v = progress_json("completed", &p);
                v["seconds"] = json!(secs);
                v["cancelled"] = json!(cancelled);
                print_json(&v);
            } else {
                println!(
                    "replicated {} -> {}: {} docs written ({} read, {} failed) in {:.2} s",
                    src.name(),
                    tgt.name(),
                    p.docs_written,
                    p.docs_read,
                    p.doc_write_failures,
                    secs
                );
            }
            if p.doc_write_failures > 0 || p.doc_read_failures > 0 {
                return Err(CliError::Replication(format!(
                    "{} documents could not be written and {} could not be read: see -v",
                    p.doc_write_failures, p.doc_read_failures
                )));
            }
            Ok(())
        }
        .await;
        node.shutdown().await;
        result
    })
}

fn read_stdin() -> Result<String, CliError> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
    Ok(s)
}

fn rev_of(r: Result<Rev, DbError>) -> Result<String, CliError> {
    Ok(r?.to_string())
}

pub fn docs(path: &Path, op: DocsOp) -> Result<(), CliError> {
    let mut db = open_local(path)?;
    match op {
        DocsOp::Put { doc } => {
            let text = if doc == "-" { read_stdin()? } else { doc };
            let doc = parse_json(&text, "the document")?;
            if !doc.is_object() {
                return Err(CliError::Usage("a document is a JSON object".into()));
            }
            let mut r = db.bulk_docs(vec![doc], true)?;
            let row = r
                .pop()
                .ok_or_else(|| CliError::Failed("the store returned no result".into()))?;
            let rev = rev_of(row.result)?;
            print_json(&json!({"ok": true, "id": row.id, "rev": rev}));
        }
        DocsOp::Bulk => {
            let text = read_stdin()?;
            let docs: Vec<Value> = match text.trim_start().as_bytes().first() {
                Some(b'[') => match parse_json(&text, "stdin")? {
                    Value::Array(a) => a,
                    _ => unreachable!("starts with ["),
                },
                _ => text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .map(|(i, l)| parse_json(l, &format!("stdin line {}", i + 1)))
                    .collect::<Result<_, _>>()?,
            };
            let n = docs.len();
            let results = db.bulk_docs(docs, true)?;
            let failed: Vec<Value> = results
                .iter()
                .filter_map(|r| match &r.result {
                    Err(e) => Some(json!({"id": r.id, "error": e.to_string()})),
                    Ok(_) => None,
                })
                .collect();
            print_json(&json!({"written": n - failed.len(), "failed": failed}));
            if !failed.is_empty() {
                return Err(CliError::Failed(format!(
                    "{} of {n} documents were not written",
                    failed.len()
                )));
            }
        }
        DocsOp::Get {
            id,
            rev,
            conflicts,
            attachments,
        } => {
            let mut req = GetRequest::new(&id);
            if let Some(r) = rev {
                req.rev = Some(
                    r.parse()
                        .map_err(|e| CliError::Usage(format!("--rev: {e}")))?,
                );
            }
            req.conflicts = conflicts;
            req.attachments = attachments;
            print_json(&Value::Object(db.get_with(req)?));
        }
        DocsOp::All { include_docs } => {
            let req = AllDocsRequest {
                include_docs,
                ..Default::default()
            };
            let all = db.all_docs(req)?;
            print_json(&serde_json::to_value(&all).map_err(|e| CliError::Failed(e.to_string()))?);
        }
        DocsOp::Delete { id } => {
            let current = db.get(&id)?;
            let rev = current.get("_rev").cloned().unwrap_or(Value::Null);
            let r = db.put(json!({"_id": id, "_rev": rev, "_deleted": true}));
            print_json(&json!({"ok": true, "id": id, "rev": rev_of(r)?}));
        }
        DocsOp::Info => {
            let info = db.info()?;
            print_json(&serde_json::to_value(&info).map_err(|e| CliError::Failed(e.to_string()))?);
        }
    }
    Ok(())
}
