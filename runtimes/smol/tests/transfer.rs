//! Two links over 127.0.0.1 UDP move 64 MiB each way at once, every byte checked, then close
//! cleanly: both sides see `Closed`.

mod common;

use common::{Pattern, pair, recv_pattern, run, send_pattern};
use futures_lite::future;
use peerpouch_smol::{CloseReason, EndpointConfig, LinkEndpoint};

const TOTAL: u64 = 64 << 20;

#[test]
fn pattern_is_the_same_however_it_is_cut() {
    let p = Pattern::new(42);
    let mut whole = vec![0u8; 1000];
    p.fill(0, &mut whole);
    let mut part = vec![0u8; 333];
    p.fill(5, &mut part);
    assert_eq!(&whole[5..338], &part[..]);
}

#[test]
fn sixty_four_mib_each_way_over_loopback_then_clean_close() {
    run(300, async {
        let a = LinkEndpoint::bind(EndpointConfig::default().with_seed(1)).unwrap();
        let b = LinkEndpoint::bind(EndpointConfig::default().with_seed(2)).unwrap();
        // The kernel grants at most net.core.rmem_max (Linux then reports twice the grant).
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        eprintln!(
            "SO_RCVBUF granted {} (asked 4 MiB, rmem_max {rmem_max})",
            a.recv_buffer_size()
        );
        assert!(a.recv_buffer_size() >= (4 << 20).min(rmem_max));
        let (x, y) = pair(&a, &b);
        x.opened().await.unwrap();
        y.opened().await.unwrap();
        let max = x.max_message_size();
        assert_eq!(max, y.max_message_size());
        assert!(max >= 16 * 1024, "max message size {max}");

        let started = std::time::Instant::now();
        let ((sent_xy, got_xy), (sent_yx, got_yx)) = future::zip(
            future::zip(
                send_pattern(&x, 11, TOTAL, max),
                recv_pattern(&y, 11, TOTAL, max),
            ),
            future::zip(
                send_pattern(&y, 22, TOTAL, max),
                recv_pattern(&x, 22, TOTAL, max),
            ),
        )
        .await;
        let elapsed = started.elapsed();
        let (sent_xy, got_xy) = (sent_xy.unwrap(), got_xy.unwrap());
        let (sent_yx, got_yx) = (sent_yx.unwrap(), got_yx.unwrap());
        assert_eq!(sent_xy, got_xy);
        assert_eq!(sent_yx, got_yx);
        eprintln!(
            "moved 2 x {} MiB in {:.2} s ({:.1} MB/s total), {} + {} messages",
            TOTAL >> 20,
            elapsed.as_secs_f64(),
            2.0 * TOTAL as f64 / 1e6 / elapsed.as_secs_f64(),
            sent_xy,
            sent_yx
        );

        assert_eq!(x.close().await, CloseReason::Local);
        assert_eq!(y.closed().await, CloseReason::Remote);
        assert!(x.recv().await.is_err());
        assert!(y.send(vec![1]).await.is_err());
        let (sa, sb) = (a.stats(), b.stats());
        eprintln!("stats a: {sa:?}\nstats b: {sb:?}");
        assert_eq!(sa.ambiguous + sb.ambiguous, 0);
        a.close().await;
        b.close().await;
        assert!(a.is_stopped() && b.is_stopped());
    });
}
