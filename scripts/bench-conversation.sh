#!/usr/bin/env bash
# `make bench-conversation`: the second turn of a conversation through the OpenAI API, with the
# first turn's KV kept on the agent vs re-sent to an agent that never saw it (3 rounds, local).
set -euo pipefail
edge=$1
pkg=$2
. "$(dirname "$0")/lib.sh"
trap stop_servers EXIT
export SEAM_ORT_SPIN=0
turn1='[{"role":"system","content":"You are a concise assistant for car owners."},{"role":"user","content":"My car will not start on cold mornings. What should I check first?"}]'
post() {
  curl -sS "http://$1/v1/chat/completions" -H 'content-type: application/json' \
    -d "{\"messages\": $2, \"max_tokens\": 40, \"temperature\": 0, \"seam_route\": \"local\"}"
}
figures() {
  python3 -c 'import json, sys
r = json.load(sys.stdin)
s, u = r["seam"], r["usage"]
print("| %d | %d | %d | %.1f |" % (u["prompt_tokens"], s["cached_prompt_tokens"],
      u["prompt_tokens"] - s["cached_prompt_tokens"], s["prefill_ms"]))'
}
agent() {
  SEAM_PIDS=()
  SEAM_LISTEN_PREFIX="listening http " start_server "$1" "$edge" serve --model "$pkg" \
    --listen 127.0.0.1:0 --http 127.0.0.1:0
}
echo "Turn 2 of a conversation (OpenAI API, greedy, local), first turn kept vs re-sent"
echo
echo "| round | turn 2 | prompt tokens | cached | prefilled | prefill ms |"
echo "|---|---|---|---|---|---|"
for round in 1 2 3; do
  agent http
  answer=$(post "$http" "$turn1" | python3 -c 'import json, sys
print(json.dumps(json.load(sys.stdin)["choices"][0]["message"]["content"]))')
  turn2=$(python3 -c 'import json, sys
m = json.loads(sys.argv[1])
m += [{"role": "assistant", "content": json.loads(sys.argv[2])},
      {"role": "user", "content": "And if the battery is fine?"}]
print(json.dumps(m))' "$turn1" "$answer")
  echo "| $round | kept $(post "$http" "$turn2" | figures)"
  stop_servers
  agent http
  post "$http" '[{"role":"user","content":"Hello"}]' >/dev/null # a warm agent, cold cache
  echo "| $round | re-sent $(post "$http" "$turn2" | figures)"
  stop_servers
done
