//! Where the sign-in's one secret lives: an opaque blob (the serialized token cache) kept
//! in the OS keychain or in an AES-256-GCM encrypted file, chosen once per [`SecretStore`].
//!
//! # Choosing the store
//!
//! `token_store = "auto"` asks the keychain once, in [`SecretStore::open`], bounded by
//! `keychain_timeout`; when it does not answer in time or is not there, the file is used
//! and [`BackendInfo::why`] says why. The choice holds for the store's life: a keychain that
//! stops answering later makes `load` and `save` fail with [`SecretError::KeychainTimeout`]
//! (callers retry on their next cycle) instead of silently switching to the file, which
//! would leave two diverging copies of a rotating refresh token. For the same reason two
//! processes whose `auto` probes disagree (a daemon with a session bus, a CLI over ssh
//! without one) see different stores; `status` shows each one's choice.
//!
//! # The keychain
//!
//! The `keyring` crate (3.6): the macOS login keychain, or the Secret Service over
//! pure-Rust D-Bus (zbus) on Linux. The blob is stored base64-encoded as the item's
//! password rather than as raw bytes through `set_secret`: the Secret Service item is
//! labelled `text/plain` and keychain tools show the value as text, so text survives every
//! tool and a value that is not ours is recognised.
//!
//! Every keychain call runs on its own detached thread and is abandoned after
//! `keychain_timeout`: a locked gnome-keyring waits for a prompt nobody can answer, and the
//! calls block. A detached thread, unlike one from tokio's blocking pool, never delays
//! dropping a runtime or leaving the process. While an abandoned call is still stuck,
//! further keychain calls fail at once, so a hung keyring costs one thread, not one per
//! retry. The calling thread needs no tokio runtime: zbus's blocking API runs each call on
//! its own private current-thread runtime, which is also why the calls must not be made
//! on a thread already inside a runtime (it panics or deadlocks).
//!
//! Caveats: on macOS, keyring 3.6 writes through the legacy file-based keychain API
//! (`SecKeychainAddGenericPassword`), which has no `kSecAttrAccessible` attribute, so
//! `kSecAttrAccessibleWhenUnlocked` cannot be requested; items are protected by the login
//! keychain's own lock instead (the data-protection keychain that honours the attribute
//! needs a signed binary with a keychain-access-group entitlement). An unsigned or rebuilt
//! binary may be asked for access again, which under launchd means a timeout. The keyring
//! stack copies the secret on its way (D-Bus messages, the crate's own `String`s); only
//! the copies made here are zeroed.
//!
//! # The encrypted file
//!
//! ```text
//! offset  size  field
//! 0       6     magic "IMMTOK"
//! 6       1     format version, 1
//! 7       1     key source: 1 systemd credential, 2 key_file, 3 passphrase, 4 generated
//! 8       28    passphrase only: Argon2id salt (16), m_cost KiB, t_cost, p_cost (u32 BE)
//! ..      12    nonce, random for every write
//! ..      n+16  AES-256-GCM ciphertext and tag
//! ```
//!
//! Everything before the ciphertext is the associated data, so a changed header fails
//! decryption like a changed ciphertext. Writes replace the file atomically (0600, in a
//! 0700 folder). A file that cannot be read (bad magic, unknown version, truncated,
//! altered, wrong key) is renamed to `<name>.unreadable-<UTC time>`, never deleted, and
//! reported as [`SecretError::Corrupt`]; the caller then asks for a new sign-in. A file
//! that our key cannot open and whose header names a different kind of key (the daemon's
//! systemd credential, seen by a shell without it) is left alone and reported as
//! [`SecretError::KeyMismatch`].
//!
//! The key, first found:
//! 1. the systemd credential `$CREDENTIALS_DIRECTORY/imm-token-key`
//!    (`LoadCredentialEncrypted=`);
//! 2. `[auth] key_file`;
//! 3. a passphrase in `IMM_TOKEN_PASSPHRASE`, stretched with Argon2id (derived once per
//!    process for a given salt, off the async runtime);
//! 4. a random key generated into `token.key` in the configuration folder, with a warning:
//!    it sits on the same disk as the tokens.
//!
//! Key files hold exactly 32 raw bytes, 64 hex characters or the base64 of 32 bytes.

