//! Attachments received in ranges ahead of the documents that refer to them.
//!
//! An attachment too large to carry inline (base64 in a `_bulk_docs` body) arrives as ranges
//! ([`Request::StageAttachment`](crate::Request::StageAttachment)), in order, each appended by
//! the engine where it keeps bytes (the SQLite store: rows of a temporary table, on disk). This
//! module keeps the bookkeeping, written once for every engine: where the next range starts,
//! the running MD5, whether the bytes are complete and match their digest, and which uploads
//! to forget when too many are open. A replicated write then refers to a complete upload by a
//! stub, and the engine moves its bytes to its attachments within that write's commit
//! ([`Batch::staged`](super::Batch::staged)).
//!
//! Nothing here lives longer than the engine object: an upload a crash cut short is gone with
//! the process (the SQLite store's temporary table with its connection), and the sender starts
//! it over from offset 0.

use std::collections::BTreeMap;

use base64::Engine;
use md5::{Digest, Md5};

use super::BlobInfo;
use crate::error::DbError;
use crate::ops::StageRequest;

/// Uploads kept open at once; a new one past this forgets the one least recently written.
/// Each is a replication batch's attachment in flight, so a few per replication suffice.
pub const MAX_UPLOADS: usize = 32;
/// Bytes uploads may hold together (on disk in the SQLite store, in memory in the memory
/// store); a new upload past this forgets the least recently written others first. Uploads a
/// sender abandoned (its link closed) so never pile up beyond it.
pub const MAX_STAGED_BYTES: u64 = 1 << 30;

/// The bookkeeping of the attachments an engine is receiving in ranges (see the module docs).
///
/// ```
/// use peerpouch::store::Staging;
///
/// let staging = Staging::default();
/// assert_eq!(staging.open(), 0);
/// assert!(staging.complete("md5-1B2M2Y8AsgTpgAmY7PhCfg==").is_none());
/// ```
#[derive(Debug)]
pub struct Staging {
    uploads: BTreeMap<String, Upload>,
    /// Counts writes, to find the upload least recently written.
    tick: u64,
    max_uploads: usize,
    max_bytes: u64,
}

impl Default for Staging {
    fn default() -> Staging {
        Staging::with_limits(MAX_UPLOADS, MAX_STAGED_BYTES)
    }
}

#[derive(Debug)]
struct Upload {
    info: BlobInfo,
    received: u64,
    md5: Md5,
    complete: bool,
    touched: u64,
}

/// What [`Staging::accept`] decided for a range before its bytes are written.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Uploads forgotten to make room: the engine drops their bytes.
    pub evicted: Vec<String>,
    /// The range starts the upload over: the engine drops what it held of it first.
    pub restart: bool,
}

impl Staging {
    /// Bookkeeping that keeps at most `uploads` uploads holding at most `bytes` together (the
    /// default: [`MAX_UPLOADS`], [`MAX_STAGED_BYTES`]); one upload alone may hold more.
    pub fn with_limits(uploads: usize, bytes: u64) -> Staging {
        Staging {
            uploads: BTreeMap::new(),
            tick: 0,
            max_uploads: uploads.max(1),
            max_bytes: bytes,
        }
    }

    /// How many uploads are open (complete or not).
    pub fn open(&self) -> usize {
        self.uploads.len()
    }

    /// The announced length of the upload of `digest`, if one is open.
    pub fn length(&self, digest: &str) -> Option<u64> {
        self.uploads.get(digest).map(|u| u.info.length)
    }

    /// The attachment of `digest`, if all its bytes were received and matched.
    pub fn complete(&self, digest: &str) -> Option<BlobInfo> {
        self.uploads
            .get(digest)
            .filter(|u| u.complete)
            .map(|u| u.info.clone())
    }

