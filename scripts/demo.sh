#!/usr/bin/env bash
# Starts a cloud worker, the regional gateway (seam-router) and the edge agent on loopback and
# runs a short mixed workload through the agent's gRPC API, printing per request: its intent
# (domain, confidence), route and the policy rule that chose it, tokens, tokens/s, bytes shipped.
# The agent reaches the worker through the gateway over QUIC with mTLS, across a link emulator
# at 40 ms RTT and 20 Mbit/s (the device's uplink), and gets the operator's routing policy from
# the gateway; midway the policy file changes and the gateway pushes the new version.
set -euo pipefail
edge=$1
worker=$2
pkg=$3
enc=${4:-}
router=$5
policy=$6
linkemu=$7
. "$(dirname "$0")/lib.sh"
trap stop_servers EXIT
# Worker and agent share this machine's cores: neither's ONNX Runtime threads may spin while the
# other computes (the agent, having a gateway, would not anyway).
export SEAM_ORT_SPIN=0
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

# The gateway: dev certificates (a CA, the gateway, device "demo-car") and the operator's policy.
echo "routing policy (the operator's, served by the gateway; the device evaluates it locally):"
"$router" policy check "$policy" | sed 's/^/  /'
echo
start_gateway gateway_addr "$router" "$worker_addr" "$policy" demo-car
gw=$GATEWAY_DIR
metrics_addr=$GATEWAY_METRICS
echo "gateway listening on $gateway_addr (gRPC on TCP, QUIC on UDP, mTLS), /metrics on $metrics_addr"
start_server wan_addr "$linkemu" --listen 127.0.0.1:0 --upstream "$gateway_addr" --proto both \
  --delay-ms 20 --rate-mbit 20
GATEWAY_FLAGS[1]=$wan_addr
echo "the device's link to it: $wan_addr, a link emulator at 40 ms RTT and 20 Mbit/s"
decisions=$(mktemp -t seam-decisions.XXXXXX)
SEAM_LOGS+=("$decisions")
start_server addr "$edge" serve --model "$pkg" "${encoder[@]}" --decisions "$decisions" \
  --listen 127.0.0.1:0 "${GATEWAY_FLAGS[@]}" --split 8 --link-report-ms 2000 \
  --http 127.0.0.1:0 --metrics-listen 127.0.0.1:0
edge_log=${SEAM_LOGS[-2]}
http_addr=$(sed -n 's/^listening http //p' "${SEAM_LOGS[-1]}")
edge_metrics=$(sed -n 's/^listening metrics //p' "${SEAM_LOGS[-1]}")
echo "edge agent (device demo-car) listening on $addr (gRPC), http://$http_addr/v1 (OpenAI API),"
echo "http://$edge_metrics/metrics"
echo
ask() { "$edge" ask --server "http://$addr" "$@"; echo; }
ask --max-tokens 12 --route local "The capital of France is"
echo "the same request split: layers [0, 8) here, int8 hidden states through the gateway to the worker"
ask --max-tokens 12 --route split "The capital of France is"
echo "split answers draft, so that a round trip settles several tokens: the worker drafts through"
echo "its own layers from a state predictor of the split layer, the device's draft head and prompt"
echo "lookup add theirs (all trained or built at import); the worker verifies them in one pass per"
echo "round trip and the output stays the model's"
ask --max-tokens 64 --route split --chat "Explain in two sentences how a heat pump works."
ask --max-tokens 64 --route split --chat "Rewrite this sentence in formal English: the meeting got moved to next tuesday because the boss is sick."
ask --max-tokens 48 --chat --system "You are a concise assistant for car owners." "How often should I check my tyre pressure?"
ask --max-tokens 48 --chat --system "You are a concise assistant for car owners." "What does the oil warning light mean?"
ask --max-tokens 40 --temperature 0.8 --seed 7 "Once upon a time, in a small village by the sea,"
ask --max-tokens 64 --stop "." "A good way to save energy at home is"
grep -o 'connected to the gateway over [A-Za-z]*' "$edge_log" | head -1 | sed 's/^/edge: /'
echo

echo "the operator publishes version 2 of the policy, with a first rule sending everything to the"
echo "cloud at layer 15; the gateway pushes it and the device routes the next request by it:"
awk '/^\[\[rule\]\]/ && !done {
       print "[[rule]]\nname = \"all-to-cloud\"\nwhen = \"true\"\naction = \"split(15)\"\nreason = \"version 2 sends everything to the cloud\"\n"
       done = 1 }
     /^version = / { print "version = 2"; next }
     { print }' "$policy" >"$gw/policy.v2"
