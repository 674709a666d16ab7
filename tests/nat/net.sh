#!/usr/bin/env bash
# A small test "internet" of Linux network namespaces: a WAN with the hub (pouchdb-server) and
# coturn (STUN + TURN), two homes behind real NAT (nftables masquerade) and one open LAN with
# IPv4 and IPv6. Used by tests/nat/run.sh and tests/nat/cases.sh; see tests/nat/README.md.
#
#   source tests/nat/net.sh
#   nat_install                 # apt-get: nftables coturn conntrack iproute2 (+ the hub via npm)
#   nat_up                      # namespaces, links, addresses, routes; both homes in `cone` mode
#   nat_hub_start; nat_coturn_start
#   nat_exec a curl -s "$NAT_HUB_URL/"          # run a command inside a namespace
#   nat_router_mode a symmetric                 # cone | symmetric | udp-blocked
#   nat_flush a                                 # "router restart": conntrack table emptied
#   nat_coturn_allocations                      # TURN allocations made so far
#   nat_down                                    # everything removed (idempotent)
#
# Topology (every name below is a namespace called "$NAT_PREFIX-<name>", NAT_PREFIX =
# ppnat-<pid of the shell that ran nat_up>):
#
#                       wan: bridge br0 = 198.51.100.10/24 (hub, :5984)
#                                         198.51.100.20/24 (coturn, UDP+TCP :3478)
#            ┌────────────────────────────┼──────────────────────────────┐
#   ra: wan 198.51.100.11           rb: wan 198.51.100.12          rl: wan 198.51.100.13
#       lan 10.0.1.1 (NAT)              lan 10.0.2.1 (NAT)             br0 10.0.9.254, fd00:9::fe
#        │                               │                             (routes, no NAT)
#   a:  10.0.1.2                    b:  10.0.2.2                    l1: 10.0.9.1 fd00:9::1
#                                                                   l2: 10.0.9.2 fd00:9::2
#
# - The hub and coturn are two addresses of the wan namespace itself (on its bridge), so one
#   namespace holds both servers. wan routes 10.0.9.0/24 to rl (the LAN is not NATed: the hub
#   and coturn see 10.0.9.x) and knows no route to the homes' 10.0.1/2.0/24: from the WAN a
#   home is only its router's address, as on the Internet.
# - Routers have no default route: nothing leaves the namespaces (only 198.51.100.0/24 and
#   their own LAN are reachable). A home peer cannot reach the other home's 10.0.x.
# - Router modes (nftables table `ip ppnat` in the router, replaced as a whole by
#   nat_router_mode, which also empties the router's conntrack table):
#     cone         `oifname "wan" masquerade`: keeps the source port when free, one mapping per
#                  inside socket for every destination (endpoint-independent mapping); inbound
#                  packets only pass for a conntrack entry (address+port-dependent filtering).
#     symmetric    `oifname "wan" masquerade random`: a new random port per destination.
#     udp-blocked  symmetric, and every UDP packet from the home is dropped at the router.
#   All modes filter like a home router: `iifname "wan" ct state new drop` (and invalid) in
#   forward and input, so unsolicited inbound traffic is dropped silently (no ICMP).
#
# Stale topologies: the shell that runs nat_up records its PID and process start time in
# /run/ppnat/<prefix>. nat_up first removes every namespace ppnat-<pid>-* whose owner is gone
# (or whose PID now belongs to another process): it kills the processes still inside such a
# namespace (hub, coturn, peers of a killed run: processes this harness started) and deletes
# the namespace, which removes its veths and bridges, and removes its log directory
# ${TMPDIR:-/tmp}/ppnat-<pid>.*.
#
# This file must stay safe to `source` into a shell running with `set -euo pipefail`: it
# changes no shell options and sets no traps. Call nat_up, nat_hub_start and
# nat_coturn_start in the current shell (not in $(...) or a pipeline): they export the
# variables the other functions (and child scripts such as cases.sh) need.