    /// Checks a range against the upload it continues (or starts) and makes room for it.
    ///
    /// # Errors
    /// [`DbError::BadRequest`] for a digest that is not `md5-<base64 of 16 bytes>` or a range
    /// past the announced length; a 409 `stage_out_of_order` error (its reason says where the
    /// next range must start) for a range that does not start where the last one ended.
    pub fn accept(&mut self, r: &StageRequest) -> Result<Accepted, DbError> {
        check(r)?;
        self.tick += 1;
        if r.offset == 0 {
            let restart = self.uploads.remove(&r.digest).is_some();
            let evicted = self.make_room(r.length);
            self.uploads.insert(
                r.digest.clone(),
                Upload {
                    info: BlobInfo {
                        content_type: r.content_type.clone(),
                        length: r.length,
                    },
                    received: 0,
                    md5: Md5::new(),
                    complete: false,
                    touched: self.tick,
                },
            );
            return Ok(Accepted { evicted, restart });
        }
        match self.uploads.get_mut(&r.digest) {
            Some(u) if u.received == r.offset && !u.complete && u.info.length == r.length => {
                u.touched = self.tick;
                Ok(Accepted {
                    evicted: Vec::new(),
                    restart: false,
                })
            }
            held => Err(DbError::Other {
                status: 409,
                error: "stage_out_of_order".into(),
                reason: format!(
                    "a range of {} from byte {} does not continue what is held ({}); start over from offset 0",
                    r.digest,
                    r.offset,
                    match held {
                        Some(u) if u.complete => "all of it".to_string(),
                        Some(u) if u.info.length != r.length =>
                            format!("an upload of {} bytes", u.info.length),
                        Some(u) => format!("bytes 0..{}", u.received),
                        None => "nothing".to_string(),
                    }
                ),
            }),
        }
    }

    /// Counts a range the engine wrote; the last one checks the digest.
    ///
    /// # Errors
    /// [`DbError::BadRequest`] when the complete bytes do not hash to the digest; the upload is
    /// then forgotten (the engine drops its bytes).
    pub fn advance(&mut self, digest: &str, data: &[u8]) -> Result<(u64, bool), DbError> {
        let Some(u) = self.uploads.get_mut(digest) else {
            return Err(DbError::BadRequest(format!(
                "no upload of {digest} is open"
            )));
        };
        u.md5.update(data);
        u.received += data.len() as u64;
        if u.received == u.info.length {
            let got = format!(
                "md5-{}",
                base64::engine::general_purpose::STANDARD.encode(u.md5.clone().finalize())
            );
            if got != digest {
                self.uploads.remove(digest);
                return Err(DbError::BadRequest(format!(
                    "the attachment's bytes hash to {got}, not {digest}; nothing of it was kept"
                )));
            }
            u.complete = true;
        }
        Ok((u.received, u.complete))
    }

    /// Notes bytes the engine holds already as a complete upload with no bytes of its own;
    /// returns the uploads forgotten to make room (the engine drops their bytes).
    pub fn held(&mut self, digest: &str, info: BlobInfo) -> Vec<String> {
        self.tick += 1;
        let evicted = self.make_room(0);
        self.uploads.insert(
            digest.to_string(),
            Upload {
                info,
                received: 0,
                md5: Md5::new(),
                complete: true,
                touched: self.tick,
            },
        );
        evicted
    }

    /// Forgets an upload (used by a write, held already, or failed).
    pub fn forget(&mut self, digest: &str) -> bool {
        self.uploads.remove(digest).is_some()
    }

