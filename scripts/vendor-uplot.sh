#!/usr/bin/env bash
# Refreshes the dashboard's charting library, uPlot, from the npm registry into
# router/src/dashboard/assets/vendor/ (committed: the gateway binary embeds it, so neither the
# build nor the page fetches anything). Checks the tarball against the registry's integrity hash
# and the files against the checksums below; change both when moving to another version.
set -euo pipefail
version=1.6.32
integrity='sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=='
sums='19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f  uPlot.iife.min.js
df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04  uPlot.min.css'
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/router/src/dashboard/assets/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "uplot@$version" >/dev/null
got="sha512-$(openssl dgst -sha512 -binary "uplot-$version.tgz" | base64 -w0)"
[ "$got" = "$integrity" ] || { echo "uplot-$version.tgz: integrity $got, expected $integrity" >&2; exit 1; }
tar xzf "uplot-$version.tgz"
cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css "$work/"
(cd "$work" && sha256sum -c --quiet <<<"$sums")
mkdir -p "$dest"
cp "$work/uPlot.iife.min.js" "$work/uPlot.min.css" "$dest/"
cp package/LICENSE "$dest/uPlot.LICENSE"
echo "vendored uPlot $version into $dest"
