//! The RPC client's reply decoder (`peerpouch::rpc::wire::Reply::decode`): what a remote peer
//! sends, decoded by a one-pass fast path for the common shape with serde's own path for the
//! rest. Differential: on every input it must agree with `serde_json::from_slice::<Reply>`
//! (the same reply, or an error on both sides), and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpouch::rpc::wire::Reply;

fuzz_target!(|data: &[u8]| {
    let fast = Reply::decode(data);
    let slow = serde_json::from_slice::<Reply>(data);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the two decoders disagree"),
        (Err(_), Err(_)) => {}
        _ => panic!("fast {fast:?} but serde {slow:?}"),
    }
});
