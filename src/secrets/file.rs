//! The AES-256-GCM token file, its header and its key sources (format and order in the
//! parent module's documentation).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInOut, Generate, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::{CREDENTIAL_NAME, ENV_PASSPHRASE, GENERATED_KEY_NAME, SecretError};
use crate::paths::{self, PathsError};

const MAGIC: &[u8; 6] = b"IMMTOK";
const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const KDF_LEN: usize = SALT_LEN + 12;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

type Key = Zeroizing<[u8; KEY_LEN]>;

/// The key sources the process environment offers, read once by the caller so tests can
/// pass their own.
#[derive(Default)]
pub struct KeyEnv {
    /// `$CREDENTIALS_DIRECTORY`, set by systemd for units with credentials.
    pub credentials_directory: Option<PathBuf>,
    /// `$IMM_TOKEN_PASSPHRASE`.
    pub passphrase: Option<Zeroizing<Vec<u8>>>,
}

impl KeyEnv {
    /// Reads `CREDENTIALS_DIRECTORY` and [`ENV_PASSPHRASE`]; empty values count as unset.
    pub fn from_process() -> KeyEnv {
        let credentials_directory = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let passphrase = std::env::var_os(ENV_PASSPHRASE)
            .filter(|v| !v.is_empty())
            .map(|v| Zeroizing::new(v.into_encoded_bytes()));
        KeyEnv {
            credentials_directory,
            passphrase,
        }
    }
}

impl std::fmt::Debug for KeyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEnv")
            .field("credentials_directory", &self.credentials_directory)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Argon2id costs: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KdfParams {
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane: above OWASP's minimum for Argon2id, a fraction of a
    /// second, paid once per process.
    pub(super) const DEFAULT: KdfParams = KdfParams {
        m_cost: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Whether a file's header asks for costs this program is willing to pay; a damaged
    /// header must not make it allocate gigabytes before the tag check fails.
    fn acceptable(&self) -> bool {
        (1..=16).contains(&self.p_cost)
            && (1..=16).contains(&self.t_cost)
            && self.m_cost >= 8 * self.p_cost
            && self.m_cost <= 256 * 1024
    }

    fn at_least(&self, other: &KdfParams) -> bool {
        self.m_cost >= other.m_cost && self.t_cost >= other.t_cost
    }
}

#[cfg(test)]
impl KdfParams {
    /// Argon2's minimum costs, so tests do not wait on the real ones.
    pub(super) const CHEAP: KdfParams = KdfParams {
        m_cost: 8,
        t_cost: 1,
        p_cost: 1,
    };
}

/// The salt and costs a passphrase key is derived with, as the header stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KdfSpec {
    salt: [u8; SALT_LEN],
    params: KdfParams,
}

impl KdfSpec {
    fn fresh(params: KdfParams) -> Result<KdfSpec, SecretError> {
        Ok(KdfSpec {
            salt: random()?,
            params,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.salt);
        for v in [self.params.m_cost, self.params.t_cost, self.params.p_cost] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    fn decode(b: &[u8; KDF_LEN]) -> KdfSpec {
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&b[..SALT_LEN]);
        KdfSpec {
            salt,
            params: KdfParams {
                m_cost: word(SALT_LEN),
                t_cost: word(SALT_LEN + 4),
                p_cost: word(SALT_LEN + 8),
            },
        }
    }
}

/// The key source byte in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Credential = 1,
    KeyFile = 2,
    Passphrase = 3,
    Generated = 4,
}

impl KeyKind {
    fn from_byte(b: u8) -> Option<KeyKind> {
        Some(match b {
            1 => KeyKind::Credential,
            2 => KeyKind::KeyFile,
            3 => KeyKind::Passphrase,
            4 => KeyKind::Generated,
            _ => return None,
        })
    }

    /// What a file written with this kind of key needs, for mismatch errors.
    fn needs(self) -> String {
        match self {
            KeyKind::Credential => {
                format!("the systemd credential {CREDENTIAL_NAME} (in $CREDENTIALS_DIRECTORY)")
            }
            KeyKind::KeyFile => "the key in a key_file".into(),
            KeyKind::Passphrase => format!("a passphrase from {ENV_PASSPHRASE}"),
            KeyKind::Generated => format!("a generated {GENERATED_KEY_NAME}"),
        }
    }
}

