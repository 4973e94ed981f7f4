#!/usr/bin/env bash
# Fails if a process started by the tests outlived them: anything still running from this
# checkout's target/ (test servers, fixtures, helpers). Run after `cargo test` by `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
left=()
for proc in /proc/[0-9]*; do
  pid=${proc#/proc/}
  [ "$pid" = "$$" ] && continue
  exe=$(readlink "$proc/exe" 2>/dev/null) || continue
  case "$exe" in
    "$root"/target/*) ;;
    *) continue ;;
  esac
  state=$(awk '{print $3}' "$proc/stat" 2>/dev/null || true)
  [ "$state" = "Z" ] && continue
  left+=("$pid $(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | cut -c1-200)")
done
if [ ${#left[@]} -gt 0 ]; then
  echo "check-leftovers: ${#left[@]} process(es) started by the tests are still running:" >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "check-leftovers: no test process left running"
