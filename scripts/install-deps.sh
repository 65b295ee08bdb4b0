#!/usr/bin/env bash
# Installs what building and testing rift needs on Debian/Ubuntu, only where missing:
# protoc (etcd-client's build), etcd and etcdctl (the store; tests run real members),
# sshd and ssh (tunnels), curl, the Rust components CI checks with, and for the tests of the
# dashboard and metrics: Chromium (a real headless browser) and promtool (the Prometheus text
# format's linter, taken out of Debian's prometheus package without installing the server).
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
# sshd and ssh: tunnel tests run a real sshd on loopback and the agent runs the OpenSSH client.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Tests: the dashboard's browser tests drive Debian's Chromium (RIFT_TEST_CHROMIUM overrides).
[ -x /usr/bin/chromium ] || [ -n "${RIFT_TEST_CHROMIUM:-}" ] || need+=(chromium)
promtool_missing=false
command -v promtool >/dev/null 2>&1 || promtool_missing=true

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#need[@]} -gt 0 ] || $promtool_missing; then
  $sudo apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if $promtool_missing; then
  # Only the promtool binary: installing the package would also start a Prometheus server.
  echo "installing: promtool (from Debian's prometheus package)"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb x)
  $sudo install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
fi

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
