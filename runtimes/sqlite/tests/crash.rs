//! Crash safety: a child process writes to one file in a loop and is killed with SIGKILL at
//! seeded random points; after each kill the file is reopened and checked (every acknowledged
//! write is there, no document is half-written, revision trees are valid), then the next child
//! goes on writing to the same file.
//!
//! The child is this test binary run again with `PEERPOUCH_CRASH_CHILD` set: it prints one
//! `ack` line per acknowledged write (flushed) before it starts the next write. The parent kills
//! it after reading a seeded number of lines, so kills land anywhere in the write loop, inside
//! SQLite transactions included; no sleeps.
//!
//! `PEERPOUCH_CRASH_ROUNDS` (default 40) sets the number of kills, `PEERPOUCH_CRASH_SEED` the
//! seed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::Rng;
use peerpouch::doc::digest_of;
use peerpouch::{
    ChangesRequest, ChangesStyle, Database, DbError, OpenRev, OpenRevsRequest, Rev, RevsDiffRequest,
};
use peerpouch_sqlite::{OpenOptions, SqliteStore};
use serde_json::{json, Value};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open_with(path, OpenOptions::new().name("crash").id_seed(1)).unwrap()
}

/// A body whose `sum` checks its `payload`: a half-written document cannot pass.
fn body(rng: &mut Rng) -> Value {
    let len = 1 + rng.below(3000) as usize;
    let payload: String = (0..len)
        .map(|i| (b'a' + ((rng.next_u64() as usize + i) % 26) as u8) as char)
        .collect();
    json!({"sum": digest_of(payload.as_bytes()), "payload": payload})
}

/// Attachments: sometimes one of three shared contents (stored once), sometimes fresh bytes.
fn attachments(rng: &mut Rng) -> Option<Value> {
    use base64::Engine;
    let data: Vec<u8> = match rng.below(4) {
        0 => return None,
        1 => (0..1 + rng.below(20_000))
            .map(|_| rng.next_u64() as u8)
            .collect(),
        k => vec![k as u8; 5000 * k as usize],
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    Some(json!({"f": {"data": b64, "content_type": "application/octet-stream"}}))
}

fn hex(rng: &mut Rng) -> String {
    format!(
        "{:032x}",
        u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())
    )
}

/// The writer: runs only as the child, forever, until it is killed.
#[test]
fn crash_writer_child() {
    let Ok(path) = std::env::var("PEERPOUCH_CRASH_CHILD") else {
        return;
    };
    let mut rng = Rng::new(env_u64("PEERPOUCH_CRASH_SEED", 0));
    // Concurrent writers each own the documents whose ids start with `d` and their tag (not a
    // hex digit), so their edits never conflict with each other's.
    let tag = std::env::var("PEERPOUCH_CRASH_TAG").unwrap_or_default();
    let own = format!("d{tag}");
    let mut db = open(Path::new(&path));
    let mut ids: Vec<String> = db
        .all_docs(Default::default())
        .unwrap()
        .rows
        .into_iter()
        .filter_map(|r| r.id)
        .filter(|id| id.starts_with(&own))
        .collect();
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        let mut acks = Vec::new();
        let pick =
            |rng: &mut Rng, ids: &[String]| ids[rng.below(ids.len() as u64) as usize].clone();
        match rng.below(10) {
            // New documents, several per request, some with attachments.
            0..=3 => {
                // Now and then a large batch: a commit of many WAL frames, so some kills
                // land inside SQLite writing it.
                let n = if rng.below(6) == 0 {
                    20 + rng.below(60)
                } else {
                    1 + rng.below(5)
                };
                let docs: Vec<Value> = (0..n)
                    .map(|_| {
                        let mut d = body(&mut rng);
                        d["_id"] = json!(format!("{own}{}", hex(&mut rng)));
                        if let Some(a) = attachments(&mut rng) {
                            d["_attachments"] = a;
                        }
                        d
                    })
                    .collect();
                for r in db.bulk_docs(docs, true).unwrap() {
                    let rev = r.result.unwrap();
                    ids.push(r.id.clone());
                    acks.push(format!("doc {} {rev}", r.id));
                }
            }
            // Edit, delete or recreate the winner of an existing document.
            4..=6 if !ids.is_empty() => {
                let id = pick(&mut rng, &ids);
                let mut d = body(&mut rng);
                d["_id"] = json!(id);
                match db.get(&id) {
                    Ok(cur) => {
                        d["_rev"] = cur["_rev"].clone();
                        if rng.below(4) == 0 {
                            d["_deleted"] = json!(true);
                        } else if let Some(a) = attachments(&mut rng) {
                            d["_attachments"] = a;
                        }
                    }
                    Err(DbError::NotFound(_)) => {}
                    Err(e) => panic!("{e}"),
                }
                let rev = db.put(d).unwrap();
                acks.push(format!("doc {id} {rev}"));
            }
            // A replicated branch off the winner: a conflict.
            7 if !ids.is_empty() => {
                let id = pick(&mut rng, &ids);
                let leaves = db.open_revs(OpenRevsRequest::all(id.clone())).unwrap();
                let Some(OpenRev::Ok(leaf)) = leaves.first() else {
                    continue;
                };
                let parent: Rev = leaf["_rev"].as_str().unwrap().parse().unwrap();
                let h = hex(&mut rng);
                let mut d = body(&mut rng);
                d["_id"] = json!(id);
                d["_rev"] = json!(format!("{}-{h}", parent.pos + 1));
                d["_revisions"] = json!({"start": parent.pos + 1, "ids": [h, parent.hash]});
                let r = db.bulk_docs(vec![d], false).unwrap().remove(0);
                acks.push(format!("doc {id} {}", r.result.unwrap()));
            }
            // A checkpoint-like `_local` document.
            _ => {
                let id = format!("_local/ck{tag}{}", rng.below(4));
                let mut d = body(&mut rng).as_object().unwrap().clone();
                if let Ok(cur) = db.get_local(&id) {
                    d.insert("_rev".into(), cur["_rev"].clone());
                }
                let rev = db.put_local(&id, d).unwrap();
                acks.push(format!("local {id} {rev}"));
            }
        }
        for a in acks {
            writeln!(out, "ack {a}").unwrap();
        }
        out.flush().unwrap();
    }
}

