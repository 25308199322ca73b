#!/usr/bin/env bash
# The whole product, end to end, as a person would use it: a router, two
# profiles, messages both ways, every status with its time, a router
# restart in the middle, then history, search, export and sqlite3.
#
# Runs from a fresh clone with no prompts; every step is printed and
# checked, any failed check exits non-zero, and every process it started is
# stopped, also on failure.
set -euo pipefail
cd "$(dirname "$0")"

for tool in cargo jq sqlite3; do
    command -v "$tool" >/dev/null || { echo "test_full_flow.sh needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d)
ROUTER_PID=""
LINK_PID=""
cleanup() {
    status=$?
    if [ -n "$LINK_PID" ]; then kill "$LINK_PID" 2>/dev/null || true; fi
    if [ -n "$ROUTER_PID" ] && kill -0 "$ROUTER_PID" 2>/dev/null; then
        kill -TERM "$ROUTER_PID" 2>/dev/null || true
        wait "$ROUTER_PID" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        echo
        echo "FAILED (exit $status). Router log:" >&2
        tail -n 20 "$WORK/router.log" >&2 2>/dev/null || true
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
alice() { CHAT_PROFILE=alice "$BIN" "$@"; }
bob() { CHAT_PROFILE=bob "$BIN" "$@"; }
laptop() { CHAT_PROFILE=alice-laptop "$BIN" "$@"; }
# status_of PROFILE PEER BODY: the status of that one message
status_of() {
    CHAT_PROFILE=$1 "$BIN" history "$2" --json --limit 1000 |
        jq -r --arg body "$3" '[.[] | select(.body == $body)] | if length == 1 then .[0].status else "copies: \(length)" end'
}

start_router() {
    "$BIN" router --listen "$1" --data "$WORK/router" >"$WORK/router.out" 2>>"$WORK/router.log" &
    ROUTER_PID=$!
    for _ in $(seq 100); do
        if grep -q '^listening on ' "$WORK/router.out" 2>/dev/null; then break; fi
        kill -0 "$ROUTER_PID" 2>/dev/null || fail "the router exited at start"
        sleep 0.1
    done
    ADDR=$(sed -n 's/^listening on //p' "$WORK/router.out")
    [ -n "$ADDR" ] || fail "the router did not say where it listens"
    export CHAT_SERVER="ws://$ADDR/ws"
}

step "Start a router on a free port"
start_router 127.0.0.1:0
ok "router listening on $ADDR (pid $ROUTER_PID)"

step "Create alice and bob, and exchange their keys"
alice init >/dev/null
bob init >/dev/null
ALICE=$(alice whoami --key)
BOB=$(bob whoami --key)
alice add-contact bob "$BOB"
bob add-contact alice "$ALICE"
expect "alice's contact bob" "$(alice contacts --json | jq -r '.[0].public_key')" "$BOB"

step "Alice sends while bob is offline: the router holds it"
alice send bob "Hello Bob, this is Alice."
expect "status of alice's message" "$(status_of alice bob 'Hello Bob, this is Alice.')" sent

step "Bob comes online and receives it; alice sees it delivered"
bob sync
expect "bob has it" "$(status_of bob alice 'Hello Bob, this is Alice.')" received
alice sync
expect "status at alice" "$(status_of alice bob 'Hello Bob, this is Alice.')" delivered

step "Bob opens the chat (the message is shown, so read) and answers"
printf 'Hi Alice! Got your message.\nexit\n' | bob chat alice
expect "bob's copy" "$(status_of bob alice 'Hello Bob, this is Alice.')" read
alice sync
expect "status at alice" "$(status_of alice bob 'Hello Bob, this is Alice.')" read
expect "alice has bob's answer" "$(status_of alice bob 'Hi Alice! Got your message.')" received

step "A few more messages both ways"
printf 'The secret plan is ready.\nMeet at the café at noon.\nexit\n' | alice chat bob
bob sync
printf 'Perfect, see you there.\nexit\n' | bob chat alice
alice sync
expect "alice's messages" "$(alice history bob --json | jq '[.[] | select(.direction == "out")] | length')" 3
expect "bob's messages" "$(bob history alice --json | jq '[.[] | select(.direction == "out")] | length')" 2

step "Restart the router in the middle: nothing is lost"
alice send bob "Sent just before the router died."
expect "held by the router" "$(status_of alice bob 'Sent just before the router died.')" sent
kill -KILL "$ROUTER_PID"
wait "$ROUTER_PID" 2>/dev/null || true
ROUTER_PID=""
ok "router killed with SIGKILL"
if alice send bob "Written while the router is down." 2>"$WORK/send.err"; then
    fail "send succeeded without a router"
fi
ok "send failed as it should: $(head -n 1 "$WORK/send.err")"
expect "kept as" "$(status_of alice bob 'Written while the router is down.')" pending
start_router "$ADDR"
ok "router restarted on $ADDR (pid $ROUTER_PID)"
alice sync
expect "the pending message" "$(status_of alice bob 'Written while the router is down.')" sent
bob sync
expect "bob got the message queued before the crash" "$(status_of bob alice 'Sent just before the router died.')" received
expect "bob got the message written during the outage" "$(status_of bob alice 'Written while the router is down.')" received
alice sync
expect "delivered after the restart" "$(status_of alice bob 'Written while the router is down.')" delivered
expect "nothing doubled at bob" "$(bob history alice --json --limit 1000 | jq '[.[].msg_id] | length == (unique | length)')" true

step "Alice's history"
alice history bob

step "Search: history --search"
alice history --search 'secr*'
expect "hits for 'secr*'" "$(alice history --search 'secr*' --json | jq 'length')" 1
expect "accents ignored: 'cafe' finds 'café'" "$(alice history --search cafe --json | jq -r '.[0].message.body // .[0].body')" "Meet at the café at noon."

step "Export as JSON, parsed by jq"
alice export --json --output "$WORK/alice.json"
expect "messages exported" "$(jq '.messages | length' "$WORK/alice.json")" 7
expect "no secret key without --include-secret" "$(jq 'has("secret_key")' "$WORK/alice.json")" false

step "sqlite3: statuses and timestamps, straight from the file"
DB=$(alice whoami --json | jq -r .database)
sqlite3 -header -column "$DB" "
    SELECT direction, status, created_at, sent_at, delivered_at, read_at, body
    FROM messages_view ORDER BY created_at;"
expect "alice's messages read by bob" "$(sqlite3 "$DB" "
    SELECT count(*) FROM messages WHERE direction = 'out' AND status = 'read';")" 3
expect "read messages with a timestamp missing or out of order" "$(sqlite3 "$DB" "
    SELECT count(*) FROM messages
    WHERE direction = 'out' AND status = 'read'
      AND NOT (created_at <= sent_at AND sent_at <= delivered_at AND delivered_at <= read_at);")" 0

step "Alice links her laptop: it gets her identity and her whole history"
alice link --json >"$WORK/link.out" 2>"$WORK/link.err" &
LINK_PID=$!
for _ in $(seq 100); do
    if [ -s "$WORK/link.out" ]; then break; fi
    sleep 0.1
done
CODE=$(head -n 1 "$WORK/link.out" | jq -r .code)
ok "alice's one-time code: $CODE"
laptop link --join "$CODE" --device-name laptop
wait "$LINK_PID" || fail "link on alice's first device: $(cat "$WORK/link.err")"
LINK_PID=""
expect "the laptop's identity" "$(laptop whoami --key)" "$ALICE"
expect "the laptop's history" "$(laptop history bob --json --limit 1000 | jq -c '[.[] | [.msg_id, .status]]')" \
    "$(alice history bob --json --limit 1000 | jq -c '[.[] | [.msg_id, .status]]')"
expect "alice's devices at the router" "$(laptop devices --json | jq length)" 2
if laptop link --join "$CODE" --timeout 5 2>"$WORK/again.err"; then
    fail "a code worked twice"
fi
ok "the code works once: $(head -n 1 "$WORK/again.err")"

step "Bob writes once: the message arrives on both of alice's devices"
bob send alice "One message, two devices."
alice sync
laptop sync
expect "on alice's first device" "$(status_of alice bob 'One message, two devices.')" received
expect "on alice's laptop" "$(status_of alice-laptop bob 'One message, two devices.')" received

printf '\n%sAll checks passed.%s\n' "$BOLD" "$PLAIN"
echo "flow: $CHECKS passed, 0 failed"