mod file;
mod keychain;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::config::{AuthConfig, TokenStore};
use crate::paths::{Paths, PathsError};

use file::{FileStore, KdfParams};
use keychain::{Keychain, KeychainError};

pub use file::KeyEnv;

/// The keychain service name items are stored under.
pub const SERVICE: &str = "imm-daemon";
/// The encrypted file's name in the data folder.
pub const TOKEN_FILE_NAME: &str = "tokens.enc";
/// The generated key's file name in the configuration folder.
pub const GENERATED_KEY_NAME: &str = "token.key";
/// The systemd credential holding the file's key.
pub const CREDENTIAL_NAME: &str = "imm-token-key";
/// The environment variable holding a passphrase for the file's key.
pub const ENV_PASSPHRASE: &str = "IMM_TOKEN_PASSPHRASE";

/// What [`SecretStore::open`] needs to know.
#[derive(Debug, Clone)]
pub struct SecretsOptions {
    /// `auto`, `keychain` or `file`.
    pub choice: TokenStore,
    /// Keychain service name, normally [`SERVICE`].
    pub service: String,
    /// Keychain account (user) name, e.g. `tokens/<tenant>/<client_id>`.
    pub entry: String,
    /// The encrypted file, e.g. `<data_dir>/tokens.enc`.
    pub file: PathBuf,
    /// Where a generated key file goes: the configuration folder, not the data folder.
    pub key_dir: PathBuf,
    /// `[auth] key_file`.
    pub key_file: Option<PathBuf>,
    /// How long one keychain call may take.
    pub keychain_timeout: Duration,
}

impl SecretsOptions {
    /// The options the configuration implies: [`SERVICE`], [`TOKEN_FILE_NAME`] in the data
    /// folder, the generated key in the configuration folder.
    pub fn from_config(auth: &AuthConfig, paths: &Paths, entry: String) -> SecretsOptions {
        SecretsOptions {
            choice: auth.token_store,
            service: SERVICE.to_string(),
            entry,
            file: paths.data_dir.join(TOKEN_FILE_NAME),
            key_dir: paths.config_dir.clone(),
            key_file: auth.key_file.as_ref().map(|k| k.as_path().to_path_buf()),
            keychain_timeout: auth.keychain_timeout.get(),
        }
    }
}

/// The files that hold the sign-in's secret or a key to it, each with what it is: the
/// token file and the copies of it set aside as unreadable, the generated key,
/// `[auth] key_file` and the systemd credential (under `credentials_directory`). Whether
/// they exist or not; none of them may leave the machine (`send` refuses to attach them).
pub fn owned_files(
    opts: &SecretsOptions,
    credentials_directory: Option<&Path>,
) -> Vec<(PathBuf, &'static str)> {
    let mut files = vec![
        (opts.file.clone(), "the token file"),
        (
            opts.key_dir.join(GENERATED_KEY_NAME),
            "the token file's generated key",
        ),
    ];
    if let Some(k) = &opts.key_file {
        files.push((k.clone(), "the token file's key ([auth] key_file)"));
    }
    if let Some(dir) = credentials_directory {
        files.push((
            dir.join(CREDENTIAL_NAME),
            "the token file's key (the systemd credential)",
        ));
    }
    if let (Some(dir), Some(name)) = (opts.file.parent(), opts.file.file_name()) {
        let prefix = format!("{}.unreadable-", name.to_string_lossy());
        let set_aside = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        for e in set_aside {
            files.push((e.path(), "a token file set aside as unreadable"));
        }
    }
    files
}

/// Which store holds the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Keychain,
    File,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Keychain => "keychain",
            BackendKind::File => "file",
        })
    }
}

/// The store chosen and why, for `status`. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendInfo {
    pub kind: BackendKind,
    /// Why this store (and for the file, where its key comes from).
    pub why: String,
    /// Something the administrator should fix, such as a key beside the tokens.
    pub warning: Option<String>,
    /// The keychain item or the file's path.
    pub location: String,
}