_NAT_SH_DIR="${BASH_SOURCE[0]}"
case "$_NAT_SH_DIR" in */*) _NAT_SH_DIR="${_NAT_SH_DIR%/*}" ;; *) _NAT_SH_DIR=. ;; esac
_NAT_SH_DIR="$(cd "$_NAT_SH_DIR" && pwd)"
_NAT_ROOT="$(cd "$_NAT_SH_DIR/../.." && pwd)"
# shellcheck source=../../.ci/hub.sh source-path=SCRIPTDIR
source "$_NAT_ROOT/.ci/hub.sh"

NAT_HUB_IP=198.51.100.10
NAT_HUB_PORT=5984
NAT_TURN_IP=198.51.100.20
NAT_TURN_PORT=3478
NAT_TURN_USER=peer
NAT_TURN_PASS=secret
NAT_TURN_REALM=peerpouch.test
NAT_HUB_URL="http://$NAT_HUB_IP:$NAT_HUB_PORT"
_NAT_STATE_DIR=/run/ppnat
_NAT_NAMES="wan ra a rb b rl l1 l2"

_nat_say() { printf 'nat: %s\n' "$*" >&2; }
_nat_err() { printf 'nat: error: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Installation

# apt-get install the packages whose commands are missing (apt-get update once if the first
# try fails), then pouchdb-server (.ci/hub.sh: npm ci --ignore-scripts).
nat_install() {
    local want=() sudo=""
    command -v nft >/dev/null 2>&1 || want+=(nftables)
    { command -v turnserver >/dev/null 2>&1 && command -v turnutils_uclient >/dev/null 2>&1 \
        && command -v turnutils_stunclient >/dev/null 2>&1; } || want+=(coturn)
    command -v conntrack >/dev/null 2>&1 || want+=(conntrack)
    { command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1; } || want+=(iproute2)
    command -v curl >/dev/null 2>&1 || want+=(curl)
    command -v ping >/dev/null 2>&1 || want+=(iputils-ping)
    if [ "${#want[@]}" -gt 0 ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            _nat_err "missing packages (${want[*]}) and no apt-get: install them by hand"
            return 1
        fi
        if [ "$(id -u)" -ne 0 ]; then
            if command -v sudo >/dev/null 2>&1; then sudo=sudo; else
                _nat_err "missing packages (${want[*]}); run as root to apt-get install them"
                return 1
            fi
        fi
        _nat_say "installing ${want[*]} (apt-get install -y --no-install-recommends)"
        if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${want[@]}" >&2; then
            _nat_say "install failed; running apt-get update and trying again"
            DEBIAN_FRONTEND=noninteractive $sudo apt-get update >&2 || true
            if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${want[@]}" >&2; then
                _nat_err "apt-get install -y ${want[*]} failed"
                return 1
            fi
        fi
    fi
    command -v python3 >/dev/null 2>&1 || { _nat_err "python3 is not on PATH"; return 1; }
    hub_install
}

# ---------------------------------------------------------------------------------------------
# Namespaces

# The namespace of a logical name (wan, ra, a, rb, b, rl, l1, l2; any case; A = a).
nat_ns() {
    local n
    n="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')"
    case " $_NAT_NAMES " in
        *" $n "*) ;;
        *)
            _nat_err "unknown namespace '$1' (one of: $_NAT_NAMES)"
            return 1
            ;;
    esac
    if [ -z "${NAT_PREFIX:-}" ]; then
        _nat_err "no topology: NAT_PREFIX is unset (run nat_up first)"
        return 1
    fi
    printf '%s-%s\n' "$NAT_PREFIX" "$n"
}

# The router namespace of home $1 (a, b).
_nat_router_of() {
    case "$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" in
        a) nat_ns ra ;;
        b) nat_ns rb ;;
        *)
            _nat_err "unknown home '$1' (a or b)"
            return 1
            ;;
    esac
}

# Run a command inside namespace $1 (logical name). For a background process whose PID you
# need, use nat_spawn instead.
nat_exec() {
    local ns
    ns="$(nat_ns "$1")" || return 1
    shift
    ip netns exec "$ns" "$@"
}

# Start "${@:4}" in namespace $1 in the background, stdin from /dev/null, stdout to $2 and
# stderr to $3; NAT_SPAWN_PID is its PID (ip netns exec execs the command: the PID is the
# command's own).
nat_spawn() {
    local ns out="$2" err="$3"
    ns="$(nat_ns "$1")" || return 1
    shift 3
    ip netns exec "$ns" "$@" </dev/null >"$out" 2>"$err" &
    NAT_SPAWN_PID=$!
}

# Stop process $1 (one we started): signal $2 (default TERM), up to $3 s (default 5); then
# SIGTERM (if $2 was another signal: a background process of a non-interactive shell starts
# with SIGINT ignored unless it installs its own handler), up to 3 s; then SIGKILL.
nat_stop_pid() {
    local pid="$1" sig="${2:-TERM}" secs="${3:-5}"
    [ -n "$pid" ] || return 0
    if kill -"$sig" "$pid" 2>/dev/null && ! _nat_wait_exit "$pid" "$secs"; then
        if [ "$sig" != TERM ] && [ "$sig" != KILL ]; then
            _nat_say "pid $pid ignored SIG$sig for ${secs}s, sending SIGTERM"
            kill -TERM "$pid" 2>/dev/null || true
        fi
        if ! _nat_wait_exit "$pid" 3; then
            _nat_say "pid $pid still running, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    return 0
}

# True once process $1 is gone (within $2 s).
_nat_wait_exit() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        # A zombie child counts as gone.
        [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ] || return 0
        sleep 0.1
    done
    ! kill -0 "$1" 2>/dev/null
}

# Process start time (clock ticks since boot) of PID $1, empty if it does not exist.
_nat_starttime() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    printf '%s\n' "${20:-}"
}

# True if the run that owns prefix ppnat-$1 is still alive.
_nat_owner_alive() {
    local pid="$1" want now
    now="$(_nat_starttime "$pid")"
    [ -n "$now" ] || return 1
    if [ -f "$_NAT_STATE_DIR/ppnat-$pid" ]; then
        want="$(cat "$_NAT_STATE_DIR/ppnat-$pid" 2>/dev/null || true)"
        [ "$want" = "$now" ] || return 1
    fi
    return 0
}

# Kill every process inside namespace $1 (full name) and delete it.
_nat_ns_destroy() {
    local ns="$1" pids i
    pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
    if [ -n "${pids// /}" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do
            [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] || break
            sleep 0.1
        done
        pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
        # shellcheck disable=SC2086
        [ -z "${pids// /}" ] || kill -KILL $pids 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do
            [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] || break
            sleep 0.1
        done
    fi
    ip netns delete "$ns" 2>/dev/null || true
}

# Remove the namespaces left by earlier runs whose shell is gone (killed with SIGKILL, ...).
nat_clean_stale() {
    local ns owner n=0
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        case "$ns" in ppnat-*-*) ;; *) continue ;; esac
        owner="${ns#ppnat-}"
        owner="${owner%%-*}"
        case "$owner" in '' | *[!0-9]*) continue ;; esac
        if _nat_owner_alive "$owner"; then continue; fi
        _nat_say "removing stale namespace $ns (its run, pid $owner, is gone)"
        _nat_ns_destroy "$ns"
        rm -f -- "$_NAT_STATE_DIR/ppnat-$owner"
        n=$((n + 1))
    done
    # Log directories of runs that are gone (their namespaces may be gone already).
    local d
    for d in "${TMPDIR:-/tmp}"/ppnat-*.*; do
        [ -d "$d" ] || continue
        owner="${d##*/ppnat-}"
        owner="${owner%%.*}"
        case "$owner" in '' | *[!0-9]*) continue ;; esac
        if _nat_owner_alive "$owner"; then continue; fi
        rm -rf -- "$d"
    done
    return 0
}

