//! Signing an example's daemon home in against the emulated identity provider: the real
//! `imm-daemon login` command, its device code approved as a person would. Shared by the
//! examples through `#[path]` (a folder without `main.rs` is not an example of its own).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use imm_emulators::IdentityProvider;

/// Runs `bin login` with `IMM_HOME` set to `home` (whose configuration names `idp`) and
/// approves the code it asks for; panics unless the login succeeds.
pub fn login(bin: &str, home: &Path, idp: &IdentityProvider) {
    let child = Command::new(bin)
        .arg("login")
        .env("IMM_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let code = idp
        .wait_for_user_code(Duration::from_secs(10))
        .expect("a device code");
    assert!(idp.approve(&code), "the device code is approved");
    assert!(
        child.wait_with_output().unwrap().status.success(),
        "login failed"
    );
}