/// Errors keeping the secret. Messages never contain the secret or a key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the keychain did not answer within {}", humantime::format_duration(*timeout))]
    KeychainTimeout { timeout: Duration },
    #[error(
        "the keychain did not answer an earlier call, which is still waiting; it is not asked again until that call returns"
    )]
    KeychainBusy,
    #[error("the keychain cannot be used: {detail}")]
    KeychainUnavailable { detail: String },
    #[error("cannot {action} the keychain item {entry}: {detail}")]
    Keychain {
        action: &'static str,
        entry: String,
        detail: String,
    },
    #[error("the keychain item {entry} does not hold a token cache: {detail}")]
    KeychainCorrupt { entry: String, detail: String },
    #[error("token file {path} cannot be read: {detail}; moved it to {moved_to}")]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        detail: String,
    },
    #[error("token file {path} cannot be read ({detail}), and it could not be moved aside")]
    CorruptNotMoved {
        path: PathBuf,
        detail: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} was encrypted with {needed}, but this process has {have}")]
    KeyMismatch {
        path: PathBuf,
        needed: String,
        have: String,
    },
    #[error("key file {path} is not a key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] PathsError),
    #[error("cannot derive the token file key from {ENV_PASSPHRASE}: {detail}")]
    Kdf { detail: String },
    #[error("the system's random number generator failed: {detail}")]
    Random { detail: String },
    #[error("removed {}, but {source}", removed.join(" and "))]
    PartlyRemoved {
        removed: Vec<String>,
        #[source]
        source: Box<SecretError>,
    },
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

impl crate::error::Classify for SecretError {
    /// A stored secret gone for good (moved aside or unusable) needs a person to sign in
    /// again; a keychain that did not answer or a file system hiccup may clear by itself;
    /// the rest (a key that does not fit, a broken random source) is our side's.
    fn kind(&self) -> crate::error::Kind {
        use crate::error::Kind;
        match self {
            SecretError::Corrupt { .. } | SecretError::KeychainCorrupt { .. } => Kind::SignIn,
            SecretError::KeychainTimeout { .. }
            | SecretError::KeychainBusy
            | SecretError::Keychain { .. }
            | SecretError::Read { .. }
            | SecretError::Remove { .. }
            | SecretError::Write(_)
            | SecretError::ShuttingDown => Kind::Transient,
            SecretError::PartlyRemoved { source, .. } => match source.kind() {
                Kind::SignIn => Kind::Fatal,
                k => k,
            },
            _ => Kind::Fatal,
        }
    }
}

/// The opened store: cheap to clone, every clone uses the same backend.
#[derive(Clone)]
pub struct SecretStore {
    inner: Arc<Inner>,
}

struct Inner {
    info: BackendInfo,
    backend: Backend,
}

enum Backend {
    Keychain(Keychain),
    File(Arc<FileStore>),
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("backend", &self.inner.info)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Opens the store `opts.choice` asks for, reading the key sources from the process
    /// environment (`CREDENTIALS_DIRECTORY`, [`ENV_PASSPHRASE`]).
    ///
    /// Needs a tokio runtime with the time driver. Under paused test time a keychain call
    /// times out at once (the clock jumps while the runtime waits on the keychain's
    /// thread), so such tests should use `token_store = "file"`.
    pub async fn open(opts: SecretsOptions) -> Result<SecretStore, SecretError> {
        Self::open_with(opts, KeyEnv::from_process()).await
    }

    /// [`SecretStore::open`] with the environment's key sources given explicitly.
    pub async fn open_with(opts: SecretsOptions, env: KeyEnv) -> Result<SecretStore, SecretError> {
        Self::open_inner(opts, env, KdfParams::DEFAULT).await
    }

