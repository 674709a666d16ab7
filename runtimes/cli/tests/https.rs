//! HTTPS hubs as deployed: the pouchdb-server test hub behind a TLS-terminating proxy (rustls,
//! 127.0.0.1 only) whose certificates come from a CA this test makes at run time. `peerpouch`
//! processes share, list, replicate through a `peer+https://` share and pull from an `https://`
//! CouchDB database with `--ca-file`; without it, or with a certificate for another name or an
//! expired one, they fail with the host and the reason named and exit 1.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

mod common;
use common::*;

/// The pouchdb-server test hub's address (plain HTTP).
fn hub_addr() -> (String, SocketAddr) {
    let base = hub_base();
    let hostport = base
        .strip_prefix("http://")
        .expect("the test hub is plain http://");
    let addr = hostport.parse().expect("the test hub is at IP:PORT");
    (base, addr)
}

// ---- certificates ----------------------------------------------------------------------------

/// A certificate authority made for this run.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// Writes the CA's certificate as PEM to `path`.
    fn write_pem(&self, path: &str) {
        std::fs::write(path, pem("CERTIFICATE", self.issuer.der())).unwrap();
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from January 1st
    /// of the first year to January 1st of the second (default: from now on), and its key.
    fn leaf(
        &self,
        names: &[&str],
        validity: Option<(i32, i32)>,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "peerpouch test hub");
        if let Some((from, to)) = validity {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// ---- a TLS-terminating proxy -----------------------------------------------------------------

/// Accepts TLS on 127.0.0.1 and forwards the plaintext to `upstream`, both ways, one thread
/// per direction and connection.
struct TlsProxy {
    port: u16,
}

impl TlsProxy {
    fn start(
        upstream: SocketAddr,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> TlsProxy {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Lives as long as the test process: each test starts its own proxies.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let config = config.clone();
                std::thread::spawn(move || relay(client, upstream, config));
            }
        });
        TlsProxy { port }
    }

    fn url(&self, db: &str) -> String {
        format!("https://127.0.0.1:{}/{db}", self.port)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, config: Arc<rustls::ServerConfig>) {
    let Ok(up) = TcpStream::connect(upstream) else {
        return;
    };
    let conn = Arc::new(Mutex::new(rustls::ServerConnection::new(config).unwrap()));
    let (mut client_in, mut client_out) = (client.try_clone().unwrap(), client);
    let (mut up_in, mut up_out) = (up.try_clone().unwrap(), up);
    // Upstream to client: plaintext in, TLS records out.
    {
        let conn = conn.clone();
        let mut client_out = client_out.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match up_in.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut c = conn.lock().unwrap();
                if c.writer().write_all(&buf[..n]).is_err() {
                    break;
                }
                while c.wants_write() {
                    if c.write_tls(&mut client_out).is_err() {
                        return;
                    }
                }
            }
            let mut c = conn.lock().unwrap();
            c.send_close_notify();
            while c.wants_write() {
                if c.write_tls(&mut client_out).is_err() {
                    break;
                }
            }
            let _ = client_out.shutdown(Shutdown::Both);
        });
    }
    // Client to upstream: TLS records in, plaintext out (written without holding the lock).
    let mut buf = vec![0u8; 64 * 1024];
    'read: loop {
        let n = match client_in.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut plain = Vec::new();
        {
            let mut c = conn.lock().unwrap();
            let mut records = &buf[..n];
            while !records.is_empty() {
                if c.read_tls(&mut records).is_err() {
                    break 'read;
                }
                let failed = c.process_new_packets().is_err();
                match c.reader().read_to_end(&mut plain) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break 'read,
                }
                while c.wants_write() {
                    if c.write_tls(&mut client_out).is_err() {
                        break 'read;
                    }
                }
                if failed {
                    // The client rejected our certificate (or sent garbage): its alert is read.
                    break 'read;
                }
            }
        }
        if !plain.is_empty() && up_out.write_all(&plain).is_err() {
            break;
        }
    }
    let _ = up_out.shutdown(Shutdown::Both);
    let _ = client_out.shutdown(Shutdown::Both);
}

// ---- driving the CLI -------------------------------------------------------------------------

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = peerpouch(args);
    // Only what each test gives: never a CA file from the environment running the tests.
    c.env_remove("PEERPOUCH_CA_FILE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).stderr(Stdio::piped()).output().unwrap()
}

