#!/usr/bin/env bash
# History store benchmark (issue 3). Not a test: it prints figures.
#
# Builds a profile of N messages across C contacts from a deterministic
# JSON Lines export (examples/gen_history.rs), then measures, printing the
# median of RUNS runs (import: IMPORT_RUNS runs, each into a fresh profile):
#   - import rate (messages/s, whole `chat-p2p import` process);
#   - `history --search` for a common and a rare word, newest first and
#     --rank, and for a common and a rare substring of unspaced
#     (Japanese-like) text, whole-process wall time;
#   - the trigram index (issue 12): its size, the time to build it over all
#     rows, and the cost of a write (one row per transaction) with and
#     without it;
#   - `export --json` wall time and peak RSS (/usr/bin/time -v);
# and, as baselines on the same file in the same run, the sqlite3 shell
# running the same FTS queries and `sqlite3 -json` dumping the messages,
# and (with BASELINE_REV or BASELINE_BIN) an older chat-p2p importing the
# same file, its runs interleaved with ours.
#
# CJK percent of the messages are unspaced Japanese-like text (default 10;
# CJK=0 gives issue 3's data set).
#
# Usage: bench/history.sh            (N=1000000 C=100 RUNS=7 IMPORT_RUNS=3 CJK=10)
#        N=100000 RUNS=3 bench/history.sh
#        BASELINE_REV=main bench/history.sh   (builds that commit's binary too)
#        BASELINE_BIN=/path/to/old/chat-p2p bench/history.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-1000000}"
C="${C:-100}"
RUNS="${RUNS:-7}"
IMPORT_RUNS="${IMPORT_RUNS:-3}"
CJK="${CJK:-10}"
BASELINE_REV="${BASELINE_REV:-}"
BASELINE_BIN="${BASELINE_BIN:-}"
WORK="${WORK:-${TMPDIR:-/tmp}/chat-p2p-bench}"
SQLITE3="${SQLITE3:-/usr/bin/sqlite3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

rm -rf "$WORK"
mkdir -p "$WORK"
if [ -n "$BASELINE_REV" ]; then
    # The baseline's own tree, built first: the same target dir, so only
    # the crate itself is compiled twice.
    mkdir -p "$WORK/baseline-src"
    git archive "$BASELINE_REV" | tar -x -C "$WORK/baseline-src"
    (cd "$WORK/baseline-src" && cargo build --release --quiet --bin chat-p2p)
    cp "$CARGO_TARGET_DIR/release/chat-p2p" "$WORK/baseline-chat-p2p"
    BASELINE_BIN="$WORK/baseline-chat-p2p"
    rm -rf "$WORK/baseline-src"
    # Cargo fingerprints the crate by paths relative to its root and by
    # mtimes, so it would take the baseline's fresh build for ours.
    cargo clean --release --quiet -p chat-p2p
fi
if [ -n "$BASELINE_BIN" ] && cmp -s "$BASELINE_BIN" "$CARGO_TARGET_DIR/release/chat-p2p"; then
    cargo clean --release --quiet -p chat-p2p
fi
cargo build --release --quiet --bin chat-p2p --example gen_history
BIN="$CARGO_TARGET_DIR/release/chat-p2p"
if [ -n "$BASELINE_BIN" ] && cmp -s "$BASELINE_BIN" "$BIN"; then
    echo "the baseline and this tree built the same binary: not a comparison" >&2
    exit 1
fi
GEN="$CARGO_TARGET_DIR/release/examples/gen_history"
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

echo "--- generating $N messages across $C contacts, $CJK% unspaced (CJK)"
EXPORT="$WORK/export.jsonl"
"$GEN" "$N" "$C" "$CJK" >"$EXPORT"
echo "export.jsonl: $(du -m "$EXPORT" | cut -f1) MB"

