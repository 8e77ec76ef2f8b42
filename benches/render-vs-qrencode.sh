#!/usr/bin/env bash
# PNG codes per second on one core: our renderer against libqrencode + libpng, side by side in
# one run, on the same payload (version-4 URL, error correction M, 4-module quiet zone, 8 px
# per module, 1-bit grayscale). Both are pinned to the same core.
#
#   benches/render-vs-qrencode.sh            COUNT=20000 codes each by default
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"
cd "$repo"
count=${COUNT:-20000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

apt_install build-essential libqrencode-dev libpng-dev util-linux
say "building both sides"
cc -O2 benches/peers/qrencode_png.c -lqrencode -lpng -o "$work/qrencode_png"
cargo build --release --locked --quiet -p benches --bin render-rate

say "drawing $count codes on one core each"
read -r peer_n peer_s peer_bytes < <(taskset -c 0 "$work/qrencode_png" "$count")
read -r our_n our_s our_bytes < <(taskset -c 0 target/release/render-rate "$count")
awk -v pn="$peer_n" -v ps="$peer_s" -v pb="$peer_bytes" -v on="$our_n" -v os="$our_s" -v ob="$our_bytes" 'BEGIN {
  printf "%-28s %10s %12s\n", "renderer (1 core)", "codes/s", "PNG bytes"
  printf "%-28s %10.0f %12d\n", "libqrencode + libpng", pn / ps, pb
  printf "%-28s %10.0f %12d\n", "qrpool render", on / os, ob
  printf "ratio qrpool / libqrencode: %.2f\n", (on / os) / (pn / ps)
}'
