//! The OS keychain through the `keyring` crate: every call on its own detached thread,
//! abandoned after the timeout (why: the parent module's documentation).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, Zeroizing};

use super::{BackendInfo, BackendKind, SecretError, SecretsOptions};

#[cfg(target_os = "macos")]
const STORE_NAME: &str = "the macOS login keychain";
#[cfg(not(target_os = "macos"))]
const STORE_NAME: &str = "the Secret Service";

/// The keychain item of one [`SecretsOptions`].
pub(super) struct Keychain {
    service: String,
    entry: String,
    timeout: Duration,
}

/// Why a keychain call did not give an answer.
#[derive(Debug)]
pub(super) enum KeychainError {
    TimedOut(Duration),
    /// An earlier call was abandoned and has not returned.
    Busy,
    /// No keychain to talk to (no session bus, no Secret Service, a platform failure).
    Unreachable(String),
    /// The keychain is there but refused (locked, prompt dismissed).
    Refused(String),
    Other(String),
}

impl KeychainError {
    /// The error for `token_store = "keychain"` when the keychain cannot be used.
    pub(super) fn into_error(self) -> SecretError {
        match self {
            KeychainError::TimedOut(timeout) => SecretError::KeychainTimeout { timeout },
            KeychainError::Busy => SecretError::KeychainBusy,
            other => SecretError::KeychainUnavailable {
                detail: other.detail(),
            },
        }
    }

    fn into_call_error(self, action: &'static str, entry: &str) -> SecretError {
        match self {
            KeychainError::TimedOut(timeout) => SecretError::KeychainTimeout { timeout },
            KeychainError::Busy => SecretError::KeychainBusy,
            other => SecretError::Keychain {
                action,
                entry: entry.to_string(),
                detail: other.detail(),
            },
        }
    }

    fn detail(&self) -> String {
        match self {
            KeychainError::TimedOut(t) => {
                format!(
                    "it did not answer within {}",
                    humantime::format_duration(*t)
                )
            }
            KeychainError::Busy => "an earlier call is still waiting for an answer".into(),
            KeychainError::Unreachable(d) if cfg!(target_os = "macos") => d.clone(),
            KeychainError::Unreachable(d) => format!("no Secret Service on the session bus: {d}"),
            KeychainError::Refused(d) => format!("access refused (is it locked?): {d}"),
            KeychainError::Other(d) => d.clone(),
        }
    }

    /// Why `auto` fell back to the file, for [`BackendInfo::why`].
    pub(super) fn fallback_reason(&self) -> String {
        match self {
            KeychainError::TimedOut(t) => format!(
                "keychain did not answer within {}",
                humantime::format_duration(*t)
            ),
            KeychainError::Busy => {
                "keychain did not answer an earlier call, which is still waiting".into()
            }
            KeychainError::Unreachable(d) if cfg!(target_os = "macos") => {
                format!("the keychain cannot be used: {d}")
            }
            KeychainError::Unreachable(d) => format!("no Secret Service on the session bus: {d}"),
            KeychainError::Refused(d) => {
                format!("the keychain refused access (is it locked?): {d}")
            }
            KeychainError::Other(d) => format!("the keychain failed: {d}"),
        }
    }
}

impl Keychain {
    pub(super) fn new(opts: &SecretsOptions) -> Keychain {
        Keychain {
            service: opts.service.clone(),
            entry: opts.entry.clone(),
            timeout: opts.keychain_timeout,
        }
    }

