#!/bin/sh
# Puts a Grafana plugin, at the version the boards are written for, into the plugins volume
# Grafana loads it from, before Grafana starts (compose service grafana-plugin):
#   - from PLUGIN_ID-PLUGIN_VERSION*.zip in PLUGIN_ZIPS, for a centre without the internet
#     (README, Deploy: the zip from grafana.com, carried in with the images);
#   - else with `grafana cli` from grafana.com (the internet is needed once: the volume keeps it).
# Nothing is written inside the plugin's own directory: Grafana checks its files against the
# plugin's signed manifest, so the installed version is noted beside it.
set -eu

fail() { echo "install-plugin: $*" >&2; exit 2; }
id=${PLUGIN_ID:?PLUGIN_ID is not set}
version=${PLUGIN_VERSION:?PLUGIN_VERSION is not set}
dir=${GF_PATHS_PLUGINS:-/var/lib/grafana/plugins}
zips=${PLUGIN_ZIPS:-/opt/opscentre/grafana-plugins}
noted="$dir/.$id.version"

if [ -f "$dir/$id/plugin.json" ] && [ "$(cat "$noted" 2>/dev/null)" = "$version" ]; then
  echo "install-plugin: $id $version is installed"
  exit 0
fi

set -- "$zips/$id-$version"*.zip
unpacked="$dir/.$id.unpacked"
rm -rf "$unpacked"
if [ -f "$1" ]; then
  [ $# -eq 1 ] || fail "several zips of $id $version in $zips: keep one"
  mkdir "$unpacked"
  unzip -q "$1" -d "$unpacked" || fail "cannot unzip $1"
  [ -f "$unpacked/$id/plugin.json" ] || fail "$1 holds no $id/plugin.json"
  rm -rf "${dir:?}/$id"
  mv "$unpacked/$id" "$dir/$id"
  rm -rf "$unpacked"
  echo "install-plugin: $id $version installed from $1"
else
  rm -rf "${dir:?}/$id"
  grafana cli --pluginsDir "$dir" plugins install "$id" "$version" \
    || fail "cannot download $id $version (no internet? put its zip in $zips: README, Deploy)"
fi
printf '%s\n' "$version" > "$noted"