_nat_sysctl() { ip netns exec "$1" sysctl -qw "$2" >/dev/null; }

# Build the topology (see the top of this file). Exports NAT_PREFIX and NAT_DIR (a temporary
# directory for logs, removed by nat_down unless NAT_KEEP=1).
nat_up() {
    if [ -n "${NAT_PREFIX:-}" ] && ip netns list 2>/dev/null | grep -q "^$NAT_PREFIX-wan\b"; then
        _nat_err "a topology ($NAT_PREFIX) is already up in this shell; nat_down first"
        return 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        _nat_err "nat_up needs root (network namespaces, nftables)"
        return 1
    fi
    local t
    for t in ip nft conntrack python3; do
        command -v "$t" >/dev/null 2>&1 || { _nat_err "'$t' is missing (nat_install)"; return 1; }
    done
    nat_clean_stale
    export NAT_PREFIX="ppnat-$$"
    mkdir -p "$_NAT_STATE_DIR"
    _nat_starttime $$ >"$_NAT_STATE_DIR/$NAT_PREFIX"
    export NAT_DIR
    NAT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/$NAT_PREFIX.XXXXXX")"
    if ! _nat_build; then
        _nat_err "building the topology failed; removing what was made"
        nat_down
        return 1
    fi
    _nat_say "topology $NAT_PREFIX up (logs in $NAT_DIR)"
}

