#!/usr/bin/env bash
# Whole-process timings of the release binary with hyperfine:
#
#   mailboxes list --format json            over 10,000 cached mailboxes   (target < 100 ms)
#   mailboxes search QUERY --format json    over 100,000 cached mailboxes  (target <  50 ms)
#   mailboxes import FILE                   of a 10,000-record export      (target < 500 ms)
#   status                                  with the daemon running        (target <  20 ms)
#
# and, through examples/daemon_footprint.rs, the daemon's start to READY=1 (target
# < 100 ms), idle resident memory (target < 10 MB) and idle wakeups (target: none between
# heartbeats).
#
# Fixtures come from examples/gen_export.rs (Windows PowerShell 5.1 ConvertTo-Json of
# Get-Mailbox -InactiveMailboxOnly, about 140 properties per record). Every dataset gets
# its own IMM_HOME in a temporary directory, removed on exit. Output goes to /dev/null
# (hyperfine's default). Run from anywhere: bash bench/whole-process.sh
#
# Environment: WARMUP (default 3), RUNS (default: hyperfine's choice, at least 10),
# KEEP=1 keeps the temporary directory.
set -euo pipefail

cd "$(dirname "$0")/.."

warmup="${WARMUP:-3}"
runs=()
if [[ -n "${RUNS:-}" ]]; then
    runs=(--runs "$RUNS")
fi

if ! command -v hyperfine >/dev/null 2>&1; then
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        sudo=(sudo)
    fi
    echo "== installing hyperfine" >&2
    "${sudo[@]}" apt-get install -y hyperfine ||
        { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y hyperfine; }
fi

echo "== building (release)" >&2
# The binary is built on its own: built together with the examples it would get the
# features of the dev-dependencies too (a larger binary than the one people install).
cargo build --release --examples
cargo build --release --bins

bin="$(pwd)/target/release/imm-daemon"
gen="$(pwd)/target/release/examples/gen_export"

work="$(mktemp -d)"
if [[ "${KEEP:-0}" == 1 ]]; then
    echo "keeping $work" >&2
else
    trap 'rm -rf "$work"' EXIT
fi

cat >"$work/config.toml" <<'EOF'
[inventory]
company_attribute = "CustomAttribute1"
department_attribute = "CustomAttribute2"
license_attribute = "LicenseType"
default_license = "E3"

[inventory.prices]
E3 = 36.00
E5 = 57.00
F3 = 8.00
EOF

# new_home DIR: an empty IMM_HOME holding only the configuration.
new_home() {
    rm -rf "$1"
    mkdir -p "$1/config"
    cp "$work/config.toml" "$1/config/config.toml"
}

# The --prepare step of the fresh-import case, as a script so that it runs the same with
# or without a shell.
cat >"$work/fresh-home.sh" <<'EOF'
set -eu
rm -rf "$1"
mkdir -p "$1/config"
cp "$2" "$1/config/config.toml"
EOF

echo "== generating fixtures" >&2
"$gen" 10000 "$work/export-10k.json"
# The 100,000-record cache is only set up, not timed: Export-Csv is a third of the size.
"$gen" 100000 "$work/export-100k.csv" --format csv
ls -l "$work"/export-* >&2

echo "== importing" >&2
new_home "$work/home-10k"
IMM_HOME="$work/home-10k" "$bin" mailboxes import "$work/export-10k.json"
new_home "$work/home-100k"
IMM_HOME="$work/home-100k" "$bin" mailboxes import "$work/export-100k.csv"
new_home "$work/home-import"
IMM_HOME="$work/home-import" "$bin" mailboxes import "$work/export-10k.json"

# "grace hopper" is one of the 10,000 name combinations: 10 rows in 100,000.
query="grace hopper"
matches="$(IMM_HOME="$work/home-100k" "$bin" mailboxes search "$query" --format json |
    grep -c '"identity"' || true)"
echo "search '$query' matches $matches mailbox(es)" >&2

hf=(hyperfine --shell=none --time-unit millisecond --style basic "${runs[@]}")

echo "== list over 10k" >&2
IMM_HOME="$work/home-10k" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/list.md" \
    -n "list --format json (10k cached)" \
    "$bin mailboxes list --format json"

echo "== search over 100k" >&2
IMM_HOME="$work/home-100k" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/search.md" \
    -n "search '$query' --format json (100k cached, $matches match)" \
    "$bin mailboxes search '$query' --format json"

echo "== import 10k" >&2
IMM_HOME="$work/home-import" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/import.md" \
    -n "import 10k JSON (re-import into 10k cache)" \
    "$bin mailboxes import $work/export-10k.json"

IMM_HOME="$work/home-fresh" "${hf[@]}" --warmup "$warmup" \
    --prepare "bash $work/fresh-home.sh $work/home-fresh $work/config.toml" \
    --export-markdown "$work/import-fresh.md" \
    -n "import 10k JSON (into empty cache)" \
    "$bin mailboxes import $work/export-10k.json"

echo "== status of a running daemon (10k cached)" >&2
IMM_HOME="$work/home-10k" "$bin" run 2>/dev/null &
daemon=$!
for _ in $(seq 100); do
    [[ -s "$work/home-10k/state/daemon-state.json" ]] && break
    sleep 0.05
done
IMM_HOME="$work/home-10k" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/status.md" \
    -n "status (running daemon, 10k cached)" \
    "$bin status"
kill -TERM "$daemon"
wait "$daemon"

echo "== daemon start and idle footprint" >&2
"$(pwd)/target/release/examples/daemon_footprint" "$bin"

# One markdown table: hyperfine's header once, then every row, with the target appended.
summary="$work/summary.md"
{
    head -n 2 "$work/list.md" | sed -e '1s/$/ Target [ms] |/' -e '2s/$/---:|/'
    for part in list:100 search:50 import:500 import-fresh:500 status:20; do
        file="${part%%:*}" target="${part##*:}"
        tail -n +3 "$work/$file.md" | sed -e "s/\$/ < $target |/"
    done
} >"$summary"

echo
echo "== summary ($(nproc) CPU(s), $(uname -sr))"
cat "$summary"
