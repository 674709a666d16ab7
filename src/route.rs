//! Which link a received datagram belongs to, in constant time per datagram.
//!
//! A runtime that serves many WebRTC sessions on one socket (a sharer with a crowd of peers)
//! must hand each datagram to its session. Asking every session ([`Session::accepts`]) costs
//! O(links) per datagram, O(links²) for the crowd. A [`Router`] remembers instead:
//!
//! - **ICE connectivity checks** by the local ufrag in their STUN USERNAME (`LFRAG:RFRAG` as we
//!   receive it, RFC 8445 §7.2.2), registered for each session as it is made
//!   ([`Router::register_ufrag`]), peeked without decoding ([`crate::reach::stun::ice_local_ufrag`]);
//! - **everything else** (STUN answers, DTLS, SCTP) by the (local, remote) address pair it came
//!   on, the 5-tuple of the pair ICE uses, learnt from the checks and from the fallback below.
//!
//! The session a map names is asked first ([`Session::accepts`]), so a stale entry (a remote
//! port now used by another peer, a handshake with new credentials) never misroutes: when it
//! refuses, or nothing is mapped, every session is asked, the newest that accepts gets the
//! datagram (a peer that restarted on the same address replaces its old, dead session) and the
//! maps learn the answer. Only the first packets of a new candidate pair take that path;
//! [`DispatchStats`] counts how many sessions each datagram was offered to.
//!
//! The maps are hash maps with a fixed hasher: they are only looked up, never walked on the way
//! to an output, so routing stays deterministic. Entries are only added for datagrams a
//! session accepted, so strangers cannot grow them; [`Router::forget`] drops a link's entries.
//!
//! ```
//! use std::collections::BTreeMap;
//! use peerpouch::route::Router;
//!
//! // Links by id; each knows which peer address is its own (a session would decide).
//! let links: BTreeMap<u32, &str> = BTreeMap::from([(1, "10.0.0.1:5000"), (2, "10.0.0.2:5000")]);
//! let mut router = Router::new();
//! let local = "10.0.0.9:4000".parse().unwrap();
//! let from = "10.0.0.2:5000".parse().unwrap();
//! let accepts = |peer: &&str| *peer == "10.0.0.2:5000";
//! // The first datagram from a new address asks every link and teaches the router ...
//! assert_eq!(router.dispatch(from, local, b"dtls", &links, |_| 0, accepts), Some(2));
//! // ... later ones go straight to their link.
//! assert_eq!(router.dispatch(from, local, b"dtls", &links, |_| 0, accepts), Some(2));
//! let stats = router.stats();
//! assert_eq!((stats.datagrams, stats.offered, stats.offered_to_one), (2, 3, 1));
//! ```
//!
//! [`Session::accepts`]: crate::session::Session::accepts

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;

use crate::reach::stun::ice_local_ufrag;

/// Lookups only (never iterated into an output), and a fixed hasher: no OS randomness.
#[allow(clippy::disallowed_types)]
type LookupMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// Address pairs remembered at most: a peer that knows its link's ICE password can make checks
/// come from many ports; past this, new pairs are still routed (by asking every session), just
/// not remembered.
pub const MAX_PAIRS: usize = 16_384;

/// How datagrams were routed so far (diagnostics; see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatchStats {
    /// Datagrams dispatched.
    pub datagrams: u64,
    /// Sessions asked whether they accept a datagram, summed over all datagrams.
    pub offered: u64,
    /// Datagrams offered to exactly one session (the one a map named, or the only one).
    pub offered_to_one: u64,
    /// Datagrams no map routed: every session was asked.
    pub fallbacks: u64,
    /// Fallbacks that more than one session accepted (two links on one remote socket).
    pub ambiguous: u64,
    /// Datagrams no session accepted.
    pub unclaimed: u64,
    /// Routes (ufrags and address pairs) remembered now; 0 once every link is forgotten.
    pub routes: u64,
}

#[derive(Clone, Debug)]
struct Route<K> {
    key: K,
    /// The link's rank (newer links rank higher): the newest of two claimants keeps an entry.
    rank: u64,
}

