//! A peer's persistent identity: its DTLS certificate and key, kept in a small file so that its
//! fingerprint ([`peerpouch::fingerprint`]) is the same on every run and others can remember it.
//!
//! The file is PEM, a `CERTIFICATE` block and a `PRIVATE KEY` block (PKCS#8), readable by the
//! usual tools (`openssl x509 -in FILE -noout -fingerprint -sha256` prints the same
//! fingerprint). It is created on first use with mode 0600 and never replaced: a file that
//! cannot be read or parsed is an error naming it, and two processes creating it at once end up
//! with the same identity (the file appears whole, once, by a hard link of a finished temporary
//! file; the loser reads the winner's).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use peerpouch::fingerprint::{self, DtlsCert};

/// Why an identity could not be loaded or made; each says which file and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file exists but cannot be read (permissions, a directory, ...).
    #[error("cannot read the identity file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        error: String,
    },
    /// The file is not an identity (damaged, truncated, or another kind of file). It is left
    /// as it is: move it away to make a new identity (peers that remembered the old
    /// fingerprint will not know the new one).
    #[error(
        "the identity file {path} is damaged ({reason}); it is left untouched: restore it, or \
         move it away to make a new identity (peers that allowed the old one will ask again)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Others may read the file: its key would let them act as this peer.
    #[error(
        "the identity file {path} is readable by others (mode {mode:o}): `chmod 600 {path}`",
        path = .path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file (or its directory) could not be written.
    #[error("cannot write the identity file {path}: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        error: String,
    },
    /// The crypto backend could not make a certificate.
    #[error("cannot generate a DTLS certificate")]
    Generate,
}

/// A peer's DTLS certificate and key, and its fingerprint. Give it to a node with
/// [`PeerConfig::identity`](crate::PeerConfig::identity).
///
/// ```
/// use peerpouch_smol::Identity;
///
/// let dir = std::env::temp_dir().join(format!("peerpouch-identity-doc-{}", std::process::id()));
/// let path = dir.join("identity");
/// let first = Identity::load_or_create(&path)?;          // made and saved
/// let again = Identity::load_or_create(&path)?;          // read back
/// assert_eq!(first.fingerprint(), again.fingerprint());
/// assert!(first.fingerprint().starts_with("sha-256 "));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<_, peerpouch_smol::IdentityError>(())
/// ```
#[derive(Clone)]
pub struct Identity {
    cert: DtlsCert,
    fingerprint: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

const CERT_LABEL: &str = "CERTIFICATE";
const KEY_LABEL: &str = "PRIVATE KEY";

impl Identity {
    /// A new identity, in memory only.
    ///
    /// # Errors
    /// [`IdentityError::Generate`].
    pub fn generate() -> Result<Identity, IdentityError> {
        let cert = peerpouch::session::SessionConfig::default()
            .crypto_provider()
            .dtls_provider
            .generate_certificate()
            .ok_or(IdentityError::Generate)?;
        Ok(Identity::from_cert(cert))
    }

    fn from_cert(cert: DtlsCert) -> Identity {
        Identity {
            fingerprint: fingerprint::of_cert(&cert),
            cert,
        }
    }

    /// The certificate's fingerprint, canonical (`sha-256 AB:CD:...`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The certificate and key.
    pub fn cert(&self) -> &DtlsCert {
        &self.cert
    }

    /// Where the identity lives unless told otherwise: `$XDG_CONFIG_HOME/peerpouch/identity`, or
    /// `~/.config/peerpouch/identity`. `None` when neither variable is set.
    pub fn default_path() -> Option<PathBuf> {
        config_dir().map(|d| d.join("identity"))
    }

