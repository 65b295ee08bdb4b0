#!/usr/bin/env bash
# A local cluster for a first look: one etcd member in .rift/etcd, one `rift agent` that runs
# the controllers and the jobs (with two declared GPUs, so the demo's per-GPU selfplay pool has
# somewhere to run), and the demo manifests applied. Runs in the foreground; Ctrl-C stops it.
# Data and job state survive restarts.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${RIFT_ETCD_PORT:-2379}"
peer="${RIFT_ETCD_PEER_PORT:-2380}"
endpoint="http://127.0.0.1:${port}"
state="${RIFT_STATE_DIR:-.rift}"
mkdir -p "$state"

if curl -fsS "${endpoint}/health" >/dev/null 2>&1; then
  echo "error: something already answers on ${endpoint}; stop it or set RIFT_ETCD_PORT" >&2
  exit 1
fi

etcd --name rift-local --data-dir "$state/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls "http://127.0.0.1:${peer}" --initial-advertise-peer-urls "http://127.0.0.1:${peer}" \
  --initial-cluster "rift-local=http://127.0.0.1:${peer}" \
  --max-txn-ops 10000 --logger zap --log-outputs "$state/etcd.log" &
etcd_pid=$!
agent_pid=""
stop() {
  echo
  if [ -n "$agent_pid" ]; then echo "stopping the agent (jobs keep running under their shims until it is back)"; kill $agent_pid 2>/dev/null; wait $agent_pid 2>/dev/null || true; fi
  echo "stopping etcd"; kill $etcd_pid 2>/dev/null; wait $etcd_pid 2>/dev/null || true
}
trap stop EXIT INT TERM

for _ in $(seq 1 100); do
  curl -fsS "${endpoint}/health" >/dev/null 2>&1 && break
  kill -0 $etcd_pid 2>/dev/null || { echo "error: etcd exited; see $state/etcd.log" >&2; exit 1; }
  sleep 0.1
done

cat > "$state/node.yaml" <<YAML
name: ${RIFT_NODE_NAME:-local}
labels: {demo: "true"}
gpus: [{model: ${RIFT_DEMO_GPU:-H100}, count: ${RIFT_DEMO_GPUS:-2}}]
YAML
RIFT_LOG=${RIFT_LOG:-info} ./target/debug/rift --endpoints "$endpoint" agent --config "$state/node.yaml" \
  --controllers --state-dir "$state/agent" --listen 127.0.0.1 --port "${RIFT_AGENT_PORT:-8770}" \
  --lease-ttl 2 --node-lease-ttl 2 > "$state/agent.log" 2>&1 &
agent_pid=$!
./target/debug/rift --endpoints "$endpoint" apply -f manifests/demo/
cat <<MSG

rift is up: etcd at ${endpoint} (data in ${state}/etcd), one agent running the
controllers and the jobs (log: ${state}/agent.log). In another terminal:

  export PATH=\$PWD/target/debug:\$PATH
  rift status -w                       # leader, voters, nodes, jobs by phase
  rift get jobs -w                     # selfplay fills both GPUs; training follows
  rift get trainingtarget hex8-2p -o yaml
  rift logs -f selfplay-hex8-local-0
  rift get nodes -o wide
  etcdctl get --prefix /rift/v1/ --keys-only

Press Ctrl-C to stop.
MSG
wait $etcd_pid
