#!/usr/bin/env bash
# Builds the emulated network HSM (softhsm/netsim/README.md), a TEST TOOL: a PKCS#11 module that forwards every call
# to a real module (SoftHSMv2 by default) with a configurable delay and injects faults on command, into
#   softhsm/netsim/build/libnetsim-pkcs11.so   the module
#   softhsm/netsim/build/netsim-ctl            the command-line client of its control channel
# Idempotent: rebuilds only what is older than its sources (or this script). Needs a C compiler only; as root it
# installs build-essential with apt-get when there is none, like scripts/setup.sh.
#
#   NETSIM_SANITIZE=1   also build build/libnetsim-pkcs11-tsan.so and build/netsim-stress-tsan (ThreadSanitizer)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/apt-install.sh
source scripts/lib/apt-install.sh
# shellcheck source=lib/build.sh
source scripts/lib/build.sh
src=softhsm/netsim
out=$src/build

need=()
command -v cc >/dev/null || need+=(build-essential)
apt_install_missing build-netsim ${need[@]+"${need[@]}"}

sources=("$src"/netsim.c "$src"/control.c)
# The PKCS#11 declarations are the SM2 test token's (ABI-checked against p11-kit's header by its build script).
headers=("$src"/netsim.h softhsm/sm2-token/pkcs11-min.h)
cflags=(-std=gnu11 -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter)
# -z nodelete: pkcs11js dlclose()s a module on close(), but the control thread must outlive that.
# -Bsymbolic: our own calls bind to our definitions, whatever else exports C_* symbols.
ldflags=(-shared -Wl,-z,defs -Wl,-z,nodelete -Wl,-Bsymbolic)
libs=(-ldl -pthread)

mkdir -p "$out"

if stale "$out/libnetsim-pkcs11.so" "${sources[@]}" "${headers[@]}"; then
  echo "build-netsim: building $out/libnetsim-pkcs11.so"
  link "$out/libnetsim-pkcs11.so" "${cflags[@]}" -O2 -g -D_FORTIFY_SOURCE=2 "${ldflags[@]}" "${sources[@]}" "${libs[@]}"
fi
if stale "$out/netsim-ctl" "$src/netsim-ctl.c"; then
  echo "build-netsim: building $out/netsim-ctl"
  link "$out/netsim-ctl" -std=gnu11 -Wall -Wextra -O2 -D_FORTIFY_SOURCE=2 "$src/netsim-ctl.c"
fi

if [ "${NETSIM_SANITIZE:-0}" = 1 ]; then
  tsan=(-fsanitize=thread -O1 -g)
  if stale "$out/libnetsim-pkcs11-tsan.so" "${sources[@]}" "${headers[@]}"; then
    echo "build-netsim: building $out/libnetsim-pkcs11-tsan.so (ThreadSanitizer)"
    link "$out/libnetsim-pkcs11-tsan.so" "${cflags[@]}" "${tsan[@]}" "${ldflags[@]}" "${sources[@]}" "${libs[@]}"
  fi
  if stale "$out/netsim-stress-tsan" "$src/tools/stress.c" "${headers[@]}"; then
    echo "build-netsim: building $out/netsim-stress-tsan"
    link "$out/netsim-stress-tsan" "${cflags[@]}" "${tsan[@]}" "$src/tools/stress.c" -ldl -pthread
  fi
fi
