//! The RPC end of a link as one type: the node moves frames, timers and output through it
//! the same way whether it serves one of our shares or calls a share we opened.

use std::time::Instant;

use crate::ops::Request;
use crate::rpc::wire::Hello;
use crate::rpc::{ClientEvent, RpcClient, RpcError, RpcServer, ServerEvent};

/// The RPC end of a link: the server of one of our shares, or the client of a share we
/// opened. The node drives both alike.
pub(super) enum LinkRpc {
    Server(RpcServer),
    Client(RpcClient),
}

/// What a link's RPC put out in one drain, for the node to route.
#[derive(Default)]
pub(super) struct RpcOutput {
    /// Work for the shared database (server): the server's request id, and the request.
    pub(super) store_requests: Vec<(u64, Request)>,
    /// For the app or a replication (client).
    pub(super) client_events: Vec<ClientEvent>,
    /// The server's side of the hellos checked out.
    pub(super) ready: bool,
    /// The RPC ended the link.
    pub(super) closed: Option<RpcError>,
    /// Whether any event came out.
    pub(super) moved: bool,
}

impl LinkRpc {
    pub(super) fn has_output(&self) -> bool {
        match self {
            LinkRpc::Server(s) => s.has_output(),
            LinkRpc::Client(c) => c.has_output(),
        }
    }

    pub(super) fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Result<(), RpcError> {
        match self {
            LinkRpc::Server(s) => s.handle_frame(now, bytes),
            LinkRpc::Client(c) => c.handle_frame(now, bytes),
        }
    }

    pub(super) fn peek_frame(&self) -> Option<&[u8]> {
        match self {
            LinkRpc::Server(s) => s.peek_frame(),
            LinkRpc::Client(c) => c.peek_frame(),
        }
    }

    pub(super) fn advance_frame(&mut self) {
        match self {
            LinkRpc::Server(s) => s.advance_frame(),
            LinkRpc::Client(c) => c.advance_frame(),
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        match self {
            LinkRpc::Server(s) => s.handle_timeout(now),
            LinkRpc::Client(c) => c.handle_timeout(now),
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            LinkRpc::Server(s) => s.poll_timeout(),
            LinkRpc::Client(c) => c.poll_timeout(),
        }
    }

    pub(super) fn handle_link_closed(&mut self, now: Instant) {
        match self {
            LinkRpc::Server(s) => s.handle_link_closed(now),
            LinkRpc::Client(c) => c.handle_link_closed(now),
        }
    }

    pub(super) fn server_mut(&mut self) -> Option<&mut RpcServer> {
        match self {
            LinkRpc::Server(s) => Some(s),
            LinkRpc::Client(_) => None,
        }
    }

    pub(super) fn client_mut(&mut self) -> Option<&mut RpcClient> {
        match self {
            LinkRpc::Client(c) => Some(c),
            LinkRpc::Server(_) => None,
        }
    }

    pub(super) fn server_hello(&self) -> Option<&Hello> {
        match self {
            LinkRpc::Client(c) => c.server_hello(),
            LinkRpc::Server(_) => None,
        }
    }

    /// Takes the store requests and events out.
    pub(super) fn drain(&mut self, out: &mut RpcOutput) {
        match self {
            LinkRpc::Server(s) => {
                while let Some(r) = s.poll_store_request() {
                    out.store_requests.push(r);
                }
                while let Some(e) = s.poll_event() {
                    out.moved = true;
                    match e {
                        ServerEvent::Ready { .. } => out.ready = true,
                        ServerEvent::Closed(e) => {
                            out.closed.get_or_insert(e);
                        }
                    }
                }
            }
            LinkRpc::Client(c) => {
                while let Some(e) = c.poll_event() {
                    out.moved = true;
                    // The client ended the link (the server's goodbye, say a 403 for a wrong
                    // key, or no hello in time): close it with that reason rather than leave
                    // the session up until the server's side goes.
                    if let ClientEvent::Closed(err) = &e {
                        out.closed.get_or_insert(err.clone());
                    }
                    out.client_events.push(e);
                }
            }
        }
    }
}
