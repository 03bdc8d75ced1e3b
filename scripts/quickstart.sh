#!/usr/bin/env bash
# The Quickstart's main job on one machine: start the worker daemon, make a
# busybox image from Debian's busybox-static, run a container that prints
# something, and a detached one serving HTTP on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FLOTILLA_BIN:-target/release}
export FLOTILLA_HOST=${FLOTILLA_HOST:-unix:///run/flotilla/flotilla.sock}
if ! "$bin/flotilla" version >/dev/null 2>&1; then
  mkdir -p /var/log/flotilla
  nohup "$bin/flotilla-worker" >/var/log/flotilla/worker.log 2>&1 &
  for _ in $(seq 50); do "$bin/flotilla" version >/dev/null 2>&1 && break; sleep 0.1; done
fi
tar=$(mktemp --suffix=.tar)
./scripts/make-busybox-image.sh "$tar"
"$bin/flotilla" import "$tar" busybox:latest >/dev/null
rm -f "$tar"
"$bin/flotilla" images
"$bin/flotilla" run --rm busybox echo "Hello from a Flotilla container"
"$bin/flotilla" rm -f web >/dev/null 2>&1 || true
"$bin/flotilla" run -d --name web --network host busybox httpd -f -p 127.0.0.1:8080 -h /www
"$bin/flotilla" ps
for _ in $(seq 50); do
  if "$bin/flotilla" run --rm --network host busybox sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc 127.0.0.1 8080" 2>/dev/null | grep -q Flotilla; then
    "$bin/flotilla" run --rm --network host busybox sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc 127.0.0.1 8080" | tail -1
    break
  fi
  sleep 0.1
done
echo "stop it with: $bin/flotilla rm -f web"
