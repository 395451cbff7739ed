#!/bin/sh
# runner.sh - a fake runner agent for ci.sh's file-based CI, as started by runscale's
# local-process backend with `credentials: env`.
#
# Environment:
#   RUNSCALE_RUNNER_NAME, RUNSCALE_POOL   set by the local-process backend
#   CI_DIR, CI_EPHEMERAL                  vars from `ci.sh register`
#   CI_RUNNER_TOKEN                       secret from `ci.sh register`, checked against
#                                         runners/<name>.token
#   CI_POLL_INTERVAL                      seconds between looks at the queue (default 0.5)
#
# It connects (registered -> idle), then loops: claim the runner (idle -> claiming), take the
# first waiting job of its pool (queue/ -> running/, an atomic rename, so one job goes to one
# runner), run it (claiming -> busy; the job sleeps its duration), record it in done/, and
# go back to idle - or, if ephemeral, unregister and exit 0. It exits 0 when it finds itself
# removed. SIGTERM while idle: unregister and exit 0; while busy: finish the job first.
set -u

D=${CI_DIR:-${RUNSCALE_CI_DIR:-}}
n=${RUNSCALE_RUNNER_NAME:-}
p=${RUNSCALE_POOL:-}
ephemeral=${CI_EPHEMERAL:-0}
poll=${CI_POLL_INTERVAL:-0.5}

log() {
    echo "runner.sh[$n]: $*" >&2
}

if [ -z "$D" ] || [ -z "$n" ] || [ -z "$p" ]; then
    echo "runner.sh: needs CI_DIR, RUNSCALE_RUNNER_NAME and RUNSCALE_POOL (deliver credentials as env)" >&2
    exit 2
fi
R=$D/runners

# The backend signals the whole process group. So that a SIGTERM cannot kill a rename or the
# job half-way, this shell ignores SIGTERM and SIGINT (and so does every command it runs,
# since ignored signals are inherited); a watcher relays them as SIGUSR1, which only this
# shell gets.
main=$$
term=0
trap 'term=1' USR1
(
    trap 'kill -USR1 "$main" 2>/dev/null; exit 0' TERM INT
    while kill -0 "$main" 2>/dev/null; do
        sleep 1 &
        wait $!
    done
) &
trap '' TERM INT

# Sleeps, but returns at once on a signal (a trap runs as soon as `wait` is interrupted).
pause() {
    sleep "$1" &
    wait $! 2>/dev/null
}

now() {
    date -u +%Y-%m-%dT%H:%M:%SZ
}

# Unregisters (if nobody else removed the runner first) from state $1, and exits 0.
leave() {
    if mv "$R/$n.$1" "$R/$n.removed" 2>/dev/null; then
        rm -f "$R/$n.pool" "$R/$n.draining" "$R/$n.last_busy" "$R/$n.pid" "$R/$n.job" \
            "$R/$n.token" "$R/$n.removed"
        log "unregistered"
    fi
    exit 0
}

expected=''
if ! read -r expected 2>/dev/null <"$R/$n.token"; then
    log "not registered (or already removed); exiting"
    exit 0
fi
if [ "${CI_RUNNER_TOKEN:-}" != "$expected" ]; then
    log "the token does not match the registration"
    exit 1
fi
if ! mv "$R/$n.registered" "$R/$n.idle" 2>/dev/null && [ ! -e "$R/$n.idle" ]; then
    log "neither registered nor idle (removed, or busy in another process); exiting"
    exit 0
fi
printf '%s\n' "$main" >"$D/tmp/$n.pid.$$"
mv "$D/tmp/$n.pid.$$" "$R/$n.pid"
log "connected to pool $p"

# Runs job $1 (already in running/), records it in done/.
run_job() {
    job=$1
    file=$D/running/$p/$job
    duration=0
    queued_epoch=''
    queued_at=''
    read -r duration queued_epoch queued_at 2>/dev/null <"$file"
    started=$(date +%s)
    printf '%s\n' "$job" >"$R/$n.job"
    now >"$R/$n.last_busy"
    log "running job $job for ${duration}s"
    end=$((started + duration))
    # Whole seconds of wall-clock time, whatever interrupts the pauses.
    while [ "$(date +%s)" -lt "$end" ]; do
        pause 1
    done
    finished=$(date +%s)
    printf 'pool=%s runner=%s result=ok duration=%s wait=%s queued_at=%s started=%s finished=%s\n' \
        "$p" "$n" "$duration" "$((started - ${queued_epoch:-$started}))" "$queued_at" \
        "$started" "$finished" >"$D/tmp/done.$job.$$"
    mv "$D/tmp/done.$job.$$" "$D/done/$job"
    rm -f "$file" "$R/$n.job"
    now >"$R/$n.last_busy"
    log "finished job $job"
}

while :; do
    if [ "$term" = 1 ]; then
        log "SIGTERM while idle"
        leave idle
    fi
    if [ -e "$R/$n.draining" ]; then
        # Draining: take nothing; leave when removed.
        if [ ! -e "$R/$n.idle" ]; then
            log "removed; exiting"
            exit 0
        fi
        pause "$poll"
        continue
    fi
    # Only this runner and `ci.sh remove` rename .idle: if it is gone, we were removed.
    if ! mv "$R/$n.idle" "$R/$n.claiming" 2>/dev/null; then
        log "removed; exiting"
        exit 0
    fi
    job=''
    if [ -d "$D/queue/$p" ]; then
        mkdir -p "$D/running/$p"
        for f in "$D/queue/$p"/*; do
            [ -f "$f" ] || continue
            if mv "$f" "$D/running/$p/${f##*/}" 2>/dev/null; then
                job=${f##*/}
                break
            fi
        done
    fi
    if [ -z "$job" ]; then
        mv "$R/$n.claiming" "$R/$n.idle"
        pause "$poll"
        continue
    fi
    mv "$R/$n.claiming" "$R/$n.busy"
    run_job "$job"
    if [ "$ephemeral" = 1 ]; then
        log "ephemeral: one job done"
        leave busy
    fi
    if [ "$term" = 1 ]; then
        log "SIGTERM while busy: job finished"
        leave busy
    fi
    mv "$R/$n.busy" "$R/$n.idle"
done
