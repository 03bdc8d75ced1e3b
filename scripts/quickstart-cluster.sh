#!/usr/bin/env bash
# A three-node Flotilla cluster on this one machine, to see the main job in a
# minute: one manager and two workers, each a "host" made of its own network
# and UTS namespaces (as the cluster tests make them), with its own data root
# and socket under /tmp/flotilla-quickstart. It declares a replicated service,
# shows it spread over the nodes, drains a worker and shows the tasks move.
#
#   scripts/quickstart-cluster.sh up     # start the cluster and run the demo
#   scripts/quickstart-cluster.sh down   # stop everything and remove it all
#
# Run as root after `scripts/setup.sh` (binaries in target/release; set
# FLOTILLA_BIN=target/debug to use a debug build). The hosts' LAN is
# 10.199.77.0/24, inside namespaces this script makes; nothing leaves them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${FLOTILLA_BIN:-target/release}")
dir=/tmp/flotilla-quickstart
prefix=fltqs
subnet=10.199.77
hosts=(manager worker1 worker2)
service=quickstart-web

# The flotilla CLI pointed at the node on host $1.
cli() {
  local host=$1
  shift
  "$bin/flotilla" -H "unix://$dir/$host/flotilla.sock" "$@"
}

# Waits up to $1 seconds for the command that follows to succeed.
wait_for() {
  local secs=$1
  shift
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out after ${secs}s waiting for: $*" >&2
  return 1
}

running_on() { # running tasks of the service on node $1
  cli manager service ps "$service" | awk -v n="$1" '$4 == n && $6 == "Running" {c++} END {print c+0}'
}

all_running() { # true when $1 tasks of the service run
  [ "$(cli manager service ps "$service" | awk '$6 == "Running" {c++} END {print c+0}')" = "$1" ]
}

start_daemon() { # host, binary, args...
  local host=$1 program=$2
  shift 2
  mkdir -p "$dir/$host"
  nsenter --net="/run/netns/$prefix-$host" \
    unshare --uts sh -c 'hostname "$0"; exec "$@"' "qs-$host" \
    "$bin/$program" -H "unix://$dir/$host/flotilla.sock" --data-root "$dir/$host/data" "$@" \
    >"$dir/$host/daemon.log" 2>&1 &
  echo $! >"$dir/$host/daemon.pid"
}

up() {
  if [ -e "$dir" ]; then
    echo "$dir exists: run '$0 down' first" >&2
    exit 1
  fi
  for b in flotilla flotilla-manager flotilla-worker; do
    [ -x "$bin/$b" ] || { echo "no $bin/$b: build first (scripts/setup.sh)" >&2; exit 1; }
  done
  mkdir -p "$dir"
  echo "==> three hosts on the LAN $subnet.0/24 (network namespaces $prefix-*)"
  ip netns add "$prefix-switch"
  ip -n "$prefix-switch" link add br0 type bridge
  ip -n "$prefix-switch" link set br0 up
  local i=1
  for h in "${hosts[@]}"; do
    ip netns add "$prefix-$h"
    ip link add "qsport$i" type veth peer name eth0 netns "$prefix-$h"
    ip link set "qsport$i" netns "$prefix-switch"
    ip -n "$prefix-switch" link set "qsport$i" master br0 up
    ip -n "$prefix-$h" addr add "$subnet.$i/24" dev eth0
    ip -n "$prefix-$h" link set eth0 up
    ip -n "$prefix-$h" link set lo up
    i=$((i + 1))
  done

  echo "==> flotilla-manager init on qs-manager ($subnet.1)"
  start_daemon manager flotilla-manager init --advertise-addr "$subnet.1" \
    --listen-addr "$subnet.1:2377" --heartbeat-period 500ms
  wait_for 60 cli manager cluster info
  local token
  token=$(cli manager join-token -q worker)
  i=2
  for h in worker1 worker2; do
    echo "==> flotilla-worker join on qs-$h ($subnet.$i)"
    start_daemon "$h" flotilla-worker join --token "$token" --advertise-addr "$subnet.$i" "$subnet.1:2377"
    wait_for 60 cli "$h" version
    i=$((i + 1))
  done
  wait_for 60 sh -c "[ \$('$bin/flotilla' -H unix://$dir/manager/flotilla.sock node ls -q | wc -l) = 3 ]"

  echo "==> a busybox image on every node (made from Debian's busybox-static)"
  ./scripts/make-busybox-image.sh "$dir/busybox.tar" >/dev/null
  for h in "${hosts[@]}"; do cli "$h" import "$dir/busybox.tar" busybox:latest >/dev/null; done

  echo
  echo "\$ flotilla node ls"
  cli manager node ls
  echo
  echo "\$ flotilla service create --name $service --replicas 6 busybox httpd -f -p 8080"
  cli manager service create --name "$service" --replicas 6 \
    busybox httpd -f -p 8080 >/dev/null
  wait_for 60 all_running 6
  echo
  echo "\$ flotilla service ps $service"
  cli manager service ps "$service"
  echo
  echo "\$ flotilla node update --availability drain qs-worker1"
  cli manager node update --availability drain qs-worker1 >/dev/null
  wait_for 60 sh -c "[ \"\$($0 _running_on qs-worker1)\" = 0 ]"
  wait_for 60 all_running 6
  echo "\$ flotilla service ps $service   # qs-worker1's tasks now run on the others"
  cli manager service ps "$service"
  echo
  echo "done. Look around with: $bin/flotilla -H unix://$dir/manager/flotilla.sock node ls"
  echo "take it all down with:  $0 down"
}

down() {
  [ -d "$dir" ] || { echo "nothing to take down ($dir does not exist)"; }
  if [ -S "$dir/manager/flotilla.sock" ]; then
    cli manager service rm "$service" >/dev/null 2>&1 || true
  fi
  for h in "${hosts[@]}"; do
    if [ -S "$dir/$h/flotilla.sock" ]; then
      wait_for 20 sh -c "[ -z \"\$('$bin/flotilla' -H unix://$dir/$h/flotilla.sock ps -q)\" ]" || true
      ids=$(cli "$h" ps -aq 2>/dev/null || true)
      [ -z "$ids" ] || cli "$h" rm -f $ids >/dev/null 2>&1 || true
    fi
  done
  for h in "${hosts[@]}"; do
    local pidf=$dir/$h/daemon.pid
    [ -f "$pidf" ] || continue
    local pid
    pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  for ns in switch "${hosts[@]}"; do
    ip netns del "$prefix-$ns" 2>/dev/null || true
  done
  if [ -d "$dir" ]; then
    # Whatever the daemons left mounted under their data roots (none, normally).
    { findmnt -rn -o TARGET | grep "^$dir/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$dir"
  fi
  echo "the quickstart cluster is gone"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  _running_on) running_on "$2" ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