    pub(super) fn info(&self, why: String) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Keychain,
            why,
            warning: None,
            location: format!(
                "{STORE_NAME}, service {}, account {}",
                self.service, self.entry
            ),
        }
    }

    /// Asks the keychain about our item without reading its secret; "no such item" is an
    /// answer too.
    pub(super) async fn probe(&self) -> Result<(), KeychainError> {
        let (service, entry) = (self.service.clone(), self.entry.clone());
        let answer = call(&GATE, self.timeout, move || {
            keyring::Entry::new(&service, &entry)?.get_attributes()
        })
        .await?;
        match answer {
            Ok(_) | Err(keyring::Error::NoEntry) | Err(keyring::Error::Ambiguous(_)) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    pub(super) async fn load(&self) -> Result<Option<Zeroizing<Vec<u8>>>, SecretError> {
        let (service, entry) = (self.service.clone(), self.entry.clone());
        let answer = call(&GATE, self.timeout, move || {
            keyring::Entry::new(&service, &entry)?
                .get_password()
                .map(Zeroizing::new)
        })
        .await
        .map_err(|e| e.into_call_error("read", &self.entry))?;
        let text = match answer {
            Ok(text) => text,
            Err(keyring::Error::NoEntry) => return Ok(None),
            Err(e) => return Err(classify(e).into_call_error("read", &self.entry)),
        };
        decode(&text)
            .map(Some)
            .map_err(|detail| SecretError::KeychainCorrupt {
                entry: self.entry.clone(),
                detail,
            })
    }

    pub(super) async fn save(&self, data: &[u8]) -> Result<(), SecretError> {
        let (service, entry) = (self.service.clone(), self.entry.clone());
        let encoded = encode(data);
        call(&GATE, self.timeout, move || {
            keyring::Entry::new(&service, &entry)?.set_password(&encoded)
        })
        .await
        .map_err(|e| e.into_call_error("write", &self.entry))?
        .map_err(|e| classify(e).into_call_error("write", &self.entry))
    }

    /// Deletes the item; `false` when there was none or no keychain to ask.
    pub(super) async fn remove(&self) -> Result<bool, SecretError> {
        let (service, entry) = (self.service.clone(), self.entry.clone());
        let answer = call(&GATE, self.timeout, move || {
            match keyring::Entry::new(&service, &entry)?.delete_credential() {
                // Delete every copy rather than leave one behind.
                Err(keyring::Error::Ambiguous(copies)) => {
                    copies.iter().try_for_each(|c| c.delete_credential())
                }
                other => other,
            }
        })
        .await
        .map_err(|e| e.into_call_error("remove", &self.entry))?;
        match answer {
            Ok(()) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(e) => match classify(e) {
                KeychainError::Unreachable(detail) => {
                    tracing::debug!(%detail, "no keychain to remove the tokens from");
                    Ok(false)
                }
                other => Err(other.into_call_error("remove", &self.entry)),
            },
        }
    }
}

/// Turns a keyring error into text, dropping any secret bytes it carries.
fn classify(e: keyring::Error) -> KeychainError {
    match e {
        keyring::Error::PlatformFailure(inner) => KeychainError::Unreachable(inner.to_string()),
        keyring::Error::NoStorageAccess(inner) => KeychainError::Refused(inner.to_string()),
        keyring::Error::BadEncoding(mut bytes) => {
            bytes.zeroize();
            KeychainError::Other("the item's value is not text".into())
        }
        keyring::Error::Ambiguous(copies) => {
            KeychainError::Other(format!("{} items match it", copies.len()))
        }
        other => KeychainError::Other(other.to_string()),
    }
}

fn encode(data: &[u8]) -> Zeroizing<String> {
    let len = base64::encoded_len(data.len(), true).expect("a token cache fits in memory");
    let mut buf = Zeroizing::new(vec![0u8; len]);
    let n = STANDARD
        .encode_slice(data, &mut buf[..])
        .expect("the buffer is sized for the encoding");
    buf.truncate(n);
    Zeroizing::new(String::from_utf8(std::mem::take(&mut *buf)).expect("base64 is ASCII"))
}

fn decode(text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut buf = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(text.len())]);
    let n = STANDARD
        .decode_slice(text.trim().as_bytes(), &mut buf[..])
        .map_err(|_| "its value is not base64".to_string())?;
    buf.truncate(n);
    Ok(buf)
}

/// Counts abandoned keychain calls that have not returned yet.
pub(super) struct Gate {
    abandoned: AtomicUsize,
}

impl Gate {
    pub(super) const fn new() -> Gate {
        Gate {
            abandoned: AtomicUsize::new(0),
        }
    }

    #[cfg(test)]
    pub(super) fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::Acquire)
    }
}

/// The process's one gate: every keychain item lives in the same keychain, so a hung
/// keychain is hung for all of them.
static GATE: Gate = Gate::new();