echo "--- import ($IMPORT_RUNS runs, fresh profile each${BASELINE_BIN:+, interleaved with the baseline})"
# One import of the export into a fresh profile with binary $1; prints
# "rate cpu".
import_once() { # bin profile label
    "$1" --profile "$2" init >/dev/null
    # The export just written, and the previous import, leave hundreds of
    # MB of dirty pages: flushed first, their writeback would slow this
    # import's own writes and fsyncs (one import right after writing the
    # file took 21.6 s of CPU, against 15-16 s otherwise).
    sync
    read -r wall rss cpu < <(time_v "$1" --profile "$2" import --other-identity "$EXPORT")
    rate=$(awk -v n="$N" -v w="$wall" 'BEGIN { printf "%.0f", n / w }')
    echo "$3: ${wall}s, ${rate} messages/s, peak RSS ${rss} KiB, CPU ${cpu}s" >&2
    echo "$rate $cpu"
}
rates=()
cpus=()
base_rates=()
base_cpus=()
for i in $(seq "$IMPORT_RUNS"); do
    read -r rate cpu < <(import_once "$BIN" "import$i" "run $i")
    rates+=("$rate")
    cpus+=("$cpu")
    if [ "$i" -gt 1 ]; then rm -rf "${CHAT_HOME:?}/import$i"; fi
    if [ -n "$BASELINE_BIN" ]; then
        read -r rate cpu < <(import_once "$BASELINE_BIN" "base$i" "baseline run $i")
        base_rates+=("$rate")
        base_cpus+=("$cpu")
        if [ "$i" -gt 1 ]; then rm -rf "${CHAT_HOME:?}/base$i"; fi
    fi
done
IMPORT_RATE=$(printf '%s\n' "${rates[@]}" | median)
IMPORT_CPU=$(printf '%s\n' "${cpus[@]}" | median)
DB="$CHAT_HOME/import1/chat.db"
echo "database: $(du -m "$DB" | cut -f1) MB"
if [ -n "$BASELINE_BIN" ]; then
    BASE_DB="$CHAT_HOME/base1/chat.db"
    echo "baseline database: $(du -m "$BASE_DB" | cut -f1) MB"
fi
index_mb() { # table-name prefix
    "$SQLITE3" "$DB" "SELECT printf('%.1f', sum(pgsize) / 1048576.0) FROM dbstat
                      WHERE name = '$1' OR name LIKE '$1\_%' ESCAPE '\\'"
}
echo "messages_fts (words): $(index_mb messages_fts) MB; messages_trigram: $(index_mb messages_trigram) MB" \
    "for $("$SQLITE3" "$DB" "SELECT count(*) FROM messages_non_ascii") non-ASCII messages"
count() { "$SQLITE3" "$DB" "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH '$1'"; }
tcount() { "$SQLITE3" "$DB" "SELECT count(*) FROM messages_trigram WHERE messages_trigram MATCH '$1'"; }
echo "'meeting' in $(count meeting) messages, 'zanzibar' in $(count zanzibar);" \
    "'打ち合わせ' in $(tcount '"打ち合わせ"'), 'ザンジバル' in $(tcount '"ザンジバル"')"

# The application's search queries, verbatim, for the shell baseline:
# `--search WORD` is the FTS5 string "WORD"* on the word index; a
# substring of three characters or more is "TEXT" on the trigram index.
fts_sql() { # index match order
    cat <<SQL
SELECT m.id, m.msg_id, m.peer_key, c.name, m.direction, m.body, m.status,
       m.created_at, m.sent_at, m.delivered_at, m.read_at, m.received_at,
       m.failed_at, m.failure_reason,
       snippet($1, 0, char(2), char(3), '…', $([ "$1" = messages_fts ] && echo 12 || echo 24))
FROM $1
JOIN messages AS m ON m.id = $1.rowid
LEFT JOIN contacts AS c ON c.public_key = m.peer_key
WHERE $1 MATCH '$2' ORDER BY $3 LIMIT 50;
SQL
}
# A 1-2 character substring: LIKE, newest first (no index can serve it).
like_sql() {
    cat <<SQL
SELECT m.id, m.msg_id, m.peer_key, c.name, m.direction, m.body, m.status,
       m.created_at, m.sent_at, m.delivered_at, m.read_at, m.received_at,
       m.failed_at, m.failure_reason, m.body
FROM messages AS m
LEFT JOIN contacts AS c ON c.public_key = m.peer_key
WHERE m.body LIKE '%$1%' ESCAPE '\\' ORDER BY m.id DESC LIMIT 50;
SQL
}