_nat_build() {
    local P="$NAT_PREFIX" n h i
    for n in $_NAT_NAMES; do
        ip netns add "$P-$n" || return 1
        ip -n "$P-$n" link set lo up || return 1
    done
    # Peers and routers take no IPv6 router advertisements (nothing sends them, but a host's
    # defaults must not matter).
    for n in $_NAT_NAMES; do
        _nat_sysctl "$P-$n" net.ipv6.conf.all.accept_ra=0 || return 1
        _nat_sysctl "$P-$n" net.ipv6.conf.default.accept_ra=0 || return 1
    done

    # WAN: a bridge holding the servers' addresses.
    ip -n "$P-wan" link add br0 type bridge || return 1
    ip -n "$P-wan" link set br0 up || return 1
    ip -n "$P-wan" addr add "$NAT_HUB_IP/24" dev br0 || return 1
    ip -n "$P-wan" addr add "$NAT_TURN_IP/24" dev br0 || return 1

    # Homes: router (wan side on the bridge, lan side a veth to the peer) and peer.
    for h in a:1:11 b:2:12; do
        n="${h%%:*}"
        i="${h#*:}"
        i="${i%%:*}"
        local wanip="198.51.100.${h##*:}"
        ip -n "$P-wan" link add "w$n" type veth peer name wan netns "$P-r$n" || return 1
        ip -n "$P-wan" link set "w$n" master br0 up || return 1
        ip -n "$P-r$n" addr add "$wanip/24" dev wan || return 1
        ip -n "$P-r$n" link set wan up || return 1
        ip -n "$P-r$n" link add lan type veth peer name eth0 netns "$P-$n" || return 1
        ip -n "$P-r$n" addr add "10.0.$i.1/24" dev lan || return 1
        ip -n "$P-r$n" link set lan up || return 1
        ip -n "$P-$n" addr add "10.0.$i.2/24" dev eth0 || return 1
        ip -n "$P-$n" link set eth0 up || return 1
        ip -n "$P-$n" route add default via "10.0.$i.1" || return 1
        _nat_sysctl "$P-r$n" net.ipv4.ip_forward=1 || return 1
        nat_router_mode "$n" cone || return 1
    done

    # LAN: a router without NAT whose bridge joins l1 and l2 (IPv4 and IPv6, no DAD).
    ip -n "$P-wan" link add wl type veth peer name wan netns "$P-rl" || return 1
    ip -n "$P-wan" link set wl master br0 up || return 1
    ip -n "$P-rl" addr add 198.51.100.13/24 dev wan || return 1
    ip -n "$P-rl" link set wan up || return 1
    ip -n "$P-rl" link add br0 type bridge || return 1
    ip -n "$P-rl" link set br0 up || return 1
    ip -n "$P-rl" addr add 10.0.9.254/24 dev br0 || return 1
    ip -n "$P-rl" addr add fd00:9::fe/64 dev br0 nodad || return 1
    _nat_sysctl "$P-rl" net.ipv4.ip_forward=1 || return 1
    for i in 1 2; do
        ip -n "$P-rl" link add "p$i" type veth peer name eth0 netns "$P-l$i" || return 1
        ip -n "$P-rl" link set "p$i" master br0 up || return 1
        ip -n "$P-l$i" addr add "10.0.9.$i/24" dev eth0 || return 1
        ip -n "$P-l$i" addr add "fd00:9::$i/64" dev eth0 nodad || return 1
        ip -n "$P-l$i" link set eth0 up || return 1
        ip -n "$P-l$i" route add default via 10.0.9.254 || return 1
    done
    ip -n "$P-wan" route add 10.0.9.0/24 via 198.51.100.13 || return 1
    # The internet carries packets to addresses it has no use for (a peer's private host
    # candidate, say) and drops them somewhere: a default route into a dummy interface does
    # the same here (a veth whose other end, in the same namespace, has no address; no ARP,
    # so nothing waits on a neighbour). Without it the relay's sendto fails with ENETUNREACH,
    # and coturn closes the whole allocation on that error ("closed (2nd stage) ... reason:
    # general"). (No `dummy` interfaces: these kernels lack the module.)
    ip -n "$P-wan" link add void type veth peer name void2 || return 1
    ip -n "$P-wan" link set void arp off up || return 1
    ip -n "$P-wan" link set void2 arp off up || return 1
    ip -n "$P-wan" route add default dev void || return 1
}