/// Whether the WAL left by a killed writer ends with frames of a transaction that never wrote
/// its commit frame (the kill fell inside SQLite writing a commit). Frames of the current WAL
/// generation carry the header's salts; a commit frame has a non-zero database size.
fn torn_transaction_in_wal(db: &Path) -> bool {
    let Ok(wal) = std::fs::read(format!("{}-wal", db.display())) else {
        return false;
    };
    if wal.len() < 32 {
        return false;
    }
    let word = |at: usize| u32::from_be_bytes(wal[at..at + 4].try_into().unwrap());
    let (page, salts) = (word(8) as usize, &wal[16..24]);
    let mut at = 32;
    let mut after_commit = 0;
    while at + 24 <= wal.len() && &wal[at + 8..at + 16] == salts {
        after_commit = if word(at + 4) != 0 {
            0
        } else {
            after_commit + 1
        };
        at += 24 + page;
    }
    after_commit > 0
}

/// What the children acknowledged, over all rounds.
#[derive(Default)]
struct Acked {
    docs: BTreeSet<(String, Rev)>,
    locals: BTreeMap<String, u64>,
    lines: usize,
}

impl Acked {
    fn take(&mut self, line: &str) {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ack"), Some("doc"), Some(id), Some(rev)) => {
                self.docs.insert((id.into(), rev.parse().unwrap()));
            }
            (Some("ack"), Some("local"), Some(id), Some(rev)) => {
                let n = rev.strip_prefix("0-").unwrap().parse().unwrap();
                let e = self.locals.entry(id.into()).or_default();
                *e = (*e).max(n);
            }
            _ => return,
        }
        self.lines += 1;
    }
}

