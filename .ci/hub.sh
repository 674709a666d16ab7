#!/usr/bin/env bash
# CouchDB-compatible test hub for peerpouch's tests: pouchdb-server 4.2.0
# (pinned in .ci/hub/package.json / package-lock.json), in memory, bound to
# 127.0.0.1 only.
#
# Use it either way:
#   source .ci/hub.sh && hub_start && cargo test; rc=$?; hub_stop; exit $rc
#   bash .ci/hub.sh run cargo test        # start, run the command, stop (whatever its outcome)
#   bash .ci/hub.sh install               # only `npm ci --ignore-scripts`
#
# hub_start exports:
#   PEERPOUCH_TEST_HUB   http://127.0.0.1:PORT   (no trailing slash)
#   PEERPOUCH_HUB_PID    PID of the pouchdb-server node process
#   PEERPOUCH_HUB_TMP    its temporary working directory (config.json, log.txt)
# Knobs (environment): PEERPOUCH_HUB_PORT (preferred port, default 5984; any
# other free port is used if it is taken), PEERPOUCH_HUB_TIMEOUT (seconds to
# wait for the hub to answer, default 30).
#
# Exact server command (run inside a fresh `mktemp -d` directory):
#   node --unhandled-rejections=warn \
#       .ci/hub/node_modules/pouchdb-server/bin/pouchdb-server -m -n -o 127.0.0.1 -p PORT
#   --unhandled-rejections=warn  (node option) pouchdb-server 4.2.0 answers a
#       _changes request whose filter design doc is missing (e.g.
#       filter=_doc_ids without doc_ids, or filter=nope/nope) with a 404 and
#       then dies of an unhandled 'error' event raised inside a promise; node
#       >= 15 ends the process on that by default. With "warn" the hub logs a
#       warning to stdout.log and keeps serving (see .ci/hub/NOTES.md).
#   -m  in-memory (pouchdb-adapter-memory over memdown; nothing on disk)
#   -n  no log copy on stdout (the log still goes to ./log.txt in its cwd)
#   -o  bind address (long form --host); 127.0.0.1 is also pouchdb-server's
#       default, but it is given explicitly so it never listens elsewhere.
#   -p  port
# pouchdb-server writes ./config.json and ./log.txt into its cwd, hence the
# temporary directory, removed again by hub_stop.
#
# Why `npm ci --ignore-scripts` is enough (no install script is ever run):
# only two packages in the tree have install scripts, leveldown and sqlite3
# (native modules). With -m, pouchdb-server loads pouchdb-adapter-memory,
# i.e. memdown (pure JS); neither leveldown nor sqlite3 is required at run
# time (checked: no *.node library is mapped by the running server process).
# So we keep --ignore-scripts for the whole tree instead of allowing scripts
# for one package: nothing is compiled, nothing is downloaded by an install
# script, and the install is fast and reproducible from the lock file alone.
# Do not drop -m without revisiting this (the default LevelDB backend would
# need leveldown's native binding; --sqlite would need sqlite3's build).
#
# This file must stay safe to `source` into a shell running with
# `set -euo pipefail`: it changes no shell options and sets no traps there.
# Call hub_start in the current shell, not in a pipeline or $(...): it
# exports the variables hub_stop needs to find the process.

