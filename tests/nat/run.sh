#!/usr/bin/env bash
# The NAT test entry point: peerpouch's CLI between peers behind real NAT (Linux network
# namespaces + nftables), with pouchdb-server as the hub and coturn as STUN/TURN server.
#
#   PEERPOUCH_BIN=/path/to/peerpouch bash tests/nat/run.sh [CASE...]   # cases.sh (default: all)
#   bash tests/nat/run.sh --check                                      # only the plumbing checks
#
# Needs root (namespaces, nftables). Installs what is missing (apt-get: nftables coturn conntrack
# iproute2 iputils-ping curl; npm: pouchdb-server from .ci/hub's lock file), builds the topology
# of tests/nat/net.sh, starts the hub and coturn inside it, runs the cases (or the checks) and
# always tears everything down (exit, failure, Ctrl-C, SIGTERM). NAT_KEEP=1 keeps the logs.
# Output: `PASS name` / `FAIL name: why` per case or check, then `N passed, M failed`; the exit
# status is non-zero when anything failed.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

say() { printf 'nat run: %s\n' "$*" >&2; }

mode=cases
if [ "${1:-}" = --check ]; then
    mode=check
    shift
    [ "$#" -eq 0 ] || { say "usage: $0 --check   (no other arguments)"; exit 2; }
fi
if [ "$mode" = cases ]; then
    if [ -z "${PEERPOUCH_BIN:-}" ]; then
        say "error: PEERPOUCH_BIN is not set: give the path of a built peerpouch CLI binary, e.g."
        say "  PEERPOUCH_BIN=target/release/peerpouch bash tests/nat/run.sh   (or --check for the plumbing only)"
        exit 2
    fi
    if [ ! -x "$PEERPOUCH_BIN" ]; then
        say "error: PEERPOUCH_BIN=$PEERPOUCH_BIN is not an executable file"
        exit 2
    fi
    PEERPOUCH_BIN="$(cd "$(dirname "$PEERPOUCH_BIN")" && pwd)/$(basename "$PEERPOUCH_BIN")"
    export PEERPOUCH_BIN
fi
if [ "$mode" = cases ]; then
    bash tests/nat/cases.sh --check-names "$@"
fi
if [ "$(id -u)" -ne 0 ]; then
    say "error: run as root (network namespaces and nftables need it)"
    exit 2
fi

# shellcheck source=net.sh
source tests/nat/net.sh

STALE_NS=ppnat-999999999-stale
STALE_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # A Ctrl-C also reaches the hub and coturn (same process group): not a crash.
    if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then export NAT_INTERRUPTED=1; fi
    if [ "$mode" = check ] && declare -F chk_cleanup >/dev/null; then chk_cleanup || true; fi
    nat_down || true
    if [ -n "$STALE_PID" ]; then nat_stop_pid "$STALE_PID" KILL 1; fi
    ip netns delete "$STALE_NS" 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nat_install

if [ "$mode" = check ]; then
    # A stale topology as a killed run leaves it: a namespace of a run whose shell is gone
    # (999999999 is above any pid_max), with a process still inside. nat_up must remove both.
    ip netns add "$STALE_NS"
    ip netns exec "$STALE_NS" sleep 600 </dev/null >/dev/null 2>&1 &
    STALE_PID=$!
    host_links_before="$(ip -o link show | awk -F': ' '{print $2}' | sort | tr '\n' ' ')"
fi

nat_up
nat_hub_start
# shellcheck disable=SC2119 # no extra turnserver flags
nat_coturn_start

if [ "$mode" = cases ]; then
    rc=0
    bash tests/nat/cases.sh "$@" || rc=$?
    exit "$rc"
fi

# shellcheck source=checks.sh
source tests/nat/checks.sh

# shellcheck disable=SC2034 # WHY is read by chk_run
check_stale_topology_removed() {
    if ip netns list | grep -q "^$STALE_NS\b"; then WHY="$STALE_NS still exists"; return 1; fi
    local i
    for ((i = 0; i < 30; i++)); do kill -0 "$STALE_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$STALE_PID" 2>/dev/null; then WHY="the process in $STALE_NS (pid $STALE_PID) survived"; return 1; fi
    wait "$STALE_PID" 2>/dev/null || true
    STALE_PID=""
    obs "nat_up removed the stale namespace $STALE_NS and killed the process left inside it"
}

# shellcheck disable=SC2034
check_teardown() {
    local prefix="$NAT_PREFIX" dir="$NAT_DIR" hub="$NAT_HUB_PID" turn="$NAT_COTURN_PID" left links_after
    chk_cleanup
    nat_down
    left="$(ip netns list | grep -c "^$prefix-" || true)"
    [ "$left" = 0 ] || { WHY="$left namespaces of $prefix left after nat_down"; return 1; }
    [ ! -e "$dir" ] || { WHY="$dir left after nat_down"; return 1; }
    if kill -0 "$hub" 2>/dev/null || kill -0 "$turn" 2>/dev/null; then WHY="hub or coturn still running"; return 1; fi
    links_after="$(ip -o link show | awk -F': ' '{print $2}' | sort | tr '\n' ' ')"
    [ "$links_after" = "$host_links_before" ] || { WHY="the host's links changed: '$host_links_before' -> '$links_after'"; return 1; }
    nat_down # idempotent
    obs "nat_down: no $prefix-* namespace, no temp dir, hub and coturn gone, host links unchanged ($links_after)"
}

chk_run stale_topology_removed
for c in $CHK_ALL; do
    chk_run "$c"
done
chk_run teardown
printf '%d passed, %d failed\n' "$CHK_PASS" "$CHK_FAIL"
[ "$CHK_FAIL" -eq 0 ]