# Set the NAT behaviour of home $1 (a or b): cone | symmetric | udp-blocked. Replaces the
# router's whole ruleset and empties its conntrack table (old mappings would keep the old
# behaviour for their flows).
nat_router_mode() {
    local home="$1" mode="$2" r masq udp=""
    r="$(_nat_router_of "$home")" || return 1
    case "$mode" in
        cone) masq='oifname "wan" masquerade' ;;
        symmetric) masq='oifname "wan" masquerade random' ;;
        udp-blocked)
            masq='oifname "wan" masquerade random'
            udp='iifname "lan" meta l4proto udp counter drop comment "udp-blocked"'
            ;;
        *)
            _nat_err "unknown router mode '$mode' (cone, symmetric or udp-blocked)"
            return 1
            ;;
    esac
    ip netns exec "$r" nft -f - <<EOF || { _nat_err "nft failed in $r"; return 1; }
flush ruleset
table ip ppnat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        $masq
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        $udp
        iifname "wan" ct state invalid counter drop comment "inbound-invalid"
        iifname "wan" ct state new counter drop comment "inbound-new"
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state invalid counter drop
        iifname "wan" ct state new counter drop comment "to-router-new"
    }
}
EOF
    nat_flush "$home" || return 1
    printf '%s\n' "$mode" >"$NAT_DIR/mode-$home"
}

# The current mode of home $1.
nat_router_mode_of() { cat "$NAT_DIR/mode-$1" 2>/dev/null || echo unknown; }

# "Router restart": empty the conntrack table of home $1's router (every NAT mapping and
# filter state is forgotten; flows continue only when the inside sends again).
nat_flush() {
    local r
    r="$(_nat_router_of "$1")" || return 1
    ip netns exec "$r" conntrack -F >/dev/null 2>&1 || {
        # conntrack -F fails when the table is already empty on some versions; check.
        [ "$(nat_conntrack_count "$1")" = 0 ] || { _nat_err "conntrack -F failed in $r"; return 1; }
    }
}

# Number of conntrack entries on home $1's router.
nat_conntrack_count() {
    local r
    r="$(_nat_router_of "$1")" || return 1
    ip netns exec "$r" conntrack -L 2>/dev/null | grep -c . || true
}

# A counter of router $1's ruleset: packets of the rule commented $2.
nat_rule_packets() {
    local r
    r="$(_nat_router_of "$1")" || return 1
    ip netns exec "$r" nft list ruleset 2>/dev/null \
        | sed -n "s/.*counter packets \([0-9]*\) bytes [0-9]*.*comment \"$2\".*/\1/p" \
        | awk '{s += $1} END {print s + 0}'
}

# Remove everything nat_up made: our processes, every namespace of NAT_PREFIX (and with them
# their veths and bridges), NAT_DIR (kept when NAT_KEEP=1). Idempotent. With NAT_INTERRUPTED=1
# (a Ctrl-C reaches the servers too) a server found dead is not reported as a crash.
nat_down() {
    local ns
    nat_coturn_stop || true
    nat_hub_stop || true
    if [ -n "${NAT_PREFIX:-}" ]; then
        for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
            case "$ns" in "$NAT_PREFIX"-*) _nat_ns_destroy "$ns" ;; esac
        done
        rm -f -- "$_NAT_STATE_DIR/$NAT_PREFIX"
    fi
    if [ -n "${NAT_DIR:-}" ] && [ -d "$NAT_DIR" ]; then
        if [ "${NAT_KEEP:-0}" = 1 ]; then
            _nat_say "NAT_KEEP=1: logs kept in $NAT_DIR"
        else
            case "$NAT_DIR" in "${TMPDIR:-/tmp}/ppnat-"*) rm -rf -- "$NAT_DIR" ;; esac
        fi
    fi
    unset NAT_PREFIX NAT_DIR
    return 0
}

# ---------------------------------------------------------------------------------------------
# Servers

_nat_wait_loop() { # $1 = deadline (ms since epoch); true while before it
    [ "$(date +%s%3N)" -lt "$1" ]
}

