#!/usr/bin/env bash
# runscale exec backend example: "machines" are background processes on this host.
#
# A complete, small implementation of deploy/exec/PROTOCOL.md, used by runscale's tests and a
# starting point for real scripts. Needs bash 4.4+ and jq.
#
# Pool template params:
#   state_dir   (required) directory for this script's files (created 0700); one per daemon
#   command     (required) the runner's argv, e.g. ["/usr/local/bin/runscale-fake-runner"]
#   env         (optional) extra environment of the runner, {"NAME": "value"}
#   stop_grace  (optional) seconds between SIGTERM (delete) and SIGKILL (next list); 10
#   machine     (optional) true: the instance outlives its runner, as a VM does, and serves
#               `reuse` (pools with reuse): when the runner exits it waits for the runners a
#               `reuse` hands it and runs them with the same command. Default false: the
#               instance is the runner process and ends with it.
#
# Each instance is one process group started with setsid, stdin /dev/null, output appended to
# {state_dir}/{pool}/{id}.log, and this environment only: PATH, HOME, the params' env,
# RUNSCALE_POOL, RUNSCALE_INSTANCE_ID, RUNSCALE_RUNNER_NAME (first runner),
# RUNSCALE_RUNNER_NAMES (comma-separated) and RUNSCALE_CREDENTIALS_FILE, a 0600 file
# {"runners":[{"name","runner_id","vars","secrets"}]} (the create request's runners).
#
# Limitation: a create killed (timeout, runscale stopping) in the few milliseconds between
# starting the runner and recording it leaves that runner unrecorded and so unlisted; a real
# cloud script avoids this by finding machines through labels the create call itself sets.
#
# Secrets: the request is read from stdin into a shell variable and only ever piped into jq
# (printf is a builtin: nothing secret reaches any argv); the credentials file is written under
# umask 077. Nothing here prints the request.

set -euo pipefail
umask 077

die() { # exit code, message
    printf 'local-runners: %s\n' "$2" >&2
    exit "$1"
}

command -v jq >/dev/null || die 78 "jq is not installed"

# A "machine" of params.machine (started by create as: this script --machine GEN_FILE ARGV...):
# runs the runner, then, after each `reuse` bumps the generation in GEN_FILE, the runners that
# reuse recorded (same credentials file, fresh contents). Ends with its process group.
if [[ ${1:-} == --machine ]]; then
    gen_file=$2
    shift 2
    generation=0
    while :; do
        "$@" || true
        while :; do
            next=$(jq -r '.generation' "$gen_file" 2>/dev/null || printf '%s' "$generation")
            [[ $next == "$generation" ]] || break
            sleep 0.2
        done
        generation=$next
        RUNSCALE_RUNNER_NAMES=$(jq -r '.runner_names | join(",")' "$gen_file")
        RUNSCALE_RUNNER_NAME=$(jq -r '.runner_names[0] // ""' "$gen_file")
        export RUNSCALE_RUNNER_NAMES RUNSCALE_RUNNER_NAME
    done
fi

request=$(cat)
req() { printf '%s' "$request" | jq "$@"; }

[[ $(req -r '.version') == 1 ]] || die 78 "unsupported protocol version $(req -c '.version')"
action=$(req -r '.action')
pool=$(req -r '.pool')
state_dir=$(req -r '.params.state_dir // empty')
[[ -n $state_dir ]] || die 78 "params.state_dir is required"
[[ $pool =~ ^[A-Za-z0-9_.-]+$ && $pool != .* ]] || die 78 "pool name '$pool' cannot name a directory"
dir="$state_dir/$pool"
grace=$(req -r '.params.stop_grace // 10')
[[ $grace =~ ^[0-9]+$ ]] || die 78 "params.stop_grace must be a whole number of seconds"

# Field 22 (start time) of /proc/PID/stat, if the process runs and is not a zombie.
start_time() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    # shellcheck disable=SC2086 # word splitting of the stat fields is the point
    set -- $rest
    [[ $1 != Z && $1 != X ]] || return 1
    printf '%s\n' "${20}"
}

# Whether instance $1's process is the one recorded (a reused pid is not).
alive() {
    local meta=$dir/$1.json pid recorded
    pid=$(jq -r '.pid' "$meta") || return 1
    recorded=$(jq -r '.start_time' "$meta") || return 1
    [[ $(start_time "$pid" || true) == "$recorded" ]]
}

forget() { rm -f "$dir/$1.json" "$dir/$1.credentials.json" "$dir/$1.stopping" "$dir/$1.generation.json"; }

safe_id() { [[ $1 =~ ^[A-Za-z0-9_.-]+$ && $1 != .* ]]; }