/// A parsed file: the header fields and where the ciphertext starts.
struct Sealed<'a> {
    kind: KeyKind,
    kdf: Option<KdfSpec>,
    nonce: &'a [u8],
    /// Everything before the ciphertext: the associated data.
    aad: &'a [u8],
    body: &'a [u8],
}

impl<'a> Sealed<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Sealed<'a>, String> {
        let n = bytes.len();
        let truncated =
            |need: usize| format!("it is truncated ({n} bytes; at least {need} expected)");
        if n == 0 {
            return Err("it is empty".into());
        }
        if n < MAGIC.len() {
            return Err(if MAGIC.starts_with(bytes) {
                truncated(MAGIC.len() + 2 + NONCE_LEN + TAG_LEN)
            } else {
                bad_magic()
            });
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad_magic());
        }
        let mut at = MAGIC.len();
        let Some(&version) = bytes.get(at) else {
            return Err(truncated(at + 2 + NONCE_LEN + TAG_LEN));
        };
        if version != VERSION {
            return Err(format!(
                "it is format version {version}, and this program reads version {VERSION}"
            ));
        }
        at += 1;
        let Some(&kind_byte) = bytes.get(at) else {
            return Err(truncated(at + 1 + NONCE_LEN + TAG_LEN));
        };
        let kind = KeyKind::from_byte(kind_byte)
            .ok_or_else(|| format!("its key source byte {kind_byte} is unknown"))?;
        at += 1;
        let kdf_len = if kind == KeyKind::Passphrase {
            KDF_LEN
        } else {
            0
        };
        let min = at + kdf_len + NONCE_LEN + TAG_LEN;
        if n < min {
            return Err(truncated(min));
        }
        let kdf = if kind == KeyKind::Passphrase {
            let raw: &[u8; KDF_LEN] = bytes[at..at + KDF_LEN].try_into().expect("length checked");
            let spec = KdfSpec::decode(raw);
            if !spec.params.acceptable() {
                return Err("its Argon2 parameters are out of range".into());
            }
            at += KDF_LEN;
            Some(spec)
        } else {
            None
        };
        let nonce = &bytes[at..at + NONCE_LEN];
        at += NONCE_LEN;
        Ok(Sealed {
            kind,
            kdf,
            nonce,
            aad: &bytes[..at],
            body: &bytes[at..],
        })
    }

    fn open(&self, key: &Key) -> Option<Zeroizing<Vec<u8>>> {
        let cipher = Aes256Gcm::new_from_slice(&key[..]).expect("the key is 32 bytes");
        let nonce = Nonce::<U12>::try_from(self.nonce).expect("the nonce is 12 bytes");
        let split = self.body.len() - TAG_LEN;
        let tag = self.body[split..].try_into().expect("the tag is 16 bytes");
        // The buffer is only ever plaintext after the tag has been checked.
        let mut buf = Zeroizing::new(self.body[..split].to_vec());
        cipher
            .decrypt_inout_detached(&nonce, self.aad, buf.as_mut_slice().into(), &tag)
            .ok()?;
        Some(buf)
    }
}

fn bad_magic() -> String {
    "it does not start with IMMTOK, so it is not an imm-daemon token file".into()
}

/// Encrypts `data` into a whole file's bytes under a fresh random nonce.
fn seal(
    kind: KeyKind,
    kdf: Option<&KdfSpec>,
    key: &Key,
    data: &[u8],
) -> Result<Vec<u8>, SecretError> {
    let nonce: Nonce<U12> = random_nonce()?;
    let cipher = Aes256Gcm::new_from_slice(&key[..]).expect("the key is 32 bytes");
    let mut out = Zeroizing::new(Vec::with_capacity(
        MAGIC.len() + 2 + KDF_LEN + NONCE_LEN + data.len() + TAG_LEN,
    ));
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    if let Some(spec) = kdf {
        spec.encode(&mut out);
    }
    out.extend_from_slice(&nonce);
    let aad_len = out.len();
    // The capacity covers the plaintext and tag, so the plaintext is never left behind in
    // a reallocated buffer; once encrypted in place the bytes are no longer secret.
    out.extend_from_slice(data);
    let (aad, body) = out.split_at_mut(aad_len);
    let tag = cipher
        .encrypt_inout_detached(&nonce, aad, body.into())
        .expect("a token cache is far below AES-GCM's 64 GiB limit");
    out.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *out))
}

