#!/usr/bin/env bash
# The import's floor (issue 13, item 5). Not a test: it prints figures.
#
# How fast can SQLite itself put the rows of a 1M-message import (the same
# messages, events and both FTS indexes, into an empty profile of the same
# schema, with the import's pragmas and deferred indexes) without any
# parsing or parameter binding? The `sqlite3` shell copies them with
# INSERT ... SELECT from a profile an import has already filled.
#
# Usage: bench/import_floor.sh SRC_DB EMPTY_DB [VARIANT...]
#   SRC_DB:   chat.db of a profile holding the imported messages
#   EMPTY_DB: chat.db of a fresh profile (`chat-p2p --profile x init`),
#             copied for each run, never written
#   VARIANT:  wal (as the import does it), delete (rollback journal
#             instead of WAL), tuned (wal + PRAGMA threads = 2 + a 32 MB
#             FTS5 hashsize), noevents (no message_events rows: one row
#             per message), nofts (no FTS fill); default: all
# Prints wall time, messages/s (over the rows of SRC_DB), CPU and the time
# of each statement (.timer).
set -euo pipefail
SRC=$1
EMPTY=$2
shift 2
VARIANTS=("$@")
[ "${#VARIANTS[@]}" -gt 0 ] || VARIANTS=(wal delete tuned noevents nofts)
SQLITE3="${SQLITE3:-/usr/bin/sqlite3}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/import-floor.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
N=$("$SQLITE3" "$SRC" "SELECT count(*) FROM messages")

floor() { # variant
    local jm=WAL extra="" events=1 fts=1
    case $1 in
        wal) ;;
        delete) jm=DELETE ;;
        tuned) extra="PRAGMA threads = 2;
INSERT INTO messages_fts (messages_fts, rank) VALUES ('hashsize', 33554432);" ;;
        noevents) events=0 ;;
        nofts) fts=0 ;;
        *) echo "unknown variant $1" >&2; exit 1 ;;
    esac
    local db="$WORK/$1.db"
    cp "$EMPTY" "$db"
    {
        cat <<SQL
PRAGMA journal_mode = $jm;
PRAGMA cache_size = -262144;
PRAGMA synchronous = NORMAL;
PRAGMA temp_store = FILE;
PRAGMA foreign_keys = ON;
ATTACH '$SRC' AS src;
.timer on
BEGIN;
$extra
DROP TRIGGER messages_fts_insert;
DROP TRIGGER messages_trigram_insert;
DROP INDEX messages_peer_time;
DROP INDEX messages_time;
DROP INDEX messages_status;
DROP INDEX messages_outbox;
.print @messages
INSERT INTO main.messages (id, msg_id, peer_key, direction, body, status, created_at,
                           sent_at, delivered_at, read_at, received_at, failed_at, failure_reason)
SELECT id, msg_id, peer_key, direction, body, status, created_at,
       sent_at, delivered_at, read_at, received_at, failed_at, failure_reason
FROM src.messages ORDER BY id;
SQL
        if [ "$events" = 1 ]; then
            echo ".print @events"
            echo "INSERT INTO main.message_events (message_id, seq, status, at, detail)
SELECT message_id, seq, status, at, detail FROM src.message_events ORDER BY message_id, seq;"
        fi
        # The deferred indexes, as src/archive/import.rs rebuilds them.
        "$SQLITE3" "$EMPTY" "SELECT '.print @' || name || char(10) || sql || ';' FROM sqlite_schema
            WHERE type = 'index' AND tbl_name = 'messages' AND sql IS NOT NULL
              AND sql NOT LIKE 'CREATE UNIQUE %' ORDER BY name"
        if [ "$fts" = 1 ]; then
            echo ".print @fts
INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages;
.print @trigram
INSERT INTO messages_trigram (rowid, body) SELECT id, body FROM messages_non_ascii;"
        fi
        "$SQLITE3" "$EMPTY" "SELECT sql || ';' FROM sqlite_schema
            WHERE name IN ('messages_fts_insert', 'messages_trigram_insert')"
        echo ".print @commit"
        echo "COMMIT;"
        echo "DETACH src;"
        echo "PRAGMA journal_mode = WAL;"
    } >"$WORK/$1.sql"
    sync
    local la0 la1
    la0=$(cut -d' ' -f1 /proc/loadavg)
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$SQLITE3" "$db" <"$WORK/$1.sql" >"$WORK/out"
    la1=$(cut -d' ' -f1 /proc/loadavg)
    read -r wall user sys rss <"$WORK/time"
    awk -v v="$1" -v n="$N" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v a="$la0" -v b="$la1" \
        'BEGIN { printf "floor %s: %.2f s, %.0f messages/s, CPU %.2f s, peak RSS %d MB, load %s -> %s\n",
                 v, w, n / w, u + s, r / 1024, a, b }'
    echo "  statements (s): $(awk '/^@/ { name = substr($1, 2) } /^Run Time/ && name { printf "%s %s, ", name, $4; name = "" }' "$WORK/out")"
    rm -f "$db" "$db-wal" "$db-shm" "$db-journal"
}

for v in "${VARIANTS[@]}"; do floor "$v"; done