    /// Reads the identity at `path`.
    ///
    /// # Errors
    /// [`IdentityError::Read`], [`IdentityError::Corrupt`], [`IdentityError::TooOpen`].
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let text = std::fs::read(path).map_err(|e| IdentityError::Read {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
        check_mode(path)?;
        let corrupt = |reason: &str| IdentityError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let text = String::from_utf8(text).map_err(|_| corrupt("not text"))?;
        let certificate = pem_block(&text, CERT_LABEL).map_err(|r| corrupt(&r))?;
        let private_key = pem_block(&text, KEY_LABEL).map_err(|r| corrupt(&r))?;
        Ok(Identity::from_cert(DtlsCert {
            certificate,
            private_key,
        }))
    }

    /// Reads the identity at `path`, or makes one and saves it there (and its directory, mode
    /// 0700) when there is no file. Never replaces a file.
    ///
    /// # Errors
    /// As [`Identity::load`], and [`IdentityError::Write`] when it cannot be saved.
    pub fn load_or_create(path: &Path) -> Result<Identity, IdentityError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Identity::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(IdentityError::Read {
                    path: path.to_path_buf(),
                    error: e.to_string(),
                });
            }
        }
        let identity = Identity::generate()?;
        match identity.save_new(path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), fingerprint = %identity.fingerprint, "new identity");
                Ok(identity)
            }
            // Another process made it first: theirs is the identity.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Identity::load(path),
            Err(e) => Err(IdentityError::Write {
                path: path.to_path_buf(),
                error: e.to_string(),
            }),
        }
    }

    /// Writes the identity to `path`, which must not exist: to a temporary file first, then
    /// linked into place, so no reader ever sees half a file and no file is replaced.
    fn save_new(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir {
            create_private_dir(d)?;
        }
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            u64::from_le_bytes(random)
        ));
        let result = (|| {
            let mut f = private_file(&tmp)?;
            f.write_all(self.to_pem().as_bytes())?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        result?;
        if let Some(d) = dir {
            // The new name is durable once the directory is.
            if let Ok(d) = std::fs::File::open(d) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn to_pem(&self) -> String {
        format!(
            "{}{}",
            pem(CERT_LABEL, &self.cert.certificate),
            pem(KEY_LABEL, &self.cert.private_key)
        )
    }
}

/// The directory for a user's peerpouch files: `$XDG_CONFIG_HOME/peerpouch`, or
/// `~/.config/peerpouch`; `None` when neither variable is set.
pub fn config_dir() -> Option<PathBuf> {
    let nonempty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    nonempty("XDG_CONFIG_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| nonempty("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("peerpouch"))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the one `label` block of `text`, checked to be one whole DER element.
fn pem_block(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no {label} block"))?
        + begin.len();
    let len = text[start..]
        .find(&end)
        .ok_or_else(|| format!("the {label} block has no end"))?;
    let b64: String = text[start..start + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the {label} block is not base64: {e}"))?;
    if der_len(&der) != Some(der.len()) {
        return Err(format!("the {label} block is not a whole DER structure"));
    }
    Ok(der)
}

/// The length of the DER SEQUENCE at the start of `der` (tag, length, contents).
fn der_len(der: &[u8]) -> Option<usize> {
    if der.first() != Some(&0x30) {
        return None;
    }
    let first = *der.get(1)? as usize;
    if first < 0x80 {
        return Some(2 + first);
    }
    let n = first & 0x7f;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *der.get(2 + i)? as usize;
    }
    Some(2 + n + len)
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| IdentityError::Read {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path) -> Result<(), IdentityError> {
    Ok(())
}

/// A new file only its owner can read (0600), failing if `path` exists.
pub(crate) fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// `dir` and its parents; the ones made here only for their owner (0700).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).unwrap();
            let p = std::env::temp_dir().join(format!(
                "peerpouch-identity-{name}-{}",
                u64::from_le_bytes(r)
            ));
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn made_on_first_use_and_read_back_the_same() {
        let dir = TempDir::new("reload");
        let path = dir.0.join("sub").join("identity");
        let made = Identity::load_or_create(&path).unwrap();
        assert!(path.exists());
        let again = Identity::load_or_create(&path).unwrap();
        assert_eq!(made.fingerprint(), again.fingerprint());
        assert_eq!(made.cert().certificate, again.cert().certificate);
        assert_eq!(made.cert().private_key, again.cert().private_key);
        assert_eq!(
            Identity::load(&path).unwrap().fingerprint(),
            made.fingerprint()
        );
        assert_eq!(
            peerpouch::fingerprint::parse(made.fingerprint()).unwrap(),
            made.fingerprint()
        );
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("identity")]);
    }

    #[cfg(unix)]
    #[test]
    fn only_its_owner_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("mode");
        let path = dir.0.join("identity");
        let made = Identity::load_or_create(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.0), 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load_or_create(&path).unwrap_err();
        assert_eq!(
            e,
            IdentityError::TooOpen {
                path: path.clone(),
                mode: 0o644
            }
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Identity::load(&path).unwrap().fingerprint(),
            made.fingerprint()
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_and_left_alone() {
        let dir = TempDir::new("corrupt");
        create_private_dir(&dir.0).unwrap();
        let good = Identity::generate().unwrap().to_pem();
        let half = &good[..good.len() / 2];
        let flipped = good.replacen("MII", "MIJ", 1);
        let cases: [(&str, &[u8]); 5] = [
            ("garbage", b"hello, world\n"),
            ("empty", b""),
            ("truncated", half.as_bytes()),
            ("binary", &[0xff, 0xfe, 0x00, 0x01]),
            ("bad length", flipped.as_bytes()),
        ];
        for (name, bytes) in cases {
            let path = dir.0.join(name);
            private_file(&path).unwrap().write_all(bytes).unwrap();
            let e = Identity::load_or_create(&path).unwrap_err();
            assert!(
                matches!(&e, IdentityError::Corrupt { path: p, .. } if *p == path),
                "{name}: {e:?}"
            );
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name} was touched");
        }
    }

    #[test]
    fn an_unreadable_path_is_a_read_error() {
        let dir = TempDir::new("unreadable");
        let path = dir.0.join("identity");
        create_private_dir(&path).unwrap(); // a directory where the file should be
        let e = Identity::load_or_create(&path).unwrap_err();
        assert!(
            matches!(&e, IdentityError::Read { path: p, .. } if *p == path),
            "{e:?}"
        );
    }

    #[test]
    fn processes_racing_to_create_it_share_one_identity() {
        let dir = TempDir::new("race");
        let path = dir.0.join("identity");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || Identity::load_or_create(&p).unwrap())
            })
            .collect();
        let fps: Vec<String> = handles
            .into_iter()
            .map(|h| h.join().unwrap().fingerprint().to_string())
            .collect();
        let on_disk = Identity::load(&path).unwrap();
        assert!(fps.iter().all(|f| f == on_disk.fingerprint()), "{fps:?}");
    }
}