/// Why a file could not be opened.
enum Unreadable {
    /// It is damaged or the key is wrong: move it aside.
    Corrupt(String),
    /// It needs a kind of key this process does not have: leave it alone.
    Mismatch {
        needed: String,
    },
    Fail(SecretError),
}

enum KeySource {
    Credential {
        path: PathBuf,
        key: Key,
    },
    KeyFile {
        path: PathBuf,
        key: Key,
        mode: Option<u32>,
    },
    Passphrase {
        passphrase: Zeroizing<Vec<u8>>,
        /// The salt and costs new writes use: the last file read, when strong enough.
        current: Mutex<Option<KdfSpec>>,
    },
    Generated {
        path: PathBuf,
        key: Mutex<Option<Key>>,
    },
}

impl KeySource {
    fn kind(&self) -> KeyKind {
        match self {
            KeySource::Credential { .. } => KeyKind::Credential,
            KeySource::KeyFile { .. } => KeyKind::KeyFile,
            KeySource::Passphrase { .. } => KeyKind::Passphrase,
            KeySource::Generated { .. } => KeyKind::Generated,
        }
    }
}

/// The encrypted file and the key it is opened with.
pub(super) struct FileStore {
    path: PathBuf,
    source: KeySource,
    kdf: KdfParams,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .field("key", &self.key_description())
            .finish()
    }
}

impl FileStore {
    /// Picks the key source (first found: systemd credential, `key_file`, passphrase,
    /// generated key file) and reads a key file now, so a bad one is reported at start.
    pub(super) fn open(
        path: PathBuf,
        key_file: Option<&Path>,
        key_dir: &Path,
        env: KeyEnv,
        kdf: KdfParams,
    ) -> Result<FileStore, SecretError> {
        let source = if let Some(key) = credential(env.credentials_directory.as_deref())? {
            key
        } else if let Some(p) = key_file {
            let key = match read_key_file(p) {
                Ok(k) => k,
                Err(KeyFileError::Missing(source)) | Err(KeyFileError::Io(source)) => {
                    return Err(SecretError::Read {
                        path: p.to_path_buf(),
                        source,
                    });
                }
                Err(KeyFileError::Bad(detail)) => {
                    return Err(SecretError::BadKey {
                        path: p.to_path_buf(),
                        detail,
                    });
                }
            };
            KeySource::KeyFile {
                path: p.to_path_buf(),
                key,
                mode: loose_mode(p),
            }
        } else if let Some(passphrase) = env.passphrase {
            KeySource::Passphrase {
                passphrase,
                current: Mutex::new(None),
            }
        } else {
            KeySource::Generated {
                path: key_dir.join(GENERATED_KEY_NAME),
                key: Mutex::new(None),
            }
        };
        Ok(FileStore { path, source, kdf })
    }

    /// Where the key comes from, for `status` (never the key).
    pub(super) fn key_description(&self) -> String {
        match &self.source {
            KeySource::Credential { path, .. } => {
                format!("the systemd credential {}", path.display())
            }
            KeySource::KeyFile { path, .. } => format!("key_file {}", path.display()),
            KeySource::Passphrase { .. } => {
                format!("the passphrase in {ENV_PASSPHRASE} (Argon2id)")
            }
            KeySource::Generated { path, .. } => {
                format!("the generated key file {}", path.display())
            }
        }
    }

    pub(super) fn warning(&self) -> Option<String> {
        match &self.source {
            KeySource::KeyFile {
                path,
                mode: Some(mode),
                ..
            } => Some(format!(
                "key_file {} can be read by other users (mode {mode:o}); make it 0600",
                path.display()
            )),
            KeySource::Generated { path, .. } => Some(format!(
                "the token key {} sits on the same disk as the tokens, so anyone who can read both can read the tokens; set key_file, {ENV_PASSPHRASE} or the systemd credential {CREDENTIAL_NAME} to keep the key elsewhere",
                path.display()
            )),
            _ => None,
        }
    }

