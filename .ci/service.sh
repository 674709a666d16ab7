#!/usr/bin/env bash
# What the test servers' scripts share (.ci/hub.sh: pouchdb-server; runtimes/smol/stun-server.sh:
# coturn): starting a server on a free port with retries, stopping exactly the process started,
# showing its logs when it fails, and the `install | run COMMAND` command line.
#
# Each server script defines its own install, port picking and one start attempt, then calls
# these. Like the scripts that source it, this file must stay safe to `source` into a shell
# running with `set -euo pipefail`: it changes no shell options and sets no traps there.

_svc_err() { printf '%s: error: %s\n' "$1" "${*:2}" >&2; }
_svc_info() { printf '%s: %s\n' "$1" "${*:2}" >&2; }

# Prints the last $2 lines of each non-empty file $3... (a server's logs), prefixed by `$1: `.
_svc_log_tail() {
    local name="$1" lines="$2" f
    shift 2
    for f in "$@"; do
        if [ -s "$f" ]; then
            printf -- '---- %s: tail of %s ----\n' "$name" "$f" >&2
            tail -n "$lines" "$f" >&2
        fi
    done
}

# PIDs of all descendants of $1 (children, then theirs).
_svc_descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        _svc_descendants "$c"
    done
}

# Stops process $2 and its descendants (server name $1, for messages): TERM, up to 5 s, then
# KILL; reaps it if it is our child (which also silences bash's "Terminated" notice).
_svc_kill_tree() {
    local name="$1" pid="$2" kids i
    kids="$(_svc_descendants "$pid")"
    # shellcheck disable=SC2086
    kill -TERM "$pid" $kids 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        _svc_info "$name" "pid $pid ignored SIGTERM for 5 s, sending SIGKILL"
        # shellcheck disable=SC2086
        kill -KILL "$pid" $kids 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    return 0
}

# Starts a server: up to $2 attempts, each on a port printed by `$3 WANT` (the first with WANT
# = $4, later ones with WANT empty, meaning any free port) in a fresh directory
# `${TMPDIR:-/tmp}/$5.XXXXXX`, by `$6 PORT DIR`, which returns 0 once the server answers (with
# its PID in _SVC_PID), 1 on failure, 2 when the port was taken meanwhile (retryable).
# On success sets _SVC_PORT and _SVC_DIR and returns 0; `$1` names the server in messages.
_svc_start() {
    local name="$1" attempts="$2" pick="$3" want="$4" prefix="$5" once="$6"
    local attempt port dir rc
    for attempt in $(seq 1 "$attempts"); do
        if ! port="$("$pick" "$want")" || [ -z "$port" ]; then
            _svc_err "$name" "could not find a free port on 127.0.0.1"
            return 1
        fi
        dir="$(mktemp -d "${TMPDIR:-/tmp}/$prefix.XXXXXX")" || {
            _svc_err "$name" "mktemp -d failed"
            return 1
        }
        rc=0
        "$once" "$port" "$dir" || rc=$?
        if [ "$rc" -eq 0 ]; then
            _SVC_PORT="$port"
            _SVC_DIR="$dir"
            return 0
        fi
        rm -rf -- "$dir"
        if [ "$rc" -ne 2 ]; then
            return 1
        fi
        _svc_info "$name" "port $port was taken meanwhile, trying another one"
        want=""
    done
    _svc_err "$name" "gave up after $attempts attempts to bind a port"
    return 1
}

# Stops the server with PID $2 started in directory $3 (made with prefix $4) and removes the
# directory; log files to show are $5.... Returns 1, after showing the logs, if the server had
# died on its own before.
_svc_stop() {
    local name="$1" pid="$2" dir="$3" prefix="$4" rc=0
    shift 4
    if kill -0 "$pid" 2>/dev/null; then
        _svc_kill_tree "$name" "$pid"
    else
        wait "$pid" 2>/dev/null || true
        _svc_err "$name" "the server (pid $pid) had already exited before it was stopped (crashed?)"
        if [ -n "$dir" ]; then _svc_log_tail "$name" 40 "$@"; fi
        rc=1
    fi
    case "$dir" in
        "${TMPDIR:-/tmp}/$prefix".*) rm -rf -- "$dir" ;;
    esac
    return "$rc"
}

# Runs `$1` (a start function), then "${@:3}", then `$2` (its stop function), whatever the
# outcome; returns the command's exit status. Runs in a subshell so its traps stay local.
_svc_run() (
    start="$1" stop="$2"
    shift 2
    trap '"$stop"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    "$start" || exit 1
    "$@"
)

# The command line of a server script `$1` (its path) named `$2`, with install function `$3`,
# start `$4` and stop `$5`: `install`, or `run COMMAND [ARGS...]`. The rest are its arguments.
_svc_main() {
    local script="$1" name="$2" install="$3" start="$4" stop="$5"
    shift 5
    case "${1:-}" in
        install) "$install" ;;
        run)
            shift
            [ "$#" -gt 0 ] || { _svc_err "$name" "usage: $script run COMMAND [ARGS...]"; return 2; }
            _svc_run "$start" "$stop" "$@"
            ;;
        *)
            echo "usage: $script install | run COMMAND [ARGS...]   (or: source $script; $start; ...; $stop)" >&2
            return 2
            ;;
    esac
}
