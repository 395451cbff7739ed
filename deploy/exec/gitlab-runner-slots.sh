#!/usr/bin/env bash
# Start-up script of a runscale GitLab instance: one real `gitlab-runner run-single` per runner
# slot, each with its own config directory and the system_id runscale gave it, so GitLab lists
# every slot as its own runner manager and runscale recognises it.
#
# runscale's GitLab provider hands each slot these variables (see crates/runscale-providers,
# module gitlab):
#   CI_SERVER_URL              GitLab's URL
#   CI_SERVER_TOKEN            the runner's glrt- token (secret)
#   RUNNER_NAME                the slot's runner name, rs-<pool>-<10 chars>[-<slot>]
#   RUNSCALE_GITLAB_SYSTEM_ID  the slot's system_id, s_<10 chars><2-digit slot>
#   RUNSCALE_GITLAB_MAX_BUILDS jobs before the slot's runner exits (only with max_use_count)
# They come from runscale's credentials file, RUNSCALE_CREDENTIALS_FILE, a 0600 JSON file
# {"runners":[{"name","vars","secrets"}]} (the local-process backend's `file` delivery; one slot
# per entry holding CI_SERVER_TOKEN), or, for a single slot, from the environment.
#
# For each slot this writes, under GITLAB_RUNNER_SLOTS_DIR (default
# /var/lib/gitlab-runner-slots), the directory <RUNNER_NAME>/ (0700) with
#   config.toml        (0600) one [[runners]] entry: name, url, token, executor "shell"
#   .runner_system_id  (0600) RUNSCALE_GITLAB_SYSTEM_ID
# and runs
#   gitlab-runner run-single -c <dir>/config.toml -r <RUNNER_NAME> --max-builds <n or 0>
# `-r` makes gitlab-runner load that config file, and loading it reads .runner_system_id (plain
# `run-single` would derive one id from the machine id for every slot). The token is only ever
# in the config file: never on a command line, in the environment of the runner or in a log.
#
# The script waits for its runners and exits when the last one has exited (each exits after
# --max-builds jobs): with the local-process backend that ends the instance. It ignores
# SIGTERM/SIGINT/SIGQUIT itself and keeps waiting: runscale stops an instance by signalling its
# whole process group, so every gitlab-runner gets the signal directly (SIGTERM aborts a job in
# hand — runscale only stops instances whose slots are idle —, SIGQUIT lets jobs finish).
#
# Settings (environment): GITLAB_RUNNER, the binary (default: gitlab-runner from PATH);
# GITLAB_RUNNER_SLOTS_DIR. Needs bash 4+ and jq. Exit codes: 0 every runner exited cleanly,
# 1 one did not, 78 bad settings or credentials.
#
# On a real machine (cloud-init / user data), this script is the runner part of the bootstrap;
# it installs nothing. Install beforehand, as root, for example on Debian or Ubuntu:
#   curl -fsSL https://packages.gitlab.com/install/repositories/runner/gitlab-runner/script.deb.sh | bash
#   apt-get install -y gitlab-runner jq
#   systemctl disable --now gitlab-runner   # this script runs the runners, not the service
#   install -m 0755 gitlab-runner-slots.sh /usr/local/lib/runscale/gitlab-runner-slots.sh
# then, once the user data has put the slots' credentials in a 0600 file (aws-ec2/aws-asg: read
# from the SSM SecureString parameter, as deploy/aws/runner-user-data.sh does), run it as the
# user jobs run as (with the shell executor, jobs run as that user and can read its config
# directory, token included: keep untrusted jobs off such machines), for example:
#   RUNSCALE_CREDENTIALS_FILE=/run/runscale/credentials.json \
#     runuser -u gitlab-runner -- /usr/local/lib/runscale/gitlab-runner-slots.sh
#   shutdown -h now   # every slot has left: runscale retires the machine anyway
# GitLab side: the runners runscale creates poll every 3 s; keep GitLab Workhorse long polling
# off (the self-managed default), or set the provider's contact_timeout above 1 hour.

set -euo pipefail
umask 077

die() { # exit code, message
    printf 'gitlab-runner-slots: %s\n' "$2" >&2
    exit "$1"
}

runner=${GITLAB_RUNNER:-gitlab-runner}
command -v "$runner" >/dev/null 2>&1 && [[ -x $(command -v "$runner") ]] \
    || die 78 "gitlab-runner not found or not executable: '$runner' (set GITLAB_RUNNER)"
slots_dir=${GITLAB_RUNNER_SLOTS_DIR:-/var/lib/gitlab-runner-slots}

