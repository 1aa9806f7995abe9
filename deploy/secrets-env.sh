#!/bin/sh
# Starts a server with secrets from files in its environment, for images that read a secret
# only from a variable (ClickHouse's from_env, Grafana's provisioning ${VAR}):
#
#   secrets-env.sh NAME=FILE [NAME=sha256:FILE ...] -- COMMAND [ARGUMENTS]
#
# NAME=FILE exports the file's line as NAME; NAME=sha256:FILE exports its SHA-256 in hex, for
# ClickHouse's password_sha256_hex (the server then keeps no password in clear, not even in its
# preprocessed configuration). A trailing line break (LF or CRLF) is not part of the secret, as in
# opscentre.settings.read_secret_file, which reads the same files for the pipeline.
set -eu

fail() { echo "secrets-env: $*" >&2; exit 2; }
cr=$(printf '\r')

while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  name=${1%%=*}
  source=${1#*=}
  case $name in
    "" | [0-9]* | *[!A-Za-z0-9_]*) fail "not NAME=FILE: $1" ;;
  esac
  [ "$source" != "$1" ] || fail "not NAME=FILE: $1"
  case $source in
    sha256:*) file=${source#sha256:}; digest=yes ;;
    *) file=$source; digest= ;;
  esac
  [ -r "$file" ] || fail "cannot read $file (for $name)"
  value=$(cat "$file")
  value=${value%"$cr"}
  [ -n "$value" ] || fail "$file is empty (for $name)"
  if [ -n "$digest" ]; then
    value=$(printf %s "$value" | sha256sum | cut -d ' ' -f 1)
  fi
  export "$name=$value"
  shift
done
[ $# -gt 1 ] || fail "usage: secrets-env.sh NAME=FILE [NAME=sha256:FILE ...] -- COMMAND [ARGUMENTS]"
shift
exec "$@"
