#!/usr/bin/env bash
# Writes the Homebrew formula of a release from imm-daemon.rb.in: its tarball's URL,
# SHA-256 and version filled in.
#
# Usage: packaging/homebrew/fill-formula.sh [--output FORMULA] VERSION URL [TARBALL]
#   VERSION  the release, as in Cargo.toml (0.1.0); checked against the tarball's Cargo.toml
#   URL      where the tarball is published
#   TARBALL  the file published at URL. Without it, `git archive` of the tag vVERSION is
#            written to target/homebrew/imm-daemon-VERSION.tar.gz: publish that file at URL
#            (the checksum is of this file, byte for byte).
#   --output where the formula goes (default: packaging/homebrew/imm-daemon.rb, which git
#            ignores; copy it to the tap). It is replaced in one rename, never left half
#            written.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

die() {
    echo "fill-formula.sh: $*" >&2
    exit 1
}

output="$here/imm-daemon.rb"
if [[ "${1:-}" == --output ]]; then
    [[ $# -ge 2 ]] || die "--output needs a path"
    output="$2"
    shift 2
fi
[[ $# -eq 2 || $# -eq 3 ]] || die "usage: fill-formula.sh [--output FORMULA] VERSION URL [TARBALL]"
version="$1"
url="$2"
tarball="${3:-}"

[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] || die "'$version' is not a version like 0.1.0"
# Nothing Ruby's double quotes or the sed below would read as more than text.
url_re='^https://[^][:space:]"\\#|[]+$'
[[ "$url" =~ $url_re ]] || die "'$url' is not an https URL without spaces, quotes, backslashes, # or |"

if [[ -z "$tarball" ]]; then
    tag="v$version"
    git -C "$repo" rev-parse --verify --quiet "refs/tags/$tag" >/dev/null || die "no tag $tag to archive"
    mkdir -p "$repo/target/homebrew"
    tarball="$repo/target/homebrew/imm-daemon-$version.tar.gz"
    git -C "$repo" archive --format=tar.gz --prefix="imm-daemon-$version/" -o "$tarball" "$tag"
    echo "wrote $tarball: publish it at $url"
fi
[[ -s "$tarball" ]] || die "no tarball at $tarball"

# The tarball is of this version: its top-level Cargo.toml (at the root or under one
# folder) says so.
manifest="$(tar -tzf "$tarball" | grep -E '^(\./)?([^/]+/)?Cargo\.toml$' | awk '{ print length, $0 }' |
    sort -n | head -n 1 | cut -d ' ' -f 2-)" || true
[[ -n "$manifest" ]] || die "$tarball holds no top-level Cargo.toml"
tar_version="$(tar -xzOf "$tarball" "$manifest" | sed -n 's/^version = "\(.*\)"$/\1/p' | head -n 1)"
[[ "$tar_version" == "$version" ]] || die "$tarball is version '$tar_version', not $version"

if command -v sha256sum >/dev/null 2>&1; then
    sha256="$(sha256sum "$tarball" | cut -d ' ' -f 1)"
else
    sha256="$(shasum -a 256 "$tarball" | cut -d ' ' -f 1)" # macOS
fi
[[ "$sha256" =~ ^[0-9a-f]{64}$ ]] || die "no SHA-256 of $tarball"

# Homebrew reads the version from the URL when it can; a `version` line beside one
# that says the same is redundant (brew audit says so), so it stays only when the URL
# does not name the version.
if [[ "$url" == *"$version"* ]]; then
    drop_version='/^  version "@VERSION@"$/d'
else
    drop_version=''
fi

mkdir -p "$(dirname "$output")"
tmp="$(mktemp "$(dirname "$output")/.imm-daemon.rb.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
sed -e "$drop_version" \
    -e "s|@URL@|${url//&/\\&}|" \
    -e "s|@VERSION@|$version|" \
    -e "s|@SHA256@|$sha256|" \
    "$here/imm-daemon.rb.in" >"$tmp"
if grep -n '@[A-Z0-9]*@' "$tmp" >&2; then
    die "placeholders left in the formula (above)"
fi
grep -qx "  url \"$url\"" "$tmp" || die "the template has no url line"
grep -qx "  sha256 \"$sha256\"" "$tmp" || die "the template has no sha256 line"
chmod 644 "$tmp"
mv -f "$tmp" "$output"
trap - EXIT
echo "wrote $output: version $version, sha256 $sha256"
