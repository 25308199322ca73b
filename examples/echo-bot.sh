#!/bin/sh
# echo-bot.sh: a chat-p2p bot that answers each message from a contact
# with its own text. It shows the `sync --watch --json` stream in use.
#
#   CHAT_PROFILE=bot CHAT_SERVER=ws://router.example:8080/ws examples/echo-bot.sh
#
# `sync --watch --json` stays connected and prints one JSON object per
# line; lines of kind "message" are new incoming messages (the fields of
# `history --json`). Answers are stored with `send --queue`, which returns at
# once: the running watch, which holds the profile's router session, sends
# them (a plain `send` would hand them to it too, and wait for the router).
# Ctrl-C or SIGTERM stops the watch, which exits 0, and the bot with it.
#
# Needs chat-p2p on PATH (or CHAT_P2P=/path/to/chat-p2p) and jq.
set -eu

chat=${CHAT_P2P:-chat-p2p}

"$chat" sync --watch --json |
    # Messages from contacts only: a bot should not answer strangers.
    jq --unbuffered -c 'select(.kind == "message" and .contact != null)' |
    while IFS= read -r message; do
        peer=$(printf '%s\n' "$message" | jq -r .contact)
        body=$(printf '%s\n' "$message" | jq -r .body)
        if ! "$chat" send --queue "$peer" "echo: $body" >/dev/null; then
            echo "echo-bot: could not answer $peer" >&2
        fi
    done
