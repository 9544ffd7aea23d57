# Helpers of the native build scripts (build-sm2-token.sh, build-netsim.sh, build-async-pkcs11.sh); sourced.

# stale <output> <inputs...>: true when the output is missing or older than an input (or the calling script).
stale() {
  local target=$1 f
  shift
  [ -e "$target" ] || return 0
  for f in "$@" "$0"; do [ "$f" -nt "$target" ] && return 0; done
  return 1
}

# link <output> <cc arguments...>: written to a temporary name and renamed, so a process loading the module never
# sees half a file.
link() {
  local target=$1
  shift
  cc "$@" -o "$target.tmp.$$"
  mv -f "$target.tmp.$$" "$target"
}
