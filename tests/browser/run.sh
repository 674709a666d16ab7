#!/usr/bin/env bash
# The browser interop test (runtimes/cli/tests/browser.rs): headless Chromium and a Rust node
# meeting on the pouchdb-server hub, all inside a loopback-only network namespace.
#
#   bash tests/browser/run.sh [extra cargo test arguments, e.g. a test name]
#
# Outside the namespace (network allowed): installs Chromium if missing (Debian packages
# chromium and chromium-driver, through apt-get), playwright-core (tests/browser, `npm ci`) and
# pouchdb-server (.ci/hub) from their lock files, and builds the test binary. Then `unshare --net` (root, or a user namespace) runs this script again with
# --inside: loopback up, the hub started there with CORS on (the page's origin differs from the
# hub's), and the ignored browser tests run offline, one at a time. The hub stops on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

CHROMIUM="${PEERPOUCH_CHROMIUM:-/usr/bin/chromium}"
export PEERPOUCH_CHROMIUM="$CHROMIUM"
say() { printf 'browser test: %s\n' "$*" >&2; }

if [ "${1:-}" != "--inside" ]; then
    if [ ! -x "$CHROMIUM" ] && [ "$CHROMIUM" = /usr/bin/chromium ] && command -v apt-get >/dev/null; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        say "installing Chromium (apt-get install -y chromium chromium-driver)"
        if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium chromium-driver >&2; then
            DEBIAN_FRONTEND=noninteractive $sudo apt-get update >&2 || true
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium chromium-driver >&2
        fi
    fi
    if [ ! -x "$CHROMIUM" ]; then
        say "error: no Chromium at $CHROMIUM (Debian: apt-get install -y chromium chromium-driver)"
        exit 1
    fi
    for t in node npm unshare ip; do
        command -v "$t" >/dev/null || { say "error: '$t' is not on PATH"; exit 1; }
    done
    if [ ! -d tests/browser/node_modules/playwright-core ] \
        || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
        say "installing playwright-core and PouchDB (npm ci in tests/browser; it downloads no browser)"
        (cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund >&2)
    fi
    if [ ! -d runtimes/pouchdb/node_modules/pouchdb-core ] \
        || [ runtimes/pouchdb/package-lock.json -nt runtimes/pouchdb/node_modules/.package-lock.json ]; then
        say "installing the package's test dependencies (npm ci in runtimes/pouchdb)"
        (cd runtimes/pouchdb && npm ci --ignore-scripts --no-audit --no-fund >&2)
    fi
    # The package's unit tests (framing, proofs, option mapping, serving PouchDB).
    (cd runtimes/pouchdb && node --test test/ >&2)
    # shellcheck source=../../.ci/hub.sh
    source .ci/hub.sh
    hub_install
    cargo test -p peerpouch-cli --test browser --no-run
    if [ "$(id -u)" -eq 0 ]; then
        exec unshare --net -- bash "${BASH_SOURCE[0]}" --inside "$@"
    fi
    exec unshare --net --map-root-user -- bash "${BASH_SOURCE[0]}" --inside "$@"
fi
shift

ip link set lo up
# A hub started outside (by .ci/test) is unreachable from here: start our own, and never
# stop theirs.
unset PEERPOUCH_HUB_PID PEERPOUCH_HUB_TMP PEERPOUCH_TEST_HUB
# shellcheck source=../../.ci/hub.sh
source .ci/hub.sh
trap 'hub_stop || true' EXIT
hub_start
# The page is served from another origin (drive.mjs's own server): the hub must allow it, as a
# real hub that browsers use would.
for kv in 'httpd/enable_cors="true"' 'cors/origins="*"' \
    'cors/methods="GET, PUT, POST, HEAD, DELETE"' \
    'cors/headers="accept, authorization, content-type, origin, referer"' \
    'cors/credentials="true"'; do
    curl -fsS -X PUT "$PEERPOUCH_TEST_HUB/_config/${kv%%=*}" \
        -H 'content-type: application/json' -d "${kv#*=}" >/dev/null
done
say "inside a loopback-only network namespace: $(ip -brief addr | tr '\n' ' ')"
PEERPOUCH_BROWSER_NETNS=1 cargo test --offline -p peerpouch-cli --test browser -- \
    --ignored --test-threads=1 --nocapture "$@"
