//! Two sessions wired back to back (no loss): the channel opens, messages cross, close is seen.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use peerpouch::session::*;

fn pump(
    a: &mut Session,
    b: &mut Session,
    now: std::time::Instant,
) -> (Vec<SessionEvent>, Vec<SessionEvent>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(s) = a.poll_signal() {
            moved = true;
            b.handle_signal(now, s).unwrap();
        }
        while let Some(s) = b.poll_signal() {
            moved = true;
            a.handle_signal(now, s).unwrap();
        }
        while let Some(t) = a.poll_transmit() {
            moved = true;
            b.handle_datagram(now, t.source, t.destination, &t.contents);
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            a.handle_datagram(now, t.source, t.destination, &t.contents);
        }
        while let Some(e) = a.poll_event() {
            moved = true;
            ea.push(e);
        }
        while let Some(e) = b.poll_event() {
            moved = true;
            eb.push(e);
        }
        if !moved {
            break;
        }
    }
    (ea, eb)
}

#[test]
fn channel_opens_messages_cross_and_close_is_seen() {
    let mut now = common::epoch();
    let a_addr: SocketAddr = "127.0.0.1:10001".parse().unwrap();
    let b_addr: SocketAddr = "127.0.0.2:10002".parse().unwrap();
    let mut a = Session::new(SessionRole::Offerer, SessionConfig::default(), 1, now);
    let mut b = Session::new(SessionRole::Answerer, SessionConfig::default(), 2, now);
    a.add_local_candidate(now, a_addr).unwrap();
    b.add_local_candidate(now, b_addr).unwrap();
    let mut opened = (false, false);
    for _ in 0..200 {
        let (ea, eb) = pump(&mut a, &mut b, now);
        opened.0 |= ea.contains(&SessionEvent::ChannelOpened);
        opened.1 |= eb.contains(&SessionEvent::ChannelOpened);
        if opened.0 && opened.1 {
            break;
        }
        let t = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        now = now.max(t);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    assert!(opened.0 && opened.1, "channel did not open");
    assert_eq!(a.send(now, true, b""), Err(SessionError::EmptyMessage));
    assert!(matches!(
        a.send(now, true, &vec![0; 65 * 1024]),
        Err(SessionError::MessageTooLarge { .. })
    ));
    assert!(a.send(now, true, b"hello").unwrap());
    assert!(b.send(now, false, b"world").unwrap());
    let (ea, eb) = pump(&mut a, &mut b, now);
    assert!(
        eb.contains(&SessionEvent::Message {
            binary: true,
            data: b"hello".to_vec()
        }),
        "{eb:?}"
    );
    assert!(
        ea.contains(&SessionEvent::Message {
            binary: false,
            data: b"world".to_vec()
        }),
        "{ea:?}"
    );
    // Heartbeats keep an idle link open well past the idle timeout.
    for _ in 0..30 {
        now += Duration::from_secs(1);
        a.handle_timeout(now);
        b.handle_timeout(now);
        let (ea, eb) = pump(&mut a, &mut b, now);
        assert!(
            !ea.iter()
                .chain(&eb)
                .any(|e| matches!(e, SessionEvent::Closed(_))),
            "{ea:?} {eb:?}"
        );
    }
    a.close(now);
    let (ea, eb) = pump(&mut a, &mut b, now);
    assert!(ea.contains(&SessionEvent::Closed(CloseReason::Local)));
    assert!(
        eb.contains(&SessionEvent::Closed(CloseReason::Remote)),
        "{eb:?}"
    );
}
