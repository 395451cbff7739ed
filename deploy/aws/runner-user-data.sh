#!/bin/bash
# User data for the launch template of a runscale aws-asg group or aws-ec2 pool: the instance
# side of the hand-over. aws-asg raises the group's desired capacity, sees this instance appear
# and protects it from scale-in; aws-ec2 launches it directly (CreateFleet or RunInstances).
# Both then write its runner's registration to the SecureString parameter
# ${RUNSCALE_SSM_PREFIX}/${RUNSCALE_POOL}/<instance-id>. This script:
#   1. gets its instance id and region from the instance metadata service (IMDSv2),
#   2. waits for that parameter, reads it and deletes it (no credential stays in SSM),
#   3. starts the runner for one job, as an unprivileged user, with the registration in its
#      environment (never on a command line or in this user data),
#   4. when the runner exits, waits for runscale to terminate the instance (aws-asg does so
#      with the desired capacity decremented, so the group launches no replacement) and powers
#      off after RUNSCALE_EXIT_GRACE seconds if it has not (aws-ec2 terminates a stopped
#      instance at its next listing; better, set the launch template's instance-initiated
#      shutdown behaviour to terminate).
# The instance profile needs deploy/aws/instance-role-policy.json; the AMI needs bash, curl,
# the AWS CLI v2 and the runner. Edit the settings below per group.
set -euo pipefail

RUNSCALE_POOL="${RUNSCALE_POOL:-linux}"          # the pool name in runscale's configuration
RUNSCALE_SSM_PREFIX="${RUNSCALE_SSM_PREFIX:-/runscale}"
RUNSCALE_WAIT="${RUNSCALE_WAIT:-600}"           # seconds to wait for the credentials
RUNSCALE_EXIT_GRACE="${RUNSCALE_EXIT_GRACE:-300}"
RUNNER_USER="${RUNNER_USER:-runner}"
RUNNER_DIR="${RUNNER_DIR:-/opt/actions-runner}"
# The runner in single-job mode. GitHub: the JIT config is one-job by construction.
# Buildkite: deploy/buildkite/buildkite-agent-start.sh (buildkite-agent start from the variables
# the provider hands over); GitLab: deploy/exec/gitlab-runner-slots.sh (writes the slot's config
# directory and system id, then runs gitlab-runner run-single);
# CircleCI: circleci-runner machine --once (settings differ; see the provider's variables).
runner_command() {
  exec sudo --preserve-env=GITHUB_JIT_CONFIG -u "$RUNNER_USER" \
    "$RUNNER_DIR/run.sh" --jitconfig "$GITHUB_JIT_CONFIG"
}

log() { echo "runscale-user-data: $*" | systemd-cat -t runscale 2>/dev/null || echo "runscale-user-data: $*"; }
power_off() { log "$1; powering off"; shutdown -h now; exit 0; }

imds() {
  local token
  token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

INSTANCE_ID=$(imds instance-id)
REGION=$(imds placement/region)
PARAM="$RUNSCALE_SSM_PREFIX/$RUNSCALE_POOL/$INSTANCE_ID"

# runscale writes the parameter within seconds of the instance appearing in the group. An
# instance it never claims (a replacement the group launched by itself) gets none.
VALUE=""
deadline=$((SECONDS + RUNSCALE_WAIT))
while [ "$SECONDS" -lt "$deadline" ]; do
  if VALUE=$(aws ssm get-parameter --region "$REGION" --name "$PARAM" --with-decryption \
      --query Parameter.Value --output text 2>/dev/null); then
    break
  fi
  VALUE=""
  sleep 5
done
[ -n "$VALUE" ] || power_off "no runner registration in $PARAM after ${RUNSCALE_WAIT}s"
aws ssm delete-parameter --region "$REGION" --name "$PARAM" \
  || log "could not delete $PARAM (runscale deletes it once the runner is busy or gone)"

# One NAME=value per line; split at the first '=', never evaluated.
while IFS= read -r line; do
  [ -n "$line" ] || continue
  name=${line%%=*}
  [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
  export "$name=${line#*=}"
done <<<"$VALUE"
unset VALUE line
log "starting runner $RUNSCALE_RUNNER_NAME on $INSTANCE_ID"

status=0
( runner_command ) || status=$?
log "runner exited with status $status; waiting for runscale to terminate $INSTANCE_ID"
sleep "$RUNSCALE_EXIT_GRACE"
power_off "not terminated within ${RUNSCALE_EXIT_GRACE}s"
