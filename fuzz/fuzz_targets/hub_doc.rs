//! Hub documents (`peerpouch::hub::parse_hub_doc`, `SignalData::from_json`) on JSON bytes.
//!
//! Under the default limits and under tight ones (so short inputs reach every limit):
//! - neither parser panics;
//! - what `parse_hub_doc` accepts respects the limits (ids well-formed and at most `max_id`,
//!   `name`/`fingerprint`/`info`/SDP/candidate sizes) and parses back to the same value from a
//!   re-encoding in the hub format (a share as the sharer writes it, a signal with
//!   `SignalData::to_json`);
//! - `SignalData::from_json` of the input as a value: what it accepts respects the limits and
//!   `from_json(to_json(data)) == data`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpouch::hub::{
    parse_hub_doc, valid_id, HubDoc, HubLimits, ShareInfo, SignalData, SignalDoc, PEER_PREFIX,
    PEER_SIGNAL_PREFIX, SHARER_SIGNAL_PREFIX, SHARE_PREFIX, SHARE_TYPE, SIGNAL_TYPE,
};
use serde_json::{json, Map, Value};

/// Small enough that a few bytes of input cross every limit.
const TIGHT: HubLimits = HubLimits {
    max_name: 8,
    max_info: 24,
    max_sdp: 16,
    max_candidate: 12,
    max_id: 16,
};

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).expect("a Value serialises").len()
}

/// The sizes in `data` are within the limits.
fn check_signal_data(data: &SignalData, l: &HubLimits) {
    match data {
        SignalData::Offer(sdp) | SignalData::Answer(sdp) => {
            assert!(sdp.len() <= l.max_sdp, "sdp of {} bytes", sdp.len());
        }
        SignalData::Candidate(Some(c)) => {
            assert!(
                !c.candidate.is_empty(),
                "an empty candidate is the end of candidates"
            );
            assert!(
                c.candidate.len() <= l.max_candidate,
                "candidate of {} bytes",
                c.candidate.len()
            );
            for s in [&c.sdp_mid, &c.username_fragment].into_iter().flatten() {
                assert!(
                    s.len() <= l.max_candidate,
                    "candidate field of {} bytes",
                    s.len()
                );
            }
        }
        SignalData::Candidate(None) | SignalData::Pending => {}
        SignalData::Refuse(reason) => {
            if let Some(r) = reason {
                assert!(r.len() <= l.max_name, "refusal reason of {} bytes", r.len());
            }
        }
        other => panic!("a SignalData variant this target does not know: {other:?}"),
    }
}

/// `from_json(to_json(data)) == data`.
fn check_data_round_trip(data: &SignalData, l: &HubLimits) {
    let j = data.to_json();
    let back = SignalData::from_json(&j, l)
        .unwrap_or_else(|e| panic!("{data:?} encodes to {j}, which is refused: {e}"));
    assert_eq!(&back, data, "signal data round trip through {j}");
}

fn check_share(s: &ShareInfo, rev: &str, l: &HubLimits) {
    assert!(
        valid_id(&s.id, SHARE_PREFIX, l.max_id),
        "share id {:?}",
        s.id
    );
    assert!(s.id.len() <= l.max_id);
    if let Some(n) = &s.name {
        assert!(n.len() <= l.max_name, "name of {} bytes", n.len());
    }
    if let Some(f) = &s.fingerprint {
        assert!(f.len() <= l.max_name, "fingerprint of {} bytes", f.len());
    }
    assert!(
        json_len(&s.info) <= l.max_info,
        "info of {} bytes",
        json_len(&s.info)
    );

    // Re-encoded as a sharer writes it (`share_doc`, which is crate-private), it parses back.
    let mut d = json!({
        "_id": s.id,
        "_rev": rev,
        "type": SHARE_TYPE,
        "name": s.name,
        "info": s.info,
        "protocol": s.protocol,
        "read_only": s.read_only,
    });
    if let Some(e) = s.expires_at {
        d["expires_at"] = json!(e);
    }
    if let Some(f) = &s.fingerprint {
        d["fingerprint"] = json!(f);
    }
    let again = parse_hub_doc(d.as_object().expect("object"), l)
        .unwrap_or_else(|e| panic!("re-encoded share {d} is refused: {e}"));
    assert_eq!(
        again,
        HubDoc::Share(s.clone(), rev.to_string()),
        "share round trip"
    );
}

fn check_signal(s: &SignalDoc, l: &HubLimits) {
    assert!(
        valid_id(&s.id, PEER_SIGNAL_PREFIX, l.max_id)
            || valid_id(&s.id, SHARER_SIGNAL_PREFIX, l.max_id),
        "signal id {:?}",
        s.id
    );
    for v in [&s.sender, &s.recipient] {
        assert!(
            valid_id(v, SHARE_PREFIX, l.max_id) || valid_id(v, PEER_PREFIX, l.max_id),
            "sender or recipient {v:?}"
        );
    }
    assert!(
        json_len(&s.info) <= l.max_info,
        "info of {} bytes",
        json_len(&s.info)
    );
    check_signal_data(&s.data, l);
    check_data_round_trip(&s.data, l);

    let mut d = json!({
        "_id": s.id,
        "_rev": s.rev,
        "type": SIGNAL_TYPE,
        "sender": s.sender,
        "recipient": s.recipient,
        "data": s.data.to_json(),
        "info": s.info,
    });
    if let Some(c) = s.created_at {
        d["created_at"] = json!(c);
    }
    if let Some(n) = s.n {
        d["n"] = json!(n);
    }
    let again = parse_hub_doc(d.as_object().expect("object"), l)
        .unwrap_or_else(|e| panic!("re-encoded signal {d} is refused: {e}"));
    assert_eq!(again, HubDoc::Signal(s.clone()), "signal round trip");
}

fn check_doc(doc: &Map<String, Value>, l: &HubLimits) {
    match parse_hub_doc(doc, l) {
        Ok(HubDoc::Share(s, rev)) => {
            assert_eq!(doc.get("type"), Some(&json!(SHARE_TYPE)));
            check_share(&s, &rev, l);
        }
        Ok(HubDoc::Signal(s)) => {
            assert_eq!(doc.get("type"), Some(&json!(SIGNAL_TYPE)));
            check_signal(&s, l);
        }
        Ok(HubDoc::Other) => {
            let t = doc.get("type");
            assert!(
                t != Some(&json!(SHARE_TYPE)) && t != Some(&json!(SIGNAL_TYPE)),
                "a {t:?} document read as Other"
            );
        }
        Err(_) => {}
    }
}

fn check_data(v: &Value, l: &HubLimits) {
    if let Ok(data) = SignalData::from_json(v, l) {
        check_signal_data(&data, l);
        check_data_round_trip(&data, l);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let default = HubLimits::default();
    if let Value::Object(doc) = &v {
        // The brief's entry point: bytes straight into a map, as the hub client reads them.
        let direct: Map<String, Value> =
            serde_json::from_slice(data).expect("an object parses as a map");
        assert_eq!(&direct, doc);
        check_doc(doc, &default);
        check_doc(doc, &TIGHT);
        // The same value as a signal's `data`.
        if let Some(inner) = doc.get("data") {
            check_data(inner, &default);
            check_data(inner, &TIGHT);
        }
    }
    check_data(&v, &default);
    check_data(&v, &TIGHT);
});