# A value that can stand in a TOML basic string: printable, no quote, no backslash.
toml_ok() { [[ $1 =~ ^[[:print:]]+$ && $1 != *'"'* && $1 != *'\'* ]]; }

# Prepares slot directory and starts its runner in the background. Arguments: url, token,
# name, system id, max builds (may be empty).
start_slot() {
    local url=$1 token=$2 name=$3 system_id=$4 max_builds=${5:-0} dir
    toml_ok "$url" || die 78 "CI_SERVER_URL is missing or malformed"
    toml_ok "$token" || die 78 "CI_SERVER_TOKEN is missing or malformed"
    [[ $name =~ ^[A-Za-z0-9_.-]+$ && $name != .* ]] || die 78 "RUNNER_NAME '$name' cannot name a directory"
    [[ $system_id =~ ^[sr]_[0-9a-zA-Z]{12}$ ]] \
        || die 78 "slot $name: RUNSCALE_GITLAB_SYSTEM_ID '$system_id' is not a gitlab-runner system id"
    [[ $max_builds =~ ^[0-9]+$ ]] || die 78 "slot $name: RUNSCALE_GITLAB_MAX_BUILDS '$max_builds' is not a number"
    # Written into a TOML string below: refuse what would end the string (never echo the token).
    [[ $token =~ ^[A-Za-z0-9_.:-]+$ ]] || die 78 "slot $name: CI_SERVER_TOKEN has characters a config file cannot hold"
    [[ $url != *'"'* && $url != *'\'* && $name != *'"'* && $name != *'\'* ]] \
        || die 78 "slot $name: CI_SERVER_URL or RUNNER_NAME holds a quote or backslash"
    dir=$slots_dir/$name
    mkdir -p -m 0700 "$dir"
    chmod 0700 "$dir"
    {
        printf 'concurrent = 1\n\n[[runners]]\n'
        printf '  name = "%s"\n  url = "%s"\n  token = "%s"\n' "$name" "$url" "$token"
        printf '  executor = "shell"\n  shell = "bash"\n'
        printf '  builds_dir = "%s/builds"\n  cache_dir = "%s/cache"\n' "$dir" "$dir"
    } >"$dir/config.toml"
    printf '%s\n' "$system_id" >"$dir/.runner_system_id"
    chmod 0600 "$dir/config.toml" "$dir/.runner_system_id"
    printf 'gitlab-runner-slots: starting slot %s (system id %s, max builds %s)\n' \
        "$name" "$system_id" "$max_builds"
    # The runner (and so every job it runs) gets neither the token nor the credentials file.
    (
        unset CI_SERVER_TOKEN RUNSCALE_CREDENTIALS_FILE
        exec "$runner" run-single -c "$dir/config.toml" -r "$name" --max-builds "$max_builds"
    ) &
    pids+=("$!")
}

pids=()
if [[ -n ${RUNSCALE_CREDENTIALS_FILE:-} ]]; then
    command -v jq >/dev/null || die 78 "jq is not installed"
    file=$RUNSCALE_CREDENTIALS_FILE
    [[ -r $file ]] || die 78 "cannot read RUNSCALE_CREDENTIALS_FILE"
    count=$(jq -r '.runners | length' "$file") || die 78 "the credentials file is not JSON"
    [[ $count =~ ^[0-9]+$ ]] || die 78 "the credentials file has no runners list"
    # Setting $1 of entry $i. Values pass through jq's stdout into variables only, never
    # through argv.
    get() {
        jq -r --argjson i "$i" --arg k "$1" \
            '.runners[$i] | (.secrets[$k] // .vars[$k] // empty)' "$file"
    }
    for ((i = 0; i < count; i++)); do
        token=$(get CI_SERVER_TOKEN)
        [[ -n $token ]] || continue # not a GitLab runner
        start_slot "$(get CI_SERVER_URL)" "$token" "$(get RUNNER_NAME)" \
            "$(get RUNSCALE_GITLAB_SYSTEM_ID)" "$(get RUNSCALE_GITLAB_MAX_BUILDS)"
    done
    unset token
elif [[ -n ${CI_SERVER_TOKEN:-} ]]; then
    start_slot "${CI_SERVER_URL:-}" "$CI_SERVER_TOKEN" "${RUNNER_NAME:-}" \
        "${RUNSCALE_GITLAB_SYSTEM_ID:-}" "${RUNSCALE_GITLAB_MAX_BUILDS:-}"
else
    die 78 "neither RUNSCALE_CREDENTIALS_FILE nor CI_SERVER_TOKEN is set"
fi
unset CI_SERVER_TOKEN
((${#pids[@]} > 0)) || die 78 "no GitLab runner slot in the credentials"

# Keep waiting through signals: they reach the runners through the process group.
trap 'printf "gitlab-runner-slots: signal received; waiting for the runners\n"' TERM INT QUIT
status=0
for pid in "${pids[@]}"; do
    while true; do
        rc=0
        wait "$pid" || rc=$?
        # A trapped signal interrupts `wait` (status > 128) while the runner still runs.
        if ((rc > 128)) && kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        break
    done
    ((rc == 0)) || status=1
done
printf 'gitlab-runner-slots: every slot has exited\n'
exit "$status"
