# Sourced by the set-up scripts: installs Debian packages that are missing, with apt-get when running as root,
# else says what to install and fails. Usage: apt_install_missing <who> <package>...
apt_install_missing() {
  local who=$1
  shift
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "$who: installing $* with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "$who: missing system packages: $*. Install them (e.g. sudo apt-get install $*) and run again." >&2
    exit 1
  fi
}
