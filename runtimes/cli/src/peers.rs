//! Remembered peers: this peer's identity (`--identity`, `peerpouch id`) and a share's allow
//! list of fingerprints (`--allow`, `--allow-file`, "always" at the `--ask` prompt).

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peerpouch_smol::{Identity, IdentityError, PeerRequest, Verdict};
use serde_json::{json, Value};

/// Why an identity or allow list cannot be used; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    /// From the identity file.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    /// Neither `--identity` nor a home directory to keep the identity in.
    #[error(
        "no place for this peer's identity: set HOME or XDG_CONFIG_HOME, or give --identity PATH \
         (or PEERPOUCH_IDENTITY)"
    )]
    NoConfigDir,
    /// A `--allow` value that is not a fingerprint.
    #[error("--allow: {error}")]
    BadAllow {
        /// The value.
        value: String,
        /// Why.
        error: peerpouch::fingerprint::FingerprintError,
    },
    /// A line of an allow file that is not a fingerprint.
    #[error("{path}:{line}: {error} (one fingerprint per line; `#` starts a comment)", path = .path.display())]
    BadAllowLine {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// Why.
        error: peerpouch::fingerprint::FingerprintError,
    },
    /// An allow file others may write to: they could add themselves.
    #[error(
        "the allow file {path} can be written by others (mode {mode:o}): `chmod go-w {path}`",
        path = .path.display()
    )]
    AllowWritable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// An allow file that cannot be read.
    #[error("cannot read the allow file {path}: {error}", path = .path.display())]
    ReadAllow {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        error: std::io::Error,
    },
}

impl PeersError {
    /// 2 for bad input (a fingerprint or allow file), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            PeersError::BadAllow { .. }
            | PeersError::BadAllowLine { .. }
            | PeersError::AllowWritable { .. }
            | PeersError::ReadAllow { .. } => 2,
            _ => 1,
        }
    }
}

/// Which identity a command's node uses.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct IdentityArgs {
    /// This peer's identity file (its DTLS certificate and key; made on first use, mode 0600).
    /// Default: $XDG_CONFIG_HOME/peerpouch/identity (~/.config/peerpouch/identity).
    #[arg(long, value_name = "PATH", env = "PEERPOUCH_IDENTITY")]
    pub identity: Option<PathBuf>,
}

impl IdentityArgs {
    /// The identity file's path.
    ///
    /// # Errors
    /// [`PeersError::NoConfigDir`].
    pub fn path(&self) -> Result<PathBuf, PeersError> {
        match &self.identity {
            Some(p) => Ok(p.clone()),
            None => Identity::default_path().ok_or(PeersError::NoConfigDir),
        }
    }

    /// The identity, made and saved on first use.
    ///
    /// # Errors
    /// [`PeersError::NoConfigDir`], [`PeersError::Identity`].
    pub fn load(&self) -> Result<Identity, PeersError> {
        let path = self.path()?;
        let id = Identity::load_or_create(&path)?;
        tracing::info!(path = %path.display(), fingerprint = %id.fingerprint(), "identity");
        Ok(id)
    }
}

/// `peerpouch id`: prints this peer's fingerprint (making the identity on first use).
///
/// # Errors
/// From [`IdentityArgs::load`].
pub fn id(args: &IdentityArgs, json_out: bool) -> Result<(), PeersError> {
    let path = args.path()?;
    let id = args.load()?;
    let mut out = std::io::stdout().lock();
    if json_out {
        let v = json!({"fingerprint": id.fingerprint(), "identity": path.display().to_string()});
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(out, "{}", id.fingerprint());
    }
    let _ = out.flush();
    Ok(())
}

/// Who a share lets in without asking.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AllowArgs {
    /// Accept the peer with this certificate fingerprint without asking (repeatable; what
    /// `peerpouch id` prints on the peer's machine). Without --ask, only allowed peers get in.
    #[arg(long = "allow", value_name = "FINGERPRINT")]
    pub allow: Vec<String>,
    /// The allow list: one fingerprint per line, `#` comments. "always" answers at the --ask
    /// prompt are added to it. Default: $XDG_CONFIG_HOME/peerpouch/allow/<share name>, read
    /// only with --ask.
    #[arg(long, value_name = "PATH")]
    pub allow_file: Option<PathBuf>,
}

