#!/usr/bin/env bash
# Starts a cloud worker and the edge agent on loopback and runs a short mixed workload through
# the agent's gRPC API, printing per request: its intent (domain, confidence), route and reason,
# tokens, tokens/s, bytes shipped.
set -euo pipefail
edge=$1
worker=$2
pkg=$3
enc=${4:-}
router=${5:-}
policy=${6:-}
. "$(dirname "$0")/lib.sh"
trap stop_servers EXIT
"$edge" model inspect "$pkg" | sed 's/^/  /'
echo
encoder=()
if [ -n "$enc" ]; then
  "$edge" model inspect "$enc" | sed 's/^/  /'
  echo
  encoder=(--encoder "$enc")
fi
start_server worker_addr "$worker" serve --model "$pkg" --listen 127.0.0.1:0
echo "cloud worker listening on $worker_addr (layers from the split point on, and the head)"
routing=()
if [ -n "$policy" ]; then
  echo "routing policy (the operator's; the edge evaluates it for requests that leave the route to it):"
  "$router" policy check "$policy" | sed 's/^/  /'
  echo
  decisions=$(mktemp -t seam-decisions.XXXXXX)
  SEAM_LOGS+=("$decisions")
  routing=(--policy "$policy" --decisions "$decisions")
fi
start_server addr "$edge" serve --model "$pkg" "${encoder[@]}" "${routing[@]}" \
  --listen 127.0.0.1:0 --worker "http://$worker_addr" --split 8 --wire int8
echo "edge agent listening on $addr"
echo
ask() { "$edge" ask --server "http://$addr" "$@"; echo; }
ask --max-tokens 12 --route local "The capital of France is"
echo "the same request split: layers [0, 8) here, int8 hidden states to the worker, tokens back"
ask --max-tokens 12 --route split "The capital of France is"
ask --max-tokens 48 --chat --system "You are a concise assistant for car owners." "How often should I check my tyre pressure?"
ask --max-tokens 48 --chat --system "You are a concise assistant for car owners." "What does the oil warning light mean?"
ask --max-tokens 40 --temperature 0.8 --seed 7 "Once upon a time, in a small village by the sea,"
ask --max-tokens 64 --stop "." "A good way to save energy at home is"
if [ -n "$policy" ]; then
  echo "the decisions the policy made, replayed against it (seam-router policy replay):"
  "$router" policy replay "$policy" --trace "$decisions" | sed 's/^/  /'
  echo
fi
if [ -n "$enc" ]; then
  echo "intents of a few more requests (seam-edge classify, one JSON object per line):"
  printf '%s\n' "transfer 200 dollars to my savings account" "is it going to rain tomorrow in boston" \
    "what is the airspeed velocity of an unladen swallow" |
    "$edge" classify --model "$enc" --top-k 2 | sed 's/^/  /'
fi
