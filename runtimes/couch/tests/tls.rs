//! `https://` with certificates made at run time: a private CA trusted through
//! [`ClientConfig::ca_certs`], and the typed [`Error::Certificate`] for an unknown issuer, a
//! certificate for another name and an expired one. The server is a small rustls server on
//! 127.0.0.1 that answers every request with `201 {"ok":true}`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use peerpouch::{Database, DbError};
use peerpouch_couch::{CaCerts, CertificateProblem, ClientConfig, CouchClient, Error};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> Vec<u8> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.issuer.der());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
        .into_bytes()
    }

    fn certs(&self) -> CaCerts {
        CaCerts::from_pem(&self.pem()).unwrap()
    }

    /// Serves HTTPS on 127.0.0.1 with a certificate for `names`, valid between the given
    /// years (or from now on); returns the port.
    fn serve(&self, names: &[&str], years: Option<(i32, i32)>) -> u16 {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some((from, to)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { break };
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                // The handshake runs inside the first read; a client that rejects the
                // certificate ends it with an error here.
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                if head.ends_with(b"\r\n\r\n") {
                    let body = br#"{"ok":true}"#;
                    let _ = write!(
                        tls,
                        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(body);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        port
    }
}

fn client(port: u16, ca: Option<&Ca>) -> CouchClient {
    let mut config = ClientConfig::default();
    if let Some(ca) = ca {
        config = config.ca_certs(ca.certs());
    }
    CouchClient::with_config(&format!("https://127.0.0.1:{port}/db"), config).unwrap()
}

#[test]
fn a_trusted_private_ca_is_accepted() {
    let ca = Ca::new("couch test CA");
    let port = ca.serve(&["127.0.0.1"], None);
    assert_eq!(client(port, Some(&ca)).create_db(true), Ok(true));
}

#[test]
fn an_untrusted_ca_is_an_unknown_issuer_naming_the_host() {
    let ca = Ca::new("couch test CA");
    let port = ca.serve(&["127.0.0.1"], None);
    let e = client(port, None).create_db(true).unwrap_err();
    assert_eq!(
        e,
        Error::Certificate {
            url: format!("https://127.0.0.1:{port}/db"),
            host: format!("127.0.0.1:{port}"),
            problem: CertificateProblem::UnknownIssuer,
        }
    );
    assert!(e.to_string().contains("--ca-file"), "{e}");
    // Another CA's certificate does not help either.
    let other = Ca::new("another CA");
    let e = client(port, Some(&other)).create_db(true).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Certificate {
                problem: CertificateProblem::UnknownIssuer,
                ..
            }
        ),
        "{e}"
    );
    // Nor one of the same name with another key.
    let namesake = Ca::new("couch test CA");
    let e = client(port, Some(&namesake)).create_db(true).unwrap_err();
    assert!(e.to_string().contains("bad signature"), "{e}");
    // Through the Database trait: not transient, so a replication stops at once.
    match client(port, None).info() {
        Err(d @ DbError::Other { status: 495, .. }) => {
            assert!(!d.is_transient());
            assert!(d.reason().contains("unknown issuer"), "{d}");
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn a_certificate_for_another_name_is_a_name_mismatch() {
    let ca = Ca::new("couch test CA");
    let port = ca.serve(&["couch.example.org", "10.1.2.3"], None);
    let e = client(port, Some(&ca)).create_db(true).unwrap_err();
    match &e {
        Error::Certificate {
            host,
            problem: CertificateProblem::NameMismatch { presented },
            ..
        } => {
            assert_eq!(host, &format!("127.0.0.1:{port}"));
            assert_eq!(presented, &["couch.example.org", "10.1.2.3"]);
        }
        other => panic!("expected a name mismatch, got {other:?}"),
    }
}

#[test]
fn an_expired_certificate_is_expired() {
    let ca = Ca::new("couch test CA");
    let port = ca.serve(&["127.0.0.1"], Some((2020, 2021)));
    let e = client(port, Some(&ca)).create_db(true).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Certificate { problem: CertificateProblem::Expired { not_after: Some(d) }, .. }
                if d == "2021-01-01"
        ),
        "{e:?}"
    );
}

#[test]
fn ca_files_are_read_and_checked() {
    let ca = Ca::new("couch test CA");
    let dir = std::env::temp_dir().join(format!("peerpouch-couch-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Two CAs in one file, with a key in between that is skipped.
    let other = Ca::new("another CA");
    let mut pem = ca.pem();
    pem.extend_from_slice(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    pem.extend_from_slice(&other.pem());
    let path = dir.join("two.pem");
    std::fs::write(&path, &pem).unwrap();
    assert_eq!(CaCerts::from_pem_file(&path).unwrap().len(), 2);
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        CaCerts::from_pem_file(&empty),
        Err(Error::CaFile { reason, .. }) if reason.contains("no PEM certificate")
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