echo "--- search (median of $RUNS, whole process, ms)"
declare -A S
for word in meeting zanzibar; do
    S[app_new_$word]=$(repeat_ms "$BIN" --profile import1 history --search "$word")
    S[app_rank_$word]=$(repeat_ms "$BIN" --profile import1 history --search "$word" --rank)
    S[sql_new_$word]=$(repeat_ms "$SQLITE3" "$DB" "$(fts_sql messages_fts "\"$word\"*" "messages_fts.rowid DESC")")
    S[sql_rank_$word]=$(repeat_ms "$SQLITE3" "$DB" "$(fts_sql messages_fts "\"$word\"*" "messages_fts.rank")")
    printf '%-9s newest: app %8s  sqlite3 %8s | rank: app %8s  sqlite3 %8s\n' "$word" \
        "${S[app_new_$word]}" "${S[sql_new_$word]}" "${S[app_rank_$word]}" "${S[sql_rank_$word]}"
done
for text in 打ち合わせ ザンジバル; do
    S[app_new_$text]=$(repeat_ms "$BIN" --profile import1 history --search "$text")
    S[app_rank_$text]=$(repeat_ms "$BIN" --profile import1 history --search "$text" --rank)
    S[sql_new_$text]=$(repeat_ms "$SQLITE3" "$DB" "$(fts_sql messages_trigram "\"$text\"" "messages_trigram.rowid DESC")")
    S[sql_rank_$text]=$(repeat_ms "$SQLITE3" "$DB" "$(fts_sql messages_trigram "\"$text\"" "messages_trigram.rank")")
    printf '%-9s newest: app %8s  sqlite3 %8s | rank: app %8s  sqlite3 %8s\n' "$text" \
        "${S[app_new_$text]}" "${S[sql_new_$text]}" "${S[app_rank_$text]}" "${S[sql_rank_$text]}"
done
# Two characters: the common one stops after 50 hits, the rare one
# (only inside ザンジバル) reads every row.
for text in 合わ ジバ; do
    printf '%-9s newest: app %8s  sqlite3 %8s (LIKE)\n' "$text" \
        "$(repeat_ms "$BIN" --profile import1 history --search "$text")" \
        "$(repeat_ms "$SQLITE3" "$DB" "$(like_sql "$text")")"
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

echo "--- trigram index: build and writes"
# The trigram index's whole cost to build, as the import's fill pays it
# (the same rows, one statement), in the shell on our database.
rebuild_s=$( { /usr/bin/time -f %e "$SQLITE3" "$DB" \
    "INSERT INTO messages_trigram (messages_trigram) VALUES ('rebuild')" >/dev/null; } 2>&1)
echo "rebuilding messages_trigram over all rows: ${rebuild_s}s (sqlite3 shell)"
# Live writes: 1,000 single-row transactions through the triggers, into our
# schema and (if any) the baseline's, median of 3, µs per message.
writes_us() { # db body tag (unique per call: ids must not repeat)
    local sql="$WORK/writes.sql"
    {
        echo "PRAGMA synchronous = NORMAL;"
        for k in $(seq 1000); do
            echo "INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at, received_at)
                  VALUES ('w-$3-$k', 'k', 'in', '$2 $k', 'received', '2027-01-01T00:00:00.000Z', '2027-01-01T00:00:00.000Z');"
        done
    } >"$sql"
    local ms
    ms=$(wall_ms "$SQLITE3" "$1" ".read $sql")
    awk -v ms="$ms" 'BEGIN { printf "%.0f\n", ms }'
}
write_row() { # label db
    local a j
    a=$(for r in 1 2 3; do writes_us "$2" "meeting at ten about the zanzibar trip" "a$r"; done | median)
    j=$(for r in 1 2 3; do writes_us "$2" "明日の打ち合わせは十時からです" "j$r"; done | median)
    echo "$1: ASCII body ${a} µs/message, Japanese body ${j} µs/message (1,000 transactions, median of 3)"
}
write_row "writes, this schema (V7, trigram)" "$DB"
if [ -n "$BASELINE_BIN" ]; then write_row "writes, baseline schema" "$BASE_DB"; fi

echo "--- summary"
echo "import: $IMPORT_RATE messages/s, CPU ${IMPORT_CPU}s (median of $IMPORT_RUNS)"
if [ -n "$BASELINE_BIN" ]; then
    echo "baseline import: $(printf '%s\n' "${base_rates[@]}" | median) messages/s," \
        "CPU $(printf '%s\n' "${base_cpus[@]}" | median)s (median of $IMPORT_RUNS, same file, interleaved)"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$WORK"
