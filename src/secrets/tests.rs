use std::path::Path;

use super::*;
use crate::error::Classify as _;

const SECRET: &[u8] = b"{\"AccessToken\":{\"k\":{\"secret\":\"eyJ0eXAi-top-secret\"}}}";

fn options(dir: &Path, choice: TokenStore) -> SecretsOptions {
    SecretsOptions {
        choice,
        service: SERVICE.into(),
        entry: "tokens/contoso.com/test".into(),
        file: dir.join("data").join(TOKEN_FILE_NAME),
        key_dir: dir.join("config"),
        key_file: None,
        keychain_timeout: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn the_file_store_round_trips_and_explains_itself() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), TokenStore::File);
    let store = SecretStore::open_inner(opts.clone(), KeyEnv::default(), KdfParams::CHEAP)
        .await
        .unwrap();
    let info = store.backend().clone();
    assert_eq!(info.kind, BackendKind::File);
    let key = dir.path().join("config/token.key");
    assert_eq!(
        info.why,
        format!(
            "token_store = \"file\"; the key comes from the generated key file {}",
            key.display()
        )
    );
    assert!(info.warning.as_deref().unwrap().contains("same disk"));
    assert_eq!(info.location, opts.file.display().to_string());
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["kind"], "file");
    assert_eq!(BackendKind::Keychain.to_string(), "keychain");

    assert_eq!(store.load().await.unwrap(), None);
    store.save(SECRET).await.unwrap();
    let shared = store.clone();
    assert_eq!(shared.load().await.unwrap().unwrap().as_slice(), SECRET);

    let shown = format!("{store:?}");
    assert!(
        shown.contains("File") && !shown.contains("top-secret"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_passphrase_from_the_environment_is_used_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let env = || KeyEnv {
        credentials_directory: None,
        passphrase: Some(Zeroizing::new(b"hunter2-passphrase".to_vec())),
    };
    let opts = options(dir.path(), TokenStore::File);
    let store = SecretStore::open_inner(opts.clone(), env(), KdfParams::CHEAP)
        .await
        .unwrap();
    store.save(SECRET).await.unwrap();
    let info = store.backend();
    assert!(info.why.contains("IMM_TOKEN_PASSPHRASE"), "{}", info.why);
    assert_eq!(info.warning, None);
    let shown = format!("{store:?} {info:?} {:?}", env());
    assert!(!shown.contains("hunter2"), "{shown}");

    let reopened = SecretStore::open_inner(opts, env(), KdfParams::CHEAP)
        .await
        .unwrap();
    assert_eq!(reopened.load().await.unwrap().unwrap().as_slice(), SECRET);
}

/// What the program itself opens (not the tests' cheap costs) writes a passphrase file
/// whose header asks for the production Argon2id costs: 64 MiB, 3 passes, 1 lane. The
/// header is read as the format table above documents it.
#[tokio::test]
async fn the_program_writes_passphrase_files_with_the_production_argon2_costs() {
    let dir = tempfile::tempdir().unwrap();
    let env = KeyEnv {
        credentials_directory: None,
        passphrase: Some(Zeroizing::new(b"production-costs".to_vec())),
    };
    let opts = options(dir.path(), TokenStore::File);
    let store = SecretStore::open_with(opts.clone(), env).await.unwrap();
    store.save(SECRET).await.unwrap();
    let bytes = std::fs::read(&opts.file).unwrap();
    assert_eq!(
        &bytes[..8],
        b"IMMTOK\x01\x03",
        "magic, version 1, a passphrase key"
    );
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    let (m_cost, t_cost, p_cost) = (word(8 + 16), word(8 + 20), word(8 + 24));
    assert_eq!((m_cost, t_cost, p_cost), (64 * 1024, 3, 1));
    assert_eq!(store.load().await.unwrap().unwrap().as_slice(), SECRET);
}

#[tokio::test]
async fn a_corrupt_file_asks_for_a_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), TokenStore::File);
    let store = SecretStore::open_inner(opts.clone(), KeyEnv::default(), KdfParams::CHEAP)
        .await
        .unwrap();
    store.save(SECRET).await.unwrap();
    let mut bytes = std::fs::read(&opts.file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&opts.file, &bytes).unwrap();
    let e = store.load().await.unwrap_err();
    assert_eq!(e.kind(), crate::error::Kind::SignIn);
    assert!(!e.kind().retry_may_cure());
    let SecretError::Corrupt { moved_to, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(std::fs::read(moved_to).unwrap(), bytes);
    assert_eq!(store.load().await.unwrap(), None);
}

#[test]
fn messages_are_lowercase_without_a_final_period() {
    let p = PathBuf::from("/srv/imm/data/tokens.enc");
    let io = || std::io::Error::other("denied");
    let errors = [
        SecretError::KeychainTimeout {
            timeout: Duration::from_secs(5),
        },
        SecretError::KeychainBusy,
        SecretError::KeychainUnavailable {
            detail: "no Secret Service on the session bus: x".into(),
        },
        SecretError::Keychain {
            action: "read",
            entry: "tokens/a/b".into(),
            detail: "x".into(),
        },
        SecretError::KeychainCorrupt {
            entry: "tokens/a/b".into(),
            detail: "its value is not base64".into(),
        },
        SecretError::Corrupt {
            path: p.clone(),
            moved_to: p.with_extension("enc.unreadable-20250101T000000Z"),
            detail: "it is empty".into(),
        },
        SecretError::CorruptNotMoved {
            path: p.clone(),
            detail: "it is empty".into(),
            source: io(),
        },
        SecretError::KeyMismatch {
            path: p.clone(),
            needed: "a passphrase from IMM_TOKEN_PASSPHRASE".into(),
            have: "key_file /k".into(),
        },
        SecretError::BadKey {
            path: p.clone(),
            detail: "it holds 3 bytes".into(),
        },
        SecretError::Read {
            path: p.clone(),
            source: io(),
        },
        SecretError::Remove {
            path: p.clone(),
            source: io(),
        },
        SecretError::Kdf { detail: "x".into() },
        SecretError::Random { detail: "x".into() },
        SecretError::PartlyRemoved {
            removed: vec!["file /x".into()],
            source: Box::new(SecretError::KeychainBusy),
        },
        SecretError::ShuttingDown,
    ];
    for e in errors {
        let m = e.to_string();
        assert!(m.starts_with(|c: char| c.is_lowercase()), "{m}");
        assert!(!m.ends_with('.'), "{m}");
    }
    assert_eq!(
        SecretError::KeychainTimeout {
            timeout: Duration::from_secs(5)
        }
        .to_string(),
        "the keychain did not answer within 5s"
    );
    assert!(
        SecretError::PartlyRemoved {
            removed: vec!["file /x".into()],
            source: Box::new(SecretError::KeychainBusy),
        }
        .kind()
        .retry_may_cure()
    );
}

#[test]
fn options_follow_the_configuration() {
    let paths = Paths::resolve_with(Some("/srv/imm".into()), None, None).unwrap();
    let auth = AuthConfig::default();
    let o = SecretsOptions::from_config(&auth, &paths, "tokens/t/c".into());
    assert_eq!(o.file, PathBuf::from("/srv/imm/data/tokens.enc"));
    assert_eq!(o.key_dir, PathBuf::from("/srv/imm/config"));
    assert_eq!(o.service, "imm-daemon");
    assert_eq!(o.choice, TokenStore::Auto);
    assert_eq!(o.keychain_timeout, Duration::from_secs(5));
    assert_eq!(o.key_file, None);
}
