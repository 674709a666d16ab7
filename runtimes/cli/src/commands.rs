//! The commands behind `share`, `shares`, `replicate` and `docs`, on the async API
//! (`peerpouch-smol`) and the SQLite store.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_channel::Receiver;
use futures_lite::future;
use peerpouch::hub::ShareInfo;
use peerpouch::reach::{IceServer, IceTransportPolicy, ServerKind};
use peerpouch::replicate::{Progress, ReplicationError, ReplicationEvent};
use peerpouch::session::LinkPath;
use peerpouch::{
    AllDocsRequest, Database, DbError, Doc, GetRequest, Request, Response, Rev, StageRequest,
};
use peerpouch_cli::endpoint::{Endpoint, EndpointError};
use peerpouch_couch::CouchClient;
use peerpouch_smol::{
    Db, HubSpec, InProcessHub, LinkEvent, PeerConfig, PeerError, PeerNode, ReplicateOptions,
    ShareChange, ShareConfig,
};
use serde_json::{json, Value};

use crate::peers::{AllowArgs, AllowList, IdentityArgs, PeersError};
use crate::progress::{human_bytes, human_duration, human_rate, rows_left, ProgressView};
use crate::stop::{open_local, within, LocalDb, Stop};
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
    /// The local database file cannot be used (the message names it).
    #[error("{error}")]
    Store {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// A local database file that must exist (a SOURCE) does not.
    #[error("{} does not exist: check the path (nothing was created)", .0.display())]
    NoSuchFile(PathBuf),
    /// This user may not read and write the file, or create its `-wal` beside it.
    #[error("permission denied: {} (peerpouch reads and writes the file and creates its -wal beside it: check the permissions of the file and its directory)", .0.display())]
    PermissionDenied(PathBuf),
    /// A CouchDB SOURCE that does not exist on its server.
    #[error("SOURCE {0} does not exist on the server: check the database name")]
    NoSource(String),
    /// SOURCE and TARGET name one database.
    #[error("SOURCE and TARGET are the same database ({0}): nothing to replicate")]
    SameDatabase(String),
    /// A URL that names no CouchDB database.
    #[error("{what}: {error}: write http(s)://[user:pass@]host:port/DATABASE")]
    BadUrl {
        /// Which argument.
        what: String,
        /// What is wrong with it.
        error: String,
    },
    /// The hub database does not exist (only `share` creates it).
    #[error("the hub database {0} does not exist: check its name (the first `peerpouch share` on a hub creates it)")]
    NoHub(String),
    /// The hub could not be asked.
    #[error("hub: {0}")]
    Hub(String),
    /// The share could not be removed from the hub before stopping.
    #[error("could not unshare {share}: {why}; its share document stays listed until it expires (its expires_at, at most the share TTL: 2 minutes by default)")]
    Unshare {
        /// The share id.
        share: String,
        /// Why.
        why: String,
    },
    /// Ctrl-C or SIGTERM came before the command had done anything worth reporting.
    #[error("interrupted")]
    Interrupted,
    /// From the node (hub unreachable, unknown share, refused, ...).
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// A database refused an operation.
    #[error("{0}")]
    Db(#[from] DbError),
    /// A replication failed or some documents could not be written.
    #[error("{0}")]
    Replication(String),
    /// This peer's identity or a share's allow list.
    #[error(transparent)]
    Peers(#[from] PeersError),
    /// Something else failed (the demo's checks, say).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// 2 for bad input, 130 when interrupted before anything was done, 1 for failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_)
            | CliError::Endpoint(_)
            | CliError::Json { .. }
            | CliError::NoSuchFile(_)
            | CliError::NoSource(_)
            | CliError::SameDatabase(_)
            | CliError::BadUrl { .. }
            | CliError::NoHub(_) => 2,
            CliError::Interrupted => crate::stop::INTERRUPTED_STATUS as u8,
            CliError::Peers(e) => e.exit_code(),
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

/// How long a stopping `share` waits for the hub to delete its share document, and a stopping
/// `replicate` for its replication to end (and checkpoint), unless `PEERPOUCH_STOP_TIMEOUT`
/// says otherwise.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stopping command waits for its node to close its links.
const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(500);

/// [`STOP_TIMEOUT`], or `PEERPOUCH_STOP_TIMEOUT` (seconds) for a hub or peer that needs longer.
///
/// # Errors
/// [`CliError::Usage`] when the variable is not a number of seconds.
fn stop_timeout() -> Result<Duration, CliError> {
    let Ok(text) = std::env::var("PEERPOUCH_STOP_TIMEOUT") else {
        return Ok(STOP_TIMEOUT);
    };
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "PEERPOUCH_STOP_TIMEOUT={text:?}: give a number of seconds (such as 1 or 0.5)"
            ))
        })
}

