#!/bin/sh
# The nightly job, for systemd (scripts/systemd/) or cron (scripts/buildwatch.cron).
#
#   buildwatch-nightly.sh CONFIG [NIGHT]
#
# CONFIG is the nightly YAML (baseline, current, model, cases ...; see configs/nightly.example.yaml)
# without `out`: each night gets its own folder $BUILDWATCH_ROOT/nights/NIGHT (NIGHT defaults to
# yesterday's date: the flight of the evening before). A lock per night means a timer firing while
# last night's run is still going, or a second cron line, never runs the same night twice at once
# (`buildwatch run` also locks its output folder itself). A rerun of the same night resumes it.
# The building model's view of the baseline is kept in $BUILDWATCH_CACHE (default
# $BUILDWATCH_ROOT/cache/baseline-views) between nights, so later nights skip that inference;
# BUILDWATCH_CACHE= (empty) leaves it to the config (detect.second_view.baseline_cache).
#
# Exit codes (mail them / alert on them): 0 done, 2 bad input or configuration (one line in the
# log says which file and what to do), 75 the night is already running, 130 interrupted (rerun
# resumes), 1 internal error (traceback in ~/.cache/buildwatch/errors.log).
set -u
CONFIG=${1:?usage: buildwatch-nightly.sh CONFIG [NIGHT]}
NIGHT=${2:-$(date -d yesterday +%F 2>/dev/null || date -v-1d +%F)}
ROOT=${BUILDWATCH_ROOT:-/srv/buildwatch}
BUILDWATCH=${BUILDWATCH:-buildwatch}
OUT="$ROOT/nights/$NIGHT"
CACHE=${BUILDWATCH_CACHE-$ROOT/cache/baseline-views}
LOG="$ROOT/logs/nightly.log"       # rotated by scripts/buildwatch.logrotate
mkdir -p "$ROOT/nights" "$ROOT/logs" "$ROOT/locks" || exit 2

exec 9>"$ROOT/locks/$NIGHT.lock"
if ! flock -n 9; then
    echo "$(date -Is) night $NIGHT: already running (lock $ROOT/locks/$NIGHT.lock); not started again" >>"$LOG"
    exit 75
fi

echo "$(date -Is) night $NIGHT: start ($CONFIG -> $OUT)" >>"$LOG"
"$BUILDWATCH" doctor --config "$CONFIG" --out "$OUT" >>"$LOG" 2>&1 || {
    echo "$(date -Is) night $NIGHT: installation check failed (see the FAIL lines above); not started" >>"$LOG"
    exit 2
}
if [ -n "$CACHE" ]; then
    "$BUILDWATCH" run --config "$CONFIG" --out "$OUT" --baseline-cache "$CACHE" --no-progress >>"$LOG" 2>&1
else
    "$BUILDWATCH" run --config "$CONFIG" --out "$OUT" --no-progress >>"$LOG" 2>&1
fi
rc=$?
echo "$(date -Is) night $NIGHT: exit $rc (run log: $OUT/buildwatch.log)" >>"$LOG"
exit $rc
