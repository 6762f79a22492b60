#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks it (packaging/check-deb.sh).
#
# Usage: packaging/build-deb.sh [PROFILE]
#   release (the default): the package to publish, in target/debian-release/ (under
#     Cargo's target folder: CARGO_TARGET_DIR if set).
#   dev: what CI builds and checks. The binary is unoptimised, but everything else is
#     what `release` packages: the same assets, unit, Depends computation and checks; its
#     build reuses most of what `cargo test` built (a release build takes minutes more).
#     It goes to target/debian-dev/, not to be published. cargo-deb warns that it will
#     refuse the dev profile some day; the version pinned below takes it. A custom profile
#     inheriting dev would do instead, but it builds in a folder of its own, sharing
#     nothing with the tests (measured: about twice the compile time).
#
# Installs cargo-deb (the version below) when `cargo deb` is missing or another version.
# Needs dpkg-dev (dpkg-shlibdeps computes Depends) and what check-deb.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
cargo_deb_version=3.8.0

# `cargo install` puts it here; the folder may not be on PATH yet.
export PATH="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin:$PATH"
if [[ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $cargo_deb_version" ]]; then
    echo "== cargo install cargo-deb $cargo_deb_version"
    # Built in a temporary folder of cargo's own, not in this project's target folder.
    env -u CARGO_TARGET_DIR cargo install --locked --force cargo-deb --version "$cargo_deb_version"
fi
command -v dpkg-shlibdeps >/dev/null 2>&1 || {
    echo "build-deb.sh: dpkg-shlibdeps is missing (apt-get install dpkg-dev)" >&2
    exit 1
}

echo "== packaging/build-assets.sh $profile"
bash packaging/build-assets.sh "$profile"

target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
# Not target/debian, cargo-deb's default: every run of cargo-deb deletes this package's
# .deb files there, whatever its --output, so a dev build would delete a release's.
out="$target_dir/debian-$profile"
rm -rf "$out"
mkdir -p "$out"

echo "== cargo deb --no-build --profile $profile"
# --no-build: build-assets.sh built the binary, with the features packages have.
# cargo-deb prints the path of the package it wrote.
cargo deb --no-build --profile "$profile" -p imm-daemon --output "$out"
shopt -s nullglob
debs=("$out"/*.deb)
[[ ${#debs[@]} == 1 ]] || {
    echo "build-deb.sh: expected one package in $out, found ${#debs[@]}" >&2
    exit 1
}
bash packaging/check-deb.sh "${debs[0]}"
