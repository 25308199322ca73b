#!/usr/bin/env bash
# Legacy import benchmark (issue 13, item 5). Not a test: it prints figures.
#
# Writes the original client's files for PEERS peers with PER_PEER messages
# each (messages/<name>.json arrays of {content, timestamp, incoming}, half
# incoming, and contacts.json; the peers' keys are gen_history's 100
# contacts), then imports them into a fresh profile with
# `chat-p2p import --legacy` and prints messages/s, CPU seconds and peak
# RSS (/usr/bin/time -v). SMALL_PER_PEER gives a second, smaller import of
# the same shape first (the 1M reference: 100 x 10,000). With LOCK=FILE
# only the imports hold `flock FILE` (the files are written before).
# With BASELINE_BIN=/path/to/chat-p2p each import is followed by the same
# import with that binary (alternated, same files).
#
# Usage: bench/legacy.sh                  (PEERS=100 PER_PEER=100000 SMALL_PER_PEER=10000)
#        PER_PEER=1000 SMALL_PER_PEER= bench/legacy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS="${PEERS:-100}"
PER_PEER="${PER_PEER:-100000}"
SMALL_PER_PEER="${SMALL_PER_PEER-10000}"
LOCK="${LOCK:-}"
BASELINE_BIN="${BASELINE_BIN:-}"
WORK="${WORK:-${TMPDIR:-/tmp}/chat-p2p-legacy-bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

rm -rf "$WORK"
mkdir -p "$WORK"
cargo build --release --quiet --bin chat-p2p --example gen_history
BIN="$CARGO_TARGET_DIR/release/chat-p2p"
GEN="$CARGO_TARGET_DIR/release/examples/gen_history"
export CHAT_HOME="$WORK/home"
unset CHAT_PROFILE NO_COLOR || true

echo "--- machine"
echo "nproc: $(nproc); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# PEERS contacts with valid keys: gen_history's contact lines.
"$GEN" 0 "$PEERS" 0 | grep '"kind":"contact"' >"$WORK/contacts.jsonl"

legacy_files() { # dir per_peer
    python3 - "$1" "$2" "$WORK/contacts.jsonl" <<'PY'
import json, os, random, sys
out, per_peer, contacts = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keys = [json.loads(line) for line in open(contacts)]
os.makedirs(os.path.join(out, "messages"), exist_ok=True)
json.dump({"contacts": {c["name"]: c["public_key"] for c in keys}},
          open(os.path.join(out, "contacts.json"), "w"))
rng = random.Random(13)
words = ["w%d" % i for i in range(5000)] + ["meeting", "lunch", "tomorrow", "ok", "yes", "no"]
t0 = 1_600_000_000.0
for c in keys:
    t = t0
    with open(os.path.join(out, "messages", c["name"] + ".json"), "w") as f:
        f.write("[")
        for i in range(per_peer):
            t += rng.randint(1, 600)
            body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))
            f.write(("," if i else "") + json.dumps(
                {"content": body, "timestamp": t + rng.randint(0, 999) / 1000, "incoming": i % 2 == 0}))
        f.write("]")
PY
}

import_legacy() { # label dir messages [bin]
    local bin="${4:-$BIN}"
    "$bin" --profile "$1" init >/dev/null
    # The files just written (1.2 GB) are dirty pages: flushed first, so
    # their writeback does not compete with the import's own writes.
    sync
    ${LOCK:+flock "$LOCK"} /usr/bin/time -v "$bin" --profile "$1" import --legacy "$2" 2>"$WORK/time.txt" >/dev/null
    local wall rss cpu
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/time.txt")
    cpu=$(awk -F': ' '/User time|System time/ { t += $2 } END { printf "%.2f", t }' "$WORK/time.txt")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$WORK/time.txt" |
        awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }')
    echo "$1: $3 messages in ${wall}s: $(awk -v n="$3" -v w="$wall" 'BEGIN { printf "%.0f", n / w }') messages/s, CPU ${cpu}s, peak RSS ${rss} KiB"
    rm -rf "${CHAT_HOME:?}/$1"
}

if [ -n "$SMALL_PER_PEER" ]; then
    legacy_files "$WORK/small" "$SMALL_PER_PEER"
    echo "--- files: $PEERS x $SMALL_PER_PEER, $(du -sm "$WORK/small" | cut -f1) MB"
fi
legacy_files "$WORK/big" "$PER_PEER"
echo "--- files: $PEERS x $PER_PEER, $(du -sm "$WORK/big" | cut -f1) MB"
echo "load average before the imports: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$SMALL_PER_PEER" ]; then
    import_legacy small "$WORK/small" $((PEERS * SMALL_PER_PEER))
    if [ -n "$BASELINE_BIN" ]; then
        import_legacy baseline-small "$WORK/small" $((PEERS * SMALL_PER_PEER)) "$BASELINE_BIN"
    fi
fi
import_legacy big "$WORK/big" $((PEERS * PER_PEER))
if [ -n "$BASELINE_BIN" ]; then
    import_legacy baseline-big "$WORK/big" $((PEERS * PER_PEER)) "$BASELINE_BIN"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$WORK"
