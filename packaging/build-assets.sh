#!/usr/bin/env bash
# Builds the release binary and the files packages ship beside it: the manual page and
# shell completions, generated from the command-line definition (`imm-daemon man`,
# `imm-daemon completions SHELL`), into target/assets/. Then: `cargo deb --no-build`
# (cargo-deb reads [package.metadata.deb] in Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
# The daemon alone: the sandbox and its emulators are for trying it out, not for packages.
cargo build --release --locked --no-default-features --bin imm-daemon
bin=target/release/imm-daemon
out=target/assets
mkdir -p "$out/completions"
"$bin" man >"$out/imm-daemon.1"
gzip -9nf "$out/imm-daemon.1"
"$bin" completions bash >"$out/completions/imm-daemon.bash"
"$bin" completions zsh >"$out/completions/_imm-daemon"
"$bin" completions fish >"$out/completions/imm-daemon.fish"
ls -l "$out" "$out/completions"