/// Routes datagrams to links keyed by `K`. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Router<K> {
    pairs: LookupMap<(SocketAddr, SocketAddr), Route<K>>,
    ufrags: LookupMap<String, Route<K>>,
    stats: DispatchStats,
}

impl<K> Default for Router<K> {
    fn default() -> Self {
        Router {
            pairs: LookupMap::default(),
            ufrags: LookupMap::default(),
            stats: DispatchStats::default(),
        }
    }
}

impl<K: Ord + Clone> Router<K> {
    /// An empty router.
    pub fn new() -> Router<K> {
        Router::default()
    }

    /// Counters of what [`Router::dispatch`] did.
    pub fn stats(&self) -> DispatchStats {
        DispatchStats {
            routes: (self.pairs.len() + self.ufrags.len()) as u64,
            ..self.stats
        }
    }

    /// Routes checks carrying our `ufrag` to link `key` (of rank `rank`: newer links higher).
    /// Call it when a session is made and whenever its ufrag changes (a new handshake).
    pub fn register_ufrag(&mut self, key: K, ufrag: &str, rank: u64) {
        if self.has_ufrag(&key, ufrag) {
            return;
        }
        self.ufrags.insert(ufrag.to_string(), Route { key, rank });
    }

    /// Whether checks carrying `ufrag` are routed to `key` (cheap: no allocation).
    pub fn has_ufrag(&self, key: &K, ufrag: &str) -> bool {
        self.ufrags.get(ufrag).is_some_and(|r| r.key == *key)
    }

    /// Forgets every route to `key` (the link is gone). Costs a pass over the maps, once per
    /// link.
    pub fn forget(&mut self, key: &K) {
        self.pairs.retain(|_, r| r.key != *key);
        self.ufrags.retain(|_, r| r.key != *key);
    }

    /// The link a datagram from `source` received on `destination` belongs to, or `None` when
    /// no link accepts it. `accepts` is the session's own test (for this datagram);
    /// `rank` orders links by age (newer higher). The link a map names is asked first; only
    /// when none is named or it refuses is every link asked (in key order), the newest
    /// accepting one winning and teaching the maps.
    pub fn dispatch<V>(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
        links: &BTreeMap<K, V>,
        rank: impl Fn(&V) -> u64,
        accepts: impl Fn(&V) -> bool,
    ) -> Option<K> {
        self.stats.datagrams += 1;
        let ufrag = ice_local_ufrag(contents);
        // A check is routed by its ufrag only: the address may be a stale link's (port reuse).
        let mapped = match ufrag {
            Some(u) => self.ufrags.get(u),
            None => self.pairs.get(&(destination, source)),
        };
        let mut asked = 0u64;
        if let Some((key, v)) = mapped.and_then(|r| links.get_key_value(&r.key)) {
            asked += 1;
            if accepts(v) {
                let key = key.clone();
                if ufrag.is_some() {
                    // The peer checks from this address: its answers, DTLS and SCTP follow.
                    self.learn_pair(source, destination, &key, rank(v), links);
                }
                self.stats.offered += 1;
                self.stats.offered_to_one += 1;
                return Some(key);
            }
        }
        self.stats.fallbacks += 1;
        let mut best: Option<(&K, u64)> = None;
        let mut accepted = 0u64;
        for (k, v) in links {
            asked += 1;
            if accepts(v) {
                accepted += 1;
                let r = rank(v);
                if best.is_none_or(|(_, b)| r >= b) {
                    best = Some((k, r));
                }
            }
        }
        self.stats.offered += asked;
        if asked == 1 {
            self.stats.offered_to_one += 1;
        }
        if accepted > 1 {
            self.stats.ambiguous += 1;
        }
        let Some((key, r)) = best else {
            self.stats.unclaimed += 1;
            return None;
        };
        let key = key.clone();
        // The newest accepting link is today's owner of this pair (and of this ufrag).
        self.insert_pair((destination, source), key.clone(), r);
        if let Some(u) = ufrag {
            if !self.has_ufrag(&key, u) {
                self.ufrags.insert(
                    u.to_string(),
                    Route {
                        key: key.clone(),
                        rank: r,
                    },
                );
            }
        }
        Some(key)
    }

