#!/usr/bin/env bash
# A local cluster for a first look: one etcd member in .rift/etcd, the demo manifests applied.
# Runs in the foreground; Ctrl-C stops it. Data survives restarts.
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
trap 'echo; echo "stopping etcd"; kill $etcd_pid 2>/dev/null; wait $etcd_pid 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 100); do
  curl -fsS "${endpoint}/health" >/dev/null 2>&1 && break
  kill -0 $etcd_pid 2>/dev/null || { echo "error: etcd exited; see $state/etcd.log" >&2; exit 1; }
  sleep 0.1
done

./target/debug/rift --endpoints "$endpoint" apply -f manifests/demo/
cat <<MSG

rift is up: etcd at ${endpoint} (data in ${state}/etcd). In another terminal:

  export PATH=\$PWD/target/debug:\$PATH
  rift get jobs            # the demo jobs
  rift get pools -o wide
  rift describe trainingtarget hex8-2p
  rift get jobs -w         # watch changes as they happen
  etcdctl get --prefix /rift/v1/ --keys-only

Press Ctrl-C to stop.
MSG
wait $etcd_pid
