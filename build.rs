//! Link options for the `imm-daemon` binary.
//!
//! On Linux with glibc 2.36 or later the binary is linked with packed relative
//! relocations (DT_RELR, `-z pack-relative-relocs`): the dynamic loader then reads about
//! 20 KB of relocations at start instead of about a megabyte, which otherwise stays in the
//! idle daemon's resident memory (see the README's figures). The binary stays
//! position-independent. Older C libraries cannot load such a binary, so the option is
//! only given when the C library this build links against knows the format.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let native = var("HOST") == var("TARGET");
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && native
        && glibc_knows_relr()
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
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
