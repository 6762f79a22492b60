//! Link options for the `imm-daemon` binary.
//!
//! On Linux with glibc 2.36 or later the binary is linked with packed relative
//! relocations (DT_RELR, `-z pack-relative-relocs`): the dynamic loader then reads about
//! 20 KB of relocations at start instead of about a megabyte, which otherwise stays in the
//! idle daemon's resident memory (see the README's figures). The binary stays
//! position-independent. Older C libraries cannot load such a binary, so the option is
//! only given when the C library this build links against knows the format.
//!
//! Release builds on Linux also link with `link/idle-code.ld`, which puts the functions
//! the daemon runs as it starts and idles first in the text, together (written by
//! `examples/idle_layout.rs`, which says why). It only moves code: a function it names
//! that no longer exists is ignored. `IMM_NO_CODE_LAYOUT=1` leaves it out: for a linker
//! without linker scripts (such as mold), and for the binary `idle_layout` traces. Only
//! release builds: in an unoptimised build, with many more input sections, the linker's
//! matching of the script's 2,500 patterns made every link of the binary take 70–86 s
//! instead of 9 s (measured), for a build that is not the one people run as a daemon.
//! A test (`tests/it/layout.rs`) links a small program with the script, so a script the
//! linker refuses fails the tests, which are not release builds.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/idle-code.ld");
    println!("cargo:rerun-if-env-changed=IMM_NO_CODE_LAYOUT");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let native = var("HOST") == var("TARGET");
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && native
        && glibc_knows_relr()
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let script = Path::new(&var("CARGO_MANIFEST_DIR")).join("link/idle-code.ld");
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("PROFILE") == "release"
        && var("IMM_NO_CODE_LAYOUT").is_empty()
        && script.is_file()
    {
        println!(
            "cargo:rustc-link-arg-bin=imm-daemon=-Wl,-T,{}",
            script.display()
        );
    }
}

/// Whether the system's libc.so.6 defines the `GLIBC_ABI_DT_RELR` version (glibc 2.36+).
fn glibc_knows_relr() -> bool {
    const NEEDLE: &[u8] = b"GLIBC_ABI_DT_RELR";
    [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
        "/usr/lib/libc.so.6",
        "/lib/libc.so.6",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .is_some_and(|bytes| bytes.windows(NEEDLE.len()).any(|w| w == NEEDLE))
}
