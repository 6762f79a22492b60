#!/usr/bin/env bash
# Whole-process timings of the release binary with hyperfine:
#
#   mailboxes list --format json            over 10,000 cached mailboxes   (target < 100 ms)
#   mailboxes search QUERY --format json    over 100,000 cached mailboxes  (target <  50 ms;
#                                           < 25 ms for a query matching 1 %)
#   mailboxes stats --format json           over 10,000 and 100,000 cached (targets < 5 and
#                                           < 50 ms), from kept tallies, after a write that
#                                           carried them, counted again (no target), and
#                                           over 10,000 beside a running daemon
#   mailboxes import FILE                   of a 10,000-record export      (target < 500 ms)
#   status                                  with the daemon running        (target <   5 ms)
#   send --batch FILE.jsonl                 of 10,000 mails, no daemon     (target < 1000 ms)
#   mailboxes list --format table           one mailbox named 16 MB long, 120 columns
#                                                                          (target < 1000 ms)
#
# and, through examples/daemon_footprint.rs, the daemon's start to READY=1 (target
# < 100 ms), idle resident memory (target < 10 MB) and idle wakeups (target: none between
# heartbeats).
#
# Fixtures come from examples/gen_export.rs (Windows PowerShell 5.1 ConvertTo-Json of
# Get-Mailbox -InactiveMailboxOnly, about 140 properties per record) and, for send, from
# gen_batch below (one mail per line, about 600 bytes, no attachments). Every dataset gets
# its own IMM_HOME in a temporary directory, removed on exit. Output goes to /dev/null
# (hyperfine's default). Run from anywhere: bash benches/whole-process.sh
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

# The --prepare step of the send case into a filled queue: a copy of a home that already
# holds the queued mails.
cat >"$work/copy-home.sh" <<'EOF'
set -eu
rm -rf "$1"
cp -a "$2" "$1"
EOF

# gen_batch N FILE: N mails as `send --batch` reads them (JSON Lines): one recipient, a
# second on every fifth, a copy on every third, four domains, a subject naming a mailbox
# and the same plain-text body of 436 bytes.
gen_batch() {
    awk -v n="$1" 'BEGIN {
        split("contoso.com fabrikam.com northwindtraders.com woodgrovebank.com", domains, " ")
        body = "Hello,\\n\\nthe inactive mailbox named in the subject is still on litigation hold and has been inactive for more than 180 days. Its holds cost the company a licence every month. Please review whether the hold is still needed and tell the compliance team by the end of the month; without an answer the hold stays in place.\\n\\nMailbox size and holds are in the inventory report in the admin portal.\\n\\nRegards,\\nIT Operations (sent by imm-daemon)\\n"
        for (i = 0; i < n; i++) {
            d = domains[i % 4 + 1]
            to = "\"owner." (i % 997) "@" d "\""
            if (i % 5 == 0) to = to ", \"deputy." (i % 331) "@" d "\""
            cc = (i % 3 == 0) ? ", \"cc\": \"compliance@" d "\"" : ""
            printf "{\"to\": [%s]%s, \"subject\": \"Inactive mailbox user.%d@%s: hold review due\", \"body\": \"%s\"}\n", to, cc, i, d, body
        }
    }' >"$2"
}

echo "== generating fixtures" >&2
"$gen" 10000 "$work/export-10k.json"
# The 100,000-record cache is only set up, not timed: Export-Csv is a third of the size.
"$gen" 100000 "$work/export-100k.csv" --format csv
gen_batch 10000 "$work/batch-10k.jsonl"
ls -l "$work"/export-* "$work"/batch-* >&2

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

echo "== search matching 1 % of 100k" >&2
# "grace" is one first name of the hundred: 1,000 rows in 100,000.
IMM_HOME="$work/home-100k" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/search-1pct.md" \
    -n "search grace --format json (100k cached, 1 % match)" \
    "$bin mailboxes search grace --format json"

echo "== stats over 10k and 100k" >&2
IMM_HOME="$work/home-10k" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/stats-10k.md" \
    -n "stats --format json (10k cached)" \
    "$bin mailboxes stats --format json"
IMM_HOME="$work/home-100k" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/stats-100k.md" \
    -n "stats --format json (100k cached)" \
    "$bin mailboxes stats --format json"
# After a write, `stats` sums the kept tallies the write carried forward: the --prepare
# step imports (--merge) 100 of the cached mailboxes with their company changed, back and
# forth, as the statistics phase writes the sizes of a batch of mailboxes every cycle.
"$gen" 100 "$work/changes-a.json"
sed 's/"CustomAttribute1":  "/&Moved /' "$work/changes-a.json" >"$work/changes-b.json"
if cmp -s "$work/changes-a.json" "$work/changes-b.json"; then
    echo "changes-b.json changes nothing" >&2
    exit 1
fi
cat >"$work/change-100.sh" <<'EOF'
set -eu
# $1: the folder of changes-a.json and changes-b.json; $2: the binary. IMM_HOME comes
# from the environment.
if [ -e "$IMM_HOME/changed" ]; then
    rm "$IMM_HOME/changed"
    "$2" mailboxes import --merge "$1/changes-a.json" >/dev/null
