#!/usr/bin/env bash
# The plumbing checks of tests/nat/run.sh --check: does the namespace internet behave like the
# Internet it stands for? Sourced by run.sh once nat_up, nat_hub_start and nat_coturn_start
# have run (no peerpouch binary involved). Each check_NAME returns 0 or sets WHY and returns 1;
# chk_run NAME prints `PASS NAME` or `FAIL NAME: WHY` and counts. Lines starting with two
# spaces are observations (what was measured), kept for tests/nat/README.md.
#
# Like net.sh, this file is safe to source under `set -euo pipefail` and sets no traps; the
# background helpers it starts (UDP reflectors, echo servers, delay lines) are stopped by
# chk_cleanup, and anything left inside the namespaces dies with nat_down.

# shellcheck shell=bash
CHK_PASS=0
CHK_FAIL=0
CHK_PIDS=()
_CHK_PROBE="$_NAT_SH_DIR/udpprobe.py"
_CHK_DELAY="$_NAT_SH_DIR/delay.py"

obs() { printf '  %s\n' "$*"; }

chk_run() {
    local name="$1"
    WHY=""
    if "check_$name"; then
        printf 'PASS %s\n' "$name"
        CHK_PASS=$((CHK_PASS + 1))
    else
        printf 'FAIL %s: %s\n' "$name" "${WHY:-no reason given}"
        CHK_FAIL=$((CHK_FAIL + 1))
    fi
}

# Start "${@:3}" in namespace $1 in the background and wait (bounded, 10 s) until its stdout
# (file $2.out; stderr in $2.err) has a line matching "listening on" or "ready".
_chk_spawn() {
    local ns="$1" base="$2" deadline
    shift 2
    mkdir -p "$(dirname "$base")"
    nat_spawn "$ns" "$base.out" "$base.err" "$@" || return 1
    CHK_PIDS+=("$NAT_SPAWN_PID")
    deadline=$(($(date +%s%3N) + 10000))
    while [ "$(date +%s%3N)" -lt "$deadline" ]; do
        grep -q "^listening on\|^ready" "$base.out" 2>/dev/null && return 0
        kill -0 "$NAT_SPAWN_PID" 2>/dev/null || break
        sleep 0.05
    done
    WHY="helper '$*' in $ns did not get ready: $(tail -n 3 "$base.err" 2>/dev/null | tr '\n' ' ')"
    return 1
}

chk_cleanup() {
    local pid
    for pid in "${CHK_PIDS[@]}"; do
        nat_stop_pid "$pid" TERM 3
    done
    CHK_PIDS=()
}

_chk_setup_done=0
# UDP reflectors in wan: 198.51.100.10:4000, :4001 and 198.51.100.20:4000 (three different
# destinations for one inside socket).
_chk_setup() {
    [ "$_chk_setup_done" = 1 ] && return 0
    mkdir -p "$NAT_DIR/checks"
    _chk_spawn wan "$NAT_DIR/checks/reflect10" python3 "$_CHK_PROBE" reflect --bind 198.51.100.10 --port 4000 --port 4001 || return 1
    _chk_spawn wan "$NAT_DIR/checks/reflect20" python3 "$_CHK_PROBE" reflect --bind 198.51.100.20 --port 4000 || return 1
    _chk_setup_done=1
}

_chk_probe() { # NS LOCALPORT TARGET... -> "TARGET sees MAPPED" lines
    local ns="$1" lport="$2" args=() t
    shift 2
    for t in "$@"; do args+=(--to "$t"); done
    nat_exec "$ns" python3 "$_CHK_PROBE" probe --local-port "$lport" "${args[@]}"
}

# ---------------------------------------------------------------------------------------------

check_hub_reachable() {
    local n body
    for n in wan a b l1 l2; do
        body="$(nat_exec "$n" curl -fsS --noproxy '*' --max-time 5 "$NAT_HUB_URL/" 2>&1)" \
            || { WHY="curl $NAT_HUB_URL/ from $n failed: $body"; return 1; }
        grep -q '"express-pouchdb"' <<<"$body" || { WHY="unexpected answer from $n: $body"; return 1; }
    done
    obs "GET $NAT_HUB_URL/ answers pouchdb-server 4.2.0 from wan, a, b, l1, l2"
}

