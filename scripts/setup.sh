#!/usr/bin/env bash
# Sets up what a fresh Debian 12 machine lacks, then builds. Idempotent and quick when nothing is missing.
# Called by `npm start` (setup.sh start) and `npm test` (setup.sh test: also Redis and Prometheus, which the
# tests run for real, and the PKCS#11 modules of the module matrix, scripts/setup-modules.sh) and `npm run bench`
# (setup.sh bench: also wrk, the load generator, Redis for the replica sweep, PostgreSQL for the registry-store part); as root it installs system
# packages with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/apt-install.sh
source scripts/lib/apt-install.sh
mode=${1:-start}

need=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v openssl >/dev/null || need+=(openssl)
{ command -v make && command -v g++ && command -v python3; } >/dev/null || need+=(build-essential python3)
if [ "$mode" = bench ]; then
  command -v wrk >/dev/null || need+=(wrk)
  command -v redis-server >/dev/null || need+=(redis-server)
  # bench:sizing's registry-store part compares the token store with a PostgreSQL of its own (bench/lib/postgres.mjs).
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
fi
if [ "$mode" = test ]; then
  command -v redis-server >/dev/null || need+=(redis-server)
  { command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
  { command -v systemd-analyze && command -v systemd-sysusers; } >/dev/null || need+=(systemd)
  # The registry in PostgreSQL: the tests run a server of their own (initdb into a temp dir), never the system's.
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
fi

apt_install_missing setup ${need[@]+"${need[@]}"}

# The PKCS#11 module matrix the tests run (openCryptoki, tpm2-pkcs11, p11-kit remote, NSS softokn): docs/modules.md.
if [ "$mode" = test ]; then
  bash scripts/setup-modules.sh
fi

# pkcs11js builds with node-gyp, which needs Node's headers; Debian's nodejs ships them in /usr/include/node.
if [ -z "${npm_config_nodedir:-}" ] && [ -d /usr/include/node ]; then
  export npm_config_nodedir=/usr
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ] || [ ! -e node_modules/pkcs11js/build/Release/pkcs11.node ]; then
  echo "setup: installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi

# The async PKCS#11 addon (native/async-pkcs11, loaded by src/hsm/async-pkcs11.ts): token calls off the event loop.
bash scripts/build-async-pkcs11.sh
# The SM2 test token (a vendor-style PKCS#11 module in C, softhsm/sm2-token): the demo's SM2 keys live on it.
bash scripts/build-sm2-token.sh
# The emulated network HSM (a test tool, softhsm/netsim): the fault tests and the benchmark's network-HSM rows use it.
if [ "$mode" = test ] || [ "$mode" = bench ]; then bash scripts/build-netsim.sh; fi

npx --no-install tsc -p tsconfig.json
