#!/usr/bin/env bash
# The one test command: installs what the tests need and is missing, then
# runs the test suite. Arguments go to `cargo test` unchanged, e.g.
#   ./test.sh --test cluster
#   ./test.sh --lib router::
#
# The tests start real programs rather than skip when one is missing:
# redis-server (the Redis backend), haproxy and openssl (the load balancer
# with TLS of test_cluster.sh), sqlite3 and jq (profiles read from the
# shell), tmux (the interactive chat), curl (health checks). So this script
# installs them first, with apt-get, as root or through sudo; without
# either it stops and names the packages to install.
set -euo pipefail
cd "$(dirname "$0")"

# command:Debian package, for every program a test or script runs.
NEEDED=(
    redis-server:redis-server
    redis-cli:redis-tools
    haproxy:haproxy
    openssl:openssl
    sqlite3:sqlite3
    jq:jq
    tmux:tmux
    curl:curl
)

missing=()
for pair in "${NEEDED[@]}"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "--- test.sh: installing what the tests need: ${missing[*]}"
    if ! command -v apt-get >/dev/null; then
        echo "test.sh: the tests need these packages and this system has no apt-get:" >&2
        echo "    ${missing[*]}" >&2
        echo "Install them with your package manager, then run ./test.sh again." >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "test.sh: the tests need these packages, and installing them needs root (no sudo here):" >&2
        echo "    apt-get install -y ${missing[*]}" >&2
        echo "Run that as root, then ./test.sh again." >&2
        exit 1
    fi
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
    for pair in "${NEEDED[@]}"; do
        command -v "${pair%%:*}" >/dev/null || {
            echo "test.sh: ${pair%%:*} is still missing after installing ${pair#*:}" >&2
            exit 1
        }
    done
fi

exec cargo test "$@"