    /// Reads and decrypts the file; `None` when there is none. An unreadable file is moved
    /// aside (named with `now`) and reported as [`SecretError::Corrupt`].
    pub(super) fn load(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, SecretError> {
        // Another process may replace the file between our read and our verdict; the
        // verdict is only acted on for the bytes that are still there.
        for _ in 0..3 {
            let Some(bytes) = self.read()? else {
                return Ok(None);
            };
            let detail = match self.unseal(&bytes) {
                Ok(plain) => return Ok(Some(plain)),
                Err(Unreadable::Fail(e)) => return Err(e),
                Err(Unreadable::Mismatch { needed }) => {
                    return Err(SecretError::KeyMismatch {
                        path: self.path.clone(),
                        needed,
                        have: self.key_description(),
                    });
                }
                Err(Unreadable::Corrupt(detail)) => detail,
            };
            match self.read()? {
                Some(again) if again == bytes => {}
                Some(_) => continue,
                None => return Ok(None),
            }
            return match self.move_aside(now) {
                Ok(moved_to) => {
                    tracing::error!(
                        file = %self.path.display(),
                        moved_to = %moved_to.display(),
                        problem = %detail,
                        "the token file cannot be read; moved it aside"
                    );
                    Err(SecretError::Corrupt {
                        path: self.path.clone(),
                        moved_to,
                        detail,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(SecretError::CorruptNotMoved {
                    path: self.path.clone(),
                    detail,
                    source,
                }),
            };
        }
        Err(SecretError::Read {
            path: self.path.clone(),
            source: io::Error::other("the file kept changing while it was read"),
        })
    }

    /// Encrypts `data` under a fresh nonce and replaces the file atomically.
    pub(super) fn save(&self, data: &[u8]) -> Result<(), SecretError> {
        // A file sealed with another kind of key belongs to another setup (the daemon's
        // systemd credential, seen from a shell): replacing it would destroy its tokens.
        if let Some(existing) = self.read()?
            && let Ok(sealed) = Sealed::parse(&existing)
            && sealed.kind != self.source.kind()
        {
            return Err(SecretError::KeyMismatch {
                path: self.path.clone(),
                needed: sealed.kind.needs(),
                have: self.key_description(),
            });
        }
        let bytes = match &self.source {
            KeySource::Credential { key, .. } => seal(KeyKind::Credential, None, key, data)?,
            KeySource::KeyFile { key, .. } => seal(KeyKind::KeyFile, None, key, data)?,
            KeySource::Generated { path, key } => {
                let key = generated_key(path, key, true)?.expect("created when missing");
                seal(KeyKind::Generated, None, &key, data)?
            }
            KeySource::Passphrase {
                passphrase,
                current,
            } => {
                let mut current = lock(current);
                let spec = match *current {
                    Some(spec) => spec,
                    None => KdfSpec::fresh(self.kdf)?,
                };
                let key = derive_cached(passphrase, &spec)?;
                *current = Some(spec);
                seal(KeyKind::Passphrase, Some(&spec), &key, data)?
            }
        };
        paths::write_atomic(&self.path, &bytes)?;
        Ok(())
    }

    fn read(&self) -> Result<Option<Vec<u8>>, SecretError> {
        match fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SecretError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn unseal(&self, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unreadable> {
        let sealed = Sealed::parse(bytes).map_err(Unreadable::Corrupt)?;
        let mismatch = || Unreadable::Mismatch {
            needed: sealed.kind.needs(),
        };
        let key = match (&self.source, sealed.kind) {
            (KeySource::Passphrase { passphrase, .. }, KeyKind::Passphrase) => {
                let spec = sealed.kdf.expect("parsed with the header");
                derive_cached(passphrase, &spec).map_err(Unreadable::Fail)?
            }
            (KeySource::Passphrase { .. }, _) | (_, KeyKind::Passphrase) => return Err(mismatch()),
            (KeySource::Credential { key, .. } | KeySource::KeyFile { key, .. }, _) => key.clone(),
            (KeySource::Generated { path, key }, kind) => {
                match generated_key(path, key, false).map_err(Unreadable::Fail)? {
                    Some(key) => key,
                    None if kind == KeyKind::Generated => {
                        return Err(Unreadable::Corrupt(format!(
                            "it was encrypted with the generated key file {}, which no longer exists",
                            path.display()
                        )));
                    }
                    None => return Err(mismatch()),
                }
            }
        };
        match sealed.open(&key) {
            Some(plain) => {
                if let (KeySource::Passphrase { current, .. }, Some(spec)) =
                    (&self.source, sealed.kdf)
                {
                    // Later writes reuse this salt (one derivation per process) unless the
                    // file was written with weaker costs than ours.
                    if spec.params.at_least(&self.kdf) {
                        *lock(current) = Some(spec);
                    }
                }
                Ok(plain)
            }
            // The same kind of key, but not the same key: the file is lost to us. A
            // different kind most likely belongs to another setup (the daemon's
            // credential, seen from a shell), which is left alone.
            None if sealed.kind == self.source.kind() => Err(Unreadable::Corrupt(format!(
                "it cannot be decrypted with {}: the key is wrong, or the file was altered",
                self.key_description()
            ))),
            None => Err(mismatch()),
        }
    }

    /// Renames the file to `<name>.unreadable-<UTC time>` beside it.
    fn move_aside(&self, now: DateTime<Utc>) -> io::Result<PathBuf> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokens".into());
        let stamp = now.format("%Y%m%dT%H%M%SZ");
        for i in 0..100 {
            let candidate = match i {
                0 => format!("{name}.unreadable-{stamp}"),
                _ => format!("{name}.unreadable-{stamp}-{i}"),
            };
            let to = self.path.with_file_name(candidate);
            if to.symlink_metadata().is_ok() {
                continue;
            }
            fs::rename(&self.path, &to)?;
            if let Some(dir) = to.parent()
                && let Ok(d) = fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            return Ok(to);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "too many unreadable copies with the same time",
        ))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn credential(dir: Option<&Path>) -> Result<Option<KeySource>, SecretError> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let path = dir.join(CREDENTIAL_NAME);
    match read_key_file(&path) {
        Ok(key) => Ok(Some(KeySource::Credential { path, key })),
        Err(KeyFileError::Missing(_)) => Ok(None),
        Err(KeyFileError::Io(source)) => Err(SecretError::Read { path, source }),
        Err(KeyFileError::Bad(detail)) => Err(SecretError::BadKey { path, detail }),
    }
}

/// The generated key: read from `path`, or with `create` made there (0600) when missing.
/// Two processes creating it at once agree on the first one written.
fn generated_key(
    path: &Path,
    slot: &Mutex<Option<Key>>,
    create: bool,
) -> Result<Option<Key>, SecretError> {
    let mut slot = lock(slot);
    if let Some(key) = &*slot {
        return Ok(Some(key.clone()));
    }
    let bad = |detail| SecretError::BadKey {
        path: path.to_path_buf(),
        detail,
    };
    let key = match read_key_file(path) {
        Ok(key) => key,
        Err(KeyFileError::Missing(_)) if !create => return Ok(None),
        Err(KeyFileError::Missing(_)) => {
            let key: Key = Zeroizing::new(random()?);
            let mut text = hex(&key);
            text.push('\n');
            match paths::prepare_atomic(path, text.as_bytes())?.commit_new() {
                Ok(()) => {
                    tracing::warn!(
                        key_file = %path.display(),
                        "generated a key for the token file; it sits on the same disk as the tokens"
                    );
                    key
                }
                Err(PathsError::Write { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    match read_key_file(path) {
                        Ok(key) => key,
                        Err(KeyFileError::Bad(detail)) => return Err(bad(detail)),
                        Err(KeyFileError::Missing(source) | KeyFileError::Io(source)) => {
                            return Err(SecretError::Read {
                                path: path.to_path_buf(),
                                source,
                            });
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(KeyFileError::Io(source)) => {
            return Err(SecretError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
        Err(KeyFileError::Bad(detail)) => return Err(bad(detail)),
    };
    *slot = Some(key.clone());
    Ok(Some(key))
}

enum KeyFileError {
    Missing(io::Error),
    Io(io::Error),
    Bad(String),
}

fn read_key_file(path: &Path) -> Result<Key, KeyFileError> {
    let mut f = fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => KeyFileError::Missing(e),
        _ => KeyFileError::Io(e),
    })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > 4096 {
        return Err(KeyFileError::Bad(format!(
            "it holds {len} bytes; {KEY_FORMS}"
        )));
    }
    // Sized up front so the key is never left behind in a grown and freed buffer.
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    f.read_to_end(&mut bytes).map_err(KeyFileError::Io)?;
    parse_key(&bytes).map_err(KeyFileError::Bad)
}

const KEY_FORMS: &str =
    "expected exactly 32 raw bytes, 64 hex characters or the base64 of 32 bytes";

/// A key file's contents: 32 raw bytes, 64 hex characters or base64 of 32 bytes; text
/// forms may end with a newline.
fn parse_key(bytes: &[u8]) -> Result<Key, String> {
    let mut key: Key = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() == KEY_LEN {
        key.copy_from_slice(bytes);
        return Ok(key);
    }
    let text = bytes.trim_ascii();
    if text.len() == 2 * KEY_LEN && hex::decode_to_slice(text, &mut key[..]).is_ok() {
        return Ok(key);
    }
    let mut buf = Zeroizing::new([0u8; 48]);
    match base64::engine::general_purpose::STANDARD.decode_slice(text, &mut buf[..]) {
        Ok(KEY_LEN) => {
            key.copy_from_slice(&buf[..KEY_LEN]);
            Ok(key)
        }
        _ => Err(format!("it holds {} bytes; {KEY_FORMS}", bytes.len())),
    }
}

/// Lower-case hex of a secret, in memory that is wiped when dropped.
fn hex(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    let mut digits = Zeroizing::new([0u8; 2 * KEY_LEN]);
    hex::encode_to_slice(bytes, &mut digits[..]).expect("twice the length");
    let mut s = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
    s.push_str(std::str::from_utf8(&digits[..]).expect("hex digits are ASCII"));
    s
}

/// The permission bits of a key file others can read, if any.
fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn random<const N: usize>() -> Result<[u8; N], SecretError> {
    <[u8; N]>::try_generate().map_err(|e| SecretError::Random {
        detail: e.to_string(),
    })
}

fn random_nonce() -> Result<Nonce<U12>, SecretError> {
    Nonce::<U12>::try_generate().map_err(|e| SecretError::Random {
        detail: e.to_string(),
    })
}

/// Passphrase keys already derived in this process, by passphrase, salt and costs.
struct Derived {
    passphrase: Zeroizing<Vec<u8>>,
    spec: KdfSpec,
    key: Key,
}

static DERIVED: Mutex<Vec<Derived>> = Mutex::new(Vec::new());
const DERIVED_KEPT: usize = 4;

/// The Argon2id key for `passphrase` and `spec`, derived once per process. Slow: call it
/// off the async runtime.
fn derive_cached(passphrase: &[u8], spec: &KdfSpec) -> Result<Key, SecretError> {
    if let Some(key) = cached(passphrase, spec) {
        return Ok(key);
    }
    let params = argon2::Params::new(
        spec.params.m_cost,
        spec.params.t_cost,
        spec.params.p_cost,
        Some(KEY_LEN),
    )
    .map_err(|e| SecretError::Kdf {
        detail: e.to_string(),
    })?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key: Key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase, &spec.salt, &mut key[..])
        .map_err(|e| SecretError::Kdf {
            detail: e.to_string(),
        })?;
    let mut cache = lock(&DERIVED);
    if cache.len() >= DERIVED_KEPT {
        cache.remove(0);
    }
    cache.push(Derived {
        passphrase: Zeroizing::new(passphrase.to_vec()),
        spec: *spec,
        key: key.clone(),
    });
    Ok(key)
}

fn cached(passphrase: &[u8], spec: &KdfSpec) -> Option<Key> {
    lock(&DERIVED)
        .iter()
        .find(|d| d.spec == *spec && d.passphrase.as_slice() == passphrase)
        .map(|d| d.key.clone())
}

#[cfg(test)]
mod tests;
