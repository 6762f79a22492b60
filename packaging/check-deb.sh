#!/usr/bin/env bash
# Checks a built Debian package of imm-daemon: its control fields (Depends computed, not
# left as `$auto`), the exact list of files it installs with their modes, and, unpacked
# into a temporary folder, that the binary runs, the manual page renders, the completions
# load and the user unit passes `systemd-analyze verify` as installed. Any failure stops
# with a message and a non-zero exit.
#
# Usage: packaging/check-deb.sh PATH.deb
# Needs dpkg-deb and systemd-analyze; renders the manual page with `man` where there is
# one (required under CI=1, as the tests require their tools there).
set -euo pipefail
# The package's path as given, from where this was started; then the repository's root.
[[ $# -eq 1 && -f "$1" ]] && deb="$(realpath "$1")" || deb="${1:-}"
cd "$(dirname "$0")/.."

fail() {
    echo "check-deb.sh: FAIL: $*" >&2
    exit 1
}
ok() {
    echo "  ok: $*"
}

[[ $# -eq 1 ]] || fail "usage: packaging/check-deb.sh PATH.deb"
[[ -f "$deb" ]] || fail "no package at $deb"
for tool in dpkg-deb systemd-analyze gzip; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing"
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "== check $deb ($(stat -c %s "$deb") bytes)"

# Control fields.
dpkg-deb --info "$deb" >"$work/info" || fail "dpkg-deb --info failed"
field() {
    dpkg-deb --field "$deb" "$1"
}
[[ "$(field Package)" == imm-daemon ]] || fail "Package is '$(field Package)'"
crate_version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
version="$(field Version)"
[[ "$version" == "$crate_version"-* || "$version" == "$crate_version" ]] ||
    fail "Version $version is not the crate's $crate_version"
[[ "$(field Architecture)" == "$(dpkg --print-architecture)" ]] ||
    fail "Architecture is '$(field Architecture)'"
depends="$(field Depends)"
# `depends = "$auto"` in Cargo.toml: dpkg-shlibdeps computes it from the binary's
# libraries, which always include the C library.
[[ -n "$depends" ]] || fail "no Depends field"
# shellcheck disable=SC2016 # the literal $auto
[[ "$depends" != *'$auto'* ]] || fail "Depends was not computed: $depends"
[[ "$depends" =~ (^|, )libc6\ \(\>=\ [0-9] ]] || fail "Depends has no versioned libc6: $depends"
[[ "$depends" =~ (^|, )tzdata(,|$) ]] || fail "Depends lacks tzdata (named time zones): $depends"
ok "Package imm-daemon $version, Depends: $depends"

# The files installed, exactly, with owner and mode. A new asset in Cargo.toml needs its
# line here.
expected="$(
    cat <<'EOF'
-rwxr-xr-x root/root ./usr/bin/imm-daemon
-rw-r--r-- root/root ./usr/lib/systemd/user/imm-daemon.service
-rw-r--r-- root/root ./usr/share/bash-completion/completions/imm-daemon
-rw-r--r-- root/root ./usr/share/doc/imm-daemon/README.md
-rw-r--r-- root/root ./usr/share/doc/imm-daemon/copyright
-rw-r--r-- root/root ./usr/share/fish/vendor_completions.d/imm-daemon.fish
-rw-r--r-- root/root ./usr/share/man/man1/imm-daemon.1.gz
-rw-r--r-- root/root ./usr/share/zsh/vendor-completions/_imm-daemon
EOF
)"
dpkg-deb --contents "$deb" >"$work/contents" || fail "dpkg-deb --contents failed"
# Regular files only (directories and their modes are dpkg's business): mode, owner,
# path, by path; dpkg-deb -c prints mode owner size date time path, the owner as names
# or, from cargo-deb, as ids.
actual="$(awk '$1 ~ /^-/ { sub(/^0\/0$/, "root/root", $2); print $1, $2, $6 }' "$work/contents" |
    LC_ALL=C sort -k 3)"
if [[ "$actual" != "$expected" ]]; then
    echo "expected:" >&2
    echo "$expected" >&2
    echo "in the package:" >&2
    echo "$actual" >&2
    diff <(echo "$expected") <(echo "$actual") >&2 || true
    fail "the package's files differ from the expected list"
fi
if grep -v '^[-d]' "$work/contents" >&2; then
    fail "the package holds something other than files and folders (above)"
fi
ok "$(echo "$actual" | wc -l) files, modes and owners as expected"

mkdir "$root"
dpkg-deb --extract "$deb" "$root" || fail "dpkg-deb --extract failed"

# The binary runs and is the crate's version.
bin="$root/usr/bin/imm-daemon"
[[ -x "$bin" ]] || fail "usr/bin/imm-daemon is not executable"
out="$(HOME="$work" "$bin" --version 2>&1)" || fail "imm-daemon --version failed: $out"
[[ "$out" == "imm-daemon $crate_version" ]] || fail "imm-daemon --version printed '$out'"
ok "usr/bin/imm-daemon --version: $out"

# The manual page: valid gzip, a NAME section, and, rendered by man, the program's name.
page="$root/usr/share/man/man1/imm-daemon.1.gz"
[[ -s "$page" ]] || fail "the manual page is empty"
gzip -t "$page" || fail "the manual page is not valid gzip"
zcat "$page" | grep -q '^\.SH NAME' || fail "the manual page has no NAME section"
zcat "$page" | grep -q '^\.TH imm-daemon 1' || fail "the manual page is not imm-daemon(1)"
if command -v man >/dev/null 2>&1; then
    rendered="$(MANWIDTH=80 MAN_DISABLE_SECCOMP=1 man --local-file "$page" 2>"$work/man.err")" ||
        { cat "$work/man.err" >&2; fail "man -l failed"; }
    [[ ! -s "$work/man.err" ]] || { cat "$work/man.err" >&2; fail "man -l warned (above)"; }
    grep -q '^NAME' <<<"$rendered" || fail "the rendered manual page has no NAME"
    grep -q 'imm-daemon' <<<"$rendered" || fail "the rendered manual page does not name imm-daemon"
    ok "manual page renders ($(wc -l <<<"$rendered") lines)"
elif [[ -n "${CI:-}" ]]; then
    fail "man is missing (CI installs man-db)"
else
    ok "manual page has NAME (man is not installed: not rendered)"
fi

# The completions: bash registers one for imm-daemon; zsh's and fish's are for it, and
# pass their shell's syntax check where that shell is installed.
completions="$root/usr/share"
bash_c="$completions/bash-completion/completions/imm-daemon"
zsh_c="$completions/zsh/vendor-completions/_imm-daemon"
fish_c="$completions/fish/vendor_completions.d/imm-daemon.fish"
for f in "$bash_c" "$zsh_c" "$fish_c"; do
    [[ -s "$f" ]] || fail "${f#"$root"/} is empty"
done
registered="$(bash --norc --noprofile -c 'source "$1" && complete -p imm-daemon' _ "$bash_c" 2>&1)" ||
    fail "the bash completion does not load: $registered"
[[ "$registered" == "complete "*" imm-daemon" ]] || fail "bash registered '$registered'"
head -n 1 "$zsh_c" | grep -q '^#compdef imm-daemon' || fail "the zsh completion is not for imm-daemon"
grep -q '^complete -c imm-daemon ' "$fish_c" || fail "the fish completion is not for imm-daemon"
if command -v zsh >/dev/null 2>&1; then
    zsh -n "$zsh_c" || fail "zsh -n rejects the zsh completion"
fi
if command -v fish >/dev/null 2>&1; then
    fish --no-execute "$fish_c" || fail "fish rejects the fish completion"
fi
ok "bash, zsh and fish completions"

# The user unit as installed: the repository's file, verified by systemd with ExecStart
# pointing at the unpacked binary. Only the path prefix of ExecStart changes, and it must
# be the path the package installs the binary at.
unit="$root/usr/lib/systemd/user/imm-daemon.service"
cmp -s "$unit" systemd/imm-daemon.service || fail "the packaged unit differs from systemd/imm-daemon.service"
mkdir "$work/unit" "$work/runtime"
chmod 700 "$work/runtime"
[[ "$(grep -c '^ExecStart=' "$unit")" == 1 ]] || fail "the unit has not exactly one ExecStart="
grep -q '^ExecStart=/usr/bin/imm-daemon ' "$unit" ||
    fail "the unit's ExecStart is not the packaged /usr/bin/imm-daemon: $(grep '^ExecStart=' "$unit")"
sed "s|^ExecStart=/usr/bin/imm-daemon |ExecStart=$root/usr/bin/imm-daemon |" \
    "$unit" >"$work/unit/imm-daemon.service"
# verify reports problems as warnings and still exits 0, so any output fails the check
# (as in .ci/run).
verify_out="$(XDG_RUNTIME_DIR="$work/runtime" systemd-analyze verify --user --man=no \
    "$work/unit/imm-daemon.service" 2>&1)" || { echo "$verify_out" >&2; fail "systemd-analyze verify failed"; }
[[ -z "$verify_out" ]] || { echo "$verify_out" >&2; fail "systemd-analyze verify warned (above)"; }
ok "usr/lib/systemd/user/imm-daemon.service verifies with the packaged binary"

echo "== $deb: all checks passed"
