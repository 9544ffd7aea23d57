#!/usr/bin/env bash
# Builds the SM2 test token, a PKCS#11 module that emulates a vendor SM2 HSM (softhsm/sm2-token/README.md), into
# softhsm/sm2-token/build/libsm2token.so. Idempotent: rebuilds only when a source is newer than the output.
# As root it installs what is missing (a C compiler, OpenSSL 3 headers) with apt-get, like scripts/setup.sh.
#
#   SM2TOKEN_SANITIZE=1   also build the AddressSanitizer variant build/libsm2token-asan.so and the C test driver
#                         build/sm2token-driver-asan (see softhsm/sm2-token/README.md, "Memory checks")
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/apt-install.sh
source scripts/lib/apt-install.sh
# shellcheck source=lib/build.sh
source scripts/lib/build.sh
src=softhsm/sm2-token
out=$src/build

have_libcrypto_headers() { echo '#include <openssl/ec.h>' | cc -E -x c - >/dev/null 2>&1; }

need=()
command -v cc >/dev/null || need+=(build-essential)
{ command -v cc >/dev/null && have_libcrypto_headers; } || need+=(libssl-dev)
apt_install_missing build-sm2-token ${need[@]+"${need[@]}"}

sources=("$src"/token.c "$src"/store.c "$src"/sm2.c)
headers=("$src"/pkcs11-min.h "$src"/sm2-vendor.h "$src"/sm2.h "$src"/sm2token.h)
cflags=(-std=c11 -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter -I"$src")
libs=(-lcrypto -pthread)
if command -v pkg-config >/dev/null && pkg-config --exists libcrypto; then
  read -r -a libs <<<"$(pkg-config --libs libcrypto) -pthread"
fi

mkdir -p "$out"

if stale "$out/libsm2token.so" "${sources[@]}" "${headers[@]}" "$src/tools/header-check.c"; then
  echo "build-sm2-token: building $out/libsm2token.so"
  # The hand-written header must match the standard's ABI: compare it with p11-kit's full header when present.
  if [ -e /usr/include/p11-kit-1/p11-kit/pkcs11.h ]; then
    cc -std=c11 -o "$out/header-check-min" "$src/tools/header-check.c"
    cc -std=c11 -DUSE_P11KIT -I/usr/include/p11-kit-1 -o "$out/header-check-p11kit" "$src/tools/header-check.c"
    if ! diff <("$out/header-check-min") <("$out/header-check-p11kit") >"$out/header-check.diff"; then
      echo "build-sm2-token: pkcs11-min.h differs from p11-kit's pkcs11.h:" >&2
      cat "$out/header-check.diff" >&2
      exit 1
    fi
    rm -f "$out/header-check-min" "$out/header-check-p11kit" "$out/header-check.diff"
  fi
  link "$out/libsm2token.so" "${cflags[@]}" -O2 -g -D_FORTIFY_SOURCE=2 -shared -Wl,-z,defs "${sources[@]}" "${libs[@]}"
fi

if [ "${SM2TOKEN_SANITIZE:-0}" = 1 ]; then
  asan=(-fsanitize=address -fno-omit-frame-pointer -O1 -g)
  if stale "$out/libsm2token-asan.so" "${sources[@]}" "${headers[@]}"; then
    echo "build-sm2-token: building $out/libsm2token-asan.so (AddressSanitizer)"
    link "$out/libsm2token-asan.so" "${cflags[@]}" "${asan[@]}" -shared "${sources[@]}" "${libs[@]}"
  fi
  if stale "$out/sm2token-driver-asan" "$src/tools/driver.c" "${headers[@]}"; then
    echo "build-sm2-token: building $out/sm2token-driver-asan"
    link "$out/sm2token-driver-asan" -std=c11 -Wall -Wextra -I"$src" "${asan[@]}" "$src/tools/driver.c" -ldl -pthread
  fi
fi
