//! Errors, drops and shutdown: what the app sees when things end.

mod common;

use common::{pair, run};
use peerpouch_smol::{
    CloseReason, EndpointConfig, LinkEndpoint, LinkError, SessionError, SessionRole, SignalData,
};

#[test]
fn bad_input_is_an_error_and_the_link_stays_usable() {
    run(60, async {
        let a = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let b = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let (x, y) = pair(&a, &b);
        x.opened().await.unwrap();
        assert!(matches!(
            x.send(Vec::new()).await,
            Err(LinkError::Session(SessionError::EmptyMessage))
        ));
        let too_big = vec![0u8; x.max_message_size() + 1];
        assert!(matches!(
            x.send(too_big).await,
            Err(LinkError::Session(SessionError::MessageTooLarge { .. }))
        ));
        assert!(matches!(
            y.handle_signal(SignalData::Answer("not sdp".into())).await,
            Err(LinkError::Session(_))
        ));
        x.send_text("still here").await.unwrap();
        let m = y.recv().await.unwrap();
        assert!(!m.binary);
        assert_eq!(m.data, b"still here");
        x.close().await;
        assert_eq!(y.closed().await, CloseReason::Remote);
        assert!(matches!(
            y.handle_signal(SignalData::Candidate(None)).await,
            Err(LinkError::Closed(CloseReason::Remote))
        ));
    });
}

#[test]
fn dropping_every_handle_says_goodbye_to_the_peer() {
    run(60, async {
        let a = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let b = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let (x, y) = pair(&a, &b);
        x.opened().await.unwrap();
        y.opened().await.unwrap();
        // The signal forwarders hold only a stream and a sink: ours is the last `Link`.
        drop(x);
        drop(a);
        assert_eq!(y.closed().await, CloseReason::Remote);
    });
}

#[test]
fn a_dropped_driver_fails_links_and_refuses_new_ones() {
    run(60, async {
        let (a, driver) = LinkEndpoint::bind_with_driver(EndpointConfig::default()).unwrap();
        let task = smol::spawn(driver);
        let b = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let (x, y) = pair(&a, &b);
        x.opened().await.unwrap();
        task.cancel().await;
        assert!(matches!(x.closed().await, CloseReason::Failed(_)));
        assert!(matches!(x.send(vec![1]).await, Err(LinkError::Closed(_))));
        assert!(a.is_stopped());
        a.close().await;
        assert!(matches!(
            a.create_link(SessionRole::Offerer),
            Err(LinkError::EndpointStopped)
        ));
        // The peer got no goodbye: it finds out by its idle timeout, not tested here.
        assert!(y.close_reason().is_none());
        y.close().await;
    });
}

/// A database that says when it is dropped (closed).
struct Closing {
    inner: peerpouch::MemoryStore,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl peerpouch::Database for Closing {
    fn execute(
        &mut self,
        request: peerpouch::Request,
    ) -> Result<peerpouch::Response, peerpouch::DbError> {
        self.inner.execute(request)
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn shutdown_closes_the_databases_before_it_returns() {
    use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig, PeerNode};
    run(60, async {
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let config = PeerConfig::new(HubSpec::InProcess(InProcessHub::new()))
            .bind("127.0.0.1:0".parse().unwrap());
        let node = PeerNode::start_with(config).unwrap();
        let db = node
            .add_db(
                "notes",
                Closing {
                    inner: peerpouch::MemoryStore::new("notes"),
                    closed: closed.clone(),
                },
            )
            .await
            .unwrap();
        db.put(serde_json::json!({"_id": "a"})).await.unwrap();
        node.shutdown().await;
        // A SQLite store writes its log back into its file as it closes: the app may copy
        // the file as soon as `shutdown` returns.
        assert!(closed.load(std::sync::atomic::Ordering::SeqCst));
    });
}
