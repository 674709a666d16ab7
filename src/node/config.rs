//! How a node is tuned, and who may connect to its shares.

use std::time::Duration;

use crate::hub::HubConfig;
use crate::reach::{IceTransportPolicy, ResolvedIceServer};
use crate::session::SessionConfig;

/// Who may connect to a share, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShareAccess {
    /// Peers must prove this key (given to them out of band).
    pub key: Option<Vec<u8>>,
    /// Ask the app ([`NodeEvent::PeerRequested`](super::NodeEvent::PeerRequested)) instead of
    /// accepting every peer.
    pub ask: bool,
    /// Peers this share serves at once at most (links connecting, open or awaiting a
    /// person's answer); one more is refused with a reason that says so. `None`: only the
    /// node's [`NodeConfig::max_links`] bounds them.
    pub max_links: Option<usize>,
}

/// Tuning of a node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The hub negotiator's.
    pub hub: HubConfig,
    /// Each session's.
    pub session: SessionConfig,
    /// How long the RPC waits for the other side's hello once the channel is open.
    pub rpc_hello_timeout: Duration,
    /// How long a remote call may go without progress.
    pub rpc_request_timeout: Duration,
    /// Offer zstd compression of RPC messages on every link (on by default; see
    /// [`ClientConfig::compress`](crate::rpc::ClientConfig::compress)). Turn it off only to measure
    /// or debug: it costs little CPU and saves the data channel most of its work for batches of
    /// documents.
    pub rpc_compress: bool,
    /// STUN and TURN servers (resolved by the runtime): server-reflexive and relayed
    /// candidates for every link, as a browser's `iceServers`.
    pub ice_servers: Vec<ResolvedIceServer>,
    /// [`IceTransportPolicy::Relay`] offers peers relayed candidates only, as a browser's
    /// `iceTransportPolicy: "relay"`.
    pub ice_transport_policy: IceTransportPolicy,
    /// Links the node keeps at once at most, to its shares and to others' (connecting, open, or
    /// awaiting a person's answer): a peer asking beyond it is refused with a reason that says so
    /// (and opening one more share fails with
    /// [`NodeError::TooManyLinks`](super::NodeError::TooManyLinks)). Each link holds its session's
    /// buffers and its RPC window, so this bounds the node's memory.
    pub max_links: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            hub: HubConfig::default(),
            session: SessionConfig::default(),
            rpc_hello_timeout: Duration::from_secs(30),
            rpc_request_timeout: Duration::from_secs(60),
            rpc_compress: true,
            ice_servers: Vec::new(),
            ice_transport_policy: IceTransportPolicy::All,
            max_links: DEFAULT_MAX_LINKS,
        }
    }
}

/// [`NodeConfig::max_links`]'s default: a classroom or a team, with room to spare.
pub const DEFAULT_MAX_LINKS: usize = 512;