/// Says on stderr that the command is winding down, and how to end it at once.
fn say_stopping(what: &str) {
    eprintln!("stopping: {what} (Ctrl-C again to quit at once)");
}

/// Stops `node`, waiting at most [`SHUTDOWN_DEADLINE`] (an unreachable peer or hub does not
/// hold the process; what is left expires on its own).
/// What a command's setup gives, or its error (or [`CliError::Interrupted`] when stopped
/// first), with the node stopped before an error is returned.
async fn setup_or_stop<T>(
    node: &PeerNode,
    stop: &Stop,
    setup: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    let error = match stop.or(setup).await {
        Some(Ok(up)) => return Ok(up),
        Some(Err(e)) => e,
        None => CliError::Interrupted,
    };
    stop_node(node).await;
    Err(error)
}

async fn stop_node(node: &PeerNode) {
    if within(SHUTDOWN_DEADLINE, node.shutdown()).await.is_none() {
        tracing::debug!("the node did not stop within {SHUTDOWN_DEADLINE:?}; leaving it");
    }
}

/// A client for a hub or CouchDB URL given as `what`; nothing is sent.
fn couch_url(
    url: &str,
    what: &str,
    http: &peerpouch_couch::ClientConfig,
) -> Result<CouchClient, CliError> {
    CouchClient::with_config(url, http.clone()).map_err(|e| match e {
        peerpouch_couch::Error::InvalidUrl(error) => CliError::BadUrl {
            what: what.to_string(),
            error,
        },
        e => CliError::Hub(e.to_string()),
    })
}

/// Checks that the hub database exists (listing and joining never create it).
async fn hub_exists(client: CouchClient) -> Result<(), CliError> {
    let url = client.url().redacted().to_string();
    let mut client = client;
    match smol::unblock(move || client.info()).await {
        Ok(_) => Ok(()),
        Err(DbError::NotFound(_)) => Err(CliError::NoHub(url)),
        Err(e) => Err(CliError::Hub(e.reason().to_string())),
    }
}