/// A share's allow list: fingerprints from `--allow` and the allow file, and where "always"
/// answers go.
#[derive(Debug)]
pub struct AllowList {
    name: Option<String>,
    file: Option<PathBuf>,
    allowed: Mutex<BTreeSet<String>>,
    /// Only allowed peers get in (allow options without `--ask`).
    pub only: bool,
    /// Ask the others on the terminal.
    pub ask: bool,
}

/// The file name of a share's allow list: the name with anything but letters, digits, `-` and
/// `_` written as `%XX`, so any name is one plain file in the allow directory.
fn allow_file_name(share: &str) -> String {
    share
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl AllowList {
    /// The allow list of a share named `name` (if it has a name).
    ///
    /// # Errors
    /// [`PeersError::BadAllow`], [`PeersError::BadAllowLine`], [`PeersError::ReadAllow`] (an
    /// explicit --allow-file that does not exist, without --ask, is one: nobody could get in).
    pub fn open(args: &AllowArgs, name: Option<&str>, ask: bool) -> Result<AllowList, PeersError> {
        let mut allowed = BTreeSet::new();
        for value in &args.allow {
            let fp =
                peerpouch::fingerprint::parse(value).map_err(|error| PeersError::BadAllow {
                    value: value.clone(),
                    error,
                })?;
            allowed.insert(fp);
        }
        let explicit = args.allow_file.is_some();
        let file = match &args.allow_file {
            Some(p) => Some(p.clone()),
            // The remembered answers of `--ask` belong to `--ask`: without it, today's
            // behaviour (everyone in) stays.
            None if ask => name.and_then(|n| {
                peerpouch_smol::config_dir().map(|d| d.join("allow").join(allow_file_name(n)))
            }),
            None => None,
        };
        if let Some(path) = &file {
            match std::fs::read(path) {
                Ok(bytes) => {
                    check_not_writable_by_others(path)?;
                    read_allow_file(path, &bytes, &mut allowed)?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && (ask || !explicit) => {}
                Err(error) => {
                    return Err(PeersError::ReadAllow {
                        path: path.clone(),
                        error,
                    })
                }
            }
        }
        Ok(AllowList {
            name: name.map(str::to_string),
            file,
            allowed: Mutex::new(allowed),
            only: !ask && (explicit || !args.allow.is_empty()),
            ask,
        })
    }

    /// Whether this list decides anything (else every peer is let in, as without it).
    pub fn decides(&self) -> bool {
        self.ask || self.only
    }

    /// The allow file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// How many fingerprints are allowed.
    pub fn len(&self) -> usize {
        self.allowed.lock().map(|a| a.len()).unwrap_or_default()
    }

    fn contains(&self, fp: &str) -> bool {
        self.allowed.lock().map(|a| a.contains(fp)).unwrap_or(false)
    }

    /// Allows `fp` from now on, and in the allow file. Returns where it was written.
    fn remember(&self, fp: &str, label: &str) -> Result<Option<PathBuf>, std::io::Error> {
        if let Ok(mut a) = self.allowed.lock() {
            a.insert(fp.to_string());
        }
        let Some(path) = &self.file else {
            return Ok(None);
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                b.mode(0o700);
            }
            b.create(dir)?;
        }
        let mut o = std::fs::OpenOptions::new();
        o.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        // One write per line: lines appended by two sharers at once do not interleave.
        let line = format!("{fp}  # {}\n", label.replace(['\n', '\r'], " "));
        o.open(path)?.write_all(line.as_bytes())?;
        Ok(Some(path.clone()))
    }

    /// Decides about `req`: allowed fingerprints get in, others are asked on the terminal
    /// (with `ask`) or refused. Tells what it decided on stderr, or as JSON lines.
    pub fn decide(&self, req: &PeerRequest, json_out: bool) -> Verdict {
        let fp = req.fingerprint.as_deref().unwrap_or("-");
        let says = |v: Value| {
            if json_out {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{v}");
                let _ = out.flush();
            }
        };
        if req.fingerprint.as_deref().is_some_and(|f| self.contains(f)) {
            says(json!({"event": "peer_allowed", "peer": req.peer, "fingerprint": fp}));
            if !json_out {
                eprintln!("peer {} ({fp}) is on the allow list: accepted", req.peer);
            }
            return Verdict::Accept;
        }
        if !self.ask {
            says(
                json!({"event": "peer_refused", "peer": req.peer, "fingerprint": fp, "reason": "not on the allow list"}),
            );
            if !json_out {
                eprintln!("peer {} ({fp}) is not on the allow list: refused", req.peer);
            }
            return Verdict::Refuse(Some("not on the sharer's allow list".into()));
        }
        says(json!({"event": "peer_asked", "peer": req.peer, "fingerprint": fp, "info": req.info}));
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "peer {} wants to connect to {} (info: {}; fingerprint {fp}). \
             Accept? [y]es, [N]o, [a]lways: ",
            req.peer, req.share, req.info
        );
        let _ = err.flush();
        drop(err);
        let mut line = String::new();
        let stdin = std::io::stdin();
        let answer = match stdin.lock().read_line(&mut line) {
            Ok(n) if n > 0 => line.trim().to_ascii_lowercase(),
            _ => String::new(),
        };
        if !stdin.is_terminal() {
            // No echo from a terminal: end the question's line here.
            eprintln!("{answer}");
        }
        match answer.as_str() {
            "y" | "yes" => {
                says(json!({"event": "peer_accepted", "peer": req.peer, "fingerprint": fp}));
                Verdict::Accept
            }
            "a" | "always" => {
                let Some(f) = req.fingerprint.as_deref() else {
                    eprintln!("the peer named no fingerprint: accepted this time only");
                    return Verdict::Accept;
                };
                let label = format!(
                    "{} (share {})",
                    req.info,
                    self.name.as_deref().unwrap_or(&req.share)
                );
                match self.remember(f, &label) {
                    Ok(Some(path)) if !json_out => {
                        eprintln!("{f} allowed from now on (in {})", path.display())
                    }
                    Ok(None) if !json_out => eprintln!(
                        "{f} allowed until this share stops (a share without --name has no \
                         allow file: give --name or --allow-file to remember it)"
                    ),
                    Ok(_) => {}
                    Err(e) => eprintln!(
                        "{f} allowed until this share stops: cannot write the allow file: {e}"
                    ),
                }
                says(
                    json!({"event": "peer_accepted", "peer": req.peer, "fingerprint": fp, "always": true,
                            "allow_file": self.file.as_ref().map(|p| p.display().to_string())}),
                );
                Verdict::Accept
            }
            _ => {
                says(
                    json!({"event": "peer_refused", "peer": req.peer, "fingerprint": fp, "reason": "refused by the sharer"}),
                );
                Verdict::Refuse(Some("refused by the sharer".into()))
            }
        }
    }
}

