//! Work for local databases: store requests out, each with the origin its result goes back
//! to (a link's RPC server, or a replication).

use std::time::Instant;

use super::link_rpc::LinkRpc;
use super::{DbId, LinkId, Node, NodeError, ReplicationId, StoreRequestId};
use crate::error::DbError;
use crate::ops::{Request, Response};
use crate::replicate::RequestId;

/// Work for a local database.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreRequest {
    /// Give this back with the result.
    pub id: StoreRequestId,
    /// Which database.
    pub db: DbId,
    /// What to execute.
    pub request: Request,
}

/// Who asked for a store request, so its result goes back there.
#[derive(Clone, Debug)]
pub(super) enum StoreOrigin {
    /// The RPC server of a link to one of our shares, with its own request id.
    Server(LinkId, u64),
    /// A replication, with its request id.
    Replication(ReplicationId, RequestId),
}

impl Node {
    /// The next store request.
    pub fn poll_store_request(&mut self) -> Option<StoreRequest> {
        self.store_out.pop_front()
    }

    /// Whether the node still waits for the result of store request `id`: not once the link
    /// or the replication that asked is gone. A runtime that holds requests back (a longpoll
    /// waiting for a change) drops those the node no longer waits for, so a crowd of live
    /// followers that left leaves nothing behind.
    pub fn awaits_store_result(&self, id: StoreRequestId) -> bool {
        self.store_for.contains_key(&id)
    }

    /// Feeds the result of a store request. A result the node no longer waits for (its link
    /// or replication is gone: [`Node::awaits_store_result`]) is dropped.
    ///
    /// # Errors
    /// [`NodeError::UnknownStoreRequest`] when the node never issued request `id`; the node is
    /// unchanged.
    pub fn handle_store_result(
        &mut self,
        now: Instant,
        id: StoreRequestId,
        result: Result<Response, DbError>,
    ) -> Result<(), NodeError> {
        if id == 0 || id >= self.next_store {
            return Err(NodeError::UnknownStoreRequest(id));
        }
        match self.store_for.remove(&id) {
            Some(StoreOrigin::Server(link, sid)) => {
                let server = self.links.get_mut(&link).and_then(|l| l.rpc.as_mut());
                if let Some(s) = server.and_then(LinkRpc::server_mut) {
                    s.handle_store_result(now, sid, result);
                }
            }
            Some(StoreOrigin::Replication(rep, rid)) => {
                self.answer_replication(now, rep, rid, result)
            }
            // Its link or replication is gone.
            None => {}
        }
        self.pump(now);
        Ok(())
    }

    /// A local database changed (the app wrote, or a replication did): live subscriptions of
    /// peers on shares of it catch up.
    pub fn handle_db_changed(&mut self, now: Instant, db: &str) {
        for l in self.links.values_mut() {
            if l.db.as_deref() == Some(db) {
                if let Some(s) = l.rpc.as_mut().and_then(LinkRpc::server_mut) {
                    s.handle_db_changed(now);
                }
            }
        }
        self.pump(now);
    }

    /// Sends work to local database `db` for `origin`.
    pub(super) fn push_store_request(&mut self, db: DbId, request: Request, origin: StoreOrigin) {
        let id = self.next_store;
        self.next_store += 1;
        self.store_for.insert(id, origin);
        self.store_out.push_back(StoreRequest { id, db, request });
    }
}
