#!/usr/bin/env bash
# Device linking benchmark (issue 9). Not a test: it prints figures.
#
# Builds a profile of N messages across C contacts from the deterministic
# export of examples/gen_history.rs (CJK percent unspaced text, as
# bench/history.sh), starts a release router with its default limits on
# 127.0.0.1, then RUNS times links a fresh profile to it:
#   - `link` on the existing device (waits for the code to be used, then
#     snapshots, compresses and streams);
#   - `link --join CODE` on the new device, started as soon as the code is
#     printed (the time a person takes to type it is not counted).
# For each run: the new device's wall time (from start to the profile in
# place: PAKE, registration, snapshot, transfer, checks, rename), messages
# per second (N / that time), peak RSS of both processes (GNU time), the
# profile's size and the bytes sent. Prints the median of the runs.
#
# Usage: bench/link.sh                 (N=100000 C=100 CJK=10 RUNS=3)
#        N=10000 RUNS=1 bench/link.sh
#        ROUTER_ARGS="--max-rate 1000" bench/link.sh   (router options)
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-100000}"
C="${C:-100}"
CJK="${CJK:-10}"
RUNS="${RUNS:-3}"
ROUTER_ARGS="${ROUTER_ARGS:-}"
WORK="${WORK:-${TMPDIR:-/tmp}/chat-p2p-bench-link}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

rm -rf "$WORK"
mkdir -p "$WORK"
cargo build --release --quiet --bin chat-p2p --example gen_history
BIN="$CARGO_TARGET_DIR/release/chat-p2p"
GEN="$CARGO_TARGET_DIR/release/examples/gen_history"
export CHAT_HOME="$WORK/home"
export CHAT_CONFIG="$WORK/config.toml"
unset CHAT_PROFILE CHAT_SERVER NO_COLOR || true

ROUTER_PID=
cleanup() {
    if [ -n "$ROUTER_PID" ]; then kill "$ROUTER_PID" 2>/dev/null || true; fi
    if [ -n "${LINK_PID:-}" ]; then kill "$LINK_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# Peak RSS (KiB) from a GNU time -v report.
rss_of() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; }
now_ns() { date +%s%N; }

echo "--- machine"
echo "nproc: $(nproc); CPU: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "--- profile of $N messages across $C contacts, $CJK% unspaced (CJK)"
"$GEN" "$N" "$C" "$CJK" >"$WORK/export.jsonl"
"$BIN" --profile desk init >/dev/null
"$BIN" --profile desk import --other-identity "$WORK/export.jsonl" >/dev/null 2>&1
echo "database: $(du -m "$CHAT_HOME/desk/chat.db" | cut -f1) MB"

echo "--- router (release; defaults: 64 KiB frames, 100 frames/s, window 256): ${ROUTER_ARGS:-defaults}"
# shellcheck disable=SC2086 # ROUTER_ARGS is a list of options
"$BIN" router --listen 127.0.0.1:0 --data "$WORK/router" $ROUTER_ARGS \
    >"$WORK/router.out" 2>"$WORK/router.log" &
ROUTER_PID=$!
for _ in $(seq 100); do
    if grep -q '^listening on ' "$WORK/router.out"; then break; fi
    sleep 0.1
done
URL="ws://$(sed -n 's/^listening on //p' "$WORK/router.out")/ws"
echo "router: $URL"

echo "--- $RUNS links"
rates=()
walls=()
old_rss=()
new_rss=()
for i in $(seq "$RUNS"); do
    rm -rf "${CHAT_HOME:?}/laptop"
    rm -f "$WORK/link.out"
    /usr/bin/time -v -o "$WORK/old.time" "$BIN" --profile desk link --json --server "$URL" \
        >"$WORK/link.out" 2>"$WORK/link.err" &
    LINK_PID=$!
    for _ in $(seq 200); do
        if [ -s "$WORK/link.out" ]; then break; fi
        sleep 0.05
    done
    CODE=$(sed -n '1s/.*"code":"\([^"]*\)".*/\1/p' "$WORK/link.out")
    t0=$(now_ns)
    /usr/bin/time -v -o "$WORK/new.time" "$BIN" --profile laptop link --join "$CODE" \
        --server "$URL" --json >"$WORK/join.json" 2>"$WORK/join.err"
    t1=$(now_ns)
    wait "$LINK_PID"
    LINK_PID=
    wall=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f", d / 1e9 }')
    rate=$(awk -v n="$N" -v w="$wall" 'BEGIN { printf "%.0f", n / w }')
    linked=$(tail -1 "$WORK/link.out")
    sent=$(echo "$linked" | sed -n 's/.*"sent_bytes":\([0-9]*\).*/\1/p')
    bytes=$(echo "$linked" | sed -n 's/.*"bytes":\([0-9]*\).*/\1/p')
    chunks=$(echo "$linked" | sed -n 's/.*"chunks":\([0-9]*\).*/\1/p')
    echo "run $i: ${wall}s, ${rate} messages/s; existing device peak RSS $(rss_of "$WORK/old.time") KiB," \
        "new device $(rss_of "$WORK/new.time") KiB; profile ${bytes} B sent as ${sent} B in ${chunks} frames"
    rates+=("$rate")
    walls+=("$wall")
    old_rss+=("$(rss_of "$WORK/old.time")")
    new_rss+=("$(rss_of "$WORK/new.time")")
done

echo "--- median of $RUNS"
echo "link wall: $(printf '%s\n' "${walls[@]}" | median) s"
echo "link rate: $(printf '%s\n' "${rates[@]}" | median) messages/s"
echo "peak RSS, existing device: $(printf '%s\n' "${old_rss[@]}" | median) KiB"
echo "peak RSS, new device: $(printf '%s\n' "${new_rss[@]}" | median) KiB"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
