#!/usr/bin/env bash
# Installs (or upgrades) the rift agent on this node. Idempotent: running it again changes
# nothing, and says so.
#
#   config/install-node.sh --config node.yaml                 # first install
#   config/install-node.sh --name gh200-a --join https://100.64.0.10:8770 --token RIFT1...
#   config/install-node.sh --binary ./rift --restart          # rolling upgrade of one node
#
# What it does, each step only when needed:
#   1. copies the rift binary to /usr/local/bin/rift (atomically: a running agent keeps its
#      old binary until it restarts);
#   2. writes /etc/rift/node.yaml only if it is absent, or with --force (from --config FILE, or
#      a minimal one from --name and --join or --endpoints, with `runAs: rift-job`); with
#      --token, writes the join token to /etc/rift/join.env (0600), read by the unit on the
#      agent's first start;
#   3. creates the user rift-job that jobs run as (a system user without login or home);
#   4. installs /etc/systemd/system/rift-agent.service and creates /var/lib/rift (0700) and
#      /etc/rift/secrets (0700: the files Jobs name in `envFrom`);
#   5. runs `systemctl daemon-reload` (when the unit changed) and `systemctl enable --now
#      rift-agent`; with --restart, restarts the agent when the binary changed. Jobs keep
#      running across the restart (KillMode=process; each job runs under its own shim).
#
# Options:
#   --binary PATH      the rift binary to install [default: target/release/rift, else
#                      target/debug/rift next to this script, else `rift` on PATH]
#   --config FILE      the node config to install as /etc/rift/node.yaml
#   --name NAME        write a minimal node.yaml for NAME (with --join, or --endpoints)
#   --join URL         a controller's agent to join through, https://HOST:8770 (with --name)
#   --token TOKEN      the join token from `rift token create` (with --join)
#   --endpoints URLS   etcd client URLs, comma-separated (with --name; optional with --join)
#   --controllers      with --name: this node may lead (runs the controllers when elected)
#   --run-as USER      with --name: the user jobs run as (runAs) [default: rift-job, created
#                      when missing; another user must exist]
#   --force            overwrite an existing /etc/rift/node.yaml
#   --restart          restart the agent if the binary changed
#   --root DIR         install under DIR instead of / (for tests and images); implies
#                      --no-systemctl and creates no user unless DIR is /
#   --no-systemctl     do not call systemctl
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
root=/
binary=""
config=""
name=""
endpoints=""
join=""
token=""
controllers=false
force=false
restart=false
job_user=rift-job
systemctl=true

die() { echo "install-node: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --config) config=${2:?--config needs a file}; shift 2 ;;
    --name) name=${2:?--name needs a node name}; shift 2 ;;
    --endpoints) endpoints=${2:?--endpoints needs URLs}; shift 2 ;;
    --join) join=${2:?--join needs a URL}; shift 2 ;;
    --token) token=${2:?--token needs a token}; shift 2 ;;
    --controllers) controllers=true; shift ;;
    --run-as) job_user=${2:?--run-as needs a user}; shift 2 ;;
    --force) force=true; shift ;;
    --restart) restart=true; shift ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --no-systemctl) systemctl=false; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ "$root" = / ] || systemctl=false
root=${root%/}

if [ -z "$binary" ]; then
  for b in "$repo/target/release/rift" "$repo/target/debug/rift" "$(command -v rift || true)"; do
    if [ -n "$b" ] && [ -x "$b" ]; then binary=$b; break; fi
  done
