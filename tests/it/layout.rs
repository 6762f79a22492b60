//! The code layout of the daemon's binary (`link/idle-code.ld`, see `build.rs`) is used
//! by release builds only, which the tests do not make. This links a small program with
//! the script, through the toolchain's own linker, so that a script the linker refuses,
//! or one that no longer gathers anything, fails here and not in `cargo install`.

use std::path::Path;
use std::process::Command;

#[test]
fn the_idle_code_layout_links_and_puts_the_code_it_names_first() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hello.rs");
    std::fs::write(&src, "fn main() {\n    println!(\"hello\");\n}\n").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/idle-code.ld");
    let exe = dir.path().join("hello");
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args([
            "--edition=2024",
            "-Copt-level=1",
            "-Csymbol-mangling-version=v0",
        ])
        .arg(format!("-Clink-arg=-Wl,-T,{}", script.display()))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("rustc runs");
    assert!(
        out.status.success(),
        "linking with {} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello\n");

    // The gathered section comes first in the text and holds `main` (the script names it
    // with the daemon's start-up functions).
    let headers = Command::new("readelf")
        .args(["-SW"])
        .arg(&exe)
        .output()
        .expect("readelf runs (binutils)");
    let headers = String::from_utf8_lossy(&headers.stdout);
    let section = |name: &str| {
        headers.lines().find_map(|l| {
            let mut f = l.split(']').nth(1)?.split_whitespace();
            (f.next()? == name).then(|| {
                let _kind = f.next();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let _offset = f.next();
                let size = u64::from_str_radix(f.next()?, 16).ok()?;
                Some((addr, size))
            })?
        })
    };
    let (idle, idle_size) = section(".text.idle").unwrap_or_else(|| panic!("{headers}"));
    let (text, _) = section(".text").unwrap_or_else(|| panic!("{headers}"));
    assert!(idle_size > 0 && idle < text, "{headers}");
    let symbols = Command::new("nm")
        .arg("--defined-only")
        .arg(&exe)
        .output()
        .expect("nm runs (binutils)");
    let main = String::from_utf8_lossy(&symbols.stdout)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "main").then(|| u64::from_str_radix(f[0], 16).unwrap())
        })
        .expect("a main symbol");
    assert!(
        (idle..idle + idle_size).contains(&main),
        "main at {main:#x} is not in .text.idle ({idle:#x}, {idle_size:#x} bytes)"
    );
}
