//! [`FeedFilter`]: which rows of the hub's changes feed a node needs.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{SHARE_PREFIX, SHARE_TYPE};
use crate::ops::ChangeRow;

/// The part of the hub's changes feed a node needs: every share document (the directory is the
/// point), deleted shares (so listings drop them), and the signals addressed to one of the
/// node's own ids (its shares, the peer ids of the connections it opened).
///
/// A driver hands it to the server as a `_changes?filter=_selector` body
/// ([`FeedFilter::to_selector_body`], CouchDB 2+), or applies it itself
/// ([`FeedFilter::matches`], the in-process hub). A server that cannot filter sends the whole
/// feed; the machine ignores the rest, so a filter is an economy, never a correctness rule.
///
/// ```
/// use peerpouch::hub::FeedFilter;
/// use peerpouch::ChangeRow;
///
/// let filter = FeedFilter::new(["peer-1a2b".to_string()]);
/// let body = filter.to_selector_body();
/// assert_eq!(body["selector"]["$or"][1]["recipient"]["$in"][0], "peer-1a2b");
/// let row: ChangeRow = serde_json::from_value(serde_json::json!({
///     "id": "s-signal-9", "seq": 7, "changes": [{"rev": "1-a"}],
///     "doc": {"_id": "s-signal-9", "type": "com.stemstorage.peerpouch.signal",
///             "sender": "share-3c4d", "recipient": "peer-1a2b"}
/// })).unwrap();
/// assert!(filter.matches(&row));
/// assert!(!FeedFilter::new([]).matches(&row));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedFilter {
    recipients: BTreeSet<String>,
}

impl FeedFilter {
    /// A filter passing shares and the signals addressed to one of `recipients`.
    pub fn new(recipients: impl IntoIterator<Item = String>) -> FeedFilter {
        FeedFilter {
            recipients: recipients.into_iter().collect(),
        }
    }

    /// The ids whose signals pass, in order.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        self.recipients.iter().map(String::as_str)
    }

    /// Whether every id of `other` passes this filter too.
    pub fn covers(&self, other: &FeedFilter) -> bool {
        other.recipients.is_subset(&self.recipients)
    }

    /// The Mango selector of this filter: `{"$or": [shares, signals to us, deleted shares]}`.
    ///
    /// A deleted document keeps only `_id`, `_rev` and `_deleted` on most writers, so deleted
    /// shares are matched by their id.
    pub fn to_selector(&self) -> Value {
        json!({
            "$or": [
                {"type": SHARE_TYPE},
                {"recipient": {"$in": self.recipients.iter().collect::<Vec<_>>()}},
                {"_deleted": true, "_id": {"$regex": format!("^{SHARE_PREFIX}")}},
            ]
        })
    }

    /// The body of a `POST /db/_changes?filter=_selector` request: `{"selector": ...}`.
    pub fn to_selector_body(&self) -> Value {
        json!({ "selector": self.to_selector() })
    }

    /// Whether a feed row passes, as a server applying [`FeedFilter::to_selector`] decides.
    /// A row without its document passes only when it is a deleted share.
    pub fn matches(&self, row: &ChangeRow) -> bool {
        if row.deleted {
            return row.id.starts_with(SHARE_PREFIX);
        }
        let Some(Value::Object(doc)) = &row.doc else {
            return false;
        };
        doc.get("type").and_then(Value::as_str) == Some(SHARE_TYPE)
            || doc
                .get("recipient")
                .and_then(Value::as_str)
                .is_some_and(|r| self.recipients.contains(r))
    }
}