/// A name for a local database file (its stem).
fn db_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The next item of `stream`, or `None` once a stop is asked for (or when the stream ended).
async fn next_or_stop<T>(stream: &Receiver<T>, stop: &Stop) -> Option<T> {
    stop.or(stream.recv()).await.and_then(Result::ok)
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

/// How commands reach a hub or a CouchDB database over HTTPS.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HttpArgs {
    /// Also trust the certificate authorities in this PEM file (one or more certificates) for
    /// https:// hubs and databases, besides the platform's trust store: a private CA.
    #[arg(long, value_name = "PATH", env = "PEERPOUCH_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl HttpArgs {
    /// The HTTP client settings with these options.
    ///
    /// # Errors
    /// [`CliError::Usage`] for a CA file that cannot be read or holds no certificate.
    pub fn config(&self) -> Result<peerpouch_couch::ClientConfig, CliError> {
        let mut config = peerpouch_couch::ClientConfig::default();
        if let Some(path) = &self.ca_file {
            let certs = peerpouch_couch::CaCerts::from_pem_file(path)
                .map_err(|e| CliError::Usage(format!("--ca-file: {e}")))?;
            tracing::info!(path = %path.display(), certificates = certs.len(), "trusting a private CA");
            config = config.ca_certs(certs);
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
    /// Serve at most N peers at once; one more is told the share is full (the node's own
    /// limit, 512 links, applies too).
    #[arg(long, value_name = "N")]
    pub max_links: Option<usize>,
    /// Ask on the terminal before accepting each peer not on the allow list (answers: y, n,
    /// or a to always allow its fingerprint).
    #[arg(long)]
    pub ask: bool,
    #[command(flatten)]
    pub allow: AllowArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Peers must know this key (give it to them out of band).
    #[arg(long, env = "PEERPOUCH_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub link: LinkArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

pub fn share(args: ShareArgs) -> Result<(), CliError> {
    let info = match &args.info {
        Some(t) => parse_json(t, "--info")?,
        None => Value::Null,
    };
    couch_url(&args.hub, "--hub", &Default::default())?;
    let stop_after = stop_timeout()?;
    let allow = std::sync::Arc::new(AllowList::open(
        &args.allow,
        args.name.as_deref(),
        args.ask,
    )?);
    let identity = args.identity.load()?;
    let config = args
        .link
        .config(HubSpec::Couch(args.hub.clone()))?
        .http(args.http.config()?)
        .identity(identity);
    let store = open_local(&args.db, true)?;
    let stop = crate::stop::listen();
    smol::block_on(async {
        let node = PeerNode::start_with(config)?;
        let started = async {
            let name = db_name(&args.db);
            let db = node.add_db(&name, store).await?;
            let mut config = ShareConfig::new().info(info).read_only(args.read_only);
            if let Some(n) = &args.name {
                config = config.name(n.clone());
            }
            if let Some(k) = &args.key {
                config = config.key(k.as_bytes().to_vec());
            }
            if let Some(n) = args.max_links {
                config = config.max_links(n);
            }
            if allow.decides() {
                let (allow, json_out) = (allow.clone(), args.json);
                config = config.ask(move |req| allow.decide(req, json_out));
            }
            let links = node.watch_links().await?;
            let id = node.share(&db, config).await?;
            let docs = db.info().await?.doc_count;
            Ok::<_, CliError>((links, id, docs))
        };
        // Stopped or failed before the share was up: the node unshares whatever reached the
        // hub as it stops.
        let (links, id, docs) = setup_or_stop(&node, &stop, started).await?;
        if args.json {
            print_json(
                &json!({"event": "shared", "share": id, "name": args.name, "docs": docs,
                               "fingerprint": node.fingerprint()}),
            );
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
            println!("this peer is {}", node.fingerprint());
            if allow.decides() {
                let n = allow.len();
                println!(
                    "{n} peer{} on the allow list{}; {}",
                    if n == 1 { "" } else { "s" },
                    allow
                        .file()
                        .map(|f| format!(" ({})", f.display()))
                        .unwrap_or_default(),
                    if allow.ask {
                        "others are asked"
                    } else {
                        "others are refused"
                    }
                );
            }
        }
        loop {
            match next_or_stop(&links, &stop).await {
                Some(LinkEvent::Ready {
                    peer,
                    path,
                    fingerprint,
                    ..
                }) => {
                    let fp = fingerprint.as_deref().unwrap_or("-");
                    if args.json {
                        print_json(
                            &json!({"event": "peer_connected", "peer": peer, "fingerprint": fp}),
                        );
                        print_json(
                            &json!({"event": "link_ready", "peer": peer, "path": path_json(path)}),
                        );
                    } else {
                        println!("peer {peer} ({fp}) connected, {}", path_line(path));
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
        // The hub may be unreachable now: try briefly, then leave the share document to expire.
        say_stopping(&format!("unsharing {id}"));
        let unshared = within(stop_after, node.unshare(&id)).await;
        stop_node(&node).await;
        match unshared {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(CliError::Unshare {
                    share: id,
                    why: e.to_string(),
                })
            }
            None => {
                return Err(CliError::Unshare {
                    share: id,
                    why: format!("the hub did not answer within {stop_after:?}"),
                })
            }
        }
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
        "fingerprint": s.fingerprint,
    })
}

fn share_line(s: &ShareInfo) -> String {
    format!(
        "{}  {}{}{}{}",
        s.id,
        s.name.as_deref().unwrap_or("-"),
        if s.read_only { "  (read-only)" } else { "" },
        s.fingerprint
            .as_deref()
            .map(|f| format!("  {f}"))
            .unwrap_or_default(),
        if s.info.is_null() {
            String::new()
        } else {
            format!("  {}", s.info)
        }
    )
}

pub fn shares(hub: &str, watch: bool, json_out: bool, http: &HttpArgs) -> Result<(), CliError> {
    let http = http.config()?;
    let client = couch_url(hub, "--hub", &http)?;
    let config = PeerConfig::new(HubSpec::Couch(hub.to_string())).http(http);
    let stop = crate::stop::listen();
    smol::block_on(async {
        // A mistyped hub database is an error, not an empty listing (nor a new database).
        stop.or(hub_exists(client))
            .await
            .ok_or(CliError::Interrupted)??;
        let node = PeerNode::start_with(config)?;
        let listed = async {
            let changes = if watch {
                Some(node.watch_shares().await?)
            } else {
                None
            };
            Ok::<_, CliError>((changes, node.shares().await?))
        };
        let (changes, list) = setup_or_stop(&node, &stop, listed).await?;
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
        if let Some(changes) = changes {
            // The watch starts with every share already there: those were just listed. What
            // is known is kept so a removal can say which share went, not only its id.
            let mut known: BTreeMap<String, ShareInfo> =
                list.into_iter().map(|s| (s.id.clone(), s)).collect();
            loop {
                match next_or_stop(&changes, &stop).await {
                    Some(ShareChange::Added(s)) => {
                        if known.contains_key(&s.id) {
                            continue;
                        }
                        if json_out {
                            print_json(&json!({"event": "added", "share": share_json(&s)}));
                        } else {
                            println!("+ {}", share_line(&s));
                        }
                        known.insert(s.id.clone(), s);
                    }
                    Some(ShareChange::Removed(id)) => {
                        let gone = known.remove(&id);
                        if json_out {
                            let name = gone.as_ref().and_then(|s| s.name.clone());
                            print_json(&json!({"event": "removed", "share": id, "name": name}));
                        } else {
                            match gone {
                                Some(s) => println!("- {}", share_line(&s)),
                                None => println!("- {id}"),
                            }
                        }
                    }
                    None => break,
                }
            }
        }
        stop_node(&node).await;
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
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub link: LinkArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

async fn open_endpoint(
    node: &PeerNode,
    e: &Endpoint,
    is_target: bool,
    info: &Value,
    key: Option<&str>,
    json_out: bool,
    view: &ProgressView,
) -> Result<Db, CliError> {
    match e {
        Endpoint::Path(p) => {
            // A missing TARGET file is created; a missing SOURCE is an error.
            let store = open_local(p, is_target)?;
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
                            view.say(&format!(
                                "waiting for the sharer to accept (up to {secs} s)"
                            ));
                        }
                    }
                }
                future::pending().await
            };
            let opening =
                node.open_with_key(share, info.clone(), key.map(|k| k.as_bytes().to_vec()));
            let db = future::or(opening, waiting).await?;
            let fp = db.fingerprint().unwrap_or("-");
            if json_out {
                print_json(&json!({"event": "link_ready", "share": share,
                                   "path": path_json(db.path()), "fingerprint": fp}));
            } else {
                view.say(&format!("{}, sharer {fp}", path_line(db.path())));
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
    stop: &Stop,
    view: &ProgressView,
) -> Result<Db, CliError> {
    let open = || async {
        stop.or(open_endpoint(node, e, is_target, info, key, json_out, view))
            .await
            .ok_or(CliError::Interrupted)?
    };
    let share = match e {
        Endpoint::Peer { share, .. } if live => share,
        _ => return open().await,
    };
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
                view.say(&format!(
                    "no share {share:?} on the hub yet: waiting for it (Ctrl-C to stop)"
                ));
            }
        }
        loop {
            match next_or_stop(&changes, stop).await {
                Some(ShareChange::Added(s))
                    if s.id == *share || s.name.as_deref() == Some(share.as_str()) =>
                {
                    break
                }
                Some(_) => {}
                None => return Err(CliError::Interrupted),
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
        "attachment_bytes": p.attachment_bytes,
        "last_seq": p.last_seq,
        "checkpointed_seq": p.checkpointed_seq,
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
    p.attachment_bytes += before.attachment_bytes;
    p
}

pub fn replicate(args: ReplicateArgs) -> Result<(), CliError> {
    let source = Endpoint::parse(&args.source)?;
    let target = Endpoint::parse(&args.target)?;
    let info = match &args.info {
        Some(t) => parse_json(t, "--info")?,
        None => json!({"app": "peerpouch-cli"}),
    };
    // Every URL is checked before anything is opened or created.
    for (e, what) in [(&source, "SOURCE"), (&target, "TARGET")] {
        match e {
            Endpoint::Http(url) => drop(couch_url(url, what, &Default::default())?),
            Endpoint::Peer { hub, .. } => drop(couch_url(
                hub,
                &format!("{what}'s hub"),
                &Default::default(),
            )?),
            Endpoint::Path(_) => {}
        }
    }
    if let Some(same) = same_database(&source, &target) {
        return Err(CliError::SameDatabase(same));
    }
    // Said at once, before any hub is asked.
    if let Endpoint::Path(p) = &source {
        if matches!(std::fs::metadata(p), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            return Err(CliError::NoSuchFile(p.clone()));
        }
    }
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
    let http = args.http.config()?;
    let mut config = args
        .link
        .config(hub.clone())?
        .http(http.clone())
        .answer_timeout(Duration::from_secs(args.answer_timeout))
        .approval_timeout(Duration::from_secs(args.approval_timeout));
    if !hubs.is_empty() {
        // Only a peer sees who we are: a copy between files and CouchDB makes no identity.
        config = config.identity(args.identity.load()?);
    }
    let stop_after = stop_timeout()?;
    let stop = crate::stop::listen();
    let view = ProgressView::new(!args.json && std::io::stderr().is_terminal(), args.live);
    smol::block_on(async {
        // Joining never creates the hub database (the node would, as a sharer's does).
        if let HubSpec::Couch(url) = &hub {
            stop.or(hub_exists(couch_url(url, "the hub", &http)?))
                .await
                .ok_or(CliError::Interrupted)??;
        }
        let node = PeerNode::start_with(config)?;
        let with_peer = !hubs.is_empty();
        let result = async {
            let key = args.key.as_deref();
            let live = args.live;
            let mut src = open_endpoint_or_wait(
                &node, &source, false, &info, key, args.json, live, &stop, &view,
            )
            .await?;
            // The source must be readable before anything is created for the target.
            match stop.or(src.info()).await.ok_or(CliError::Interrupted)? {
                Ok(_) => {}
                Err(DbError::NotFound(_)) if matches!(source, Endpoint::Http(_)) => {
                    return Err(CliError::NoSource(src.name().to_string()));
                }
                Err(e) => return Err(CliError::Db(e)),
            }
            let mut tgt = open_endpoint_or_wait(
                &node, &target, true, &info, key, args.json, live, &stop, &view,
            )
            .await?;
            let options = ReplicateOptions {
                live: args.live,
                ..Default::default()
            };
            let started = Instant::now();
            // What earlier runs did: a live replication whose peer's link closes reconnects and
            // runs again (resuming from its checkpoint), and its figures add up.
            let mut before = Progress::default();
            let mut cancelled = false;
            let mut said_caught_up = false;
            enum RunEnd {
                Done(Progress),
                Lost(String),
            }
            enum Next {
                // Boxed: an event is ten times the size of the other answers.
                Event(Box<Option<ReplicationEvent>>),
                Stop,
                GaveUp,
            }
            let end = 'runs: loop {
                let mut rep = node.replicate(&src, &tgt, options.clone()).await?;
                // Once cancelled: until when the replication may take to end (and checkpoint).
                let mut end_by: Option<Instant> = None;
                let run = loop {
                    let next = match end_by {
                        None => match stop.or(rep.next_event()).await {
                            Some(e) => Next::Event(Box::new(e)),
                            None => Next::Stop,
                        },
                        Some(by) => {
                            let left = by.saturating_duration_since(Instant::now());
                            match within(left, rep.next_event()).await {
                                Some(e) => Next::Event(Box::new(e)),
                                None => Next::GaveUp,
                            }
                        }
                    };
                    let event = match next {
                        Next::Event(e) => match *e {
                            Some(e) => e,
                            None => break Err(CliError::Peer(PeerError::Stopped)),
                        },
                        Next::Stop => {
                            cancelled = true;
                            say_stopping("cancelling the replication");
                            end_by = Some(Instant::now() + stop_after);
                            within(stop_after, rep.cancel()).await;
                            continue;
                        }
                        // An unreachable peer cannot confirm: stop with what was written.
                        Next::GaveUp => break Ok(RunEnd::Done(rep.progress().clone())),
                    };
                    match event {
                        ReplicationEvent::Started { since, .. } => {
                            if args.json {
                                print_json(&json!({"event": "started", "since": since}));
                            } else if view.is_drawn() {
                                // The bar's total: what the source can still return from here.
                                let at = Instant::now();
                                let left = src.info().await.ok().map(|i| rows_left(&i, &since));
                                view.started(left, before.changes_read, at);
                            }
                        }
                        ReplicationEvent::Progressed(p) => {
                            let p = add_progress(&before, &p);
                            if args.json {
                                print_json(&progress_json("progress", &p));
                            }
                            view.update(&p);
                        }
                        ReplicationEvent::CaughtUp(p) => {
                            let p = add_progress(&before, &p);
                            if args.json {
                                print_json(&progress_json("progress", &p));
                            } else if !view.is_drawn() && !said_caught_up {
                                // Without a bar (stderr is a file or a pipe), said once.
                                said_caught_up = true;
                                view.say(&format!(
                                    "caught up ({} docs written); following changes until Ctrl-C",
                                    p.docs_written
                                ));
                            }
                            view.caught_up(&p);
                        }
                        ReplicationEvent::Completed(p) | ReplicationEvent::Cancelled(p) => {
                            break Ok(RunEnd::Done(p));
                        }
                        ReplicationEvent::Failed {
                            error: ReplicationError::EndpointLost { reason, .. },
                            progress,
                        } if args.live && !cancelled => {
                            before = add_progress(&before, &progress);
                            break Ok(RunEnd::Lost(reason));
                        }
                        ReplicationEvent::Failed { error, progress } => {
                            view.finish();
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
                            view.say(&reason);
                        }
                        let mut attempt = 0u32;
                        loop {
                            attempt = attempt.saturating_add(1);
                            let wait = Duration::from_secs(1 << (attempt - 1).min(5));
                            if args.json {
                                print_json(
                                    &json!({"event": "reconnecting", "attempt": attempt, "in_seconds": wait.as_secs()}),
                                );
                            } else {
                                view.say(&format!(
                                    "reconnecting in {} s (attempt {attempt})",
                                    wait.as_secs()
                                ));
                            }
                            let waited = stop.or(smol::Timer::after(wait)).await;
                            if waited.is_none() {
                                cancelled = true;
                                break 'runs Ok(before.clone());
                            }
                            let reopened = stop
                                .or(async {
                                    if matches!(source, Endpoint::Peer { .. }) {
                                        src = open_endpoint(
                                            &node, &source, false, &info, key, args.json, &view,
                                        )
                                        .await?;
                                    }
                                    if matches!(target, Endpoint::Peer { .. }) {
                                        tgt = open_endpoint(
                                            &node, &target, true, &info, key, args.json, &view,
                                        )
                                        .await?;
                                    }
                                    Ok::<(), CliError>(())
                                })
                                .await;
                            let Some(reopened) = reopened else {
                                cancelled = true;
                                break 'runs Ok(before.clone());
                            };
                            match reopened {
                                Ok(()) => continue 'runs,
                                Err(e) if args.json => print_json(
                                    &json!({"event": "reconnect_failed", "error": e.to_string()}),
                                ),
                                Err(e) => view.say(&format!("reconnecting failed: {e}")),
                            }
                        }
                    }
                }
            };
            view.finish();
            let p = end?;
            let took = started.elapsed();
            // What crossed the network, when a peer is one side.
            let net = match with_peer {
                true => node.stats().await.ok(),
                false => None,
            };
            if args.json {
                let mut v = progress_json("completed", &p);
                v["seconds"] = json!(took.as_secs_f64());
                v["cancelled"] = json!(cancelled);
                if let Some(n) = net {
                    v["bytes_received"] = json!(n.bytes_received);
                    v["bytes_sent"] = json!(n.bytes_sent);
                }
                print_json(&v);
            } else {
                println!(
                    "replicated {} -> {}: {} docs written ({} changes read, {} failed{}) in {}{}{}",
                    src.name(),
                    tgt.name(),
                    p.docs_written,
                    p.changes_read,
                    p.doc_write_failures,
                    if p.attachment_bytes > 0 {
                        format!(
                            "; {} of large attachments in ranges",
                            human_bytes(p.attachment_bytes)
                        )
                    } else {
                        String::new()
                    },
                    human_duration(took),
                    human_rate(p.docs_written, took)
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    net.map(|n| format!(
                        "; {} received, {} sent",
                        human_bytes(n.bytes_received),
                        human_bytes(n.bytes_sent)
                    ))
                    .unwrap_or_default()
                );
            }
            if p.doc_write_failures > 0 || p.doc_read_failures > 0 {
                return Err(CliError::Replication(format!(
                    "{} documents could not be written and {} could not be read: see -v",
                    p.doc_write_failures, p.doc_read_failures
                )));
            }
            Ok(())
        };
        // While a peer is one side, the bar also shows the bytes coming in: a large attachment
        // counts as a document only once it is whole.
        let ticker = async {
            if !(with_peer && view.is_drawn()) {
                return future::pending().await;
            }
            loop {
                smol::Timer::after(BYTES_TICK).await;
                if let Ok(stats) = node.stats().await {
                    view.bytes(stats.bytes_received);
                }
            }
        };
        let result = future::or(result, ticker).await;
        stop_node(&node).await;
        result
    })
}

/// How often the progress bar asks the node for the bytes received.
const BYTES_TICK: Duration = Duration::from_millis(250);

/// What SOURCE and TARGET both name, if they name one database: one file (by device and inode
/// when both exist, so `./x.db` and a hard link count), one CouchDB URL, one share.
fn same_database(source: &Endpoint, target: &Endpoint) -> Option<String> {
    match (source, target) {
        (Endpoint::Path(a), Endpoint::Path(b)) => {
            let same = match (std::fs::metadata(a), std::fs::metadata(b)) {
                (Ok(ma), Ok(mb)) => {
                    use std::os::unix::fs::MetadataExt;
                    (ma.dev(), ma.ino()) == (mb.dev(), mb.ino())
                }
                _ => a == b,
            };
            same.then(|| a.display().to_string())
        }
        (Endpoint::Http(a), Endpoint::Http(b)) => {
            (a.trim_end_matches('/') == b.trim_end_matches('/')).then(|| a.clone())
        }
        (Endpoint::Peer { hub: ha, share: sa }, Endpoint::Peer { hub: hb, share: sb }) => {
            (ha.trim_end_matches('/') == hb.trim_end_matches('/') && sa == sb)
                .then(|| format!("peer+{ha}#{sa}"))
        }
        _ => None,
    }
}

fn read_stdin() -> Result<String, CliError> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
    Ok(s)
}

fn read_stdin_bytes() -> Result<Vec<u8>, CliError> {
    let mut b = Vec::new();
    std::io::stdin()
        .read_to_end(&mut b)
        .map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
    Ok(b)
}

fn rev_of(r: Result<Rev, DbError>) -> Result<String, CliError> {
    Ok(r?.to_string())
}

/// Bytes of a file sent to the store at a time by `docs attach`.
const ATTACH_RANGE: usize = 1 << 20;

/// `docs attach`: the file's digest first (one pass), then its bytes a range at a time into the
/// store (none if it holds them already), then a new revision that refers to them by a stub.
/// Returns the (rev, digest) and the length.
fn attach(
    db: &mut LocalDb,
    id: &str,
    name: &str,
    file: &Path,
    content_type: &str,
) -> Result<((String, String), u64), CliError> {
    use std::io::Seek;
    let failed =
        |what: &str, e: std::io::Error| CliError::Failed(format!("{what} {}: {e}", file.display()));
    let stdin;
    let mut input: Box<dyn ReadSeek> = if file.as_os_str() == "-" {
        stdin = read_stdin_bytes()?;
        Box::new(std::io::Cursor::new(stdin))
    } else {
        Box::new(std::fs::File::open(file).map_err(|e| failed("cannot open", e))?)
    };
    let (digest, length) =
        peerpouch::doc::digest_of_reader(&mut input).map_err(|e| failed("cannot read", e))?;
    input
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|e| failed("cannot read", e))?;
    let mut stage = |offset: u64, data: Vec<u8>| {
        db.execute(Request::StageAttachment(StageRequest {
            digest: digest.clone(),
            content_type: content_type.to_string(),
            length,
            offset,
            data: data.into(),
        }))
        .and_then(Response::into_staged)
    };
    let mut staged = stage(0, Vec::new())?;
    while !staged.complete {
        let mut buf = Vec::with_capacity(ATTACH_RANGE);
        (&mut input)
            .take(ATTACH_RANGE as u64)
            .read_to_end(&mut buf)
            .map_err(|e| failed("cannot read", e))?;
        if buf.is_empty() {
            return Err(CliError::Failed(format!(
                "{} changed while it was read: {} of {length} bytes",
                file.display(),
                staged.received
            )));
        }
        staged = stage(staged.received, buf)?;
    }
    let mut doc = match db.get(id) {
        Ok(d) => d,
        Err(DbError::NotFound(_)) => {
            let mut d = Doc::new();
            d.insert("_id".into(), json!(id));
            d
        }
        Err(e) => return Err(e.into()),
    };
    let atts = doc
        .entry("_attachments")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| CliError::Failed(format!("{id}'s _attachments is not an object")))?;
    atts.insert(
        name.to_string(),
        json!({"stub": true, "digest": digest, "length": length, "content_type": content_type}),
    );
    let rev = rev_of(db.put(Value::Object(doc)))?;
    Ok(((rev, digest), length))
}

/// A readable, rewindable input.
trait ReadSeek: std::io::Read + std::io::Seek {}
impl<T: std::io::Read + std::io::Seek> ReadSeek for T {}

pub fn docs(path: &Path, op: DocsOp) -> Result<(), CliError> {
    // Writes parse their input before the file is opened: bad input creates no file. Only
    // writes create one: reading a file that is not there says so.
    let open = || open_local(path, true);
    let existing = || open_local(path, false);
    match op {
        DocsOp::Put { doc } => {
            let text = if doc == "-" { read_stdin()? } else { doc };
            let doc = parse_json(&text, "the document")?;
            if !doc.is_object() {
                return Err(CliError::Usage("a document is a JSON object".into()));
            }
            let mut r = open()?.bulk_docs(vec![doc], true)?;
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
            let results = open()?.bulk_docs(docs, true)?;
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
        DocsOp::Attach {
            id,
            name,
            file,
            content_type,
        } => {
            let (digest, length) = attach(&mut open()?, &id, &name, &file, &content_type)?;
            print_json(
                &json!({"ok": true, "id": id, "rev": digest.0, "digest": digest.1, "length": length}),
            );
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
            print_json(&Value::Object(existing()?.get_with(req)?));
        }
        DocsOp::All { include_docs } => {
            let req = AllDocsRequest {
                include_docs,
                ..Default::default()
            };
            let all = existing()?.all_docs(req)?;
            print_json(&serde_json::to_value(&all).map_err(|e| CliError::Failed(e.to_string()))?);
        }
        DocsOp::Delete { id } => {
            let mut db = existing()?;
            let current = db.get(&id)?;
            let rev = current.get("_rev").cloned().unwrap_or(Value::Null);
            let r = db.put(json!({"_id": id, "_rev": rev, "_deleted": true}));
            print_json(&json!({"ok": true, "id": id, "rev": rev_of(r)?}));
        }
        DocsOp::Info => {
            let info = existing()?.info()?;
            print_json(&serde_json::to_value(&info).map_err(|e| CliError::Failed(e.to_string()))?);
        }
        DocsOp::Check => {
            let problems = existing()?.check()?;
            print_json(&json!({"ok": problems.is_empty(), "problems": problems}));
            if !problems.is_empty() {
                return Err(CliError::Failed(format!(
                    "{} is damaged: {} problems found; restore it from a replica or a backup",
                    path.display(),
                    problems.len()
                )));
            }
        }
    }
    Ok(())
}
