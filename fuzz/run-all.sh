#!/usr/bin/env bash
# Builds every fuzz target of this crate and runs each, one after the other, for FUZZ_SECONDS
# seconds (default 60) on the stable toolchain without a sanitizer. Each target starts from
# corpus/<target>/ (created; new inputs go there) and, when present, the committed seeds in
# seeds/<target>/ and the dictionary <target>.dict. Prints each target's final libFuzzer stats
# line; exits non-zero if any target failed (a crash, an invariant, a timeout), after running
# them all.
#
#   FUZZ_SECONDS=600 fuzz/run-all.sh                 # longer runs
#   FUZZ_TARGETS="frame_decode hub_doc" fuzz/run-all.sh
#   FUZZ_TIMEOUT=30                                  # seconds one input may take (a hang fails)
#
# The environment passes through to the targets: RPC_SERVER_FUZZ_SKIP=<checks> turns off
# rpc_server checks that open findings trip (see README.md).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

seconds="${FUZZ_SECONDS:-60}"
timeout="${FUZZ_TIMEOUT:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fuzz build --sanitizer none

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi

logs="$(mktemp -d)"
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    if [[ -d "seeds/$t" ]]; then
        dirs+=("seeds/$t")
    fi
    args=("-max_total_time=$seconds" "-timeout=$timeout")
    if [[ -f "$t.dict" ]]; then
        args+=("-dict=$t.dict")
    fi
    echo "== $t: ${seconds}s from ${dirs[*]}"
    if cargo fuzz run "$t" --sanitizer none "${dirs[@]}" -- "${args[@]}" >"$logs/$t.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs' "$logs/$t.log" || echo "(no final stats line)"
    else
        failed+=("$t")
        echo "!! $t FAILED; what failed, then the end of its log ($logs/$t.log):"
        # The panic message comes before the (long) Debug print of the input: show it first.
        grep -m1 -A8 -E 'panicked at|ERROR: libFuzzer' "$logs/$t.log" || true
        echo "   ..."
        tail -n 40 "$logs/$t.log"
        # The failing input, as base64, so a CI log alone is enough to replay it.
        artifact=$(grep -m1 -oE 'Test unit written to [^ ]+' "$logs/$t.log" | awk '{print $5}' || true)
        if [[ -n "$artifact" && -f "$artifact" ]]; then
            echo "   input ($artifact, base64): $(base64 -w0 "$artifact")"
        fi
    fi
done

if ((${#failed[@]} > 0)); then
    echo "failed targets: ${failed[*]}" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran for ${seconds}s without a failure"
