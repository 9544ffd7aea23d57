#!/usr/bin/env bash
# Installs the PKCS#11 modules of the module matrix (test/integration/module-matrix.test.ts, docs/modules.md) from
# Debian 12 packages: the openCryptoki soft token, tpm2-pkcs11 on swtpm behind tpm2-abrmd (with D-Bus), p11-kit's
# remoting (client module + server) and NSS softokn. SoftHSMv2 is set up by scripts/setup.sh.
# Called by scripts/setup.sh in `test` mode. Idempotent and quick: it only looks for files, and asks apt-get (as
# root) only for the packages whose files are missing; it starts no daemon (the test helpers start their own).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/apt-install.sh
source scripts/lib/apt-install.sh

# A file from a multiarch library directory (/usr/lib/x86_64-linux-gnu/…, /usr/lib/aarch64-linux-gnu/…).
have_lib() { compgen -G "/usr/lib/*-linux-gnu*/$1" >/dev/null; }
have() { command -v "$1" >/dev/null; }

need=()
# openCryptoki: the module (libopencryptoki.so), the soft token (stdll libpkcs11_sw.so), the slot daemon and pkcsconf.
have_lib pkcs11/libopencryptoki.so && have /usr/sbin/pkcsslotd && have /usr/sbin/pkcsconf || need+=(opencryptoki)
have_lib opencryptoki/stdll/libpkcs11_sw.so.0 || need+=(libopencryptoki0)
# tpm2-pkcs11: the module, tpm2_ptool (init / addtoken / import), the TPM simulator, the resource manager and the
# TCTIs the module and the manager load by name (tabrmd for the module, swtpm for the manager).
have_lib pkcs11/libtpm2_pkcs11.so || need+=(libtpm2-pkcs11-1)
have tpm2_ptool || need+=(libtpm2-pkcs11-tools)
have swtpm || need+=(swtpm)
have swtpm_setup || need+=(swtpm-tools)
have /usr/sbin/tpm2-abrmd || need+=(tpm2-abrmd)
have_lib libtss2-tcti-tabrmd.so.0 || need+=(libtss2-tcti-tabrmd0)
have_lib libtss2-tcti-swtpm.so.0 || need+=(libtss2-tcti-swtpm0)
have dbus-daemon || need+=(dbus)
# p11-kit remoting: `p11-kit server` and the client module.
have p11-kit || need+=(p11-kit)
have_lib pkcs11/p11-kit-client.so || need+=(p11-kit-modules)
# NSS softokn and certutil (makes its database).
have_lib libsoftokn3.so || need+=(libnss3)
have certutil || need+=(libnss3-tools)

apt_install_missing setup-modules ${need[@]+"${need[@]}"}