/// How many abandoned calls may be waiting before new calls are refused outright.
const MAX_ABANDONED: usize = 1;

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// Clears the thread's entry in the gate when `f` has returned or panicked.
struct Finish {
    state: Arc<AtomicU8>,
    gate: &'static Gate,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let finished =
            self.state
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire);
        if finished.is_err() {
            self.gate.abandoned.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Runs `f` on a new detached thread and waits up to `timeout` for it. On time-out the
/// thread is left to finish (or hang) on its own, and what it returns is dropped.
pub(super) async fn call<T: Send + 'static>(
    gate: &'static Gate,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, KeychainError> {
    if gate.abandoned.load(Ordering::Acquire) >= MAX_ABANDONED {
        return Err(KeychainError::Busy);
    }
    let state = Arc::new(AtomicU8::new(RUNNING));
    let finish = Finish {
        state: Arc::clone(&state),
        gate,
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("imm-keychain".into())
        .spawn(move || {
            let out = f();
            drop(finish);
            let _ = tx.send(out);
        })
        .map_err(|e| KeychainError::Other(format!("cannot start a thread: {e}")))?;
    match tokio::time::timeout(timeout, &mut rx).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(_)) => Err(KeychainError::Other("the keychain call panicked".into())),
        Err(_) => {
            // Counted before the state flips, so the thread's decrement never comes first.
            gate.abandoned.fetch_add(1, Ordering::AcqRel);
            let abandoned =
                state.compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
            if abandoned.is_ok() {
                tracing::warn!(
                    timeout = %humantime::format_duration(timeout),
                    "a keychain call did not answer in time; it is abandoned"
                );
                return Err(KeychainError::TimedOut(timeout));
            }
            // It finished just now: its answer is on the way.
            gate.abandoned.fetch_sub(1, Ordering::AcqRel);
            rx.await
                .map_err(|_| KeychainError::Other("the keychain call panicked".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn leaked_gate() -> &'static Gate {
        Box::leak(Box::new(Gate::new()))
    }

    #[tokio::test]
    async fn a_call_that_answers_in_time_returns_its_answer() {
        let gate = leaked_gate();
        let out = call(gate, Duration::from_secs(5), || 42).await.unwrap();
        assert_eq!(out, 42);
        assert_eq!(gate.abandoned(), 0);
    }

    #[tokio::test]
    async fn a_hung_call_is_abandoned_and_later_calls_fail_fast_until_it_returns() {
        let gate = leaked_gate();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let started = Instant::now();
        let e = call(gate, Duration::from_millis(200), move || {
            let _ = wait.recv();
        })
        .await
        .unwrap_err();
        assert!(matches!(e, KeychainError::TimedOut(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(gate.abandoned(), 1);
        assert_eq!(e.fallback_reason(), "keychain did not answer within 200ms");

        let started = Instant::now();
        let e = call(gate, Duration::from_secs(5), || ()).await.unwrap_err();
        assert!(matches!(e, KeychainError::Busy), "{e:?}");
        assert!(started.elapsed() < Duration::from_millis(100));

        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while gate.abandoned() != 0 {
            assert!(
                Instant::now() < deadline,
                "the abandoned call never cleared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(call(gate, Duration::from_secs(5), || 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_error_and_leaves_the_gate_open() {
        let gate = leaked_gate();
        let e = call(gate, Duration::from_secs(5), || -> u8 { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(e, KeychainError::Other(_)), "{e:?}");
        assert_eq!(gate.abandoned(), 0);
    }

    #[test]
    fn the_blob_is_stored_as_base64() {
        let data = b"{\"RefreshToken\":{}}\x00\xff";
        let text = encode(data);
        assert_eq!(text.as_str(), STANDARD.encode(data));
        assert_eq!(decode(&text).unwrap().as_slice(), data);
        assert_eq!(decode("").unwrap().as_slice(), b"");
        assert_eq!(
            decode("not base64!").unwrap_err(),
            "its value is not base64"
        );
    }

    #[test]
    fn keyring_errors_become_text_without_the_secret() {
        let e = classify(keyring::Error::BadEncoding(b"secret-bytes".to_vec()));
        assert!(!format!("{e:?}").contains("secret"), "{e:?}");
        let e = classify(keyring::Error::NoStorageAccess("locked".into()));
        assert!(matches!(e, KeychainError::Refused(_)));
        assert!(e.fallback_reason().contains("locked"));
    }
}