check_homes_isolated() {
    local out n
    if out="$(nat_exec a ping -c1 -W1 10.0.2.2 2>&1)"; then WHY="a reached b's 10.0.2.2"; return 1; fi
    obs "a: ping 10.0.2.2 -> $(grep -o 'Destination Net Unreachable\|100% packet loss' <<<"$out" | head -n1)"
    if nat_exec b ping -c1 -W1 10.0.1.2 >/dev/null 2>&1; then WHY="b reached a's 10.0.1.2"; return 1; fi
    if nat_exec a ping -c1 -W1 10.0.9.1 >/dev/null 2>&1; then WHY="a reached the LAN's 10.0.9.1"; return 1; fi
    if nat_exec wan ping -c1 -W1 10.0.1.2 >/dev/null 2>&1; then WHY="wan reached 10.0.1.2 (it must know no route)"; return 1; fi
    for n in ra rb rl wan; do
        [ -z "$(nat_exec "$n" ip route show default)" ] || { WHY="$n has a default route"; return 1; }
    done
    obs "no namespace has a default route out of the test internet; homes cannot reach each other's 10.0.x"
}

check_lan_v4_v6() {
    local out
    nat_exec l1 ping -c1 -W2 10.0.9.2 >/dev/null 2>&1 || { WHY="l1 cannot ping 10.0.9.2"; return 1; }
    nat_exec l1 ping -6 -c1 -W2 fd00:9::2 >/dev/null 2>&1 || { WHY="l1 cannot ping6 fd00:9::2 (DAD?)"; return 1; }
    _chk_spawn l2 "$NAT_DIR/checks/reflect-l2" python3 "$_CHK_PROBE" reflect --bind fd00:9::2 --port 4000 || return 1
    out="$(_chk_probe l1 5000 '[fd00:9::2]:4000' 2>&1)" || { WHY="UDP over IPv6 l1 -> l2: $out"; return 1; }
    obs "l1 udp [::]:5000 -> [fd00:9::2]:4000: $out"
    grep -q 'sees \[fd00:9::1\]:5000$' <<<"$out" || { WHY="l2 saw $out"; return 1; }
    _chk_spawn l2 "$NAT_DIR/checks/reflect-l2v4" python3 "$_CHK_PROBE" reflect --bind 10.0.9.2 --port 4000 || return 1
    out="$(_chk_probe l1 5000 10.0.9.2:4000 2>&1)" || { WHY="UDP over IPv4 l1 -> l2: $out"; return 1; }
    obs "l1 udp 0.0.0.0:5000 -> 10.0.9.2:4000: $out"
    grep -q 'sees 10\.0\.9\.1:5000$' <<<"$out" || { WHY="l2 saw $out"; return 1; }
    _chk_setup || return 1
    out="$(_chk_probe l1 5001 198.51.100.10:4000 2>&1)" || { WHY="l1 -> wan: $out"; return 1; }
    obs "l1 udp :5001 -> 198.51.100.10:4000 (no NAT on the LAN): $out"
    grep -q 'sees 10\.0\.9\.1:5001$' <<<"$out" || { WHY="wan saw $out (expected the un-NATed 10.0.9.1:5001)"; return 1; }
}

