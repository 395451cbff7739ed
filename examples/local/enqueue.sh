#!/bin/sh
# enqueue.sh POOL COUNT DURATION_SECS - adds COUNT jobs of DURATION_SECS seconds to POOL's queue
# in ci.sh's file-based CI ($RUNSCALE_CI_DIR), and prints their ids, one a line.
set -eu

D=${RUNSCALE_CI_DIR:?RUNSCALE_CI_DIR must name the CI state directory}
if [ $# -ne 3 ]; then
    echo "usage: enqueue.sh POOL COUNT DURATION_SECS" >&2
    exit 2
fi
pool=$1
count=$2
duration=$3
case $pool in
'' | *[!A-Za-z0-9_-]*)
    echo "enqueue.sh: invalid pool name: $pool" >&2
    exit 2
    ;;
esac
for number in "$count" "$duration"; do
    case $number in
    '' | *[!0-9]*)
        echo "enqueue.sh: COUNT and DURATION_SECS must be whole numbers, got: $number" >&2
        exit 2
        ;;
    esac
done

mkdir -p "$D/queue/$pool" "$D/tmp"
queued_epoch=$(date +%s)
queued_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
i=1
while [ "$i" -le "$count" ]; do
    id=$(printf 'j%s-%s-%05d' "$queued_epoch" "$$" "$i")
    printf '%s %s %s\n' "$duration" "$queued_epoch" "$queued_at" >"$D/tmp/$id"
    mv "$D/tmp/$id" "$D/queue/$pool/$id"
    echo "$id"
    i=$((i + 1))
done