# pouchdb-server at $NAT_HUB_URL inside wan (in memory, cwd a fresh directory in NAT_DIR).
# Exports NAT_HUB_PID, NAT_HUB_DIR.
nat_hub_start() {
    if [ -n "${NAT_HUB_PID:-}" ] && kill -0 "$NAT_HUB_PID" 2>/dev/null; then return 0; fi
    [ -f "$_HUB_BIN" ] || { _nat_err "pouchdb-server is not installed (nat_install)"; return 1; }
    local ns dir deadline body
    ns="$(nat_ns wan)" || return 1
    dir="$(mktemp -d "$NAT_DIR/hub.XXXXXX")"
    (cd "$dir" && exec ip netns exec "$ns" node --unhandled-rejections=warn "$_HUB_BIN" \
        -m -n -o "$NAT_HUB_IP" -p "$NAT_HUB_PORT") </dev/null >"$dir/stdout.log" 2>&1 &
    export NAT_HUB_PID=$! NAT_HUB_DIR="$dir"
    deadline=$(($(date +%s%3N) + ${NAT_HUB_TIMEOUT:-30} * 1000))
    while _nat_wait_loop "$deadline"; do
        if ! kill -0 "$NAT_HUB_PID" 2>/dev/null; then
            _nat_err "pouchdb-server (pid $NAT_HUB_PID) exited before answering on $NAT_HUB_URL"
            _svc_log_tail nat-hub 40 "$dir/stdout.log" "$dir/log.txt"
            wait "$NAT_HUB_PID" 2>/dev/null || true
            unset NAT_HUB_PID
            return 1
        fi
        # Our process holds the port (in our own namespace) and it answers as pouchdb-server.
        if nat_exec wan ss -Hltnp "sport = :$NAT_HUB_PORT" 2>/dev/null | grep -q "pid=$NAT_HUB_PID," \
            && body="$(nat_exec wan curl -fsS --noproxy '*' --max-time 2 "$NAT_HUB_URL/" 2>/dev/null)" \
            && grep -q '"express-pouchdb"' <<<"$body"; then
            _nat_say "hub (pouchdb-server, pid $NAT_HUB_PID) answers at $NAT_HUB_URL"
            return 0
        fi
        sleep 0.1
    done
    _nat_err "pouchdb-server (pid $NAT_HUB_PID) did not answer GET $NAT_HUB_URL/ within ${NAT_HUB_TIMEOUT:-30}s"
    _svc_log_tail nat-hub 40 "$dir/stdout.log" "$dir/log.txt"
    nat_hub_stop
    return 1
}

nat_hub_stop() {
    if [ -n "${NAT_HUB_PID:-}" ]; then
        if ! kill -0 "$NAT_HUB_PID" 2>/dev/null && [ "${NAT_INTERRUPTED:-0}" != 1 ]; then
            _nat_err "the hub (pid $NAT_HUB_PID) had exited on its own"
            _svc_log_tail nat-hub 40 "${NAT_HUB_DIR:-/nonexistent}/stdout.log" "${NAT_HUB_DIR:-/nonexistent}/log.txt"
        fi
        nat_stop_pid "$NAT_HUB_PID" TERM 5
    fi
    unset NAT_HUB_PID
    return 0
}

