#!/bin/sh
# ci.sh - a tiny CI system kept in files, spoken to through runscale's exec provider.
#
# Usage (the exec provider's commands):
#   ci.sh observe    pools in RUNSCALE_POOLS (comma-separated); prints the exec observe JSON
#   ci.sh register   RUNSCALE_POOL, RUNSCALE_RUNNER_NAME, RUNSCALE_LABELS; prints credentials
#   ci.sh remove     RUNSCALE_RUNNER_ID; exit 0 = gone, 3 = busy
#   ci.sh drain      RUNSCALE_RUNNER_ID; the runner takes no new job
#
# State lives under $RUNSCALE_CI_DIR:
#   queue/<pool>/<job>     a waiting job: "<duration-secs> <queued-epoch> <queued-rfc3339>"
#   running/<pool>/<job>   a job a runner claimed (moved here from queue/, atomically)
#   done/<job>             a finished job: pool, runner, result (ok, or lost when its runner
#                          died mid-job), duration, wait time, times
#   runners/<name>.<state> the runner's state: registered | idle | claiming | busy | removed;
#                          changed only by atomic renames
#   runners/<name>.token   its registration token (0600); exists from register to removal
#   runners/<name>.pool    its pool
#   runners/<name>.draining, runners/<name>.last_busy (RFC 3339)
#   runners/<name>.pid     the runner process, runners/<name>.job  the job it runs
#   tmp/                   files being written, renamed into place when complete
#
# The runner id is the runner name. Pools labelled "ephemeral" (or every pool, with
# RUNSCALE_CI_EPHEMERAL=1) get one-job runners. POSIX sh and utilities only.
set -eu

D=${RUNSCALE_CI_DIR:?RUNSCALE_CI_DIR must name the CI state directory}
R=$D/runners

fail() {
    code=$1
    shift
    echo "ci.sh: $*" >&2
    exit "$code"
}

# Names become file names and JSON strings: keep them plain.
valid_name() {
    case $1 in
    '' | *[!A-Za-z0-9_-]*) return 1 ;;
    esac
    return 0
}

json_escape() {
    printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'
}

init() {
    mkdir -p "$D/queue" "$D/running" "$D/done" "$D/tmp" "$R"
}

# A short pause (fractional sleep where supported).
nap() {
    sleep 0.2 2>/dev/null || sleep 1
}

count_files() {
    c=0
    if [ -d "$1" ]; then
        for f in "$1"/*; do
            if [ -e "$f" ]; then c=$((c + 1)); fi
        done
    fi
    echo "$c"
}

# Prints offline, idle or busy; fails when the runner is gone (or going). State files are
# renamed while we look, so look again when none is seen.
runner_state() {
    for _try in 1 2 3 4 5; do
        if [ -e "$R/$1.busy" ]; then
            echo busy
            return 0
        fi
        if [ -e "$R/$1.idle" ] || [ -e "$R/$1.claiming" ]; then
            echo idle
            return 0
        fi
        if [ -e "$R/$1.registered" ]; then
            echo offline
            return 0
        fi
        if [ ! -e "$R/$1.token" ] || [ -e "$R/$1.removed" ]; then
            return 1
        fi
    done
    return 1
}

# Whether the runner's process (recorded when it connected) is gone.
runner_dead() {
    pid=''
    read -r pid 2>/dev/null <"$R/$1.pid" || return 1
    [ -n "$pid" ] || return 1
    if kill -0 "$pid" 2>/dev/null; then return 1; fi
    return 0
}

# Records the job a dead runner held as lost.
lose_job() {
    job=''
    pool=''
    read -r job 2>/dev/null <"$R/$1.job" || return 0
    read -r pool 2>/dev/null <"$R/$1.pool" || return 0
    if [ -n "$job" ] && [ -e "$D/running/$pool/$job" ]; then
        printf 'pool=%s runner=%s result=lost\n' "$pool" "$1" >"$D/tmp/done.$job.$$"
        mv "$D/tmp/done.$job.$$" "$D/done/$job"
        rm -f "$D/running/$pool/$job"
    fi
}

# Deletes what is left of a runner whose state file was renamed to .removed (or is gone).
forget() {
    rm -f "$R/$1.pool" "$R/$1.draining" "$R/$1.last_busy" "$R/$1.pid" "$R/$1.job" \
        "$R/$1.token" "$R/$1.removed"
}

observe_pool() {
    p=$1
    printf '"waiting":['
    sep=''
    if [ -d "$D/queue/$p" ]; then
        for f in "$D/queue/$p"/*; do
            [ -f "$f" ] || continue
            # The job may be claimed while we look.
            read -r _dur _epoch queued 2>/dev/null <"$f" || continue
            printf '%s{"id":"%s","queued_at":"%s"}' "$sep" "${f##*/}" "$queued"
            sep=,
        done
    fi
    printf '],"running":%s,"runners":[' "$(count_files "$D/running/$p")"
    sep=''
    for f in "$R"/*.pool; do
        [ -f "$f" ] || continue
        n=${f##*/}
        n=${n%.pool}
        read -r rp 2>/dev/null <"$f" || continue
        [ "$rp" = "$p" ] || continue
        state=$(runner_state "$n") || continue
        draining=false
        if [ -e "$R/$n.draining" ]; then draining=true; fi
        last_busy=null
        if read -r t 2>/dev/null <"$R/$n.last_busy"; then last_busy="\"$t\""; fi
        printf '%s{"id":"%s","name":"%s","state":"%s","draining":%s,"last_busy":%s}' \
            "$sep" "$n" "$n" "$state" "$draining" "$last_busy"
        sep=,
    done
    printf ']'
}