/// Every acknowledged write is there, every leaf is whole and every tree holds together.
/// Returns the leaves that were committed but never acknowledged (a kill fell between a commit
/// and its acknowledgement).
fn check(path: &Path, acked: &Acked) -> BTreeSet<(String, Rev)> {
    let mut unacknowledged = BTreeSet::new();
    let mut db = open(path);
    // Acknowledged revisions are known (still leaves, or ancestors of later edits).
    let mut wanted: BTreeMap<String, Vec<Rev>> = BTreeMap::new();
    for (id, rev) in &acked.docs {
        wanted.entry(id.clone()).or_default().push(rev.clone());
    }
    let diff = db
        .revs_diff(RevsDiffRequest {
            revs: wanted.clone(),
        })
        .unwrap();
    assert!(
        diff.missing.is_empty(),
        "acknowledged but lost: {:?}",
        diff.missing
    );
    for (id, rev) in &acked.locals {
        let local = db.get_local(id).unwrap();
        let have: u64 = local["_rev"].as_str().unwrap()[2..].parse().unwrap();
        assert!(have >= *rev, "{id}: acknowledged 0-{rev}, found 0-{have}");
        assert_eq!(
            local["sum"],
            json!(digest_of(local["payload"].as_str().unwrap().as_bytes()))
        );
    }
    // The changes feed lists each document once, with its leaves, winner first.
    let info = db.info().unwrap();
    let changes = db
        .changes(ChangesRequest {
            style: ChangesStyle::AllDocs,
            ..ChangesRequest::default()
        })
        .unwrap();
    let ids: BTreeSet<&str> = changes.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), changes.results.len(), "a document listed twice");
    assert_eq!(ids.len() as u64, info.doc_count + info.doc_del_count);
    assert!(wanted.keys().all(|id| ids.contains(id.as_str())));
    for row in &changes.results {
        let leaves = db
            .open_revs(OpenRevsRequest {
                revs: true,
                attachments: true,
                ..OpenRevsRequest::all(row.id.clone())
            })
            .unwrap();
        let revs: Vec<String> = leaves
            .iter()
            .map(|l| match l {
                OpenRev::Ok(d) => d["_rev"].as_str().unwrap().to_string(),
                OpenRev::Missing(r) => panic!("{}: leaf {r} has no body", row.id),
            })
            .collect();
        let listed: Vec<String> = row.changes.iter().map(|c| c.rev.to_string()).collect();
        assert_eq!(
            revs, listed,
            "{}: leaves and changes agree, winner first",
            row.id
        );
        for l in &leaves {
            let OpenRev::Ok(d) = l else { unreachable!() };
            let rev: Rev = d["_rev"].as_str().unwrap().parse().unwrap();
            if !acked.docs.contains(&(row.id.clone(), rev.clone())) {
                unacknowledged.insert((row.id.clone(), rev.clone()));
            }
            let history = &d["_revisions"];
            assert_eq!(history["start"], rev.pos);
            let hist = history["ids"].as_array().unwrap();
            assert_eq!(hist[0], rev.hash.as_str());
            assert!(hist.len() as u64 <= rev.pos);
            if d.get("_deleted").is_none() {
                assert_eq!(
                    d["sum"],
                    json!(digest_of(d["payload"].as_str().unwrap().as_bytes())),
                    "{}: half-written body",
                    row.id
                );
            }
            for (name, a) in d
                .get("_attachments")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                use base64::Engine;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(a["data"].as_str().unwrap())
                    .unwrap();
                assert_eq!(a["digest"], json!(digest_of(&data)), "{}/{name}", row.id);
                assert_eq!(a["length"], data.len());
            }
        }
    }
    // Attachment rows are exactly the digests in use, each once.
    let blobs = db.attachment_blobs().unwrap() as i64;
    drop(db);
    let conn = rusqlite::Connection::open(path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM attachments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, blobs);
    unacknowledged
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var("PEERPOUCH_CRASH_CHILD").is_ok() {
        return;
    }
    let rounds = env_u64("PEERPOUCH_CRASH_ROUNDS", 40);
    let seed = env_u64("PEERPOUCH_CRASH_SEED", 7);
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut acked = Acked::default();
    let mut committed_unacked = 0;
    let mut torn = 0;
    let mut seen_unacked = BTreeSet::new();
    for round in 0..rounds {
        let kill_after = 1 + rng.below(60) as usize;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PEERPOUCH_CRASH_CHILD", &path)
            .env("PEERPOUCH_CRASH_SEED", rng.next_u64().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let before = acked.lines;
        while acked.lines - before < kill_after {
            match lines.next() {
                Some(line) => acked.take(&line.unwrap()),
                None => {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "round {round}: the writer stopped by itself: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        torn += usize::from(torn_transaction_in_wal(&path));
        // Lines already in the pipe were acknowledged before the kill.
        for line in lines {
            acked.take(&line.unwrap());
        }
        let extra = check(&path, &acked);
        committed_unacked += usize::from(!extra.is_subset(&seen_unacked));
        seen_unacked.extend(extra);
    }
    eprintln!(
        "{rounds} kills, {} acknowledged writes, {} revisions checked; \
         {committed_unacked} kills fell between a commit and its acknowledgement, \
         {torn} inside SQLite writing a commit (a torn transaction in the WAL)",
        acked.lines,
        acked.docs.len()
    );
}

#[test]
fn acknowledged_writes_of_two_concurrent_writers_survive_sigkill() {
    if std::env::var("PEERPOUCH_CRASH_CHILD").is_ok() {
        return;
    }
    let rounds = env_u64("PEERPOUCH_CRASH_ROUNDS", 40) / 2;
    let seed = env_u64("PEERPOUCH_CRASH_SEED", 7) ^ 0x2222;
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash2.db");
    let exe = std::env::current_exe().unwrap();
    let mut acked = Acked::default();
    for round in 0..rounds {
        // Two writers on the one file; each is killed after its own seeded number of
        // acknowledgements, so one often dies while the other is mid-write.
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Option<String>)>();
        let mut children = Vec::new();
        let mut quota = Vec::new();
        for (w, tag) in ["x", "y"].into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "crash_writer_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("PEERPOUCH_CRASH_CHILD", &path)
                .env("PEERPOUCH_CRASH_TAG", tag)
                .env("PEERPOUCH_CRASH_SEED", rng.next_u64().to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((w, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((w, None));
            });
            children.push(Some(child));
            quota.push(1 + rng.below(40) as usize);
        }
        drop(tx);
        let mut seen = [0usize; 2];
        let mut ended = 0;
        while ended < 2 {
            let (w, line) = rx.recv().unwrap();
            match line {
                Some(line) => {
                    acked.take(&line);
                    seen[w] += 1;
                    if seen[w] == quota[w] {
                        if let Some(mut c) = children[w].take() {
                            c.kill().unwrap(); // SIGKILL
                            c.wait().unwrap();
                        }
                    }
                }
                None => {
                    ended += 1;
                    assert!(
                        children[w].is_none(),
                        "round {round}: writer {w} stopped by itself"
                    );
                }
            }
        }
        check(&path, &acked);
    }
    eprintln!(
        "{rounds} rounds of two concurrent writers killed, {} acknowledged writes, {} revisions checked",
        acked.lines,
        acked.docs.len()
    );
}