# turnutils_stunclient from home $1 (mode cone): the reflexive address is the router's, and the
# router's conntrack entry shows the inside source port kept as the outside port.
_chk_stun_port_kept() {
    local home="$1" wanip="$2" out port ct
    out="$(nat_exec "$home" timeout 5 turnutils_stunclient "$NAT_TURN_IP" 2>&1)" || true
    port="$(sed -n "s/.*UDP reflexive addr: ${wanip//./\\.}:\([0-9]*\).*/\1/p" <<<"$out" | head -n1)"
    [ -n "$port" ] || { WHY="$home: no reflexive address $wanip:* in: $out"; return 1; }
    obs "$home (cone) \$ turnutils_stunclient $NAT_TURN_IP -> $(grep -o 'UDP reflexive addr: [0-9.:]*' <<<"$out" | head -n1)"
    ct="$(nat_exec "r$home" conntrack -L -p udp --dport "$NAT_TURN_PORT" 2>/dev/null | grep "dport=$port\b" | head -n1)"
    [ -n "$ct" ] || { WHY="$home: no conntrack entry for outside port $port"; return 1; }
    obs "r$home conntrack: $(sed 's/ \+/ /g; s/ mark=.*//' <<<"$ct")"
    grep -q "src=10\.0\.[0-9]\.2 dst=$NAT_TURN_IP sport=$port dport=$NAT_TURN_PORT " <<<"$ct" \
        || { WHY="$home: inside source port differs from the mapped port $port: $ct"; return 1; }
}

check_cone_stun_port_preserved() {
    if ! nat_router_mode a cone || ! nat_router_mode b cone; then WHY="nat_router_mode failed"; return 1; fi
    _chk_stun_port_kept a 198.51.100.11 || return 1
    _chk_stun_port_kept b 198.51.100.12 || return 1
}

check_cone_mapping_endpoint_independent() {
    local out
    _chk_setup || return 1
    nat_router_mode a cone || return 1
    out="$(_chk_probe a 5555 198.51.100.10:4000 198.51.100.10:4001 198.51.100.20:4000 2>&1)" \
        || { WHY="probe failed: $out"; return 1; }
    while read -r line; do obs "a (cone) udp :5555 -> $line"; done <<<"$out"
    [ "$(grep -c 'sees 198\.51\.100\.11:5555$' <<<"$out")" = 3 ] \
        || { WHY="expected 198.51.100.11:5555 seen by all three: $out"; return 1; }
}

check_symmetric_mapping_per_destination() {
    local out ports
    _chk_setup || return 1
    nat_router_mode a symmetric || return 1
    out="$(_chk_probe a 5555 198.51.100.10:4000 198.51.100.10:4001 198.51.100.20:4000 2>&1)" \
        || { WHY="probe failed: $out"; nat_router_mode a cone; return 1; }
    while read -r line; do obs "a (symmetric) udp :5555 -> $line"; done <<<"$out"
    nat_router_mode a cone || return 1
    [ "$(grep -c 'sees 198\.51\.100\.11:[0-9]*$' <<<"$out")" = 3 ] || { WHY="unexpected: $out"; return 1; }
    ports="$(sed -n 's/.*sees 198\.51\.100\.11:\([0-9]*\)$/\1/p' <<<"$out" | sort -u | wc -l)"
    [ "$ports" = 3 ] || { WHY="expected three different mapped ports: $out"; return 1; }
}

# Home a (cone) opens a mapping to 198.51.100.10:4100 from port 6000; then the WAN sends to
# 198.51.100.11:6000 from 198.51.100.10:4101 (same host, other port), from 198.51.100.20:4100
# (other host) and from 198.51.100.10:4100 (the destination a sent to). Only the last arrives.
check_cone_filters_unsolicited() {
    local base="$NAT_DIR/checks/hold-a" before after got
    nat_router_mode a cone || return 1
    before="$(nat_rule_packets a to-router-new)"
    _chk_spawn a "$base" python3 "$_CHK_PROBE" hold --local-port 6000 --open 198.51.100.10:4100 --secs 2 || return 1
    local holder="$NAT_SPAWN_PID"
    nat_exec wan python3 "$_CHK_PROBE" send --bind 198.51.100.10:4101 --to 198.51.100.11:6000 --msg unsolicited-other-port
    nat_exec wan python3 "$_CHK_PROBE" send --bind 198.51.100.20:4100 --to 198.51.100.11:6000 --msg unsolicited-other-host
    nat_exec wan python3 "$_CHK_PROBE" send --bind 198.51.100.10:4100 --to 198.51.100.11:6000 --msg solicited
    wait "$holder" 2>/dev/null || true
    after="$(nat_rule_packets a to-router-new)"
    got="$(grep '^got' "$base.out" | tr '\n' ';')"
    obs "a (cone) holding :6000 after sending to 198.51.100.10:4100 received: ${got:-nothing}"
    obs "ra rule 'iifname wan ct state new drop' (input) counted $((after - before)) packets"
    grep -q 'got 198.51.100.10:4100 solicited' "$base.out" || { WHY="the solicited reply did not arrive: $got"; return 1; }
    ! grep -q unsolicited "$base.out" || { WHY="an unsolicited packet passed: $got"; return 1; }
    [ $((after - before)) -ge 2 ] || { WHY="drop counter rose by $((after - before)), expected 2"; return 1; }
}

# Even a WAN host that routes 10.0.1.0/24 to the router cannot open a flow into the home.
check_routed_inbound_dropped() {
    local base="$NAT_DIR/checks/hold-a2" before after rc=0 out
    nat_router_mode a cone || return 1
    before="$(nat_rule_packets a inbound-new)"
    nat_exec wan ip route add 10.0.1.0/24 via 198.51.100.11 || { WHY="route add failed"; return 1; }
    _chk_spawn a "$base" python3 "$_CHK_PROBE" hold --local-port 6001 --secs 2 || rc=1
    if [ "$rc" = 0 ]; then
        local holder="$NAT_SPAWN_PID"
        nat_exec wan python3 "$_CHK_PROBE" send --bind 198.51.100.10:4102 --to 10.0.1.2:6001 --msg routed
        out="$(nat_exec wan curl -sS --noproxy '*' --max-time 2 http://10.0.1.2:6002/ 2>&1)" || true
        wait "$holder" 2>/dev/null || true
    fi
    nat_exec wan ip route del 10.0.1.0/24 via 198.51.100.11 || true
    [ "$rc" = 0 ] || return 1
    after="$(nat_rule_packets a inbound-new)"
    obs "wan -> 10.0.1.2:6001 (udp, routed via 198.51.100.11): a received $(grep -c '^got' "$base.out" || true) packets"
    obs "wan \$ curl http://10.0.1.2:6002/ -> $out"
    obs "ra rule 'iifname wan ct state new drop' (forward) counted $((after - before)) packets"
    ! grep -q '^got' "$base.out" || { WHY="a routed inbound packet reached a"; return 1; }
    grep -q 'timed out' <<<"$out" || { WHY="TCP to 10.0.1.2 was not silently dropped: $out"; return 1; }
    [ $((after - before)) -ge 2 ] || { WHY="forward drop counter rose by $((after - before))"; return 1; }
}

# turnutils_uclient from home $1: -y (two allocations relaying to each other), -c (no RTCP
# allocation), 10 messages each way; extra flags $2 (e.g. -t). Prints the summary line.
_chk_uclient() {
    local home="$1" flags="$2" secs="${3:-20}" out rc=0
    # shellcheck disable=SC2086
    out="$(nat_exec "$home" timeout "$secs" turnutils_uclient $flags -y -c -n 10 \
        -u "$NAT_TURN_USER" -w "$NAT_TURN_PASS" "$NAT_TURN_IP" 2>&1)" || rc=$?
    UCLIENT_OUT="$out"
    UCLIENT_RC="$rc"
    grep -q 'Total lost packets 0 (0.000000%)' <<<"$out" && grep -q 'tot_recv_msgs=[1-9]' <<<"$out"
}

_chk_turn() {
    local home="$1" mode="$2" flags="$3" label="$4" n0 n1
    nat_router_mode "$home" "$mode" || return 1
    n0="$(nat_coturn_allocations)"
    if ! _chk_uclient "$home" "$flags"; then
        WHY="$label from $home ($mode) failed: $(tail -n 3 <<<"$UCLIENT_OUT" | tr '\n' ' ')"
        nat_router_mode "$home" cone
        return 1
    fi
    n1="$(nat_coturn_allocations)"
    obs "$home ($mode) \$ turnutils_uclient $flags -y -c -n 10 -u peer -w secret $NAT_TURN_IP ($label):" \
        "$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*$' <<<"$UCLIENT_OUT" | tail -n1);" \
        "$(grep -o 'Total lost packets.*' <<<"$UCLIENT_OUT" | cut -d, -f1); allocations $n0 -> $n1"
    nat_router_mode "$home" cone || return 1
    [ "$n1" -gt "$n0" ] || { WHY="coturn's allocation count did not grow ($n0 -> $n1)"; return 1; }
}

check_turn_udp_from_cone() { _chk_turn a cone "" "TURN over UDP"; }
check_turn_udp_from_symmetric() { _chk_turn b symmetric "" "TURN over UDP"; }
check_turn_tcp_from_symmetric() { _chk_turn a symmetric "-t" "TURN over TCP"; }

check_udp_blocked_only_tcp_turn() {
    local out before after
    nat_router_mode a udp-blocked || return 1
    before="$(nat_rule_packets a udp-blocked)"
    out="$(nat_exec a timeout 5 turnutils_stunclient "$NAT_TURN_IP" 2>&1)" || true
    if grep -q 'reflexive addr' <<<"$out"; then
        WHY="STUN over UDP worked from a udp-blocked home: $out"
        nat_router_mode a cone
        return 1
    fi
    obs "a (udp-blocked) \$ timeout 5 turnutils_stunclient $NAT_TURN_IP -> no answer"
    if _chk_uclient a "" 8; then
        WHY="TURN over UDP worked from a udp-blocked home"
        nat_router_mode a cone
        return 1
    fi
    obs "a (udp-blocked) \$ timeout 8 turnutils_uclient -y -c ... (UDP) -> exit $UCLIENT_RC, $(grep -c . <<<"$UCLIENT_OUT" || true) lines of output (no allocation)"
    if ! _chk_uclient a "-t"; then
        WHY="TURN over TCP failed from a udp-blocked home: $(tail -n 3 <<<"$UCLIENT_OUT" | tr '\n' ' ')"
        nat_router_mode a cone
        return 1
    fi
    obs "a (udp-blocked) \$ turnutils_uclient -t -y -c ... (TCP) -> $(grep -o 'Total lost packets.*' <<<"$UCLIENT_OUT" | cut -d, -f1)"
    out="$(nat_exec a curl -fsS --noproxy '*' --max-time 5 "$NAT_HUB_URL/" 2>&1)" || { WHY="hub unreachable from udp-blocked a: $out"; nat_router_mode a cone; return 1; }
    after="$(nat_rule_packets a udp-blocked)"
    obs "ra rule 'iifname lan meta l4proto udp drop' counted $((after - before)) packets"
    nat_router_mode a cone || return 1
    [ $((after - before)) -gt 0 ] || { WHY="the udp-blocked rule never matched"; return 1; }
}

check_flush_router() {
    local out1 out2 n
    _chk_setup || return 1
    nat_router_mode a cone || return 1
    out1="$(_chk_probe a 5556 198.51.100.10:4000 2>&1)" || { WHY="probe: $out1"; return 1; }
    n="$(nat_conntrack_count a)"
    [ "$n" -ge 1 ] || { WHY="no conntrack entries on ra after a probe"; return 1; }
    nat_flush a || { WHY="nat_flush a failed"; return 1; }
    [ "$(nat_conntrack_count a)" = 0 ] || { WHY="entries left after nat_flush"; return 1; }
    out2="$(_chk_probe a 5556 198.51.100.10:4000 2>&1)" || { WHY="probe after flush: $out2"; return 1; }
    obs "cone: before nat_flush a: $out1 ($n conntrack entries); after (0 entries, then): $out2"
    [ "$out1" = "$out2" ] || { WHY="cone mapping changed across a flush: $out1 / $out2"; return 1; }
    nat_router_mode a symmetric || return 1
    out1="$(_chk_probe a 5556 198.51.100.10:4000 2>&1)" || { WHY="probe: $out1"; nat_router_mode a cone; return 1; }
    nat_flush a
    out2="$(_chk_probe a 5556 198.51.100.10:4000 2>&1)" || { WHY="probe: $out2"; nat_router_mode a cone; return 1; }
    obs "symmetric: before nat_flush a: $out1; after: $out2"
    nat_router_mode a cone || return 1
    [ "$out1" != "$out2" ] || { WHY="symmetric mapping survived a flush (1 in 64k chance) : $out1"; return 1; }
}

# nat_coturn_allocations counts allocations, not STUN requests, and agrees with coturn's
# "incoming packet ALLOCATE processed, success" lines.
check_coturn_allocation_count() {
    local n0 n1 n2 a1 a2
    nat_router_mode a cone || return 1
    n0="$(nat_coturn_allocations)"
    nat_exec a timeout 5 turnutils_stunclient "$NAT_TURN_IP" >/dev/null 2>&1 || true
    nat_exec b timeout 5 turnutils_stunclient "$NAT_TURN_IP" >/dev/null 2>&1 || true
    n1="$(nat_coturn_allocations)"
    a1="$(grep -c 'incoming packet ALLOCATE processed, success' "$NAT_COTURN_DIR/turn.log" || true)"
    _chk_uclient a "" || { WHY="uclient failed: $(tail -n 3 <<<"$UCLIENT_OUT" | tr '\n' ' ')"; return 1; }
    n2="$(nat_coturn_allocations)"
    a2="$(grep -c 'incoming packet ALLOCATE processed, success' "$NAT_COTURN_DIR/turn.log" || true)"
    obs "nat_coturn_allocations: $n0 at start, $n1 after two STUN Binding requests," \
        "$n2 after one turnutils_uclient -y -c run ($((a2 - a1)) 'ALLOCATE processed, success' lines meanwhile)"
    [ "$n0" = "$n1" ] || { WHY="STUN changed the allocation count ($n0 -> $n1)"; return 1; }
    [ "$n2" -gt "$n1" ] || { WHY="no allocation counted for a TURN client ($n1 -> $n2)"; return 1; }
    [ $((n2 - n1)) = $((a2 - a1)) ] || { WHY="count +$((n2 - n1)) but +$((a2 - a1)) successful ALLOCATEs"; return 1; }
}

# The delay line (delay.py), inside wan's own 127.0.0.1 (no port of the host is used).
check_delay_line() {
    local d="$NAT_DIR/checks" out1 out2 out3 out4 med
    _chk_spawn wan "$d/echo-udp" python3 "$_CHK_DELAY" echo udp --listen 127.0.0.1:7000 || return 1
    _chk_spawn wan "$d/echo-tcp" python3 "$_CHK_DELAY" echo tcp --listen 127.0.0.1:7001 || return 1
    _chk_spawn wan "$d/fwd-udp" python3 "$_CHK_DELAY" udp --listen 127.0.0.1:7002 --target 127.0.0.1:7000 --delay-ms 20 --loss 0.005 --seed 1 || return 1
    local fwd1="$NAT_SPAWN_PID"
    _chk_spawn wan "$d/fwd-tcp" python3 "$_CHK_DELAY" tcp --listen 127.0.0.1:7003 --target 127.0.0.1:7001 --delay-ms 20 || return 1
    out1="$(nat_exec wan python3 "$_CHK_DELAY" ping udp --target 127.0.0.1:7002 --count 10000 --interval-ms 0.5 2>&1)" || { WHY="udp ping: $out1"; return 1; }
    obs "udp, 20 ms each way, loss 0.005 per direction, seed 1, 10000 packets: $out1"
    nat_stop_pid "$fwd1" TERM 3
    obs "the forwarder's own counters (printed on SIGTERM): $(tail -n 1 "$d/fwd-udp.err")"
    # A fresh forwarder with the same seed drops exactly the same packets.
    _chk_spawn wan "$d/fwd-udp2" python3 "$_CHK_DELAY" udp --listen 127.0.0.1:7004 --target 127.0.0.1:7000 --delay-ms 20 --loss 0.005 --seed 1 || return 1
    out2="$(nat_exec wan python3 "$_CHK_DELAY" ping udp --target 127.0.0.1:7004 --count 10000 --interval-ms 0.5 2>&1)" || { WHY="udp ping 2: $out2"; return 1; }
    obs "same again on a fresh forwarder (same seed): $out2"
    out3="$(nat_exec wan python3 "$_CHK_DELAY" ping tcp --target 127.0.0.1:7003 --count 50 --interval-ms 20 2>&1)" || { WHY="tcp ping: $out3"; return 1; }
    obs "tcp, 20 ms each way, 50 round trips of 64 bytes: $out3"
    out4="$(nat_exec wan python3 "$_CHK_DELAY" ping udp --target 127.0.0.1:7000 --count 50 --interval-ms 20 2>&1)" || { WHY="direct ping: $out4"; return 1; }
    obs "udp without the delay line (direct to the echo server): $out4"
    local lost1 lost2 dig1 dig2
    lost1="$(sed -n 's/.* lost=\([0-9]*\) .*/\1/p' <<<"$out1")"
    lost2="$(sed -n 's/.* lost=\([0-9]*\) .*/\1/p' <<<"$out2")"
    dig1="$(sed -n 's/.*lost_seqs_sha256=\([0-9a-f]*\).*/\1/p' <<<"$out1")"
    dig2="$(sed -n 's/.*lost_seqs_sha256=\([0-9a-f]*\).*/\1/p' <<<"$out2")"
    # 1 - 0.995^2 = 0.9975 % of round trips expected lost: accept 50..150 of 10000.
    { [ "${lost1:-0}" -ge 50 ] && [ "${lost1:-0}" -le 150 ]; } || { WHY="udp round-trip loss $lost1/10000 not near 1%"; return 1; }
    if [ "$lost1" != "$lost2" ] || [ "$dig1" != "$dig2" ]; then
        WHY="same seed, different lost packets ($lost1 $dig1 vs $lost2 $dig2)"
        return 1
    fi
    for out in "$out1" "$out3"; do
        med="$(sed -n 's/.*median=\([0-9]*\)\..*/\1/p' <<<"$out")"
        { [ "${med:-0}" -ge 39 ] && [ "${med:-0}" -le 60 ]; } || { WHY="median RTT ${med:-?} ms not ~40 ms: $out"; return 1; }
    done
}

# Every check, in order.
# shellcheck disable=SC2034 # used by run.sh
CHK_ALL="hub_reachable homes_isolated lan_v4_v6 cone_stun_port_preserved
cone_mapping_endpoint_independent symmetric_mapping_per_destination cone_filters_unsolicited
routed_inbound_dropped turn_udp_from_cone turn_udp_from_symmetric turn_tcp_from_symmetric
udp_blocked_only_tcp_turn flush_router coturn_allocation_count delay_line"