_HUB_SH_DIR="${BASH_SOURCE[0]}"
case "$_HUB_SH_DIR" in */*) _HUB_SH_DIR="${_HUB_SH_DIR%/*}" ;; *) _HUB_SH_DIR=. ;; esac
_HUB_SH_DIR="$(cd "$_HUB_SH_DIR" && pwd)"
_HUB_PKG_DIR="$_HUB_SH_DIR/hub"
_HUB_BIN="$_HUB_PKG_DIR/node_modules/pouchdb-server/bin/pouchdb-server"

# shellcheck source=service.sh
source "$_HUB_SH_DIR/service.sh"
_hub_err() { _svc_err hub "$@"; }
_hub_info() { _svc_info hub "$@"; }

_hub_need_tools() {
    local t missing=0
    for t in node npm curl; do
        if ! command -v "$t" >/dev/null 2>&1; then
            _hub_err "'$t' is not on PATH; the test hub needs node (>= 18), npm and curl (e.g. apt-get install -y nodejs npm curl)"
            missing=1
        fi
    done
    return "$missing"
}

# Install pouchdb-server from the lock file into .ci/hub/node_modules.
hub_install() {
    _hub_need_tools || return 1
    if [ -f "$_HUB_BIN" ] && [ -f "$_HUB_PKG_DIR/node_modules/.package-lock.json" ] \
        && [ ! "$_HUB_PKG_DIR/package-lock.json" -nt "$_HUB_PKG_DIR/node_modules/.package-lock.json" ]; then
        return 0
    fi
    _hub_info "installing pouchdb-server into $_HUB_PKG_DIR/node_modules (npm ci --ignore-scripts)"
    if ! (cd "$_HUB_PKG_DIR" && npm ci --ignore-scripts --no-audit --no-fund >&2); then
        _hub_err "npm ci --ignore-scripts failed in $_HUB_PKG_DIR"
        return 1
    fi
    if [ ! -f "$_HUB_BIN" ]; then
        _hub_err "npm ci succeeded but $_HUB_BIN is missing"
        return 1
    fi
}

# Print a free TCP port on 127.0.0.1: $1 if it is free, else one the kernel picks.
_hub_pick_port() {
    node -e '
const net = require("net");
function attempt(port, fallback) {
  const s = net.createServer();
  s.once("error", () => { if (fallback) attempt(0, false); else process.exit(1); });
  s.listen(port, "127.0.0.1", () => {
    const p = s.address().port;
    s.close(() => { process.stdout.write(String(p) + "\n"); });
  });
}
attempt(Number(process.argv[1]), true);
' "$1"
}

_hub_port_in_use() {
    # true if something accepts TCP connections on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

_hub_log_tail() { _svc_log_tail hub 40 "$1/stdout.log" "$1/log.txt"; }

# One start attempt on port $1 with temp dir $2. Returns 0 when up, 1 on
# failure, 2 when the port was taken by someone else meanwhile (retryable).
_hub_start_once() {
    local port="$1" tmp="$2" timeout="${PEERPOUCH_HUB_TIMEOUT:-30}"
    local url="http://127.0.0.1:$port" pid body start now
    start=$(date +%s%3N)
    (cd "$tmp" && exec node --unhandled-rejections=warn "$_HUB_BIN" -m -n -o 127.0.0.1 -p "$port") \
        </dev/null >"$tmp/stdout.log" 2>&1 &
    pid=$!
    echo "$pid" >"$tmp/pid"
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            if grep -q "already in use\|EADDRINUSE" "$tmp/stdout.log" 2>/dev/null; then
                return 2
            fi
            _hub_err "pouchdb-server (pid $pid) exited before answering on $url"
            _hub_log_tail "$tmp"
            return 1
        fi
        # It must be *our* server: compare the uuid it reports with the one it
        # wrote into config.json in its own working directory.
        if body="$(curl -fsS --max-time 2 "$url/" 2>/dev/null)" \
            && [ -f "$tmp/config.json" ] \
            && grep -q "\"$(sed -n 's/.*"uuid": *"\([^"]*\)".*/\1/p' "$tmp/config.json" | head -n1)\"" <<<"$body"; then
            _SVC_PID="$pid"
            return 0
        fi
        now=$(date +%s%3N)
        if [ $((now - start)) -ge $((timeout * 1000)) ]; then
            _hub_err "pouchdb-server (pid $pid) did not answer GET $url/ within ${timeout}s"
            _hub_log_tail "$tmp"
            _svc_kill_tree hub "$pid"
            return 1
        fi
        sleep 0.1
    done
}

# Start the hub and export PEERPOUCH_TEST_HUB. Idempotent while it runs.
hub_start() {
    if [ -n "${PEERPOUCH_HUB_PID:-}" ] && kill -0 "$PEERPOUCH_HUB_PID" 2>/dev/null; then
        _hub_info "already running: $PEERPOUCH_TEST_HUB (pid $PEERPOUCH_HUB_PID)"
        return 0
    fi
    hub_install || return 1
    local t0 t1
    t0=$(date +%s%N)
    _svc_start hub 3 _hub_pick_port "${PEERPOUCH_HUB_PORT:-5984}" peerpouch-hub _hub_start_once || return 1
    t1=$(date +%s%N)
    export PEERPOUCH_HUB_PID="$_SVC_PID"
    export PEERPOUCH_HUB_TMP="$_SVC_DIR"
    export PEERPOUCH_TEST_HUB="http://127.0.0.1:$_SVC_PORT"
    _hub_info "pouchdb-server up at $PEERPOUCH_TEST_HUB (pid $PEERPOUCH_HUB_PID, cwd $PEERPOUCH_HUB_TMP, $(((t1 - t0) / 1000000)) ms)"
}

# Stop exactly the hub started by hub_start (and any children), remove its dir.
# Returns 1 (after showing its log) if the hub had died on its own before.
hub_stop() {
    local pid="${PEERPOUCH_HUB_PID:-}" tmp="${PEERPOUCH_HUB_TMP:-}" url="${PEERPOUCH_TEST_HUB:-}" rc=0
    if [ -z "$pid" ]; then
        _hub_info "hub_stop: no hub recorded (PEERPOUCH_HUB_PID unset)"
        return 0
    fi
    _svc_stop hub "$pid" "$tmp" peerpouch-hub "$tmp/stdout.log" "$tmp/log.txt" || rc=$?
    if [ -n "$url" ] && _hub_port_in_use "${url##*:}"; then
        _hub_info "note: port ${url##*:} still accepts connections after stopping pid $pid"
    fi
    unset PEERPOUCH_HUB_PID PEERPOUCH_HUB_TMP PEERPOUCH_TEST_HUB
    return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _svc_main "$0" hub hub_install hub_start hub_stop "$@"
fi
