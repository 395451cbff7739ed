#!/usr/bin/env bash
# runscale exec backend for Hetzner Cloud, with the `hcloud` CLI (deploy/exec/PROTOCOL.md).
#
# One server per instance, named after runscale's instance name and labelled
#   runscale/pool=<pool>  runscale/template-hash=<hash>  runscale/slots=<runners>
#   runscale/managed-by=runscale
# so `list` finds every server of a pool (also after a runscale restart) and rebuilds the
# runner names from the server name and the slot count.
#
# Runner credentials never go into cloud-init user data (anyone with the project token can
# read it back, and so can every process on the server through the metadata service): once the
# server answers on SSH, the create request's `runners` are piped over SSH into a 0600 file
# (`credentials_path`, default /etc/runscale/credentials.json, the same shape as the
# local-process backend's RUNSCALE_CREDENTIALS_FILE). The user data installs the runner and
# starts it when that file appears (e.g. a systemd .path unit).
#
# Pool template params:
#   server_type       (required) e.g. "cx22"
#   image             (required) e.g. "ubuntu-24.04" or a snapshot id
#   ssh_key           (required) name of an SSH key in the project (for the credentials copy)
#   ssh_private_key   (required) path of its private key on the runscale host (readable by it;
#                     under systemd: "${CREDENTIALS_DIRECTORY}/hcloud-ssh-key", see deploy/systemd/)
#   location          (optional) e.g. "fsn1"
#   user_data         (optional) path of a cloud-init file on the runscale host
#   network, firewall (optional) names or ids
#   credentials_path  (optional) where the credentials file goes on the server
#   ssh_user          (optional) default root
#   boot_wait         (optional) seconds to wait for SSH; default 300 (keep below the
#                     backend's timeouts.create)
#
# The API token: HCLOUD_TOKEN, else the file hcloud-token in $CREDENTIALS_DIRECTORY (systemd
# LoadCredential=, see deploy/systemd/), else the hcloud CLI's own configuration.
# Known host keys of the servers are kept in $STATE_DIRECTORY (or ~/.ssh)/runscale_known_hosts.
#
# Exit codes: 0 done, 3 not found, 4 no capacity, 75 temporary (API rate limit, network),
# 78 configuration, 1 anything else.

set -euo pipefail
umask 077

die() { # exit code, message
    printf 'hcloud.sh: %s\n' "$2" >&2
    exit "$1"
}

for tool in hcloud jq ssh; do
    command -v "$tool" >/dev/null || die 78 "$tool is not installed"
done

if [[ -z ${HCLOUD_TOKEN:-} && -n ${CREDENTIALS_DIRECTORY:-} && -r $CREDENTIALS_DIRECTORY/hcloud-token ]]; then
    HCLOUD_TOKEN=$(<"$CREDENTIALS_DIRECTORY/hcloud-token")
    export HCLOUD_TOKEN
fi

request=$(cat)
req() { printf '%s' "$request" | jq "$@"; }
param() { req -r --arg k "$1" '.params[$k] // empty | tostring'; }

[[ $(req -r '.version') == 1 ]] || die 78 "unsupported protocol version"
action=$(req -r '.action')
pool=$(req -r '.pool')

known_hosts="${STATE_DIRECTORY:-$HOME/.ssh}/runscale_known_hosts"
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=accept-new
    -o "UserKnownHostsFile=$known_hosts")

# Runs hcloud; on failure exits with the protocol code matching the API's error.
api() {
    local out err status=0
    err=$(mktemp)
    out=$(hcloud "$@" 2>"$err") || status=$?
    if ((status != 0)); then
        local message
        message=$(tr '\n' ' ' <"$err")
        rm -f "$err"
        case $message in
        *not\ found* | *not_found*) die 3 "$message" ;;
        *resource_unavailable* | *resource_limit_exceeded* | *placement_error*) die 4 "$message" ;;
        *rate_limit_exceeded* | *timeout* | *connection* | *service_error* | *locked*) die 75 "$message" ;;
        *unauthorized* | *forbidden* | *token*) die 78 "$message" ;;
        *) die 1 "$message" ;;
        esac
    fi
    rm -f "$err"
    printf '%s' "$out"
}

