#!/usr/bin/env bash
# Starts the edge agent on loopback and runs a short mixed workload through its gRPC API,
# printing per request: its intent (domain, confidence), route and reason, tokens, tokens/s,
# bytes shipped.
set -euo pipefail
edge=$1
pkg=$2
enc=${3:-}
log=$(mktemp -t seam-demo.XXXXXX)
"$edge" model inspect "$pkg" | sed 's/^/  /'
echo
encoder=()
if [ -n "$enc" ]; then
  "$edge" model inspect "$enc" | sed 's/^/  /'
  echo
  encoder=(--encoder "$enc")
fi
"$edge" serve --model "$pkg" "${encoder[@]}" --listen 127.0.0.1:0 >"$log.out" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log" "$log.out"' EXIT
for _ in $(seq 1 600); do
  addr=$(sed -n 's/^listening on //p' "$log.out")
  [ -n "$addr" ] && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "demo: the agent did not start"; cat "$log"; exit 1; }
echo "edge agent listening on $addr"
echo
ask() { "$edge" ask --server "http://$addr" "$@"; echo; }
ask --max-tokens 12 "The capital of France is"
ask --max-tokens 48 --chat --system "You are a concise assistant for car owners." "How often should I check my tyre pressure?"
ask --max-tokens 48 --chat --system "You are a concise assistant for car owners." "What does the oil warning light mean?"
ask --max-tokens 40 --temperature 0.8 --seed 7 "Once upon a time, in a small village by the sea,"
ask --max-tokens 64 --stop "." "A good way to save energy at home is"
if [ -n "$enc" ]; then
  echo "intents of a few more requests (seam-edge classify, one JSON object per line):"
  printf '%s\n' "transfer 200 dollars to my savings account" "is it going to rain tomorrow in boston" \
    "what is the airspeed velocity of an unladen swallow" |
    "$edge" classify --model "$enc" --top-k 2 | sed 's/^/  /'
fi
