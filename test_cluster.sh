#!/usr/bin/env bash
# Several routers sharing Redis, as docs/DEPLOY.md sets them up: a
# redis-server from docs/deploy/redis.conf, two routers on it, and HAProxy
# from docs/deploy/haproxy.cfg in front, terminating TLS. Alice and bob
# chat through it with a session open each (one on each router), one
# router is killed with SIGKILL in the middle of a burst, Redis is killed
# with SIGKILL and started again from its append-only file, and at the end
# every message is delivered exactly once, with its status at the sender.
#
# Runs from a fresh clone with no prompts (./test.sh installs the tools);
# every step is printed and checked, any failed check exits non-zero, and
# every process it started is stopped, also on failure. Ports are free
# ones, files live in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)

missing=()
for tool in cargo jq sqlite3 redis-server redis-cli haproxy openssl curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test_cluster.sh needs ${missing[*]}: ./test.sh installs them (Debian packages" >&2
    echo "redis-server, haproxy, openssl, sqlite3, jq, curl)" >&2
    exit 1
fi

WORK=$(mktemp -d)
REDIS_PID=""
HAPROXY_PID=""
ROUTER_PIDS=()
WATCH_PIDS=()
# stop PID: SIGTERM, then SIGKILL if it has not exited within 5 s.
stop() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    status=$?
    for pid in "${WATCH_PIDS[@]}" "${ROUTER_PIDS[@]}" "$HAPROXY_PID" "$REDIS_PID"; do
        stop "$pid"
    done
    if [ "$status" -ne 0 ]; then
        echo
        echo "FAILED (exit $status). Last lines of each log:" >&2
        for log in "$WORK"/*.log "$WORK"/redis/redis.log; do
            [ -s "$log" ] || continue
            echo "--- $(basename "$log")" >&2
            tail -n 15 "$log" >&2
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
# Also from a check whose output wait_for hides: fd 9 is the real stderr.
exec 9>&2
fail() { printf '    FAILED: %s\n' "$*" >&9; exit 1; }
# expect WHAT ACTUAL EXPECTED
expect() {
    if [ "$2" = "$3" ]; then ok "$1 = $3"; else fail "$1: expected '$3', got '$2'"; fi
}
# wait_for WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds;
# fails after 30 s. A deadline for a hung cluster, not a measurement.
# COMMAND is run anew each time: a function, never "$(...)" evaluated once.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 150); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    fail "gave up waiting (30 s) for: $what"
}
# A port nothing listens on now, below Linux's range for outgoing
# connections (32768 and up), so no client socket takes it meanwhile.
# Whoever binds it still retries on a clash where it can.
free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 12000))
        if ! (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    fail "no free port found"
}

step "Build the release binary"
cargo build --release --quiet
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
BIN="$TARGET_DIR/release/chat-p2p"
"$BIN" --version

step "Start Redis from docs/deploy/redis.conf, with a password"
mkdir -p "$WORK/redis"
# Hex, as DEPLOY.md makes it: no escaping in the URL.
REDIS_PASS=$(openssl rand -hex 32)
export REDISCLI_AUTH="$REDIS_PASS"
# Our port, directory and log; every other setting is the shipped file's.
start_redis() {
    redis-server "$HERE/docs/deploy/redis.conf" \
        --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" \
        --logfile "$WORK/redis/redis.log" --daemonize no \
        --requirepass "$REDIS_PASS" >/dev/null 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 100); do
        if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then return 0; fi
        kill -0 "$REDIS_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
redis() { redis-cli -p "$REDIS_PORT" "$@"; }
for _ in 1 2 3 4 5; do
    REDIS_PORT=$(free_port)
    if start_redis; then break; fi
    stop "$REDIS_PID"
    REDIS_PID=""
done
[ -n "$REDIS_PID" ] || fail "redis-server did not start: $(tail -n 3 "$WORK/redis/redis.log")"
ok "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"
expect "appendonly" "$(redis config get appendonly | tail -n 1)" yes
expect "appendfsync" "$(redis config get appendfsync | tail -n 1)" everysec
expect "maxmemory-policy" "$(redis config get maxmemory-policy | tail -n 1)" noeviction
if REDISCLI_AUTH='' redis ping 2>/dev/null | grep -q PONG; then
    fail "redis answered without the password"
fi
ok "redis refuses clients without the password"

step "Generate a self-signed TLS certificate for localhost"
mkdir -p "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
# HAProxy wants the certificate and its key in one file.
cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/haproxy.pem"
ok "certificate $WORK/tls/cert.pem (clients trust it through SSL_CERT_FILE)"

HAPROXY_PORT=$(free_port)
PUBLIC_URL="wss://localhost:$HAPROXY_PORT/ws"

step "Start two routers on Redis, both named $PUBLIC_URL"
# As the systemd unit of DEPLOY.md does: the settings, password included,
# come from an environment file, not from the command line.
cat >"$WORK/router.env" <<EOF
CHAT_ROUTER_PUBLIC_URL=$PUBLIC_URL
CHAT_ROUTER_REDIS=redis://:$REDIS_PASS@127.0.0.1:$REDIS_PORT/0
EOF
chmod 600 "$WORK/router.env"
# start_router N [ADDR]: router N on ADDR (default a free port); sets
# ROUTER_ADDR[N].
declare -A ROUTER_ADDR
start_router() {
    local n=$1 listen=${2:-127.0.0.1:0}
    (
        set -a
        # shellcheck disable=SC1091
        . "$WORK/router.env"
        exec "$BIN" router --listen "$listen"
    ) >"$WORK/router$n.out" 2>>"$WORK/router$n.log" &
    ROUTER_PIDS[n]=$!
    for _ in $(seq 100); do
        if grep -q '^listening on ' "$WORK/router$n.out" 2>/dev/null; then break; fi
        kill -0 "${ROUTER_PIDS[n]}" 2>/dev/null || fail "router $n exited at start"
        sleep 0.1
    done
    ROUTER_ADDR[$n]=$(sed -n 's/^listening on //p' "$WORK/router$n.out")
    [ -n "${ROUTER_ADDR[$n]}" ] || fail "router $n did not say where it listens"
}
# metric N NAME: router N's value of NAME (a metric without labels).
metric() {
    curl -fsS "http://${ROUTER_ADDR[$1]}/metrics" | awk -v name="$2" '$1 == name { print $2 }'
}
healthz() { curl -s -o /dev/null -w '%{http_code}' "http://${ROUTER_ADDR[$1]}/healthz"; }
# The same as conditions, for wait_for (which re-runs them).
metric_is() { [ "$(metric "$1" "$2")" = "$3" ]; }
healthz_is() { [ "$(healthz "$1")" = "$2" ]; }
start_router 1
start_router 2
ok "router 1 on ${ROUTER_ADDR[1]} (pid ${ROUTER_PIDS[1]}), router 2 on ${ROUTER_ADDR[2]} (pid ${ROUTER_PIDS[2]})"
expect "router 1 /healthz" "$(healthz 1)" 200
expect "router 2 /healthz" "$(healthz 2)" 200

step "Check docs/deploy/chat-p2p-router.service"
if command -v systemd-analyze >/dev/null; then
    # Verified as installed, with this build as its binary.
    sed "s#/usr/local/bin/chat-p2p#$BIN#" docs/deploy/chat-p2p-router.service \
        >"$WORK/chat-p2p-router.service"
    # It exits 0 on a misspelt or unparsable setting: any output is a failure.
    if ! systemd-analyze verify "$WORK/chat-p2p-router.service" >"$WORK/systemd.out" 2>&1 ||
        [ -s "$WORK/systemd.out" ]; then
        fail "systemd-analyze verify: $(cat "$WORK/systemd.out")"
    fi
    ok "systemd-analyze verify accepts the unit, without a warning"
else
    echo "    not checked: no systemd-analyze here (Debian package systemd)"
fi

step "Start HAProxy from docs/deploy/haproxy.cfg on 127.0.0.1:$HAPROXY_PORT"
# The guide's file with this test's addresses, certificate and log, and
# without what needs a system install (chroot, user, daemon, stats socket).
sed -E \
    -e "s#^( *bind ):443 ssl crt [^ ]+#\1127.0.0.1:$HAPROXY_PORT ssl crt $WORK/tls/haproxy.pem#" \
    -e "s#10\.0\.0\.11:8080#${ROUTER_ADDR[1]}#" \
    -e "s#10\.0\.0\.12:8080#${ROUTER_ADDR[2]}#" \
    -e "s#^( *log )/dev/log .*#\1stderr format raw local0#" \
    -e '/^ *(chroot|user|group|daemon|stats socket)( |$)/d' \
    docs/deploy/haproxy.cfg >"$WORK/haproxy.cfg"
grep -q "127.0.0.1:$HAPROXY_PORT ssl crt" "$WORK/haproxy.cfg" || fail "the bind line of haproxy.cfg was not found"
[ "$(grep -c "server router[12] 127.0.0.1:" "$WORK/haproxy.cfg")" = 2 ] || fail "the server lines of haproxy.cfg were not found"
haproxy -c -q -f "$WORK/haproxy.cfg" || fail "haproxy -c refuses the configuration"
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
# GET /ws without a key: HAProxy forwards it, a router answers 400.
through_haproxy() {
    curl -s -o /dev/null -w '%{http_code}' --cacert "$WORK/tls/cert.pem" "https://localhost:$HAPROXY_PORT$1"
}
forwards() {
    kill -0 "$HAPROXY_PID" 2>/dev/null || fail "haproxy exited: $(tail -n 2 "$WORK/haproxy.log")"
    test "$(through_haproxy /ws)" = 400
}
wait_for "HAProxy to forward /ws" forwards
ok "haproxy (pid $HAPROXY_PID) terminates TLS and forwards /ws"
expect "/metrics through HAProxy (kept private)" "$(through_haproxy /metrics)" 404

export CHAT_HOME="$WORK/home"
export CHAT_CONFIG="$WORK/config.toml"
export CHAT_SERVER="$PUBLIC_URL"
# rustls with the platform's roots: SSL_CERT_FILE replaces them.
export SSL_CERT_FILE="$WORK/tls/cert.pem"
alice() { CHAT_PROFILE=alice "$BIN" "$@"; }
bob() { CHAT_PROFILE=bob "$BIN" "$@"; }
# status_of PROFILE PEER BODY: the status of that one message
status_of() {
    CHAT_PROFILE=$1 "$BIN" history "$2" --json --limit 1000 |
        jq -r --arg body "$3" '[.[] | select(.body == $body)] | if length == 1 then .[0].status else "copies: \(length)" end'
}
has_status() { [ "$(status_of "$1" "$2" "$3")" = "$4" ]; }
# waiting_for PROFILE: the frames waiting in Redis for PROFILE's devices,
# one member of its wait set each (src/router/backend/redis/keys.rs).
waiting_for() {
    local hex key
    hex=$(CHAT_PROFILE=$1 "$BIN" whoami --json | jq -r .public_key | base64 -d | od -An -tx1 | tr -d ' \n')
    key=$(redis --scan --pattern "*:{$hex}:w" | head -n 1)
    if [ -z "$key" ]; then echo 0; else redis zcard "$key"; fi
}
# go_online NAME: NAME's `sync --watch --json` in the background, holding
# NAME's session; its events go to $WORK/NAME.watch.
declare -A WATCH_PID
go_online() {
    CHAT_PROFILE=$1 "$BIN" sync --watch --json >>"$WORK/$1.watch" 2>>"$WORK/$1-watch.log" &
    WATCH_PID[$1]=$!
    WATCH_PIDS+=("$!")
}
# connected NAME: NAME's watch has had a session (since it started).
connected() { grep -q '"kind":"connected"' "$WORK/$1.watch"; }

step "Create alice and bob, and exchange their keys"
alice init >/dev/null
bob init >/dev/null
alice add-contact bob "$(bob whoami --key)" >/dev/null
bob add-contact alice "$(alice whoami --key)" >/dev/null
ok "alice and bob know each other"
expect "doctor's router check through HAProxy" \
    "$(alice doctor --json | jq -r '.checks[] | select(.name == "router") | .status')" ok

step "Alice and bob stay online (sync --watch): one session on each router"
go_online alice
wait_for "alice's session" connected alice
go_online bob
wait_for "bob's session" connected bob
expect "sessions on router 1" "$(metric 1 chat_router_sessions)" 1
expect "sessions on router 2" "$(metric 2 chat_router_sessions)" 1

step "Messages both ways, live from one router to the other"
for i in 1 2 3; do
    alice send bob "alice to bob $i" >/dev/null
    bob send alice "bob to alice $i" >/dev/null
done
for i in 1 2 3; do
    wait_for "bob to receive 'alice to bob $i'" has_status bob alice "alice to bob $i" received
    wait_for "'alice to bob $i' delivered" has_status alice bob "alice to bob $i" delivered
    wait_for "alice to receive 'bob to alice $i'" has_status alice bob "bob to alice $i" received
    wait_for "'bob to alice $i' delivered" has_status bob alice "bob to alice $i" delivered
done
ok "3 messages each way received live, and delivered at their senders"

step "Kill router 1 with SIGKILL in the middle of a burst"
for i in $(seq 1 10); do
    alice send --queue bob "burst $i" >/dev/null
    bob send --queue alice "reply $i" >/dev/null
    if [ "$i" = 5 ]; then
        kill -KILL "${ROUTER_PIDS[1]}"
        { wait "${ROUTER_PIDS[1]}"; } 2>/dev/null || true
        ok "router 1 killed after 5 of 10 messages each way were queued"
    fi
done
wait_for "both sessions back, on router 2" metric_is 2 chat_router_sessions 2
ok "both clients reconnected through HAProxy to router 2"
for i in $(seq 1 10); do
    wait_for "'burst $i' delivered" has_status alice bob "burst $i" delivered
    wait_for "'reply $i' delivered" has_status bob alice "reply $i" delivered
done
expect "bob's copy of 'burst 10'" "$(status_of bob alice 'burst 10')" received
ok "all 10 messages each way delivered after the crash"

step "Bob goes offline; alice's messages wait in Redis"
stop "${WATCH_PID[bob]}"
# Frames bob had not acknowledged yet when his watch stopped (receipts
# just handed to him) wait too, for his next session. His session must be
# over before the count is taken: an ack he sent just before stopping may
# still be on its way to Redis (CI once counted one frame too many here).
wait_for "bob's session on router 2 to end" metric_is 2 chat_router_sessions 1
# What waits is counted in Redis itself, in bob's wait set: the depth
# gauge is a counter kept beside the queue, and a router killed as router
# 1 was above can leave it off by what it handled last (DEPLOY.md; CI
# once read 0 here, a counter left below zero, shown as 0).
BASE=$(waiting_for bob)
for i in 1 2 3; do
    alice send bob "queued $i" >/dev/null
    expect "status of 'queued $i'" "$(status_of alice bob "queued $i")" sent
done
expect "frames waiting for bob in Redis" "$(waiting_for bob)" $((BASE + 3))
expect "router 2 reports a queue depth" "$(metric 2 chat_router_queue_depth | grep -cE '^[0-9]+$')" 1

step "Kill Redis with SIGKILL; sends are refused, sessions stay open"
# disconnections NAME: how many times NAME's watch lost its session.
disconnections() { grep -c '"kind":"disconnected"' "$WORK/$1.watch" || true; }
ALICE_DROPS=$(disconnections alice)
kill -KILL "$REDIS_PID"
# (Braces: the shell's own "Killed" notice goes to /dev/null too.)
{ wait "$REDIS_PID"; } 2>/dev/null || true
ok "redis-server killed"
wait_for "router 2 to report Redis down" healthz_is 2 503
ok "router 2 /healthz: 503 $(curl -s "http://${ROUTER_ADDR[2]}/healthz")"
if alice send --timeout 3 bob "written while Redis is down" >/dev/null 2>"$WORK/send.err"; then
    fail "a send was acknowledged without Redis"
fi
ok "send refused: $(head -n 1 "$WORK/send.err")"
expect "kept as" "$(status_of alice bob 'written while Redis is down')" pending
expect "sessions on router 2 while Redis is down (alice's)" "$(metric 2 chat_router_sessions)" 1

step "Start Redis again on the same port and directory: it reloads its append-only file"
start_redis || fail "redis-server did not restart: $(tail -n 3 "$WORK/redis/redis.log")"
ok "redis-server back (pid $REDIS_PID)"
grep -q "DB loaded from append only file" "$WORK/redis/redis.log" ||
    fail "redis-server did not say it loaded its append-only file"
ok "redis-server loaded its append-only file"
wait_for "router 2 to report Redis up" healthz_is 2 200
ok "router 2 /healthz: 200"
wait_for "the message written during the outage to be sent" \
    has_status alice bob 'written while Redis is down' sent
expect "frames waiting for bob after the restart" "$(waiting_for bob)" $((BASE + 4))
expect "times alice's session dropped during the outage" "$(($(disconnections alice) - ALICE_DROPS))" 0

step "Bob comes back and gets everything that waited"
go_online bob
for body in "queued 1" "queued 2" "queued 3" "written while Redis is down"; do
    wait_for "'$body' delivered" has_status alice bob "$body" delivered
    expect "bob's copy of '$body'" "$(status_of bob alice "$body")" received
done

step "Nothing is left for anyone at the router"
stop "${WATCH_PID[alice]}"
stop "${WATCH_PID[bob]}"
# A frame handed over just as a watch stopped comes once more (at least
# once); after that one sync each, a second one gets nothing at all.
alice sync >/dev/null
bob sync >/dev/null
expect "frames still queued for alice" "$(alice sync --json | jq '.received + .duplicates + .receipts')" 0
expect "frames still queued for bob" "$(bob sync --json | jq '.received + .duplicates + .receipts')" 0

step "Nothing acknowledged is lost or doubled"
ALICE_DB=$(alice whoami --json | jq -r .database)
BOB_DB=$(bob whoami --json | jq -r .database)
# ids DB DIRECTION: the message ids in DB, sorted, one per line
ids() { sqlite3 "$1" "SELECT msg_id FROM messages WHERE direction = '$2' ORDER BY msg_id;"; }
expect "alice's messages to bob" "$(ids "$ALICE_DB" out | wc -l)" 17
expect "bob's messages from alice" "$(ids "$BOB_DB" in | wc -l)" 17
# differ A B: how many lines are in one list and not the other
differ() { diff <(echo "$1") <(echo "$2") | grep -c '^[<>]' || true; }
expect "ids alice sent that bob lacks, or the reverse" "$(differ "$(ids "$ALICE_DB" out)" "$(ids "$BOB_DB" in)")" 0
expect "bob's messages to alice" "$(ids "$BOB_DB" out | wc -l)" 13
expect "ids bob sent that alice lacks, or the reverse" "$(differ "$(ids "$BOB_DB" out)" "$(ids "$ALICE_DB" in)")" 0
expect "distinct ids at bob" "$(sqlite3 "$BOB_DB" "SELECT count(DISTINCT msg_id) FROM messages WHERE direction = 'in';")" 17
expect "alice's messages not delivered" "$(sqlite3 "$ALICE_DB" "
    SELECT count(*) FROM messages WHERE direction = 'out' AND status NOT IN ('delivered', 'read');")" 0
expect "bob's messages not delivered" "$(sqlite3 "$BOB_DB" "
    SELECT count(*) FROM messages WHERE direction = 'out' AND status NOT IN ('delivered', 'read');")" 0
expect "copies of any message in history --json" \
    "$(bob history alice --json --limit 1000 | jq '[.[].msg_id] | length - (unique | length)')" 0

step "The Redis password is in no log"
if grep -F -q "$REDIS_PASS" "$WORK"/router*.log "$WORK"/router*.out; then
    fail "a router logged the Redis password"
fi
ok "not in the routers' logs"

printf '\n%sAll checks passed.%s\n' "$BOLD" "$PLAIN"
echo "cluster: $CHECKS passed, 0 failed, in ${SECONDS}s"
