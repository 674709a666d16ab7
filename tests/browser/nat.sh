#!/usr/bin/env bash
# Chromium behind NAT opens a share of a Rust node behind NAT: the browser test across the
# namespace internet of tests/nat/net.sh (see tests/browser/README.md, "Behind NAT").
#
#   PEERPOUCH_BIN=/path/to/peerpouch bash tests/browser/nat.sh [VARIANT...]   # as root
#
# Variants (default: both):
#   browser_behind_symmetric_nat             the sharer (home a, cone NAT) has STUN and TURN,
#       Chromium (home b, symmetric NAT) has TURN over UDP in iceServers; any path may win, it
#       must form, be the same pair seen from both ends, and the calls must succeed.
#   browser_behind_symmetric_nat_relay_only  the same with `share --relay-only` and Chromium's
#       iceTransportPolicy "relay": both ends must be relayed.
#
# Steps: installs what is missing (nat_install; Chromium with apt-get; playwright-core with
# `npm ci`), builds the NAT internet (home a cone, home b symmetric), starts the hub (CORS on for
# exactly the page's origin, http://127.0.0.1:$PAGE_PORT inside home b) and coturn; per variant
# a fresh hub database, a source database (20 documents and `big` with a 1 MiB random
# attachment), `peerpouch share --json` in home a, then drive.mjs + headless Chromium in home b
# running the page's `join` scenario (tests/browser/scenarios.js) with the iceServers; then the
# checks of `natlib.py check` (the calls' results, the attachment's SHA-256, the selected pair
# from getStats against the sharer's link_ready line, coturn's allocations) and, after the
# sharer stopped, the source database holds the page's write.
#
# Output: `PASS name` or `FAIL name: why`, with `  observed: ...` and `  took N s` lines (on
# failure the tails of the logs), then `N passed, M failed`; exit status 1 if anything failed,
# 2 on a usage error. Everything (namespaces, hub, coturn, sharer, node, Chromium) is removed on
# exit, failure, Ctrl-C and SIGTERM. Knobs: NAT_KEEP=1 keeps the logs, BROWSER_NAT_TIMEOUT (s,
# default 120) bounds one join, PEERPOUCH_CHROMIUM another Chromium.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
case "${PEERPOUCH_BIN:-}" in '' | /*) ;; *) PEERPOUCH_BIN="$PWD/$PEERPOUCH_BIN" ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$(pwd)"

say() { printf 'browser nat: %s\n' "$*" >&2; }

ALL_VARIANTS=(browser_behind_symmetric_nat browser_behind_symmetric_nat_relay_only)
variants=("$@")
[ "${#variants[@]}" -gt 0 ] || variants=("${ALL_VARIANTS[@]}")
for v in "${variants[@]}"; do
    case " ${ALL_VARIANTS[*]} " in
        *" $v "*) ;;
        *)
            say "error: unknown variant '$v' (variants: ${ALL_VARIANTS[*]})"
            exit 2
            ;;
    esac
done
if [ -z "${PEERPOUCH_BIN:-}" ] || [ ! -x "$PEERPOUCH_BIN" ]; then
    say "error: PEERPOUCH_BIN='${PEERPOUCH_BIN:-}' is not an executable: give the peerpouch CLI binary"
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    say "error: run as root (network namespaces and nftables need it)"
    exit 2
fi

CHROMIUM="${PEERPOUCH_CHROMIUM:-/usr/bin/chromium}"
export PEERPOUCH_CHROMIUM="$CHROMIUM"
if [ ! -x "$CHROMIUM" ] && [ "$CHROMIUM" = /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    say "installing Chromium (apt-get install -y chromium chromium-driver)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver >&2; then
        DEBIAN_FRONTEND=noninteractive apt-get update >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver >&2
    fi
fi
[ -x "$CHROMIUM" ] || { say "error: no Chromium at $CHROMIUM"; exit 1; }
command -v node >/dev/null || { say "error: node is not on PATH"; exit 1; }
if [ ! -d tests/browser/node_modules/playwright-core ] \
    || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
    say "installing playwright-core (npm ci in tests/browser; it downloads no browser)"
    (cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund >&2)
fi

# shellcheck source=../nat/net.sh
source tests/nat/net.sh

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then export NAT_INTERRUPTED=1; fi
    nat_down || true # kills whatever is left inside the namespaces (Chromium included)
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nat_install

BIN="$PEERPOUCH_BIN"
LIB="$ROOT/tests/browser/natlib.py"
JOIN_TIMEOUT="${BROWSER_NAT_TIMEOUT:-120}"
PAGE_PORT=8741 # the page's origin inside home b: http://127.0.0.1:8741
KEY="open sesame"
NDOCS=20
ATT_BYTES=$((1024 * 1024))
TURN="$NAT_TURN_IP:$NAT_TURN_PORT"
# The sharer's ICE servers. The first variant gives STUN and TURN (both on coturn), as a real
# sharer would (BROWSER_NAT_SHARER_ICE=turn: only TURN); the relay-only variant gives only TURN:
# STUN adds nothing to a relay-only sharer, and a stun: URL at the TURN server's own address
# starves the sharer's TURN client today (README.md, "Behind NAT": the gatherer hands every
# datagram from that address to the first client, the STUN one; the TURN client never sees its
# 401 and times out).
TURN_ICE=(--ice-server "turn:$TURN?transport=udp" --ice-username "$NAT_TURN_USER" --ice-credential "$NAT_TURN_PASS")
case "${BROWSER_NAT_SHARER_ICE:-stun+turn}" in
    stun+turn) SHARER_ICE=(--ice-server "stun:$TURN" "${TURN_ICE[@]}") ;;
    turn) SHARER_ICE=("${TURN_ICE[@]}") ;;
    *)
        say "error: BROWSER_NAT_SHARER_ICE must be stun+turn or turn"
        exit 2
        ;;
esac
PAGE_ICE="[{\"urls\": \"turn:$TURN?transport=udp\", \"username\": \"$NAT_TURN_USER\", \"credential\": \"$NAT_TURN_PASS\"}]"
unset PEERPOUCH_ICE_SERVERS PEERPOUCH_BIND PEERPOUCH_KEY PEERPOUCH_ICE_USERNAME PEERPOUCH_ICE_CREDENTIAL

now_ms() { date +%s%3N; }
T_START=$(now_ms)

nat_up
nat_router_mode a cone
nat_router_mode b symmetric
nat_hub_start
# The page (drive.mjs's server, 127.0.0.1:$PAGE_PORT in home b) and the hub are different
# origins: the hub allows exactly the page's, as a hub browsers use must.
ORIGIN="http://127.0.0.1:$PAGE_PORT"
for kv in 'httpd/enable_cors="true"' "cors/origins=\"$ORIGIN\"" \
    'cors/methods="GET, PUT, POST, HEAD, DELETE"' \
    'cors/headers="accept, authorization, content-type, origin, referer"'; do
    nat_exec wan curl -fsS --noproxy '*' --max-time 10 -X PUT "$NAT_HUB_URL/_config/${kv%%=*}" \
        -H 'content-type: application/json' -d "${kv#*=}" >/dev/null
done
# shellcheck disable=SC2119 # no extra turnserver flags
nat_coturn_start

RUN_DIR="$NAT_DIR/browser"
mkdir -p "$RUN_DIR"
ATT_SHA="$(python3 "$LIB" sample "$RUN_DIR" --docs "$NDOCS" --bytes "$ATT_BYTES")"
say "topology up in $(($(now_ms) - T_START)) ms (home a cone, home b symmetric); sample attachment sha256 $ATT_SHA"

# ---------------------------------------------------------------------------------------------
# One variant, in a subshell with set -e: `fail WHY` ends it.

fail() {
    printf '%s\n' "$*" >"$VDIR/why"
    exit 1
}

# What a variant started (the sharer, the join helper) is stopped when it ends, whatever the
# outcome; anything left inside the namespaces goes with nat_down.
SHARER_PID=""
JOIN_PID=""
variant_cleanup() {
    if [ -n "$SHARER_PID" ]; then nat_stop_pid "$SHARER_PID" INT 5; fi
    if [ -n "$JOIN_PID" ]; then nat_stop_pid "$JOIN_PID" TERM 5; fi
}

# run_variant NAME RELAY_ONLY(0|1)
run_variant() {
    local name="$1" relay_only="$2" hubdb share sid deadline flags=() policy='"all"' expect
    VDIR="$RUN_DIR/$name"
    mkdir -p "$VDIR"
    hubdb="hub_${name}_$(date +%s)_$RANDOM"
    share="share-${name//_/-}"
    "$BIN" docs "$VDIR/src.db" bulk <"$RUN_DIR/sample.jsonl" >"$VDIR/bulk.out" 2>"$VDIR/bulk.err" \
        || fail "docs bulk failed: $(tail -n 3 "$VDIR/bulk.err")"
    flags=("${SHARER_ICE[@]}")
    if [ "$relay_only" = 1 ]; then
        flags=("${TURN_ICE[@]}" --relay-only)
        policy='"relay"'
    fi

    # The sharer, in home a (cone NAT).
    echo "a: $BIN -v share --hub $NAT_HUB_URL/$hubdb --db $VDIR/src.db --name $share --key '$KEY' --json ${flags[*]}" >"$VDIR/sharer.cmd"
    # Its identity in the variant's directory, not in the runner's home.
    nat_spawn a "$VDIR/sharer.out" "$VDIR/sharer.err" env PEERPOUCH_IDENTITY="$VDIR/sharer.identity" \
        "$BIN" -v share --hub "$NAT_HUB_URL/$hubdb" \
        --db "$VDIR/src.db" --name "$share" --key "$KEY" --json "${flags[@]}"
    SHARER_PID="$NAT_SPAWN_PID"
    deadline=$(($(now_ms) + 30000))
    sid=""
    while [ "$(now_ms)" -lt "$deadline" ]; do
        kill -0 "$SHARER_PID" 2>/dev/null || fail "the sharer exited before sharing: $(tail -n 3 "$VDIR/sharer.err" | tr '\n' ' ')"
        if sid="$(python3 "$LIB" shared "$VDIR/sharer.out")" \
            && nat_exec wan curl -fsS --noproxy '*' --max-time 5 "$NAT_HUB_URL/$hubdb/$sid" 2>/dev/null \
            | grep -q '"com.stemstorage.peerpouch.share"'; then
            break
        fi
        sid=""
        sleep 0.2
    done
    [ -n "$sid" ] || fail "the share did not appear on $NAT_HUB_URL/$hubdb within 30 s"
    local alloc0 alloc1
    alloc0="$(nat_coturn_allocations)"

    # Chromium, in home b (symmetric NAT).
    local args
    args="$(python3 -c 'import json, sys; print(json.dumps({
        "hub": sys.argv[1], "share": sys.argv[2], "key": sys.argv[3], "get": "doc-007",
        "attachment": {"id": "big", "name": "blob.bin"}, "live": ["from-browser"],
        "iceServers": json.loads(sys.argv[4]), "iceTransportPolicy": json.loads(sys.argv[5])}))' \
        "$NAT_HUB_URL/$hubdb" "$sid" "$KEY" "$PAGE_ICE" "$policy")"
    echo "b: PEERPOUCH_DRIVE_PORT=$PAGE_PORT node tests/browser/drive.mjs; join $args" >"$VDIR/join.cmd"
    local rc=0 t0
    t0=$(now_ms)
    nat_exec b env PEERPOUCH_DRIVE_PORT="$PAGE_PORT" PEERPOUCH_CHROMIUM="$CHROMIUM" \
        timeout -k 5 $((JOIN_TIMEOUT + 60)) python3 "$LIB" join --drive "$ROOT/tests/browser/drive.mjs" \
        --out "$VDIR/join.json" --events "$VDIR/events.log" --timeout "$JOIN_TIMEOUT" --args "$args" \
        </dev/null >"$VDIR/join.out" 2>"$VDIR/join.err" &
    JOIN_PID=$!
    wait "$JOIN_PID" || rc=$?
    JOIN_PID=""
    echo "join exit $rc after $(($(now_ms) - t0)) ms" >>"$VDIR/join.cmd"

    # The sharer prints its link line when its side is up (asynchronously to the page).
    deadline=$(($(now_ms) + 10000))
    while [ "$(now_ms)" -lt "$deadline" ] && ! python3 "$LIB" linked "$VDIR/sharer.out"; do sleep 0.2; done
    alloc1="$(nat_coturn_allocations)"
    kill -0 "$SHARER_PID" 2>/dev/null || fail "the sharer (pid $SHARER_PID) had exited on its own"
    nat_stop_pid "$SHARER_PID" INT 10
    SHARER_PID=""
    [ -s "$VDIR/join.json" ] || fail "the join wrote no result (exit $rc)"

    expect="$(python3 -c 'import json, sys; print(json.dumps({"docs": int(sys.argv[1]), "get": "doc-007",
        "get_n": 7, "att_length": int(sys.argv[2]), "att_sha256": sys.argv[3], "turn_ip": sys.argv[4],
        "a_public_ip": "198.51.100.11", "b_public_ip": "198.51.100.12", "relayed": sys.argv[5] == "1",
        "relay_both": sys.argv[5] == "1"}))' "$((NDOCS + 1))" "$ATT_BYTES" "$ATT_SHA" "$NAT_TURN_IP" "$relay_only")"
    local crc=0
    python3 "$LIB" check --result "$VDIR/join.json" --sharer "$VDIR/sharer.out" --expect "$expect" \
        --coturn-log "$NAT_COTURN_DIR/turn.log" >"$VDIR/check.out" 2>&1 || crc=$?
    grep '^observed: ' "$VDIR/check.out" | sed 's/^observed: //' >"$VDIR/observed" || true
    echo "coturn allocations: $alloc0 when the share was up, $alloc1 after the join" >>"$VDIR/observed"
    sed 's/\x1b\[[0-9;]*m//g' "$VDIR/sharer.err" | grep -o 'ICE server failed.*' | sed 's/^/sharer: /' >>"$VDIR/observed" || true
    [ "$crc" = 0 ] || fail "$(tail -n 1 "$VDIR/check.out")"
    # A direct pair needs no allocation (Chromium makes one anyway when it has a TURN server);
    # a relayed one must have made one during the join (Chromium's, and the sharer's if its
    # end is relayed; natlib.py checked the pair's relayed addresses against coturn's log).
    if grep -q '^path consistent: relayed' "$VDIR/observed"; then
        [ "$alloc1" -gt "$alloc0" ] || fail "the path is relayed but coturn made no allocation during the join ($alloc0 -> $alloc1)"
    fi

    # The page's write reached the sharer's database file (read after the sharer stopped).
    local info count
    info="$("$BIN" docs "$VDIR/src.db" info 2>&1)" || fail "docs info: $info"
    count="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["doc_count"])' <<<"$info")"
    [ "$count" = $((NDOCS + 2)) ] || fail "the source holds $count documents after the join, expected $((NDOCS + 2))"
    "$BIN" docs "$VDIR/src.db" get from-browser 2>&1 | grep -q '"written by Chromium"' \
        || fail "from-browser is not in the sharer's database"
    echo "sharer's database after the join: $count documents, from-browser among them" >>"$VDIR/observed"
}

PASS=0
FAILED=0
for v in "${variants[@]}"; do
    t0=$(now_ms)
    rc=0
    VDIR="$RUN_DIR/$v"
    relay_only=0
    [ "$v" != browser_behind_symmetric_nat_relay_only ] || relay_only=1
    set +e
    (
        set -eE
        trap variant_cleanup EXIT
        trap 'fail "interrupted"' INT TERM
        trap 'fail "unexpected failure (exit $?) at nat.sh line $LINENO: $BASH_COMMAND"' ERR
        run_variant "$v" "$relay_only"
    )
    rc=$?
    set -e
    secs="$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN {printf "%.1f", ms / 1000}')"
    if [ "$rc" = 0 ]; then
        PASS=$((PASS + 1))
        printf 'PASS %s\n' "$v"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL %s: %s\n' "$v" "$(cat "$VDIR/why" 2>/dev/null || echo "exit $rc")"
    fi
    [ ! -f "$VDIR/observed" ] || sed 's/^/  observed: /' "$VDIR/observed"
    printf '  took %s s\n' "$secs"
    if [ "$rc" != 0 ]; then
        for f in sharer.cmd sharer.out sharer.err join.cmd join.err events.log check.out; do
            [ -s "$VDIR/$f" ] || continue
            printf '  --- %s (tail)\n' "$f"
            tail -n 15 "$VDIR/$f" | cut -c1-400 | sed 's/^/  | /'
        done
    fi
done
printf '%d passed, %d failed\n' "$PASS" "$FAILED"
say "wall time $(awk -v ms=$(($(now_ms) - T_START)) 'BEGIN {printf "%.1f", ms / 1000}') s"
[ "$FAILED" -eq 0 ]
