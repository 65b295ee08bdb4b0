#!/usr/bin/env bash
# Shard sealed -> Artifact available: how long after a job renames a finished shard into its
# outputs directory the leader has recorded it as an Artifact (the moment a TrainingTarget can
# count it and a training job can take it as input).
#
#   scripts/bench-shard-latency.sh [SHARDS] [INTERVAL_SECONDS]     (default 200 shards, 0.5 s)
#
# Runs against the cluster in RIFT_CONFIG (e.g. `make up`'s: RIFT_CONFIG=.rift/admin.conf) with
# `rift` on PATH. It applies one Job that seals SHARDS small shards, INTERVAL apart, each with a
# sidecar whose `sealedAtMs` count is the wall clock (ms) just before the rename; when the Job
# has succeeded (so every output is uploaded) it reads each Artifact's creationTimestamp (the
# leader's clock at recording; the same machine's clock here) and prints p50 / p99 / max of
# recorded - sealed. Deletes the Job and its Artifacts afterwards.
set -euo pipefail
shards=${1:-200}
interval=${2:-0.5}
name="shard-latency-$(date +%s)"
cleanup() {
  rift delete job "$name" >/dev/null 2>&1 || true
  rift delete artifacts -l "rift.dev/job=$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT
rift apply -f - <<YAML >/dev/null
apiVersion: rift/v1
kind: Job
metadata:
  name: $name
spec:
  type: custom
  command:
    - sh
    - -c
    - |
      out="\$RIFT_OUTPUTS/shards"; mkdir -p "\$out"
      i=0
      while [ \$i -lt $shards ]; do
        i=\$((i+1))
        echo "shard \$i of \$RIFT_JOB_NAME \$(date +%s%N)" > "\$out/.s\$i"
        echo "{\"games\": 1, \"sealedAtMs\": \$(date +%s%3N)}" > "\$out/s\$i.counts.json"
        mv "\$out/.s\$i" "\$out/s\$i"
        sleep $interval
      done
  outputs:
    - name: shards
      labels: {type: latency-probe}
YAML
echo "applied job/$name: $shards shards, one every ${interval}s" >&2
deadline=$(( $(date +%s) + 120 + ${shards%.*} * 2 ))
while :; do
  phase=$(rift get job "$name" -o 'jsonpath={.status.phase}' 2>/dev/null || true)
  got=$(rift get artifacts -l "rift.dev/job=$name" -o 'jsonpath={.items[*].metadata.name}' 2>/dev/null | wc -w)
  printf '\r  %s: %s of %s shards recorded   ' "${phase:-Pending}" "$got" "$shards" >&2
  if [ "$phase" = Succeeded ] && [ "$got" -ge "$shards" ]; then break; fi
  if [ "$phase" = Failed ] || [ "$(date +%s)" -gt "$deadline" ]; then
    echo >&2; echo "gave up: job $phase, $got of $shards recorded" >&2; exit 1
  fi
  sleep 1
done
echo >&2
rift get artifacts -l "rift.dev/job=$name" -o json | python3 -c '
import json, sys
from datetime import datetime
items = json.load(sys.stdin)
items = items.get("items", items)
lat = []
for a in items:
    ts = a["metadata"]["creationTimestamp"]
    head, frac = ts.rstrip("Z").split(".")
    t = datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + frac)
    lat.append(t * 1000 - a["spec"]["counts"]["sealedAtMs"])
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"shards={len(lat)} sealed->artifact p50={q(0.5):.0f} ms p99={q(0.99):.0f} ms max={lat[-1]:.0f} ms")
'