#[cfg(unix)]
fn check_not_writable_by_others(path: &Path) -> Result<(), PeersError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|error| PeersError::ReadAllow {
            path: path.to_path_buf(),
            error,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o022 != 0 {
        return Err(PeersError::AllowWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_not_writable_by_others(_path: &Path) -> Result<(), PeersError> {
    Ok(())
}

fn read_allow_file(
    path: &Path,
    bytes: &[u8],
    into: &mut BTreeSet<String>,
) -> Result<(), PeersError> {
    let text = String::from_utf8_lossy(bytes);
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let fp =
            peerpouch::fingerprint::parse(entry).map_err(|error| PeersError::BadAllowLine {
                path: path.to_path_buf(),
                line: i + 1,
                error,
            })?;
        into.insert(fp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_share_name_is_one_plain_file_name() {
        assert_eq!(allow_file_name("groceries"), "groceries");
        assert_eq!(allow_file_name("../etc/x"), "%2E%2E%2Fetc%2Fx");
        assert_eq!(allow_file_name("a b.é"), "a%20b%2E%C3%A9");
    }

    #[test]
    fn an_allow_file_takes_comments_and_names_a_bad_line() {
        let fp = format!("sha-256 {}", ["0A"; 32].join(":"));
        let mut set = BTreeSet::new();
        let text = format!("# bob\n\n{}  # bob's laptop\n", "0a".repeat(32));
        read_allow_file(Path::new("/x/allow"), text.as_bytes(), &mut set).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![fp]);
        let e = read_allow_file(
            Path::new("/x/allow"),
            b"# ok\nnot one\n",
            &mut BTreeSet::new(),
        )
        .unwrap_err();
        assert!(
            matches!(e, PeersError::BadAllowLine { line: 2, .. }),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("/x/allow:2: "), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