fn ok_json(args: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let out = run(args, env);
    assert!(
        out.status.success(),
        "peerpouch {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Runs a command that must fail with exit code `code`; returns its stderr.
fn fails(args: &[&str], code: i32) -> String {
    let out = run(args, &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "peerpouch {args:?}: expected exit {code}\nstderr: {err}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("peerpouch {}: {err}", args.join(" "));
    err
}

/// A running `peerpouch` whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = command(args, &[]).stderr(Stdio::inherit()).spawn().unwrap();
        let lines = lines(child.stdout.take().unwrap());
        Running { child, lines }
    }

    fn expect(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(LINE_DEADLINE)
                .unwrap_or_else(|e| panic!("no {what} within {LINE_DEADLINE:?}: {e}"));
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if pred(&v) {
                return v;
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit; returns whether it succeeded.
    fn interrupt(mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        self.child.wait().unwrap().success()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seed(path: &str, n: usize) {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("doc-{i:03}"), "i": i}))
        .collect();
    let out = command(&["docs", path, "bulk"], &[])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(serde_json::to_string(&docs).unwrap().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn doc_count(path: &str) -> u64 {
    ok_json(&["docs", path, "info"], &[])[0]["doc_count"]
        .as_u64()
        .unwrap()
}

fn setup() -> (Dir, TestCa, String, SocketAddr) {
    let dir = Dir::new();
    let ca = TestCa::new("peerpouch test CA");
    let ca_file = dir.db("ca.pem");
    ca.write_pem(&ca_file);
    let (_, upstream) = hub_addr();
    (dir, ca, ca_file, upstream)
}

// ---- tests -----------------------------------------------------------------------------------

/// A share, a listing, a `peer+https://` replication and an `https://` CouchDB pull, all
/// through the TLS proxy, trusting the test CA with `--ca-file` or `PEERPOUCH_CA_FILE`.
#[test]
fn https_hub_with_a_private_ca() {
    let (dir, ca, ca_file, upstream) = setup();
    let (chain, key) = ca.leaf(&["127.0.0.1"], None);
    let proxy = TlsProxy::start(upstream, chain, key);
    let hub = proxy.url(&unique("hub"));
    let ca = ca_file.as_str();

    let alice = dir.db("alice.db");
    seed(&alice, 25);
    let sharer = Running::start(&[
        "share",
        "--hub",
        &hub,
        "--db",
        &alice,
        "--name",
        "notes",
        "--json",
        "--ca-file",
        ca,
    ]);
    sharer.expect("the shared event", |v| v["event"] == "shared");

    // The listing, trusting the CA through the environment.
    let listed = ok_json(
        &["shares", "--hub", &hub, "--json"],
        &[("PEERPOUCH_CA_FILE", ca)],
    );
    let names: Vec<&Value> = listed[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["name"])
        .collect();
    assert_eq!(names, vec!["notes"], "{listed:?}");
    // The platform's trust store is the one OpenSSL and curl read: a CA put there (here through
    // SSL_CERT_FILE) is trusted without --ca-file.
    let listed = ok_json(
        &["shares", "--hub", &hub, "--json"],
        &[("SSL_CERT_FILE", ca)],
    );
    assert_eq!(listed[0].as_array().unwrap().len(), 1, "{listed:?}");

    // A replication from the share: signalling over HTTPS, documents over the data channel.
    let bob = dir.db("bob.db");
    let share_url = format!("peer+{hub}#notes");
    let out = ok_json(
        &["replicate", &share_url, &bob, "--json", "--ca-file", ca],
        &[],
    );
    let done = out.iter().find(|v| v["event"] == "completed").unwrap();
    assert_eq!(done["docs_written"], 25, "{out:?}");
    assert_eq!(doc_count(&bob), 25);
    assert!(sharer.interrupt(), "share exits 0 on Ctrl-C");

    // An https:// CouchDB source, filled over plain HTTP directly on the hub server.
    let couch_db = unique("couch");
    let (hub_base, _) = hub_addr();
    ok_json(
        &[
            "replicate",
            &alice,
            &format!("{hub_base}/{couch_db}"),
            "--json",
        ],
        &[],
    );
    let carol = dir.db("carol.db");
    let out = ok_json(
        &[
            "replicate",
            &proxy.url(&couch_db),
            &carol,
            "--json",
            "--ca-file",
            ca,
        ],
        &[],
    );
    let done = out.iter().find(|v| v["event"] == "completed").unwrap();
    assert_eq!(done["docs_written"], 25, "{out:?}");
    let doc = &ok_json(&["docs", &carol, "get", "doc-007"], &[])[0];
    assert_eq!(doc["i"], 7);
}

/// Without `--ca-file` the platform's trust store does not know the test CA: every command
/// that reaches the hub or the database says so, names the host, hints at `--ca-file`, and
/// exits 1.
#[test]
fn a_private_ca_without_ca_file_is_an_unknown_issuer() {
    let (dir, ca, _ca_file, upstream) = setup();
    let (chain, key) = ca.leaf(&["127.0.0.1"], None);
    let proxy = TlsProxy::start(upstream, chain, key);
    let hub = proxy.url(&unique("hub"));
    let bob = dir.db("bob.db");
    let alice = dir.db("alice.db");
    seed(&alice, 1);
    let commands: Vec<Vec<String>> = vec![
        vec!["shares".into(), "--hub".into(), hub.clone()],
        vec!["replicate".into(), format!("peer+{hub}#notes"), bob.clone()],
        vec!["replicate".into(), proxy.url("couch"), bob.clone()],
        vec![
            "share".into(),
            "--hub".into(),
            hub.clone(),
            "--db".into(),
            alice.clone(),
        ],
    ];
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(&args, 1);
        assert!(
            err.contains(&proxy.host()),
            "{args:?}: the host is named: {err}"
        );
        assert!(err.contains("unknown issuer"), "{args:?}: {err}");
        assert!(err.contains("--ca-file"), "{args:?}: a hint: {err}");
    }
}

/// A certificate from the trusted CA, but for another name: a name mismatch naming both.
#[test]
fn a_certificate_for_another_name_is_a_name_mismatch() {
    let (_dir, ca, ca_file, upstream) = setup();
    let (chain, key) = ca.leaf(&["couch.example.org"], None);
    let proxy = TlsProxy::start(upstream, chain, key);
    let hub = proxy.url(&unique("hub"));
    let err = fails(&["shares", "--hub", &hub, "--ca-file", &ca_file], 1);
    assert!(err.contains(&proxy.host()), "{err}");
    assert!(err.contains("name mismatch"), "{err}");
    assert!(
        err.contains("issued for couch.example.org)"),
        "the certificate's name: {err}"
    );
}

/// A certificate from the trusted CA that ended in 2021: expired, with its date.
#[test]
fn an_expired_certificate_is_expired() {
    let (dir, ca, ca_file, upstream) = setup();
    let (chain, key) = ca.leaf(&["127.0.0.1"], Some((2020, 2021)));
    let proxy = TlsProxy::start(upstream, chain, key);
    let hub = proxy.url(&unique("hub"));
    let err = fails(&["shares", "--hub", &hub, "--ca-file", &ca_file], 1);
    assert!(err.contains(&proxy.host()), "{err}");
    assert!(err.contains("expired on 2021-01-01"), "{err}");
    let err = fails(
        &[
            "replicate",
            &proxy.url("couch"),
            &dir.db("x.db"),
            "--ca-file",
            &ca_file,
        ],
        1,
    );
    assert!(err.contains("expired"), "{err}");
}

/// A CA file that is missing or holds no certificate is bad input (exit 2), said at once.
#[test]
fn a_bad_ca_file_is_bad_input() {
    let dir = Dir::new();
    let missing = dir.db("missing.pem");
    let err = fails(
        &[
            "shares",
            "--hub",
            "https://127.0.0.1:9/hub",
            "--ca-file",
            &missing,
        ],
        2,
    );
    assert!(
        err.contains(&missing) && err.contains("no such file"),
        "{err}"
    );
    let garbage = dir.db("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let err = fails(
        &[
            "replicate",
            "https://127.0.0.1:9/db",
            &dir.db("x.db"),
            "--ca-file",
            &garbage,
        ],
        2,
    );
    assert!(err.contains("no PEM certificate"), "{err}");
    assert!(!Path::new(&dir.db("x.db")).exists(), "nothing created");
}
