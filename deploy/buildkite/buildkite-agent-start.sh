#!/usr/bin/env bash
# Starts one buildkite-agent for a runner runscale registered, from the variables runscale's
# Buildkite provider hands over. It serves two ways:
#
#   * as the instance command of runscale's local-process backend (or a container entrypoint):
#         template: {command: [/usr/local/bin/buildkite-agent-start.sh], credentials: env}
#     With `credentials: env` the variables are in the environment; with the default `file`
#     delivery they are read from RUNSCALE_CREDENTIALS_FILE (needs jq; one runner per
#     instance).
#   * as the last step of a real machine's cloud-init user data: deploy/aws/runner-user-data.sh
#     fetches the registration from SSM into the environment and runs its runner_command;
#     for Buildkite that is
#         exec sudo --preserve-env="$(compgen -v BUILDKITE_ | paste -sd, -)" -u buildkite-agent \
#           /usr/local/bin/buildkite-agent-start.sh
#
# From runscale (buildkite-agent start reads each of them itself):
#   BUILDKITE_AGENT_TOKEN (secret), BUILDKITE_AGENT_NAME, BUILDKITE_AGENT_TAGS,
#   BUILDKITE_AGENT_ENDPOINT, and as the pool sets them BUILDKITE_AGENT_DISCONNECT_AFTER_JOB,
#   BUILDKITE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT, BUILDKITE_AGENT_ACQUIRE_JOB.
# From this host (defaults in brackets):
#   BUILDKITE_AGENT_BINARY [buildkite-agent, looked up in PATH]: the agent executable.
#   BUILDKITE_BUILD_PATH [$HOME/.buildkite-agent/builds]: created if missing.
#   Any other setting of `buildkite-agent start` passes through as its BUILDKITE_* variable,
#   e.g. BUILDKITE_HOOKS_PATH (a `checkout` hook replaces the git checkout), BUILDKITE_NO_PLUGINS,
#   BUILDKITE_SKIP_CHECKOUT, BUILDKITE_AGENT_PING_MODE.
#
# The token never reaches a command line. Recent agents (those whose `start --help` documents
# `fd://` tokens) re-execute themselves with the token passed over a pipe, so their jobs cannot
# read it from /proc (agent source: clicommand/register_token*.go); they get it in the
# environment. Older agents hand their whole environment to every job, so for them the token
# goes into a private 0600 config file (BUILDKITE_AGENT_CONFIG, after the host's own config
# if one is set) and leaves the environment.
# Exit status: the agent's (27: `--acquire-job` was refused the job), 78 for missing settings.
set -euo pipefail

die() { # exit code, message
  printf 'buildkite-agent-start: %s\n' "$2" >&2
  exit "$1"
}

# File delivery: the single runner's vars and secrets become BUILDKITE_* variables. jq writes
# them NUL-separated into this shell; nothing secret is ever an argument.
if [[ -z ${BUILDKITE_AGENT_TOKEN:-} && -n ${RUNSCALE_CREDENTIALS_FILE:-} ]]; then
  command -v jq >/dev/null || die 78 "jq is needed to read RUNSCALE_CREDENTIALS_FILE (or use credentials: env)"
  runners=$(jq '.runners | length' "$RUNSCALE_CREDENTIALS_FILE")
  [[ $runners == 1 ]] || die 78 "one agent per instance: the credentials file lists $runners runners"
  while IFS= read -r -d '' name && IFS= read -r -d '' value; do
    [[ $name =~ ^BUILDKITE_[A-Z0-9_]+$ ]] || continue
    export "$name=$value"
  done < <(jq -j '.runners[0] | ((.vars // {}) + (.secrets // {})) | to_entries[]
                  | .key, "\u0000", (.value | tostring), "\u0000"' "$RUNSCALE_CREDENTIALS_FILE")
fi

[[ -n ${BUILDKITE_AGENT_TOKEN:-} ]] || die 78 "BUILDKITE_AGENT_TOKEN is not set"
[[ -n ${BUILDKITE_AGENT_NAME:-} ]] || die 78 "BUILDKITE_AGENT_NAME is not set"
agent=${BUILDKITE_AGENT_BINARY:-buildkite-agent}
command -v "$agent" >/dev/null || die 78 "$agent: not found or not executable"
unset BUILDKITE_AGENT_BINARY

# (The help is read without the token in its environment.)
if ! env -u BUILDKITE_AGENT_TOKEN "$agent" start --help 2>&1 | grep -q 'fd://'; then
  [[ $BUILDKITE_AGENT_TOKEN =~ ^[A-Za-z0-9_.:-]+$ ]] || die 78 "BUILDKITE_AGENT_TOKEN has characters a config file cannot hold"
  conf_dir=$(mktemp -d "${TMPDIR:-/tmp}/buildkite-agent-start.XXXXXX")
  conf="$conf_dir/buildkite-agent.cfg"
  (
    umask 077
    {
      if [[ -n ${BUILDKITE_AGENT_CONFIG:-} && -r $BUILDKITE_AGENT_CONFIG ]]; then
        cat "$BUILDKITE_AGENT_CONFIG"
      fi
      printf 'token="%s"\n' "$BUILDKITE_AGENT_TOKEN"
    } >"$conf"
  )
  export BUILDKITE_AGENT_CONFIG="$conf"
  unset BUILDKITE_AGENT_TOKEN
fi

export BUILDKITE_BUILD_PATH=${BUILDKITE_BUILD_PATH:-$HOME/.buildkite-agent/builds}
mkdir -p "$BUILDKITE_BUILD_PATH"

printf 'buildkite-agent-start: starting %s (tags %s%s)\n' "$BUILDKITE_AGENT_NAME" \
  "${BUILDKITE_AGENT_TAGS:-}" "${BUILDKITE_AGENT_ACQUIRE_JOB:+, acquiring job $BUILDKITE_AGENT_ACQUIRE_JOB}" >&2
exec "$agent" start