    /// Maps the pair to `key` unless a newer link that still exists holds it.
    fn learn_pair<V>(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        key: &K,
        rank: u64,
        links: &BTreeMap<K, V>,
    ) {
        let pair = (destination, source);
        let keep = self
            .pairs
            .get(&pair)
            .is_some_and(|r| r.key == *key || (r.rank > rank && links.contains_key(&r.key)));
        if !keep {
            self.insert_pair(pair, key.clone(), rank);
        }
    }

    fn insert_pair(&mut self, pair: (SocketAddr, SocketAddr), key: K, rank: u64) {
        if self.pairs.len() < MAX_PAIRS || self.pairs.contains_key(&pair) {
            self.pairs.insert(pair, Route { key, rank });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reach::stun::{Attribute, Class, Message, Method};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn check(ufrag: &str) -> Vec<u8> {
        Message::new(Method::BINDING, Class::Request, [7; 12])
            .with(Attribute::Username(format!("{ufrag}:peer")))
            .encode()
            .unwrap()
    }

    /// Links owning a set of remote addresses and ufrags, like sessions.
    struct Fake {
        peers: Vec<SocketAddr>,
        ufrag: &'static str,
        rank: u64,
    }

    fn accepts<'a>(from: SocketAddr, bytes: &'a [u8]) -> impl Fn(&Fake) -> bool + 'a {
        move |f: &Fake| match ice_local_ufrag(bytes) {
            Some(u) => u == f.ufrag,
            None => f.peers.contains(&from),
        }
    }

    #[test]
    fn checks_route_by_ufrag_and_teach_the_pair() {
        let local = addr("10.0.0.9:4000");
        let mut links = BTreeMap::new();
        for i in 0..10u64 {
            let ufrag: &'static str = Box::leak(format!("u{i}").into_boxed_str());
            links.insert(
                i,
                Fake {
                    peers: vec![addr(&format!("10.0.1.{i}:5000"))],
                    ufrag,
                    rank: i,
                },
            );
        }
        let mut r = Router::new();
        for (k, f) in &links {
            r.register_ufrag(*k, f.ufrag, f.rank);
        }
        let from = addr("10.0.1.4:5000");
        let c = check("u4");
        assert_eq!(
            r.dispatch(from, local, &c, &links, |f| f.rank, accepts(from, &c)),
            Some(4)
        );
        // DTLS from the same address now goes straight to link 4.
        assert_eq!(
            r.dispatch(
                from,
                local,
                b"\x16dtls",
                &links,
                |f| f.rank,
                accepts(from, b"\x16dtls")
            ),
            Some(4)
        );
        let s = r.stats();
        assert_eq!(
            (s.datagrams, s.offered, s.offered_to_one, s.fallbacks),
            (2, 2, 2, 0)
        );
    }

    #[test]
    fn a_moved_address_is_not_misrouted_and_forget_drops_routes() {
        let local = addr("10.0.0.9:4000");
        let from = addr("10.0.1.1:5000");
        let mut links = BTreeMap::from([
            (
                1u64,
                Fake {
                    peers: vec![from],
                    ufrag: "a",
                    rank: 1,
                },
            ),
            (
                2u64,
                Fake {
                    peers: vec![],
                    ufrag: "b",
                    rank: 2,
                },
            ),
        ]);
        let mut r = Router::new();
        let d = b"\x17data".as_slice();
        assert_eq!(
            r.dispatch(from, local, d, &links, |f| f.rank, accepts(from, d)),
            Some(1)
        );
        // The address now belongs to link 2 only (link 1 refuses it): the map is checked,
        // refused, and the fallback finds and learns link 2.
        links.get_mut(&1).unwrap().peers.clear();
        links.get_mut(&2).unwrap().peers.push(from);
        assert_eq!(
            r.dispatch(from, local, d, &links, |f| f.rank, accepts(from, d)),
            Some(2)
        );
        assert_eq!(
            r.dispatch(from, local, d, &links, |f| f.rank, accepts(from, d)),
            Some(2)
        );
        assert_eq!(r.stats().fallbacks, 2);
        assert_eq!(r.stats().offered, 2 + 3 + 1);
        assert_eq!(r.stats().routes, 1);
        r.forget(&2);
        links.remove(&2);
        assert_eq!(r.stats().routes, 0);
        assert_eq!(
            r.dispatch(from, local, d, &links, |f| f.rank, accepts(from, d)),
            None
        );
        assert_eq!(r.stats().unclaimed, 1);
    }

