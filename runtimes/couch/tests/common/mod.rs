//! Shared helpers: the test hub, throwaway databases, and a scripted HTTP server for the
//! failures the hub cannot produce.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use peerpouch_couch::{ClientConfig, CouchClient};

/// The test hub's base URL, from `PEERPOUCH_TEST_HUB`. Fails the test when it is not set.
pub fn hub() -> String {
    match std::env::var("PEERPOUCH_TEST_HUB") {
        Ok(u) if !u.trim().is_empty() => u.trim().trim_end_matches('/').to_string(),
        _ => panic!(
            "PEERPOUCH_TEST_HUB is not set: these tests need the pouchdb-server test hub. \
             Run them through `.ci/test` (which starts the hub), or start one with \
             `source .ci/hub.sh && hub_start` in the same shell before `cargo test` \
             (and `hub_stop` afterwards)."
        ),
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A database name no other test (or run) uses.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("pp_couch_{tag}_{}_{n}_{nanos}", std::process::id())
}

/// A freshly created database on the hub, deleted on drop.
pub struct TestDb {
    pub client: CouchClient,
    pub url: String,
}

impl TestDb {
    pub fn new(tag: &str) -> TestDb {
        TestDb::with_config(tag, ClientConfig::default())
    }

    pub fn with_config(tag: &str, config: ClientConfig) -> TestDb {
        let url = format!("{}/{}", hub(), unique_name(tag));
        let client = CouchClient::with_config(&url, config).expect("valid URL");
        assert!(
            client.create_db(false).expect("create the test database"),
            "database existed already"
        );
        TestDb { client, url }
    }

    /// Another client for the same database.
    pub fn other_client(&self, config: ClientConfig) -> CouchClient {
        CouchClient::with_config(&self.url, config).expect("valid URL")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = self.client.delete_db() {
            eprintln!("could not delete {}: {e}", self.url);
        }
    }
}

/// One request seen by [`FakeServer`].
#[derive(Clone, Debug)]
pub struct FakeRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&FakeRequest, &mut TcpStream) + Send + Sync + 'static;

/// A scripted HTTP/1.1 server on 127.0.0.1: one thread per connection, one request per
/// connection; the handler writes the raw response.
pub struct FakeServer {
    pub base: String,
    pub requests: Arc<Mutex<Vec<FakeRequest>>>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub fn start(handler: impl Fn(&FakeRequest, &mut TcpStream) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop2, reqs2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (h, reqs) = (handler.clone(), reqs2.clone());
                std::thread::spawn(move || {
                    if let Some(req) = read_request(&mut conn) {
                        reqs.lock().unwrap().push(req.clone());
                        h(&req, &mut conn);
                    }
                    let _ = conn.flush();
                });
            }
        });
        FakeServer {
            base: format!("http://127.0.0.1:{port}"),
            requests,
            stop,
            port,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(conn: &mut TcpStream) -> Option<FakeRequest> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(FakeRequest {
        method,
        target,
        headers,
        body,
    })
}

/// Writes a complete response with a body and `Connection: close`.
pub fn respond(conn: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

/// Starts a chunked 200 response (a feed); send chunks with [`chunk`].
pub fn start_chunked(conn: &mut TcpStream) {
    let _ = conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
}

/// Writes one chunk of a chunked body.
pub fn chunk(conn: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    conn.write_all(data)?;
    conn.write_all(b"\r\n")?;
    conn.flush()
}
