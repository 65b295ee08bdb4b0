#!/usr/bin/env bash
# Installs, on Debian/Ubuntu and only where missing, what rift needs:
#
#   scripts/install-deps.sh          building and running (`make up`): protoc (etcd-client's
#                                    build), etcd and etcdctl (the store), the OpenSSH client
#                                    (tunnels of NAT-blocked nodes)
#   scripts/install-deps.sh --test   that, plus what the tests and CI need: sshd (tunnel and
#                                    playbook tests run a real one on loopback), curl, Chromium
#                                    (the dashboard's tests drive a real headless browser),
#                                    promtool (the Prometheus text format's linter, taken out of
#                                    Debian's prometheus package without installing the server)
#                                    and the Rust components `make lint` uses (rustfmt, clippy)
set -euo pipefail

testing=false
case "${1:-}" in
  "") ;;
  --test) testing=true ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
promtool_missing=false
if $testing; then
  # Debian's sshd must be run by absolute path; ssh-keygen and ssh-keyscan come with the client.
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  # The dashboard's browser tests drive Debian's Chromium (RIFT_TEST_CHROMIUM overrides).
  [ -x /usr/bin/chromium ] || [ -n "${RIFT_TEST_CHROMIUM:-}" ] || need+=(chromium)
  command -v promtool >/dev/null 2>&1 || promtool_missing=true
fi

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

if $testing && command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
