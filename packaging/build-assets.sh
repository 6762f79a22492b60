#!/usr/bin/env bash
# Builds the release binary and the files packages ship beside it: the manual page and
# shell completions, generated from the command-line definition (`imm-daemon man`,
# `imm-daemon completions SHELL`), into target/assets/. Then: `cargo deb --no-build`
# (cargo-deb reads [package.metadata.deb] in Cargo.toml); packaging/build-deb.sh does
# both and checks the package.
#
# Usage: packaging/build-assets.sh [PROFILE]   (default: release; CI checks the package
# with `dev`, whose build shares most of its work with the tests')
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
# The daemon alone: the sandbox and its emulators are for trying it out, not for packages.
cargo build --profile "$profile" --locked --no-default-features --bin imm-daemon
# Cargo's target folder, wherever CARGO_TARGET_DIR or a configuration puts it (cargo-deb
# finds the binary there too). The assets stay in the source tree's target/, where the
# package's metadata names them.
target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[[ -n "$target_dir" ]] || { echo "build-assets.sh: no target_directory from cargo metadata" >&2; exit 1; }
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir="$profile" ;;
esac
bin="$target_dir/$profile_dir/imm-daemon"
out=target/assets
rm -rf "$out"
mkdir -p "$out/completions"
"$bin" man >"$out/imm-daemon.1"
gzip -9nf "$out/imm-daemon.1"
"$bin" completions bash >"$out/completions/imm-daemon.bash"
"$bin" completions zsh >"$out/completions/_imm-daemon"
"$bin" completions fish >"$out/completions/imm-daemon.fish"
ls -l "$out" "$out/completions"