    async fn open_inner(
        opts: SecretsOptions,
        env: KeyEnv,
        kdf: KdfParams,
    ) -> Result<SecretStore, SecretError> {
        let keychain = Keychain::new(&opts);
        let (info, backend) = match opts.choice {
            TokenStore::Keychain => {
                keychain.probe().await.map_err(KeychainError::into_error)?;
                let info = keychain.info("token_store = \"keychain\"".to_string());
                (info, Backend::Keychain(keychain))
            }
            TokenStore::File => open_file(&opts, env, kdf, "token_store = \"file\"").await?,
            TokenStore::Auto => match keychain.probe().await {
                Ok(()) => {
                    let info =
                        keychain.info("token_store = \"auto\" and the keychain answered".into());
                    (info, Backend::Keychain(keychain))
                }
                Err(e) => {
                    let reason = e.fallback_reason();
                    let file = opts.file.display();
                    // No keychain at all is the normal case on a server; one that is there
                    // but does not answer deserves attention.
                    if matches!(e, KeychainError::Unreachable(_)) {
                        tracing::info!(%reason, %file, "tokens are kept in the encrypted file");
                    } else {
                        tracing::warn!(%reason, %file, "tokens are kept in the encrypted file");
                    }
                    open_file(&opts, env, kdf, &reason).await?
                }
            },
        };
        tracing::debug!(kind = %info.kind, why = %info.why, "secret store opened");
        Ok(SecretStore {
            inner: Arc::new(Inner { info, backend }),
        })
    }

    /// The store in use and why.
    pub fn backend(&self) -> &BackendInfo {
        &self.inner.info
    }

    /// The stored secret, or `None` when nothing is stored.
    pub async fn load(&self) -> Result<Option<Zeroizing<Vec<u8>>>, SecretError> {
        match &self.inner.backend {
            Backend::Keychain(k) => k.load().await,
            Backend::File(f) => {
                let f = Arc::clone(f);
                blocking(move || f.load(chrono::Utc::now())).await
            }
        }
    }

    /// Replaces the stored secret.
    pub async fn save(&self, data: &[u8]) -> Result<(), SecretError> {
        match &self.inner.backend {
            Backend::Keychain(k) => k.save(data).await,
            Backend::File(f) => {
                let f = Arc::clone(f);
                let data = Zeroizing::new(data.to_vec());
                blocking(move || f.save(&data)).await
            }
        }
    }

    /// Sign-out: deletes the keychain item and the encrypted file, whichever exist, and
    /// says what was removed (`"keychain"`, `"file <path>"`). A keychain that is not there
    /// counts as nothing to remove; one that does not answer is an error, reported after
    /// the file is gone. Key files are kept.
    pub async fn remove_everywhere(opts: &SecretsOptions) -> Result<Vec<String>, SecretError> {
        let path = opts.file.clone();
        let file_removed = blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SecretError::Remove { path, source }),
        })
        .await;
        let keychain_removed = Keychain::new(opts).remove().await;

        let mut removed = Vec::new();
        let mut failure = None;
        match keychain_removed {
            Ok(true) => removed.push("keychain".to_string()),
            Ok(false) => {}
            Err(e) => failure = Some(e),
        }
        match file_removed {
            Ok(Some(path)) => removed.push(format!("file {}", path.display())),
            Ok(None) => {}
            Err(e) => failure = failure.or(Some(e)),
        }
        match failure {
            None => Ok(removed),
            Some(e) if removed.is_empty() => Err(e),
            Some(e) => Err(SecretError::PartlyRemoved {
                removed,
                source: Box::new(e),
            }),
        }
    }
}

async fn open_file(
    opts: &SecretsOptions,
    env: KeyEnv,
    kdf: KdfParams,
    reason: &str,
) -> Result<(BackendInfo, Backend), SecretError> {
    let (path, key_file, key_dir) = (
        opts.file.clone(),
        opts.key_file.clone(),
        opts.key_dir.clone(),
    );
    let store =
        blocking(move || FileStore::open(path, key_file.as_deref(), &key_dir, env, kdf)).await?;
    let info = BackendInfo {
        kind: BackendKind::File,
        why: format!("{reason}; the key comes from {}", store.key_description()),
        warning: store.warning(),
        location: opts.file.display().to_string(),
    };
    Ok((info, Backend::File(Arc::new(store))))
}

/// Runs short file work (reads, writes, Argon2) on tokio's blocking pool; it always
/// finishes, unlike a keychain call.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SecretError> + Send + 'static,
) -> Result<T, SecretError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(SecretError::ShuttingDown),
    }
}

#[cfg(test)]
mod tests;
