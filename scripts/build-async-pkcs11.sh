#!/usr/bin/env bash
# Builds the async PKCS#11 addon (native/async-pkcs11: init+sign, init+verify, object search, session open/close and
# the health probe as one job each on the libuv pool; src/hsm/async-pkcs11.ts loads it) into
#   native/async-pkcs11/build/async_pkcs11.node
# The gateway needs it at run time: scripts/setup.sh runs this in every mode. Idempotent: rebuilds only when the
# output is older than its source, pkcs11js's PKCS#11 headers or this script. Plain C against Node-API (one build
# serves every Node version since 18): a C compiler, Node's headers (node_api.h) and the PKCS#11 declarations that
# pkcs11js itself is built with (node_modules/pkcs11js/includes: run `npm ci` first). As root it installs
# build-essential with apt-get when there is no compiler, like scripts/setup.sh.
#
# Node's headers are looked for in $npm_config_nodedir/include/node (as node-gyp does), beside the running node
# (<prefix>/include/node: the release tarballs, the official container images), /usr/include/node (Debian and
# NodeSource packages), /usr/local/include/node, then node-gyp's download cache.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/apt-install.sh
source scripts/lib/apt-install.sh
# shellcheck source=lib/build.sh
source scripts/lib/build.sh
src=native/async-pkcs11
out=$src/build
target=$out/async_pkcs11.node

need=()
command -v cc >/dev/null || need+=(build-essential)
apt_install_missing build-async-pkcs11 ${need[@]+"${need[@]}"}

pkcs11_include=node_modules/pkcs11js/includes
pkcs11_headers=("$pkcs11_include"/pkcs11/pkcs11.h "$pkcs11_include"/pkcs11/pkcs11t.h "$pkcs11_include"/pkcs11/pkcs11f.h)
for h in "${pkcs11_headers[@]}"; do
  if [ ! -e "$h" ]; then
    echo "build-async-pkcs11: $h is missing: install the npm dependencies first (npm ci)" >&2
    exit 1
  fi
done

stale "$target" "$src"/async_pkcs11.c "${pkcs11_headers[@]}" || exit 0

node_headers=""
candidates=()
[ -n "${npm_config_nodedir:-}" ] && candidates+=("$npm_config_nodedir/include/node")
if command -v node >/dev/null; then
  prefix=$(dirname "$(dirname "$(node -p 'process.execPath')")")
  candidates+=("$prefix/include/node")
  version=$(node -p 'process.versions.node')
  candidates+=("${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/node-gyp/$version/include/node")
fi
candidates+=(/usr/include/node /usr/local/include/node)
for dir in "${candidates[@]}"; do
  if [ -e "$dir/node_api.h" ]; then
    node_headers=$dir
    break
  fi
done
if [ -z "$node_headers" ]; then
  echo "build-async-pkcs11: Node's headers (node_api.h) not found in: ${candidates[*]}." >&2
  echo "  Install them with your Node (Debian/NodeSource: the nodejs package has /usr/include/node; a release tarball has <prefix>/include/node) or set npm_config_nodedir." >&2
  exit 1
fi

echo "build-async-pkcs11: building $target (Node headers: $node_headers)"
mkdir -p "$out"
# Node-API symbols are resolved from the node executable when the addon is loaded: no -z defs, no libnode.
cc -std=gnu11 -O2 -g -fPIC -fvisibility=hidden -D_FORTIFY_SOURCE=2 -Wall -Wextra -Wno-unused-parameter \
  -I"$node_headers" -I"$pkcs11_include" -shared -o "$target.tmp.$$" "$src"/async_pkcs11.c -ldl -lm -pthread
# Renamed into place: a process loading the addon never sees half a file.
mv -f "$target.tmp.$$" "$target"
