#!/usr/bin/env bash
# STUN server for peerpouch-smol's tests: coturn's `turnserver` (Debian package
# `coturn`) in STUN-only mode, listening on UDP 127.0.0.1 only.
#
# Use it either way:
#   source runtimes/smol/stun-server.sh && stun_start && cargo test -p peerpouch-smol; rc=$?; stun_stop; exit $rc
#   bash runtimes/smol/stun-server.sh run cargo test -p peerpouch-smol   # start, run, stop
#   bash runtimes/smol/stun-server.sh install                            # only install coturn
#   bash runtimes/smol/stun-server.sh turn run COMMAND...                # TURN mode, see below
#
# stun_start exports:
#   PEERPOUCH_TEST_STUN   127.0.0.1:PORT (what tests/stun.rs reads)
#   PEERPOUCH_STUN_PID    PID of the turnserver process
#   PEERPOUCH_STUN_TMP    its temporary directory (turn.log, stdout.log, turndb, turn.pid)
# Knobs (environment): PEERPOUCH_STUN_PORT (preferred UDP port; any free one is
# used if it is taken or unset), PEERPOUCH_STUN_TIMEOUT (seconds to wait for the
# server to answer a Binding request, default 15).
#
# Exact server command:
#   turnserver -n --stun-only --listening-ip=127.0.0.1 --listening-port=PORT \
#       --no-cli --no-tls --no-dtls --no-tcp --no-software-attribute \
#       --log-file=TMP/turn.log --simple-log --db=TMP/turndb --pidfile=TMP/turn.pid
#   -n                   no configuration file (ignore /etc/turnserver.conf)
#   --stun-only          answer STUN Binding requests, ignore every TURN request
#   --listening-ip       bind 127.0.0.1 only (coturn's default is every interface)
#   --no-cli             no telnet admin interface (it would listen on TCP 5766)
#   --no-tls --no-dtls   no TLS/DTLS listeners (no certificates needed)
#   --no-tcp             no STUN over TCP either: the tests use UDP
#   --no-software-attribute  no version string in responses
#   --log-file/--simple-log  one log file, no date suffix, no rollover
#   --db/--pidfile       keep coturn's SQLite user db and pid file in TMP instead
#                        of /var/lib/turn and /var/run
# Readiness: `ss` shows the port held by the PID we started, and
# `turnutils_stunclient` (from the same package) gets a reflexive address back.
#
# TURN mode (tests/reach.rs of the core: allocations over UDP and TCP, relaying):
#   source runtimes/smol/stun-server.sh && turn_start && cargo test -p peerpouch --test reach; rc=$?; turn_stop; exit $rc
#   bash runtimes/smol/stun-server.sh turn run cargo test -p peerpouch --test reach
# turn_start exports:
#   PEERPOUCH_TEST_TURN   127.0.0.1:PORT|peer|secret  (ADDR|USER|PASS, what tests/reach.rs reads)
#   PEERPOUCH_TURN_PID, PEERPOUCH_TURN_TMP  (as for STUN)
# Knobs: PEERPOUCH_TURN_PORT (preferred port, UDP and TCP), PEERPOUCH_STUN_TIMEOUT.
# Exact server command:
#   turnserver -n --lt-cred-mech --user=peer:secret --realm=peerpouch.test \
#       --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port=PORT \
#       --min-port=49152 --max-port=65535 --no-tls --no-dtls --no-cli \
#       --allow-loopback-peers --no-software-attribute \
#       --log-file=TMP/turn.log --simple-log --db=TMP/turndb --pidfile=TMP/turn.pid
#   --lt-cred-mech --user --realm   long-term credentials (401 challenge, MD5 key)
#   --relay-ip=127.0.0.1     relayed addresses on loopback too
#   --allow-loopback-peers   needed: without it coturn answers CreatePermission and
#                            ChannelBind for 127.0.0.1 peers with 403 Forbidden (measured);
#                            --cli-password is not needed with --no-cli
#   UDP and TCP both listen on PORT (no --no-tcp/--no-udp): TURN over TCP is tested too.
# Readiness: `ss` shows UDP and TCP PORT held by our PID, and `turnutils_stunclient` gets a
# reflexive address back (coturn answers Binding without credentials).
#
# This file must stay safe to `source` into a shell running with
# `set -euo pipefail`: it changes no shell options and sets no traps there.
# Call stun_start in the current shell, not in a pipeline or $(...): it exports
# the variables stun_stop needs to find the process.

