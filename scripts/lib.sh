# Shared by demo.sh and bench.sh: start a Seam server on loopback and learn its address.

# Processes started by start_server, stopped by stop_servers.
SEAM_PIDS=()
SEAM_LOGS=()

# start_server VAR COMMAND...: runs COMMAND (which must print "listening on ADDR" on stdout, or
# "${SEAM_LISTEN_PREFIX}ADDR" when that is set) in the background and stores ADDR in the
# variable VAR. Its logs are the last two entries of SEAM_LOGS (stderr, then stdout). On failure
# prints the log and exits.
start_server() {
  local var=$1
  shift
  local log
  log=$(mktemp -t seam-server.XXXXXX)
  SEAM_LOGS+=("$log" "$log.out")
  : >"$log.out"
  "$@" >"$log.out" 2>"$log" &
  local pid=$!
  SEAM_PIDS+=("$pid")
  local found=
  for _ in $(seq 1 600); do
    found=$(sed -n "s/^${SEAM_LISTEN_PREFIX:-listening on }//p" "$log.out" | head -1)
    [ -n "$found" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$1 exited before listening:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if [ -z "$found" ]; then
    echo "$1 did not start within 60 s:" >&2
    cat "$log" >&2
    exit 1
  fi
  printf -v "$var" '%s' "$found"
}

stop_servers() {
  local pid
  for pid in "${SEAM_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SEAM_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "${SEAM_LOGS[@]}"
}

# start_gateway VAR ROUTER WORKER_ADDR POLICY DEVICE: makes dev certificates (a CA, the gateway,
# DEVICE) in a fresh directory, copies POLICY there and starts `ROUTER serve` in front of the
# worker; stores the gateway's address in VAR, and sets GATEWAY_DIR (certificates, policy.toml,
# admin-token), GATEWAY_METRICS (the /metrics address), GATEWAY_DASHBOARD (the dashboard's URL)
# and GATEWAY_FLAGS (the seam-edge flags for DEVICE).
start_gateway() {
  local var=$1 router=$2 worker_addr=$3 policy=$4 device=$5
  GATEWAY_DIR=$(mktemp -d -t seam-gateway.XXXXXX)
  SEAM_LOGS+=("$GATEWAY_DIR")
  "$router" certs --out "$GATEWAY_DIR" --device "$device" >/dev/null
  cp "$policy" "$GATEWAY_DIR/policy.toml"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$GATEWAY_DIR/admin-token"
  printf '%s\n' \
    'listen = "127.0.0.1:0"' 'admin_listen = "127.0.0.1:0"' 'metrics_listen = "127.0.0.1:0"' \
    'policy = "policy.toml"' 'policy_poll_ms = 250' \
    '[tls]' 'cert = "gateway.pem"' 'key = "gateway.key"' 'client_ca = "ca.pem"' \
    '[admin]' 'token_file = "admin-token"' \
    '[workers]' "static = [\"$worker_addr\"]" 'health_every_ms = 500' >"$GATEWAY_DIR/router.toml"
  local addr
  SEAM_LISTEN_PREFIX="listening gateway " start_server addr "$router" serve --config "$GATEWAY_DIR/router.toml"
  addr=${addr%% *}
  local out=${SEAM_LOGS[-1]}
  GATEWAY_METRICS=
  for _ in $(seq 1 50); do
    GATEWAY_METRICS=$(sed -n 's/^listening metrics //p' "$out")
    [ -n "$GATEWAY_METRICS" ] && break
    sleep 0.1
  done
  GATEWAY_DASHBOARD=$(sed -n 's/^dashboard //p' "$out")
  GATEWAY_FLAGS=(--gateway "$addr" --gateway-ca "$GATEWAY_DIR/ca.pem"
    --device-cert "$GATEWAY_DIR/$device.pem" --device-key "$GATEWAY_DIR/$device.key")
  printf -v "$var" '%s' "$addr"
}
