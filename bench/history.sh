#!/usr/bin/env bash
# History store benchmark (issue 3). Not a test: it prints figures.
#
# Builds a profile of N messages across C contacts from a deterministic
# JSON Lines export (examples/gen_history.rs), then measures, printing the
# median of RUNS runs (import: IMPORT_RUNS runs, each into a fresh profile):
#   - import rate (messages/s, whole `chat-p2p import` process);
#   - `history --search` for a common and a rare word, newest first and
#     --rank, whole-process wall time;
#   - `export --json` wall time and peak RSS (/usr/bin/time -v);
# and, as baselines on the same file in the same run, the sqlite3 shell
# running the same FTS queries and `sqlite3 -json` dumping the messages.
#
# Usage: bench/history.sh            (N=1000000 C=100 RUNS=7 IMPORT_RUNS=3)
#        N=100000 RUNS=3 bench/history.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-1000000}"
C="${C:-100}"
RUNS="${RUNS:-7}"
IMPORT_RUNS="${IMPORT_RUNS:-3}"
WORK="${WORK:-${TMPDIR:-/tmp}/chat-p2p-bench}"
SQLITE3="${SQLITE3:-/usr/bin/sqlite3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

cargo build --release --quiet --bin chat-p2p --example gen_history
BIN="$CARGO_TARGET_DIR/release/chat-p2p"
GEN="$CARGO_TARGET_DIR/release/examples/gen_history"

rm -rf "$WORK"
mkdir -p "$WORK"
export CHAT_HOME="$WORK/home"
unset CHAT_PROFILE NO_COLOR || true

now_ns() { date +%s%N; }
# Wall time of a command in milliseconds (3 decimals), output discarded.
wall_ms() {
    local t0 t1
    t0=$(now_ns)
    "$@" >/dev/null
    t1=$(now_ns)
    awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f\n", d / 1e6 }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
repeat_ms() { for _ in $(seq "$RUNS"); do wall_ms "$@"; done | median; }
# Wall seconds, peak RSS (KiB) and CPU seconds (user + system, all
# threads) of a command, from GNU time. CPU time hardly depends on what else
# runs on the machine; wall time does.
time_v() {
    /usr/bin/time -v "$@" 2>"$WORK/time.txt" >/dev/null
    local rss wall cpu
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/time.txt")
    cpu=$(awk -F': ' '/User time|System time/ { t += $2 } END { printf "%.2f", t }' "$WORK/time.txt")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$WORK/time.txt" |
        awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }')
    echo "$wall $rss $cpu"
}

echo "--- machine"
echo "nproc: $(nproc); CPU: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sqlite3 shell: $("$SQLITE3" --version | cut -d' ' -f1)"

echo "--- generating $N messages across $C contacts"
EXPORT="$WORK/export.jsonl"
"$GEN" "$N" "$C" >"$EXPORT"
echo "export.jsonl: $(du -m "$EXPORT" | cut -f1) MB"

echo "--- import ($IMPORT_RUNS runs, fresh profile each)"
rates=()
for i in $(seq "$IMPORT_RUNS"); do
    profile="import$i"
    "$BIN" --profile "$profile" init >/dev/null
    read -r wall rss cpu < <(time_v "$BIN" --profile "$profile" import --other-identity "$EXPORT")
    rate=$(awk -v n="$N" -v w="$wall" 'BEGIN { printf "%.0f", n / w }')
    echo "run $i: ${wall}s, ${rate} messages/s, peak RSS ${rss} KiB, CPU ${cpu}s"
    rates+=("$rate")
    [ "$i" -gt 1 ] && rm -rf "$CHAT_HOME/$profile"
done
IMPORT_RATE=$(printf '%s\n' "${rates[@]}" | median)
DB="$CHAT_HOME/import1/chat.db"
echo "database: $(du -m "$DB" | cut -f1) MB"
count() { "$SQLITE3" "$DB" "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH '$1'"; }
echo "'meeting' in $(count meeting) messages, 'zanzibar' in $(count zanzibar)"

# The application's search query, verbatim, for the shell baseline.
fts_sql() { # word order
    cat <<SQL
SELECT m.id, m.msg_id, m.peer_key, c.name, m.direction, m.body, m.status,
       m.created_at, m.sent_at, m.delivered_at, m.read_at, m.received_at,
       m.failed_at, m.failure_reason,
       snippet(messages_fts, 0, char(2), char(3), '…', 12)
FROM messages_fts
JOIN messages AS m ON m.id = messages_fts.rowid
LEFT JOIN contacts AS c ON c.public_key = m.peer_key
WHERE messages_fts MATCH '$1' ORDER BY $2 LIMIT 50;
SQL
}

echo "--- search (median of $RUNS, whole process, ms)"
declare -A S
for word in meeting zanzibar; do
    S[app_new_$word]=$(repeat_ms "$BIN" --profile import1 history --search "$word")
    S[app_rank_$word]=$(repeat_ms "$BIN" --profile import1 history --search "$word" --rank)
    S[sql_new_$word]=$(repeat_ms "$SQLITE3" "$DB" "$(fts_sql "$word" "messages_fts.rowid DESC")")
    S[sql_rank_$word]=$(repeat_ms "$SQLITE3" "$DB" "$(fts_sql "$word" "messages_fts.rank")")
    printf '%-9s newest: app %8s  sqlite3 %8s | rank: app %8s  sqlite3 %8s\n' "$word" \
        "${S[app_new_$word]}" "${S[sql_new_$word]}" "${S[app_rank_$word]}" "${S[sql_rank_$word]}"
done
echo "history (no search, 50 latest of one contact): $(repeat_ms "$BIN" --profile import1 history contact042) ms"
echo "process start baseline (chat-p2p --version): $(repeat_ms "$BIN" --version) ms"

echo "--- export (median of $RUNS)"
walls=()
rsss=()
cpus=()
for _ in $(seq "$RUNS"); do
    read -r wall rss cpu < <(time_v "$BIN" --profile import1 export --json --output "$WORK/out.json")
    walls+=("$wall")
    rsss+=("$rss")
    cpus+=("$cpu")
done
base=()
base_cpu=()
for _ in $(seq "$RUNS"); do
    read -r wall _rss cpu < <(time_v sh -c "\"$SQLITE3\" -json \"$DB\" 'SELECT * FROM messages' >\"$WORK/sqlite.json\"")
    base+=("$wall")
    base_cpu+=("$cpu")
done
med() { printf '%s\n' "$@" | median; }
echo "export --json: $(med "${walls[@]}") s, CPU $(med "${cpus[@]}") s, peak RSS $(med "${rsss[@]}") KiB ($(du -m "$WORK/out.json" | cut -f1) MB)"
echo "sqlite3 -json SELECT * FROM messages: $(med "${base[@]}") s, CPU $(med "${base_cpu[@]}") s ($(du -m "$WORK/sqlite.json" | cut -f1) MB)"

echo "--- summary"
echo "import: $IMPORT_RATE messages/s (median of $IMPORT_RUNS)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$WORK"