_STUN_SH_DIR="${BASH_SOURCE[0]}"
case "$_STUN_SH_DIR" in */*) _STUN_SH_DIR="${_STUN_SH_DIR%/*}" ;; *) _STUN_SH_DIR=. ;; esac
# shellcheck source=../../.ci/service.sh
source "$(cd "$_STUN_SH_DIR/../../.ci" && pwd)/service.sh"
_stun_err() { _svc_err stun "$@"; }
_stun_info() { _svc_info stun "$@"; }

# Install coturn (turnserver, turnutils_stunclient) from Debian if missing.
stun_install() {
    if command -v turnserver >/dev/null 2>&1 && command -v turnutils_stunclient >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        _stun_err "turnserver is missing and apt-get is not available; install coturn by hand"
        return 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            _stun_err "turnserver is missing; run as root (or with sudo) to apt-get install coturn"
            return 1
        fi
    fi
    _stun_info "installing coturn (apt-get install -y coturn)"
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends coturn >&2; then
        _stun_info "install failed; running apt-get update and trying again"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get update >&2 || true
        if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends coturn >&2; then
            _stun_err "apt-get install -y coturn failed"
            return 1
        fi
    fi
    if ! command -v turnserver >/dev/null 2>&1; then
        _stun_err "coturn installed but turnserver is not on PATH"
        return 1
    fi
}

# True if something already listens on UDP 127.0.0.1:$1 (or on every address).
_stun_port_busy() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hlun "sport = :$1" 2>/dev/null)" ]
    else
        return 1 # cannot tell: a clash shows as a failed start and is retried
    fi
}

# True if UDP port $1 is held by process $2 (true when ss is missing: the
# Binding request probe then has to do).
_stun_port_owned_by() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hlunp "sport = :$1" 2>/dev/null | grep -q "pid=$2,"
    else
        return 0
    fi
}

# A UDP port: $1 if given and free, else a random free one in 20000..60999.
_stun_pick_port() {
    local want="${1:-}" p i
    if [ -n "$want" ] && [ "$want" != 0 ] && ! _stun_port_busy "$want"; then
        echo "$want"
        return 0
    fi
    for i in $(seq 1 50); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 41000))
        if ! _stun_port_busy "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

_stun_log_tail() { _svc_log_tail stun 30 "$1/stdout.log" "$1/turn.log"; }

# One start attempt on port $1 with temp dir $2. Returns 0 when it answers, 1 on
# failure, 2 when the port turned out to be taken (retryable).
_stun_start_once() {
    local port="$1" tmp="$2" timeout="${PEERPOUCH_STUN_TIMEOUT:-15}" pid start now
    start=$(date +%s%3N)
    turnserver -n --stun-only --listening-ip=127.0.0.1 --listening-port="$port" \
        --no-cli --no-tls --no-dtls --no-tcp --no-software-attribute \
        --log-file="$tmp/turn.log" --simple-log --db="$tmp/turndb" --pidfile="$tmp/turn.pid" \
        </dev/null >"$tmp/stdout.log" 2>&1 &
    pid=$!
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            if grep -qi "cannot bind\|address already in use" "$tmp/turn.log" "$tmp/stdout.log" 2>/dev/null; then
                return 2
            fi
            _stun_err "turnserver (pid $pid) exited before answering on 127.0.0.1:$port"
            _stun_log_tail "$tmp"
            return 1
        fi
        if grep -qi "cannot bind" "$tmp/turn.log" 2>/dev/null; then
            _svc_kill_tree stun "$pid"
            return 2
        fi
        # Our process holds the port and it answers a Binding request.
        if _stun_port_owned_by "$port" "$pid" \
            && timeout 2 turnutils_stunclient -p "$port" 127.0.0.1 2>/dev/null | grep -q "reflexive addr: 127.0.0.1:"; then
            _SVC_PID="$pid"
            return 0
        fi
        now=$(date +%s%3N)
        if [ $((now - start)) -ge $((timeout * 1000)) ]; then
            _stun_err "turnserver (pid $pid) did not answer a STUN Binding request on 127.0.0.1:$port within ${timeout}s"
            _stun_log_tail "$tmp"
            _svc_kill_tree stun "$pid"
            return 1
        fi
        sleep 0.1
    done
}

# Start the STUN server and export PEERPOUCH_TEST_STUN. Idempotent while it runs.
stun_start() {
    if [ -n "${PEERPOUCH_STUN_PID:-}" ] && kill -0 "$PEERPOUCH_STUN_PID" 2>/dev/null; then
        _stun_info "already running: $PEERPOUCH_TEST_STUN (pid $PEERPOUCH_STUN_PID)"
        return 0
    fi
    stun_install || return 1
    local t0 t1
    t0=$(date +%s%N)
    _svc_start stun 5 _stun_pick_port "${PEERPOUCH_STUN_PORT:-}" peerpouch-stun _stun_start_once || return 1
    t1=$(date +%s%N)
    export PEERPOUCH_STUN_PID="$_SVC_PID"
    export PEERPOUCH_STUN_TMP="$_SVC_DIR"
    export PEERPOUCH_TEST_STUN="127.0.0.1:$_SVC_PORT"
    _stun_info "turnserver up at $PEERPOUCH_TEST_STUN (pid $PEERPOUCH_STUN_PID, dir $PEERPOUCH_STUN_TMP, $(((t1 - t0) / 1000000)) ms)"
}

# Stop exactly the server stun_start started and remove its directory.
# Returns 1 (after showing its log) if it had died on its own before.
stun_stop() {
    local pid="${PEERPOUCH_STUN_PID:-}" tmp="${PEERPOUCH_STUN_TMP:-}" rc=0
    if [ -z "$pid" ]; then
        _stun_info "stun_stop: no server recorded (PEERPOUCH_STUN_PID unset)"
        return 0
    fi
    _svc_stop stun "$pid" "$tmp" peerpouch-stun "$tmp/stdout.log" "$tmp/turn.log" || rc=$?
    unset PEERPOUCH_STUN_PID PEERPOUCH_STUN_TMP PEERPOUCH_TEST_STUN
    return "$rc"
}

# ---- TURN mode ----

_turn_log_tail() { _svc_log_tail turn 30 "$1/stdout.log" "$1/turn.log"; }

# True if UDP or TCP port $1 is taken on 127.0.0.1 (or every address).
_turn_port_busy() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hlunt "sport = :$1" 2>/dev/null)" ]
    else
        return 1
    fi
}

_turn_pick_port() {
    local want="${1:-}" p i
    if [ -n "$want" ] && [ "$want" != 0 ] && ! _turn_port_busy "$want"; then
        echo "$want"
        return 0
    fi
    for i in $(seq 1 50); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 29000))
        if ! _turn_port_busy "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# One start attempt on port $1 with temp dir $2 (0 up, 1 failed, 2 port taken: retry).
_turn_start_once() {
    local port="$1" tmp="$2" timeout="${PEERPOUCH_STUN_TIMEOUT:-15}" pid start now
    start=$(date +%s%3N)
    turnserver -n --lt-cred-mech --user=peer:secret --realm=peerpouch.test \
        --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$port" \
        --min-port=49152 --max-port=65535 --no-tls --no-dtls --no-cli \
        --allow-loopback-peers --no-software-attribute \
        --log-file="$tmp/turn.log" --simple-log --db="$tmp/turndb" --pidfile="$tmp/turn.pid" \
        </dev/null >"$tmp/stdout.log" 2>&1 &
    pid=$!
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            if grep -qi "cannot bind\|address already in use" "$tmp/turn.log" "$tmp/stdout.log" 2>/dev/null; then
                return 2
            fi
            _svc_err turn "turnserver (pid $pid) exited before answering on 127.0.0.1:$port"
            _turn_log_tail "$tmp"
            return 1
        fi
        if grep -qi "cannot bind" "$tmp/turn.log" 2>/dev/null; then
            _svc_kill_tree turn "$pid"
            return 2
        fi
        if _stun_port_owned_by "$port" "$pid" \
            && { ! command -v ss >/dev/null 2>&1 || ss -Hltnp "sport = :$port" 2>/dev/null | grep -q "pid=$pid,"; } \
            && timeout 2 turnutils_stunclient -p "$port" 127.0.0.1 2>/dev/null | grep -q "reflexive addr: 127.0.0.1:"; then
            _SVC_PID="$pid"
            return 0
        fi
        now=$(date +%s%3N)
        if [ $((now - start)) -ge $((timeout * 1000)) ]; then
            _svc_err turn "turnserver (pid $pid) did not answer on 127.0.0.1:$port within ${timeout}s"
            _turn_log_tail "$tmp"
            _svc_kill_tree turn "$pid"
            return 1
        fi
        sleep 0.1
    done
}

# Start the TURN server and export PEERPOUCH_TEST_TURN. Idempotent while it runs.
turn_start() {
    if [ -n "${PEERPOUCH_TURN_PID:-}" ] && kill -0 "$PEERPOUCH_TURN_PID" 2>/dev/null; then
        _svc_info turn "already running: ${PEERPOUCH_TEST_TURN%%|*} (pid $PEERPOUCH_TURN_PID)"
        return 0
    fi
    stun_install || return 1
    _svc_start turn 5 _turn_pick_port "${PEERPOUCH_TURN_PORT:-}" peerpouch-turn _turn_start_once || return 1
    export PEERPOUCH_TURN_PID="$_SVC_PID"
    export PEERPOUCH_TURN_TMP="$_SVC_DIR"
    export PEERPOUCH_TEST_TURN="127.0.0.1:$_SVC_PORT|peer|secret"
    _svc_info turn "turnserver up at 127.0.0.1:$_SVC_PORT (user peer, realm peerpouch.test; pid $PEERPOUCH_TURN_PID, dir $PEERPOUCH_TURN_TMP)"
}

# Stop exactly the server turn_start started and remove its directory.
turn_stop() {
    local pid="${PEERPOUCH_TURN_PID:-}" tmp="${PEERPOUCH_TURN_TMP:-}" rc=0
    if [ -z "$pid" ]; then
        _svc_info turn "turn_stop: no server recorded (PEERPOUCH_TURN_PID unset)"
        return 0
    fi
    _svc_stop turn "$pid" "$tmp" peerpouch-turn "$tmp/stdout.log" "$tmp/turn.log" || rc=$?
    unset PEERPOUCH_TURN_PID PEERPOUCH_TURN_TMP PEERPOUCH_TEST_TURN
    return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    if [ "${1:-}" = turn ]; then
        shift
        _svc_main "$0 turn" turn stun_install turn_start turn_stop "$@"
    else
        _svc_main "$0" stun stun_install stun_start stun_stop "$@"
    fi
fi