    /// Forgets the least recently written uploads until one more of `length` bytes fits.
    fn make_room(&mut self, length: u64) -> Vec<String> {
        let mut evicted = Vec::new();
        let held = |u: &BTreeMap<String, Upload>| u.values().map(|x| x.received).sum::<u64>();
        while !self.uploads.is_empty()
            && (self.uploads.len() >= self.max_uploads
                || held(&self.uploads).saturating_add(length) > self.max_bytes)
        {
            let Some(oldest) = self
                .uploads
                .iter()
                .min_by_key(|(_, u)| u.touched)
                .map(|(d, _)| d.clone())
            else {
                break;
            };
            tracing::debug!(digest = %oldest, "forgetting an attachment upload to make room");
            self.uploads.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }
}

/// Refuses a range of a bad digest or past its attachment's length.
pub(crate) fn check(r: &StageRequest) -> Result<(), DbError> {
    if !is_md5_digest(&r.digest) {
        return Err(DbError::BadRequest(format!(
            "an attachment digest must be md5-<base64 of 16 bytes>, not {:?}",
            crate::rev::truncate(&r.digest, 40)
        )));
    }
    let end = r.offset.checked_add(r.data.len() as u64);
    if end.is_none_or(|e| e > r.length) {
        return Err(DbError::BadRequest(format!(
            "bytes {}..+{} are past the attachment's length {}",
            r.offset,
            r.data.len(),
            r.length
        )));
    }
    Ok(())
}

fn is_md5_digest(d: &str) -> bool {
    d.strip_prefix("md5-").is_some_and(|b| {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .is_ok_and(|raw| raw.len() == 16)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_held_by_uploads_are_bounded_by_forgetting_the_oldest() {
        let mut s = Staging::with_limits(10, 100);
        let start = |s: &mut Staging, i: u8, length: u64, data: &'static [u8]| {
            let r = StageRequest {
                digest: digest_of(&[i]),
                content_type: String::new(),
                length,
                offset: 0,
                data: Bytes::from_static(data),
            };
            let a = s.accept(&r).unwrap();
            s.advance(&r.digest, &r.data).unwrap();
            a.evicted
        };
        assert!(start(&mut s, 1, 60, &[0; 50]).is_empty());
        assert!(start(&mut s, 2, 41, &[0; 40]).is_empty());
        // 90 held: one more of 30 forgets the oldest (50 bytes) only.
        assert_eq!(start(&mut s, 3, 30, &[0; 10]), vec![digest_of(&[1])]);
        // One larger than the limit alone forgets all others, and is taken.
        let all = start(&mut s, 4, 500, &[0; 10]);
        assert_eq!(all.len(), 2);
        assert_eq!(s.open(), 1);
    }

    use super::*;
    use crate::doc::digest_of;
    use bytes::Bytes;

    fn range(data: &'static [u8], offset: usize, len: usize, total: &'static [u8]) -> StageRequest {
        StageRequest {
            digest: digest_of(total),
            content_type: "text/plain".into(),
            length: total.len() as u64,
            offset: offset as u64,
            data: Bytes::from_static(&data[offset..offset + len]),
        }
    }

    #[test]
    fn ranges_in_order_complete_an_upload_and_a_wrong_one_is_refused() {
        let all: &'static [u8] = b"hello, staged world";
        let mut s = Staging::default();
        let first = range(all, 0, 5, all);
        assert!(!s.accept(&first).unwrap().restart);
        assert_eq!(s.advance(&first.digest, &first.data).unwrap(), (5, false));
        // A range that skips ahead is refused and says where to go on.
        let skip = range(all, 7, 3, all);
        let e = s.accept(&skip).unwrap_err();
        assert_eq!(e.status(), 409);
        assert!(e.to_string().contains("bytes 0..5"), "{e}");
        let rest = range(all, 5, all.len() - 5, all);
        s.accept(&rest).unwrap();
        assert_eq!(
            s.advance(&rest.digest, &rest.data).unwrap(),
            (all.len() as u64, true)
        );
        assert_eq!(s.complete(&rest.digest).unwrap().length, all.len() as u64);
        // Bytes that do not hash to the digest are forgotten.
        let mut lie = range(all, 0, all.len(), all);
        lie.data = Bytes::from_static(b"hello, STAGED world");
        s.accept(&lie).unwrap();
        assert!(s.advance(&lie.digest, &lie.data).is_err());
        assert!(s.complete(&lie.digest).is_none());
        assert_eq!(s.open(), 0);
    }

    #[test]
    fn bad_digests_and_ranges_past_the_end_are_refused_and_room_is_bounded() {
        let all: &'static [u8] = b"abc";
        let mut s = Staging::default();
        let mut bad = range(all, 0, 3, all);
        bad.digest = "md5-abc".into();
        assert_eq!(s.accept(&bad).unwrap_err().status(), 400);
        let mut long = range(all, 0, 3, all);
        long.length = 2;
        assert_eq!(s.accept(&long).unwrap_err().status(), 400);
        for i in 0..MAX_UPLOADS + 3 {
            // (Each announces 8 bytes and holds none: only the count bounds these.)
            let r = StageRequest {
                digest: digest_of(&i.to_le_bytes()),
                content_type: String::new(),
                length: 8,
                offset: 0,
                data: Bytes::new(),
            };
            let a = s.accept(&r).unwrap();
            assert_eq!(a.evicted.len(), usize::from(i >= MAX_UPLOADS));
        }
        assert_eq!(s.open(), MAX_UPLOADS);
    }
}
