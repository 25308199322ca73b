#!/usr/bin/env bash
# Home routers, end to end, as people would use them: two routers run by
# two operators (separate processes, separate data), alice at home on
# router A, bob on router B. They swap addresses (chat-p2p:KEY@ROUTER),
# then every message goes to its recipient's router and every receipt to
# its sender's: sent, delivered and read, across the two. Bob is offline
# while alice writes; alice's router is killed with SIGKILL while bob
# writes to her, so bob's message waits in his outbox until it is back.
# At the end every message is there exactly once, with its status.
#
# Runs from a fresh clone with no prompts; every step is printed and
# checked, any failed check exits non-zero, and every process it started is
# stopped, also on failure.
set -euo pipefail
cd "$(dirname "$0")"

for tool in cargo jq sqlite3 curl; do
    command -v "$tool" >/dev/null || { echo "test_homes.sh needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d)
declare -A PID=() ADDR=() URL=()
cleanup() {
    status=$?
    for r in "${!PID[@]}"; do
        if [ -n "${PID[$r]}" ] && kill -0 "${PID[$r]}" 2>/dev/null; then
            kill -TERM "${PID[$r]}" 2>/dev/null || true
            wait "${PID[$r]}" 2>/dev/null || true
        fi
    done
    if [ "$status" -ne 0 ]; then
        echo
        echo "FAILED (exit $status). Last lines of each router's log:" >&2
        for r in A B; do
            echo "--- router $r" >&2
            tail -n 15 "$WORK/router-$r.log" >&2 2>/dev/null || true
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT INT TERM

CHECKS=0
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
step() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }
ok() { CHECKS=$((CHECKS + 1)); printf '    ok: %s\n' "$*"; }
fail() { printf '    FAILED: %s\n' "$*" >&2; exit 1; }
# expect WHAT ACTUAL EXPECTED
expect() {
    if [ "$2" = "$3" ]; then ok "$1 = $3"; else fail "$1: expected '$3', got '$2'"; fi
}

step "Build the release binary"
cargo build --release --quiet
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
BIN="$TARGET_DIR/release/chat-p2p"
"$BIN" --version

export CHAT_HOME="$WORK/home"
# Not the user's own config.toml: this demo must behave the same everywhere.
export CHAT_CONFIG="$WORK/config.toml"
# Each profile uses the home router recorded at `init`, nothing else.
unset CHAT_SERVER
alice() { CHAT_PROFILE=alice "$BIN" "$@"; }
bob() { CHAT_PROFILE=bob "$BIN" "$@"; }
# status_of PROFILE PEER BODY: the status of that one message
status_of() {
    CHAT_PROFILE=$1 "$BIN" history "$2" --json --limit 1000 |
        jq -r --arg body "$3" '[.[] | select(.body == $body)] | if length == 1 then .[0].status else "copies: \(length)" end'
}
# queued R: how many frames router R holds for recipients (its metrics)
queued() {
    curl -fsS "http://${ADDR[$1]}/metrics" | sed -n 's/^chat_router_queue_depth //p'
}

# start_router R LISTEN: router R with its own data directory and log.
start_router() {
    local r=$1
    : >"$WORK/router-$r.out"
    "$BIN" router --listen "$2" --data "$WORK/router-$r" \
        >"$WORK/router-$r.out" 2>>"$WORK/router-$r.log" &
    PID[$r]=$!
    for _ in $(seq 100); do
        if grep -q '^listening on ' "$WORK/router-$r.out" 2>/dev/null; then break; fi
        kill -0 "${PID[$r]}" 2>/dev/null || fail "router $r exited at start"
        sleep 0.1
    done
    ADDR[$r]=$(sed -n 's/^listening on //p' "$WORK/router-$r.out")
    [ -n "${ADDR[$r]}" ] || fail "router $r did not say where it listens"
    URL[$r]="ws://${ADDR[$r]}/ws"
}

step "Start two routers, each with its own data, on free ports"
start_router A 127.0.0.1:0
ok "router A listening on ${ADDR[A]} (pid ${PID[A]})"
start_router B 127.0.0.1:0
ok "router B listening on ${ADDR[B]} (pid ${PID[B]})"

step "Alice makes router A her home, bob router B"
alice init --server "${URL[A]}" >/dev/null
bob init --server "${URL[B]}" >/dev/null
alice whoami
ALICE_ADDR=$(alice whoami --address)
BOB_ADDR=$(bob whoami --address)
expect "alice's address" "$ALICE_ADDR" "chat-p2p:$(alice whoami --key)@ws://${ADDR[A]}"
expect "bob's address" "$BOB_ADDR" "chat-p2p:$(bob whoami --key)@ws://${ADDR[B]}"

step "They swap addresses (pasted unquoted, as a shell word)"
# shellcheck disable=SC2086 # an address needs no quoting: that is the point
alice add-contact bob $BOB_ADDR
# shellcheck disable=SC2086
bob add-contact alice $ALICE_ADDR
alice contacts
expect "bob's router at alice" "$(alice contacts --json | jq -r '.[] | select(.name == "bob") | .router')" "${URL[B]}"
expect "alice's router at bob" "$(bob contacts --json | jq -r '.[] | select(.name == "alice") | .router')" "${URL[A]}"

step "Bob is offline; alice writes: her messages wait at bob's router, B"
alice send bob "Hello Bob, this is Alice, from router A."
alice send bob "Your router keeps this for you."
expect "status of alice's first message" "$(status_of alice bob 'Hello Bob, this is Alice, from router A.')" sent
expect "frames queued at router B" "$(queued B)" 2
expect "frames queued at router A" "$(queued A)" 0

step "Bob comes online at B and receives them; the receipts go to alice's router, A"
bob sync
expect "bob has it" "$(status_of bob alice 'Hello Bob, this is Alice, from router A.')" received
expect "frames queued at router B" "$(queued B)" 0
# One receipt for both, or one each if they came in two batches.
expect "delivered receipt(s) waiting at router A" "$([ "$(queued A)" -ge 1 ] && echo yes || echo no)" yes
alice sync
expect "status at alice" "$(status_of alice bob 'Hello Bob, this is Alice, from router A.')" delivered
expect "status at alice" "$(status_of alice bob 'Your router keeps this for you.')" delivered

step "Bob opens the chat (the messages are shown, so read) and answers"
printf 'Hi Alice! Greetings from router B.\nexit\n' | bob chat alice
expect "bob's copy" "$(status_of bob alice 'Hello Bob, this is Alice, from router A.')" read
expect "answer and read receipt queued at router A" "$(queued A)" 2
alice sync
expect "status at alice" "$(status_of alice bob 'Hello Bob, this is Alice, from router A.')" read
expect "alice has bob's answer" "$(status_of alice bob 'Hi Alice! Greetings from router B.')" received
bob sync
expect "bob's answer at bob" "$(status_of bob alice 'Hi Alice! Greetings from router B.')" delivered

step "Alice reads it in a chat; bob sees it read"
printf 'exit\n' | alice chat bob
bob sync
expect "bob's answer at bob" "$(status_of bob alice 'Hi Alice! Greetings from router B.')" read

step "Alice's router dies (SIGKILL) while bob writes to her"
kill -KILL "${PID[A]}"
# (braces: the shell's own "Killed" notice goes to /dev/null too)
{ wait "${PID[A]}"; } 2>/dev/null || true
PID[A]=""
ok "router A killed with SIGKILL"
if bob send alice "Written while router A is down." 2>"$WORK/send.err"; then
    fail "send succeeded without alice's router"
fi
ok "send failed as it should: $(head -n 1 "$WORK/send.err")"
expect "kept as" "$(status_of bob alice 'Written while router A is down.')" pending
SYNC_RC=0
bob sync 2>"$WORK/sync.err" || SYNC_RC=$?
expect "sync with router A down (it warns, and reports the message pending): exit code" "$SYNC_RC" 0
grep -q 'stays pending' "$WORK/sync.err" || fail "sync did not warn: $(cat "$WORK/sync.err")"
ok "sync warned: $(head -n 1 "$WORK/sync.err")"
expect "still" "$(status_of bob alice 'Written while router A is down.')" pending

step "Router A comes back on the same address; bob's outbox goes out"
start_router A "${ADDR[A]}"
ok "router A restarted on ${ADDR[A]} (pid ${PID[A]})"
bob sync
expect "bob's message" "$(status_of bob alice 'Written while router A is down.')" sent
alice sync
expect "alice has it" "$(status_of alice bob 'Written while router A is down.')" received
bob sync
expect "bob's message" "$(status_of bob alice 'Written while router A is down.')" delivered

step "Nothing lost, nothing doubled"
ALICE_DB=$(alice whoami --json | jq -r .database)
BOB_DB=$(bob whoami --json | jq -r .database)
ids() { sqlite3 "$1" "SELECT msg_id FROM messages WHERE direction = '$2' ORDER BY msg_id;"; }
# differ A B: how many lines are in one list and not the other
differ() { diff <(echo "$1") <(echo "$2") | grep -c '^[<>]' || true; }
expect "alice's messages to bob" "$(ids "$ALICE_DB" out | wc -l)" 2
expect "ids alice sent that bob lacks, or the reverse" "$(differ "$(ids "$ALICE_DB" out)" "$(ids "$BOB_DB" in)")" 0
expect "bob's messages to alice" "$(ids "$BOB_DB" out | wc -l)" 2
expect "ids bob sent that alice lacks, or the reverse" "$(differ "$(ids "$BOB_DB" out)" "$(ids "$ALICE_DB" in)")" 0
expect "copies of any message at alice" "$(alice history bob --json --limit 1000 | jq '[.[].msg_id] | length - (unique | length)')" 0
expect "copies of any message at bob" "$(bob history alice --json --limit 1000 | jq '[.[].msg_id] | length - (unique | length)')" 0
expect "bob's messages not delivered" "$(sqlite3 "$BOB_DB" "
    SELECT count(*) FROM messages WHERE direction = 'out' AND status NOT IN ('delivered', 'read');")" 0
expect "alice's messages not read" "$(sqlite3 "$ALICE_DB" "
    SELECT count(*) FROM messages WHERE direction = 'out' AND status != 'read';")" 0
expect "frames left at router A" "$(queued A)" 0
expect "frames left at router B" "$(queued B)" 0
alice history bob

printf '\n%sAll checks passed.%s\n' "$BOLD" "$PLAIN"
echo "homes: $CHECKS passed, 0 failed"
