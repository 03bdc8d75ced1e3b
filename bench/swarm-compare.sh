#!/usr/bin/env bash
# Side by side: `service create --replicas N` → N running, Docker swarm mode
# (Debian's docker.io) and Flotilla, on this one machine, same busybox root
# filesystem. Run as root from the project root after
# `cargo build --release --workspace`:
#
#   bench/swarm-compare.sh [N]
#
# Docker runs with its own data and exec roots under a temporary directory,
# its own socket, --iptables=false and --bridge=none (so it never changes the
# host's firewall or adds docker0), and is stopped by PID at the end. The
# service is created with --no-resolve-image: nothing is asked of any registry.
set -euo pipefail
N=${1:-100}
BIN=$(realpath "${FLOTILLA_BIN_DIR:-target/release}")
WORK=$(mktemp -d /tmp/swarm-compare.XXXXXX)
SOCK="unix://$WORK/docker.sock"
DOCKER=(docker -H "$SOCK")
DOCKERD_PID=""
# Swarm makes docker_gwbridge; remove it afterwards unless it was already there.
GWBRIDGE_BEFORE=$(ip link show docker_gwbridge >/dev/null 2>&1 && echo yes || echo no)

cleanup() {
  set +e
  if [ -n "$DOCKERD_PID" ]; then
    "${DOCKER[@]}" service rm bench >/dev/null 2>&1
    # dockerd stopped while tasks are still shutting down leaves their
    # containers running: wait (bounded) until none is left.
    for _ in $(seq 600); do
      [ -z "$("${DOCKER[@]}" ps -q 2>/dev/null)" ] && break
      sleep 0.5
    done
    "${DOCKER[@]}" swarm leave --force >/dev/null 2>&1
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
  fi
  if [ "$GWBRIDGE_BEFORE" = no ]; then ip link del docker_gwbridge 2>/dev/null; fi
  grep -F "$WORK" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v dockerd >/dev/null || { echo "dockerd missing: apt-get install docker.io" >&2; exit 1; }
scripts/make-busybox-image.sh "$WORK/busybox.tar" >/dev/null

dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" -H "$SOCK" \
  --pidfile "$WORK/dockerd.pid" --iptables=false --ip6tables=false --bridge=none \
  >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 100); do "${DOCKER[@]}" info >/dev/null 2>&1 && break; sleep 0.2; done
"${DOCKER[@]}" info >/dev/null || { tail -20 "$WORK/dockerd.log"; exit 1; }
"${DOCKER[@]}" swarm init --advertise-addr 127.0.0.1 >/dev/null
"${DOCKER[@]}" import "$WORK/busybox.tar" busybox:bench >/dev/null

start=$(date +%s.%N)
"${DOCKER[@]}" service create --detach --no-resolve-image --name bench --replicas "$N" \
  busybox:bench sleep 100000 >/dev/null
deadline=$(( $(date +%s) + 900 ))
while :; do
  running=$("${DOCKER[@]}" service ps bench --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running' || true)
  [ "$running" -ge "$N" ] && break
  [ "$(date +%s)" -gt "$deadline" ] && { echo "swarm: only $running of $N running after 900 s"; break; }
  sleep 0.2
done
end=$(date +%s.%N)
swarm=$(python3 -c "print(round($end - $start, 2))")
echo "docker swarm ($("${DOCKER[@]}" version --format '{{.Server.Version}}')): service create --replicas $N -> $N running: ${swarm} s"
cleanup
DOCKERD_PID=""
trap - EXIT

FLOTILLA_BIN_DIR="$BIN" "$BIN/flotilla-bench" services -n "$N" --create-only | tee "$WORK.flotilla"
flot=$(sed -n 's/.*one node: \([0-9.]*\) s.*/\1/p' "$WORK.flotilla")
rm -f "$WORK.flotilla"
[ -n "$flot" ] && echo "swarm / flotilla = $(python3 -c "print(round($swarm / $flot, 1))")x"