case $action in
create)
    command -v setsid >/dev/null || die 78 "setsid is not installed"
    mkdir -p "$dir"
    id=$(req -r '.instance_name')
    safe_id "$id" || die 78 "instance name '$id' cannot name a file"
    if [[ -e $dir/$id.json ]]; then
        if alive "$id"; then
            # A retried create: the first one worked.
            jq -n --arg id "$id" '{id: $id, state: "running"}'
            exit 0
        fi
        forget "$id"
    fi
    mapfile -d '' -t argv < <(req -j '.params.command // [] | .[] | ., "\u0000"')
    ((${#argv[@]} > 0)) || die 78 "params.command must be a non-empty list"
    mapfile -d '' -t extra_env < <(req -j '.params.env // {} | to_entries[] | "\(.key)=\(.value)", "\u0000"')
    names=$(req -r '.runner_names | join(",")')
    first=$(req -r '.runner_names[0] // ""')
    credentials=$dir/$id.credentials.json
    req '{runners: .runners}' >"$credentials.tmp"
    mv "$credentials.tmp" "$credentials"
    if [[ $(req -r '.params.machine // false') == true ]]; then
        echo '{"generation":0}' >"$dir/$id.generation.json"
        argv=("$BASH" "${BASH_SOURCE[0]}" --machine "$dir/$id.generation.json" "${argv[@]}")
    fi
    (
        exec setsid env -i PATH="${PATH:-/usr/bin:/bin}" HOME="${HOME:-/}" "${extra_env[@]}" \
            RUNSCALE_POOL="$pool" RUNSCALE_INSTANCE_ID="$id" RUNSCALE_RUNNER_NAME="$first" \
            RUNSCALE_RUNNER_NAMES="$names" RUNSCALE_CREDENTIALS_FILE="$credentials" \
            "${argv[@]}"
    ) </dev/null >>"$dir/$id.log" 2>&1 &
    pid=$!
    started=$(start_time "$pid") || die 1 "the runner exited at once; see $dir/$id.log"
    req --arg id "$id" --argjson pid "$pid" --arg started "$started" \
        --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        '{id: $id, pid: $pid, start_time: $started, runner_names, template_hash, created_at: $at}' \
        >"$dir/$id.json.tmp"
    mv "$dir/$id.json.tmp" "$dir/$id.json"
    jq -n --arg id "$id" '{id: $id, state: "running"}'
    ;;
list)
    now=$(date +%s)
    entries=()
    shopt -s nullglob
    for meta in "$dir"/*.json; do
        [[ $meta == *.credentials.json || $meta == *.generation.json ]] && continue
        id=$(basename "$meta" .json)
        if ! alive "$id"; then
            forget "$id"
            continue
        fi
        state=running
        if [[ -e $dir/$id.stopping ]]; then
            state=stopping
            since=$(cat "$dir/$id.stopping")
            if ((now - since >= grace)); then
                kill -KILL -- "-$(jq -r '.pid' "$meta")" 2>/dev/null || true
            fi
        fi
        entries+=("$(jq -c --arg state "$state" \
            '{id, runner_names, state: $state, created_at, template_hash}
             + if .uses then {uses, reused_at} else {} end' "$meta")")
    done
    if ((${#entries[@]} == 0)); then
        echo '{"instances":[]}'
    else
        printf '%s\n' "${entries[@]}" | jq -s '{instances: .}'
    fi
    ;;
delete)
    id=$(req -r '.instance_id')
    safe_id "$id" || exit 3
    [[ -e $dir/$id.json ]] || exit 3
    if ! alive "$id"; then
        forget "$id"
        exit 3
    fi
    [[ -e $dir/$id.stopping ]] || date +%s >"$dir/$id.stopping"
    kill -TERM -- "-$(jq -r '.pid' "$dir/$id.json")" 2>/dev/null || true
    echo '{"ok":true}'
    ;;
reuse)
    id=$(req -r '.instance_id')
    safe_id "$id" || exit 3
    [[ -e $dir/$id.json && ! -e $dir/$id.stopping ]] || exit 3
    if ! alive "$id"; then
        forget "$id"
        exit 3
    fi
    [[ -e $dir/$id.generation.json ]] || die 78 "instance $id is not a machine (params.machine) and cannot be reused"
    credentials=$dir/$id.credentials.json
    req '{runners: .runners}' >"$credentials.tmp"
    mv "$credentials.tmp" "$credentials"
    at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    req --slurpfile meta "$dir/$id.json" --arg at "$at" \
        '$meta[0] + {runner_names, uses, reused_at: $at}' >"$dir/$id.json.tmp"
    mv "$dir/$id.json.tmp" "$dir/$id.json"
    # Last: the machine starts the new runners once it sees the new generation.
    req --slurpfile gen "$dir/$id.generation.json" \
        '{generation: ($gen[0].generation + 1), runner_names}' >"$dir/$id.generation.json.tmp"
    mv "$dir/$id.generation.json.tmp" "$dir/$id.generation.json"
    echo '{"ok":true}'
    ;;
probe)
    mkdir -p "$dir" || die 78 "cannot create $dir"
    [[ -w $dir ]] || die 78 "$dir is not writable"
    program=$(req -r '.params.command[0] // empty')
    [[ -n $program ]] || die 78 "params.command must be a non-empty list"
    command -v "$program" >/dev/null || die 78 "runner program $program is not executable"
    jq -n --arg m "$dir is writable and $program is executable" '{message: $m}'
    ;;
*)
    die 78 "unknown action '$action'"
    ;;
esac