fi
[ -n "$binary" ] && [ -x "$binary" ] || die "no rift binary found: build one (cargo build --release) or pass --binary PATH"
[ -z "$config" ] || [ -z "$name" ] || die "give --config FILE or --name NAME, not both"
[ -z "$config" ] || [ -r "$config" ] || die "$config: cannot read"
if [ -n "$name" ]; then
  [[ "$name" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] \
    || die "--name $name: use lowercase letters, digits and '-' (e.g. gh200-a)"
  [ -n "$endpoints" ] || [ -n "$join" ] \
    || die "--name needs --endpoints (the etcd voters' client URLs) or --join URL --token TOKEN"
fi
[ -z "$join" ] || [ -n "$token" ] || die "--join needs --token (from \`rift token create\`)"
[ -z "$token" ] || [[ "$token" == RIFT1* ]] || die "--token: not a rift join token (RIFT1...)"

if [ -z "$root" ] && [ "$job_user" != rift-job ] && ! getent passwd "$job_user" >/dev/null; then
  die "--run-as $job_user: no such user; create it, or leave --run-as out (rift-job is created)"
fi

bin_dst="$root/usr/local/bin/rift"
conf_dst="$root/etc/rift/node.yaml"
token_dst="$root/etc/rift/join.env"
unit_dst="$root/etc/systemd/system/rift-agent.service"
state_dir="$root/var/lib/rift"
secrets_dir="$root/etc/rift/secrets"

if { [ ! -e "$conf_dst" ] || $force; } && [ -z "$config" ] && [ -z "$name" ]; then
  die "${conf_dst#"$root"} does not exist: give --config FILE, or --name NAME --endpoints URLS"
fi

# install_file SRC DST MODE: copies SRC over DST via a temporary file and a rename, only when
# the contents differ; prints what happened; returns 0 when it changed DST, 1 when not.
install_file() {
  local src=$1 dst=$2 mode=$3
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    echo "unchanged  ${dst#"$root"}"
    return 1
  fi
  local verb=installed
  [ -e "$dst" ] && verb=updated
  mkdir -p "$(dirname "$dst")"
  local tmp
  tmp=$(mktemp "$dst.XXXXXX")
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dst"
  echo "$verb  ${dst#"$root"}"
  return 0
}

binary_changed=false
if install_file "$binary" "$bin_dst" 0755; then binary_changed=true; fi

if [ -e "$conf_dst" ] && ! $force; then
  echo "kept       ${conf_dst#"$root"} (exists; --force to overwrite)"
elif [ -n "$config" ]; then
  install_file "$config" "$conf_dst" 0644 || true
elif [ -n "$name" ]; then
  generated=$(mktemp)
  trap 'rm -f "$generated"' EXIT
  {
    echo "# Written by config/install-node.sh; every field is documented in config/node.example.yaml."
    echo "name: $name"
    if [ -n "$join" ]; then echo "join: $join"; fi
    if [ -n "$endpoints" ]; then
      echo "endpoints:"
      IFS=, read -ra urls <<< "$endpoints"
      for u in "${urls[@]}"; do echo "  - $u"; done
    fi
    echo "stateDir: /var/lib/rift"
    echo "runAs: $job_user"
    echo "controllers: $controllers"
  } > "$generated"
  install_file "$generated" "$conf_dst" 0644 || true
fi

if [ -n "$token" ]; then
  token_file=$(mktemp)
  printf 'RIFT_JOIN_TOKEN=%s\n' "$token" > "$token_file"
  install_file "$token_file" "$token_dst" 0600 || true
  rm -f "$token_file"
fi

if [ -n "$root" ]; then
  echo "skipped    user $job_user (--root)"
elif getent passwd "$job_user" >/dev/null; then
  echo "unchanged  user $job_user"
else
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$job_user"
  echo "created    user $job_user (jobs run as it)"
fi

unit_changed=false
if install_file "$here/rift-agent.service" "$unit_dst" 0644; then unit_changed=true; fi
# private_dir DIR: creates DIR with mode 0700, or makes an existing one 0700.
private_dir() {
  local dir=$1
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    chmod 0700 "$dir"
    echo "created    ${dir#"$root"}/"
  elif [ "$(stat -c %a "$dir")" != 700 ]; then
    chmod 0700 "$dir"
    echo "private    ${dir#"$root"}/ (now 0700)"
  else
    echo "unchanged  ${dir#"$root"}/"
  fi
}
private_dir "$state_dir"
private_dir "$secrets_dir"

if ! $systemctl; then
  echo "skipped    systemctl (--no-systemctl or --root)"
  exit 0
fi
if $unit_changed; then systemctl daemon-reload; fi
systemctl enable --now rift-agent
if $binary_changed && $restart; then
  systemctl restart rift-agent
  echo "restarted  rift-agent (its jobs keep running under their shims)"
elif $binary_changed; then
  echo "note       the binary changed: run 'systemctl restart rift-agent' to use it"
fi
systemctl --no-pager --lines=0 status rift-agent || true