# coturn at $NAT_TURN_IP:$NAT_TURN_PORT (UDP and TCP) inside wan: STUN + TURN with the
# long-term credential peer:secret in realm peerpouch.test. Extra turnserver flags may be given.
# Exports NAT_COTURN_PID, NAT_COTURN_DIR (turn.log, stdout.log, stderr.log, turndb, turn.pid).
# Exact command (run in wan):
#   turnserver -n --lt-cred-mech --user=peer:secret --realm=peerpouch.test \
#       --listening-ip=198.51.100.20 --relay-ip=198.51.100.20 --listening-port=3478 \
#       --no-tls --no-dtls --no-cli -v --log-file=DIR/turn.log --simple-log \
#       --db=DIR/turndb --pidfile=DIR/turn.pid [extra flags]
# -v (verbose) is what makes coturn 4.6.1 log each allocation ("session N: new, realm=...");
# without it, successful allocations leave no line at all (only errors are logged).
nat_coturn_start() {
    if [ -n "${NAT_COTURN_PID:-}" ] && kill -0 "$NAT_COTURN_PID" 2>/dev/null; then return 0; fi
    local dir deadline
    dir="$(mktemp -d "$NAT_DIR/coturn.XXXXXX")"
    nat_spawn wan "$dir/stdout.log" "$dir/stderr.log" turnserver -n \
        --lt-cred-mech --user="$NAT_TURN_USER:$NAT_TURN_PASS" --realm="$NAT_TURN_REALM" \
        --listening-ip="$NAT_TURN_IP" --relay-ip="$NAT_TURN_IP" --listening-port="$NAT_TURN_PORT" \
        --no-tls --no-dtls --no-cli -v \
        --log-file="$dir/turn.log" --simple-log --db="$dir/turndb" --pidfile="$dir/turn.pid" \
        "$@" || return 1
    export NAT_COTURN_PID="$NAT_SPAWN_PID" NAT_COTURN_DIR="$dir"
    deadline=$(($(date +%s%3N) + ${NAT_COTURN_TIMEOUT:-15} * 1000))
    while _nat_wait_loop "$deadline"; do
        if ! kill -0 "$NAT_COTURN_PID" 2>/dev/null; then
            _nat_err "turnserver (pid $NAT_COTURN_PID) exited before answering on $NAT_TURN_IP:$NAT_TURN_PORT"
            _svc_log_tail nat-coturn 40 "$dir/stdout.log" "$dir/stderr.log" "$dir/turn.log"
            wait "$NAT_COTURN_PID" 2>/dev/null || true
            unset NAT_COTURN_PID
            return 1
        fi
        if nat_exec wan ss -Hltnp "sport = :$NAT_TURN_PORT" 2>/dev/null | grep -q "pid=$NAT_COTURN_PID," \
            && nat_exec wan ss -Hlunp "sport = :$NAT_TURN_PORT" 2>/dev/null | grep -q "pid=$NAT_COTURN_PID," \
            && nat_exec wan timeout 3 turnutils_stunclient -p "$NAT_TURN_PORT" "$NAT_TURN_IP" 2>/dev/null \
            | grep -q "reflexive addr: 198\.51\.100\."; then
            _nat_say "coturn (pid $NAT_COTURN_PID) answers STUN at $NAT_TURN_IP:$NAT_TURN_PORT (UDP, TCP listening)"
            return 0
        fi
        sleep 0.1
    done
    _nat_err "turnserver (pid $NAT_COTURN_PID) did not answer a STUN Binding request on $NAT_TURN_IP:$NAT_TURN_PORT within ${NAT_COTURN_TIMEOUT:-15}s"
    _svc_log_tail nat-coturn 40 "$dir/stdout.log" "$dir/stderr.log" "$dir/turn.log"
    nat_coturn_stop
    return 1
}

nat_coturn_stop() {
    if [ -n "${NAT_COTURN_PID:-}" ]; then
        if ! kill -0 "$NAT_COTURN_PID" 2>/dev/null && [ "${NAT_INTERRUPTED:-0}" != 1 ]; then
            _nat_err "coturn (pid $NAT_COTURN_PID) had exited on its own"
            _svc_log_tail nat-coturn 40 "${NAT_COTURN_DIR:-/nonexistent}/stdout.log" "${NAT_COTURN_DIR:-/nonexistent}/turn.log"
        fi
        nat_stop_pid "$NAT_COTURN_PID" TERM 5
    fi
    unset NAT_COTURN_PID
    return 0
}

# Number of TURN allocations coturn made so far (since nat_coturn_start): distinct sessions with
# a "session <id>: new, realm=<...>, username=<...>, lifetime=..." line in its verbose log, the
# line coturn 4.6.1 writes when an ALLOCATE succeeds (it also writes "incoming packet ALLOCATE
# processed, success" then; refreshes log "refreshed", the end "closed (2nd stage)").
# STUN Binding requests create no session and leave the count unchanged.
nat_coturn_allocations() {
    local log="${NAT_COTURN_DIR:-}/turn.log"
    if [ ! -f "$log" ]; then
        _nat_err "no coturn log (${log}); was nat_coturn_start run?"
        return 1
    fi
    grep -o 'session [0-9]*: new, realm=' "$log" 2>/dev/null | sort -u | grep -c . || true
}

# The URL of hub database $1 (a CouchDB database on the hub).
nat_hub_db_url() { printf '%s/%s\n' "$NAT_HUB_URL" "$1"; }