observe() {
    init
    # stdin carries the pools with their labels; this CI needs only their names.
    pools=${RUNSCALE_POOLS-}
    set -f
    old_ifs=$IFS
    IFS=,
    # shellcheck disable=SC2086 # split on commas, globbing off
    set -- $pools
    IFS=$old_ifs
    set +f
    out='{"pools":{'
    psep=''
    for p in "$@"; do
        [ -n "$p" ] || continue
        valid_name "$p" || fail 2 "invalid pool name: $p"
        out="$out$psep\"$p\":{$(observe_pool "$p")}"
        psep=,
    done
    printf '%s}}\n' "$out"
}

register() {
    init
    p=${RUNSCALE_POOL:?RUNSCALE_POOL is not set}
    n=${RUNSCALE_RUNNER_NAME:?RUNSCALE_RUNNER_NAME is not set}
    valid_name "$p" || fail 2 "invalid pool name: $p"
    valid_name "$n" || fail 2 "invalid runner name: $n"
    # Registering again before the runner connected (a retry) issues a new token.
    if [ -e "$R/$n.token" ] && [ ! -e "$R/$n.registered" ]; then
        fail 1 "runner $n is already registered and connected"
    fi
    ephemeral=0
    case ",${RUNSCALE_LABELS-}," in
    *,ephemeral,*) ephemeral=1 ;;
    esac
    if [ "${RUNSCALE_CI_EPHEMERAL:-0}" = 1 ]; then ephemeral=1; fi
    token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    [ -n "$token" ] || fail 1 "could not read /dev/urandom"
    (
        umask 077
        printf '%s\n' "$token" >"$D/tmp/$n.token.$$"
    )
    mv "$D/tmp/$n.token.$$" "$R/$n.token"
    : >"$R/$n.registered"
    printf '%s\n' "$p" >"$D/tmp/$n.pool.$$"
    mv "$D/tmp/$n.pool.$$" "$R/$n.pool"
    printf '{"runner_id":"%s","vars":{"CI_DIR":"%s","CI_EPHEMERAL":"%s"},"secrets":{"CI_RUNNER_TOKEN":"%s"}}\n' \
        "$n" "$(json_escape "$D")" "$ephemeral" "$token"
}

remove() {
    init
    n=${RUNSCALE_RUNNER_ID:?RUNSCALE_RUNNER_ID is not set}
    valid_name "$n" || fail 2 "invalid runner id: $n"
    for _try in 1 2 3 4 5 6 7 8 9 10; do
        # Whoever renames the state file to .removed owns the removal.
        if mv "$R/$n.idle" "$R/$n.removed" 2>/dev/null ||
            mv "$R/$n.registered" "$R/$n.removed" 2>/dev/null; then
            forget "$n"
            exit 0
        fi
        if [ ! -e "$R/$n.token" ]; then
            exit 0 # gone already, or never registered
        fi
        if [ -e "$R/$n.busy" ]; then
            # A runner killed mid-job (SIGKILL, crash) cannot finish it: its job is lost.
            if runner_dead "$n" && mv "$R/$n.busy" "$R/$n.removed" 2>/dev/null; then
                lose_job "$n"
                forget "$n"
                exit 0
            fi
            fail 3 "runner $n is running a job"
        fi
        # Taking a job (.claiming) or being removed by somebody else: look again.
        nap
    done
    fail 3 "runner $n kept changing state; try again"
}

drain() {
    init
    n=${RUNSCALE_RUNNER_ID:?RUNSCALE_RUNNER_ID is not set}
    valid_name "$n" || fail 2 "invalid runner id: $n"
    # Draining a runner that is gone is already done.
    if [ -e "$R/$n.token" ]; then
        : >"$R/$n.draining"
    fi
}

case ${1-} in
observe) observe ;;
register) register ;;
remove) remove ;;
drain) drain ;;
*) fail 2 "usage: ci.sh observe|register|remove|drain (see the comment at the top)" ;;
esac
