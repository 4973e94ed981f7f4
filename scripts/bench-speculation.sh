#!/usr/bin/env bash
# `make bench-speculation`: the speculative section of `make bench` alone. A seam-worker on
# loopback behind the link emulator at 40 ms RTT and 20 Mbit/s; on held-out prompts, local,
# one-round-trip-per-token split and speculative split side by side.
set -euo pipefail
edge=$1
worker=$2
pkg=$3
linkemu=$4
. "$(dirname "$0")/lib.sh"
trap stop_servers EXIT
export SEAM_ORT_SPIN=0
start_server worker_addr "$worker" serve --model "$pkg" --listen 127.0.0.1:0
start_server wan_addr "$linkemu" --listen 127.0.0.1:0 --upstream "$worker_addr" --proto tcp \
  --delay-ms 20 --rate-mbit 20
"$edge" bench-split --model "$pkg" --worker "http://$wan_addr" --split 8 --sections speculation \
  --decode 64 --link "40 ms RTT, 20 Mbit/s"
