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