mv "$gw/policy.v2" "$gw/policy.toml"
for _ in $(seq 1 100); do grep -q "policy v2 from the gateway" "$edge_log" && break; sleep 0.1; done
grep -o "policy v2 from the gateway" "$edge_log" | head -1 | sed 's/^/edge: /'
echo
ask --max-tokens 24 --chat --system "You are a concise assistant for car owners." "How often should I check my tyre pressure?"
echo
echo "the same agent speaks the OpenAI API; a conversation of two turns with curl (POST"
echo "/v1/chat/completions), the second re-sending the first: the device's prefix cache still holds"
echo "the first turn's KV, so only the new tokens are prefilled"
chat() { # prints the answer and the figures of one chat completion of the messages $1; the
  # answer's text goes to the file $2 as a JSON string
  curl -sS "http://$http_addr/v1/chat/completions" -H 'content-type: application/json' \
    -d "{\"messages\": $1, \"max_tokens\": 40, \"temperature\": 0, \"seam_route\": \"local\"}" |
    python3 -c 'import json, sys
r = json.load(sys.stdin)
if "error" in r:
    sys.exit("error: " + r["error"]["message"])
s, u = r["seam"], r["usage"]
print("  answer: " + r["choices"][0]["message"]["content"].strip().replace("\n", " "))
print("  prompt_tokens %d, of them cached %d (prefilled %d in %.0f ms), completion_tokens %d, route %s"
      % (u["prompt_tokens"], s["cached_prompt_tokens"], u["prompt_tokens"] - s["cached_prompt_tokens"],
         s["prefill_ms"], u["completion_tokens"], s["route"]))
json.dump(r["choices"][0]["message"]["content"], open(sys.argv[1], "w"))' "$2"
}
turn1='[{"role": "system", "content": "You are a concise assistant for car owners."}, {"role": "user", "content": "My car will not start on cold mornings. What should I check first?"}]'
conv=$(mktemp -t seam-conversation.XXXXXX)
SEAM_LOGS+=("$conv" "$conv.answer")
echo "$turn1" >"$conv"
echo "turn 1:"
chat "$turn1" "$conv.answer"
turn2=$(python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))
m += [{"role": "assistant", "content": json.load(open(sys.argv[1] + ".answer"))},
      {"role": "user", "content": "And if the battery is fine?"}]
print(json.dumps(m))' "$conv")
echo "turn 2:"
chat "$turn2" "$conv.answer"
echo
echo "edge agent metrics (from its /metrics):"
exec 3<>"/dev/tcp/${edge_metrics%:*}/${edge_metrics##*:}"
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
grep -E '^seam_edge_(requests_total|completion_tokens_total|tokens_per_round_trip_(sum|count)|drafts_total|drafts_accepted_total|fallbacks_total)' <&3 | sed 's/^/  /' || true
exec 3<&-
echo
echo "the decisions the device made, replayed against version 1 (seam-router policy replay):"
"$router" policy replay "$policy" --trace "$decisions" | sed 's/^/  /'
echo
echo "gateway metrics (from /metrics):"
exec 3<>"/dev/tcp/${metrics_addr%:*}/${metrics_addr##*:}"
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
grep -E '^seam_gateway_(decisions_total|sessions |policy_version|workers\{|connections|relay_seconds_count)' <&3 | sed 's/^/  /' || true
exec 3<&-
echo
# The operators' dashboard, on the admin port; the token rides in the URL fragment, which the
# browser keeps to itself.
shot="$(cd "$(dirname "$pkg")/.." && pwd)/demo/dashboard.png"
mkdir -p "$(dirname "$shot")"
echo "operator dashboard (admin port, bearer token): ${GATEWAY_DASHBOARD}#token=$(cat "$gw/admin-token")"
chromium=${SEAM_CHROMIUM:-/usr/bin/chromium}
if [ -x "$chromium" ]; then
  profile=$(mktemp -d -t seam-chromium.XXXXXX)
  SEAM_LOGS+=("$profile")
  "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1400,1100 \
    --virtual-time-budget=4000 --screenshot="$shot" \
    "${GATEWAY_DASHBOARD}#token=$(cat "$gw/admin-token")" >/dev/null 2>&1 &&
    echo "  screenshot (headless Chromium): $shot" ||
    echo "  (the screenshot failed; open the URL above in a browser)"
else
  echo "  (no chromium at $chromium for a screenshot; open the URL above in a browser)"
fi
echo
if [ -n "$enc" ]; then
  echo "intents of a few more requests (seam-edge classify, one JSON object per line):"
  printf '%s\n' "transfer 200 dollars to my savings account" "is it going to rain tomorrow in boston" \
    "what is the airspeed velocity of an unladen swallow" |
    "$edge" classify --model "$enc" --top-k 2 | sed 's/^/  /'
fi