case $action in
create)
    name=$(req -r '.instance_name')
    slots=$(req -r '.runner_names | length')
    hash=$(req -r '.template_hash')
    for p in server_type image ssh_key ssh_private_key; do
        [[ -n $(param "$p") ]] || die 78 "params.$p is required"
    done
    key=$(param ssh_private_key)
    user=$(param ssh_user)
    user=${user:-root}
    target=$(param credentials_path)
    target=${target:-/etc/runscale/credentials.json}
    wait_s=$(param boot_wait)
    wait_s=${wait_s:-300}

    # A retried create finds the server the first attempt made.
    server=$(hcloud server describe -o json "$name" 2>/dev/null || true)
    if [[ -n $server && $(jq -r '.labels["runscale/pool"] // ""' <<<"$server") != "$pool" ]]; then
        die 78 "a server named $name exists but is not labelled for pool $pool"
    fi
    if [[ -z $server ]]; then
        args=(server create -o json --name "$name" --type "$(param server_type)"
            --image "$(param image)" --ssh-key "$(param ssh_key)"
            --label "runscale/pool=$pool" --label "runscale/template-hash=$hash"
            --label "runscale/slots=$slots" --label "runscale/managed-by=runscale")
        [[ -z $(param location) ]] || args+=(--location "$(param location)")
        [[ -z $(param user_data) ]] || args+=(--user-data-from-file "$(param user_data)")
        [[ -z $(param network) ]] || args+=(--network "$(param network)")
        [[ -z $(param firewall) ]] || args+=(--firewall "$(param firewall)")
        server=$(api "${args[@]}" | jq '.server')
    fi
    id=$(jq -r '.id' <<<"$server")
    ip=$(jq -r '.public_net.ipv4.ip // empty' <<<"$server")
    [[ -n $ip ]] || die 1 "server $id has no public IPv4 address"

    # Deliver the credentials over SSH as soon as the server answers.
    deadline=$((SECONDS + wait_s))
    until ssh "${ssh_opts[@]}" -i "$key" "$user@$ip" true 2>/dev/null; do
        ((SECONDS < deadline)) || {
            hcloud server delete "$id" >/dev/null 2>&1 || true
            die 75 "server $id did not answer on SSH within ${wait_s}s; deleted it"
        }
        sleep 5
    done
    if ! req '{runners: .runners}' | ssh "${ssh_opts[@]}" -i "$key" "$user@$ip" \
        "umask 077 && mkdir -p \"\$(dirname '$target')\" && cat > '$target.tmp' && mv '$target.tmp' '$target'"; then
        hcloud server delete "$id" >/dev/null 2>&1 || true
        die 75 "could not copy the credentials to server $id; deleted it"
    fi
    jq -n --arg id "$id" '{id: $id, state: "booting"}'
    ;;
list)
    api server list -o json -l "runscale/pool=$pool" | jq '{instances: [.[] |
        .name as $name |
        ((.labels["runscale/slots"] // "1") | tonumber) as $slots |
        {
            id: (.id | tostring),
            runner_names: (if $slots <= 1 then [$name]
                           else [range(1; $slots + 1) | "\($name)-\(.)"] end),
            state: (if .status == "running" or .status == "migrating" then "running"
                    elif .status == "stopping" or .status == "off" or .status == "deleting"
                    then "stopping" else "booting" end),
            created_at: .created,
            template_hash: (.labels["runscale/template-hash"] // "")
        }]}'
    ;;
delete)
    id=$(req -r '.instance_id')
    [[ $id =~ ^[0-9]+$ ]] || exit 3
    server=$(api server describe -o json "$id")
    [[ $(jq -r '.labels["runscale/pool"] // ""' <<<"$server") == "$pool" ]] ||
        die 78 "server $id is not labelled for pool $pool; not deleting it"
    api server delete "$id" >/dev/null
    ip=$(jq -r '.public_net.ipv4.ip // empty' <<<"$server")
    [[ -z $ip || ! -f $known_hosts ]] || ssh-keygen -R "$ip" -f "$known_hosts" >/dev/null 2>&1 || true
    echo '{"ok":true}'
    ;;
probe)
    for p in server_type image ssh_key ssh_private_key; do
        [[ -n $(param "$p") ]] || die 78 "params.$p is required"
    done
    [[ -r $(param ssh_private_key) ]] || die 78 "params.ssh_private_key is not readable"
    api server-type describe -o json "$(param server_type)" >/dev/null
    api image describe -o json "$(param image)" >/dev/null
    api ssh-key describe -o json "$(param ssh_key)" >/dev/null
    count=$(api server list -o json -l "runscale/pool=$pool" | jq 'length')
    jq -n --arg m "hcloud API reachable; type, image and SSH key exist; $count server(s)" \
        '{message: $m}'
    ;;
*)
    die 78 "unknown action '$action'"
    ;;
esac