else
    touch "$IMM_HOME/changed"
    "$2" mailboxes import --merge "$1/changes-b.json" >/dev/null
fi
EOF
for n in 10k 100k; do
    IMM_HOME="$work/home-$n" "${hf[@]}" --warmup "$warmup" \
        --prepare "bash $work/change-100.sh $work $bin" \
        --export-markdown "$work/stats-$n-written.md" \
        -n "stats --format json ($n cached, after 100 mailboxes changed)" \
        "$bin mailboxes stats --format json"
done
# A write the kept tallies were not told of (a bulk load, or an older build's daemon still
# running) has them counted again in one pass. The --prepare step starts a new generation
# of the table the way such a write does. No target: the figure is what a count costs.
cat >"$work/new-generation.py" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE mailbox_tally_state SET generation = generation + 1")
db.commit()
EOF
for n in 10k 100k; do
    IMM_HOME="$work/home-$n" "${hf[@]}" --warmup "$warmup" \
        --prepare "python3 $work/new-generation.py $work/home-$n/data/imm-daemon.db" \
        --export-markdown "$work/stats-$n-counted.md" \
        -n "stats --format json ($n cached, counted again)" \
        "$bin mailboxes stats --format json"
done

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

echo "== send --batch 10k (no daemon running)" >&2
# Into a new database (what a first send costs: the database is created), and into a
# queue that already holds the same 10,000 mails. send finds no daemon to wake.
IMM_HOME="$work/home-send" "${hf[@]}" --warmup "$warmup" \
    --prepare "bash $work/fresh-home.sh $work/home-send $work/config.toml" \
    --export-markdown "$work/send-fresh.md" \
    -n "send --batch 10k mails (into a new database)" \
    "$bin send --batch $work/batch-10k.jsonl"

new_home "$work/home-queued"
IMM_HOME="$work/home-queued" "$bin" send --batch "$work/batch-10k.jsonl" >/dev/null
IMM_HOME="$work/home-send" "${hf[@]}" --warmup "$warmup" \
    --prepare "bash $work/copy-home.sh $work/home-send $work/home-queued" \
    --export-markdown "$work/send-queued.md" \
    -n "send --batch 10k mails (10k already queued)" \
    "$bin send --batch $work/batch-10k.jsonl"

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
# stats beside a running daemon, as it mostly runs: the WAL is then already there, and the
# command does not create it, checkpoint it and delete it at exit as the only process
# with the database open (the runs above).
IMM_HOME="$work/home-10k" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/stats-10k-daemon.md" \
    -n "stats --format json (10k cached, running daemon)" \
    "$bin mailboxes stats --format json"
kill -TERM "$daemon"
wait "$daemon"

echo "== a table with a 16 MB cell" >&2
# One mailbox whose display name is 16 MB long: every cell is cut to the table's width
# before the layout, whose time grew with the square of a cell's length (a 1 MB name took
# 107 s, a 16 MB one over 10 minutes).
{
    printf '[{"Identity": "big", "ExchangeGuid": "00000000-0000-0000-0000-00000000abcd", '
    printf '"PrimarySmtpAddress": "big@contoso.com", "UserPrincipalName": "big@contoso.com", '
    printf '"IsInactiveMailbox": true, "WhenSoftDeleted": "2024-01-01T00:00:00Z", '
    printf '"LitigationHoldEnabled": true, "InPlaceHolds": [], "DisplayName": "'
    head -c 16000000 /dev/zero | tr '\0' A
    printf '"}]'
} >"$work/export-huge-name.json"
new_home "$work/home-huge"
IMM_HOME="$work/home-huge" "$bin" mailboxes import "$work/export-huge-name.json" >/dev/null
COLUMNS=120 IMM_HOME="$work/home-huge" "${hf[@]}" --warmup "$warmup" \
    --export-markdown "$work/huge-cell.md" \
    -n "list --format table (a 16 MB name, 120 columns)" \
    "$bin mailboxes list --format table"

echo "== daemon start and idle footprint" >&2
"$(pwd)/target/release/examples/daemon_footprint" "$bin"

# One markdown table: hyperfine's header once, then every row, with the target appended.
summary="$work/summary.md"
{
    head -n 2 "$work/list.md" | sed -e '1s/$/ Target [ms] |/' -e '2s/$/---:|/'
    for part in list:100 search:50 search-1pct:25 stats-10k:5 stats-10k-daemon:5 stats-100k:50 \
        stats-10k-written:5 stats-100k-written:50 stats-10k-counted:- stats-100k-counted:- \
        import:500 import-fresh:500 send-fresh:1000 send-queued:1000 status:5 huge-cell:1000; do
        file="${part%%:*}" target="${part##*:}"
        if [[ "$target" == - ]]; then
            tail -n +3 "$work/$file.md" | sed -e "s/\$/ — |/"
        else
            tail -n +3 "$work/$file.md" | sed -e "s/\$/ < $target |/"
        fi
    done
} >"$summary"

echo
echo "== summary ($(nproc) CPU(s), $(uname -sr))"
cat "$summary"