    #[test]
    fn both_accepting_the_newest_wins_and_keeps_the_pair() {
        let local = addr("10.0.0.9:4000");
        let from = addr("10.0.1.1:5000");
        let links = BTreeMap::from([
            (
                1u64,
                Fake {
                    peers: vec![from],
                    ufrag: "a",
                    rank: 1,
                },
            ),
            (
                2u64,
                Fake {
                    peers: vec![from],
                    ufrag: "b",
                    rank: 2,
                },
            ),
        ]);
        let mut r = Router::new();
        r.register_ufrag(1, "a", 1);
        r.register_ufrag(2, "b", 2);
        let d = b"\x17data".as_slice();
        assert_eq!(
            r.dispatch(from, local, d, &links, |f| f.rank, accepts(from, d)),
            Some(2)
        );
        assert_eq!(r.stats().ambiguous, 1);
        // A check of the older link still goes to it, but does not take the pair away.
        let c = check("a");
        assert_eq!(
            r.dispatch(from, local, &c, &links, |f| f.rank, accepts(from, &c)),
            Some(1)
        );
        assert_eq!(
            r.dispatch(from, local, d, &links, |f| f.rank, accepts(from, d)),
            Some(2)
        );
    }

    #[test]
    fn remembered_pairs_are_bounded_and_routing_goes_on_past_the_bound() {
        let local = addr("10.0.0.9:4000");
        let links = BTreeMap::from([(1u64, ()), (2u64, ())]);
        let mut r = Router::new();
        let d = b"\x17data".as_slice();
        let from = |i: usize| {
            SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1000 + (i >> 16) as u16))
        };
        for i in 0..MAX_PAIRS + 10 {
            assert_eq!(
                r.dispatch(from(i), local, d, &links, |_| 0, |_| true),
                Some(2)
            );
        }
        assert_eq!(r.pairs.len(), MAX_PAIRS);
        let before = r.stats();
        // A remembered pair still goes straight to its link; one past the bound asks everyone.
        assert_eq!(
            r.dispatch(from(0), local, d, &links, |_| 0, |_| true),
            Some(2)
        );
        assert_eq!(
            r.dispatch(from(MAX_PAIRS + 5), local, d, &links, |_| 0, |_| true),
            Some(2)
        );
        let after = r.stats();
        assert_eq!(after.offered - before.offered, 1 + 2);
        assert_eq!(after.fallbacks - before.fallbacks, 1);
    }

    proptest::proptest! {
        /// The ufrag peek walks attributes of any bytes from the network without panicking,
        /// and finds what the decoder finds.
        #[test]
        fn the_ufrag_peek_takes_any_bytes(
            user in "[a-z0-9:]{0,20}",
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            let mut b = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
            b.extend_from_slice(&[3; 12]);
            // A USERNAME first (padded to 4 bytes), then anything.
            b.extend_from_slice(&[0, 6, 0, user.len() as u8]);
            b.extend_from_slice(user.as_bytes());
            b.resize(b.len() + (4 - user.len() % 4) % 4, 0);
            b.extend_from_slice(&body);
            let len = (b.len() - 20) as u16;
            b[2..4].copy_from_slice(&len.to_be_bytes());
            let peeked = ice_local_ufrag(&b);
            if let Ok(m) = Message::decode(&b) {
                let decoded = m.username().and_then(|u| u.split_once(':')).map(|(l, _)| l);
                proptest::prop_assert_eq!(peeked, decoded);
            }
            let _ = ice_local_ufrag(&body);
        }
    }
}
