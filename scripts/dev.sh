#!/usr/bin/env bash
# Set-up on a fresh Debian machine (root, no Docker), then run the pipeline or the tests.
#   bash scripts/dev.sh run [opscentre run options]   # the whole pipeline, embedded broker and ClickHouse
#   bash scripts/dev.sh test [pytest options]         # the test suite on real Tansu and clickhouse-server
set -euo pipefail
cd "$(dirname "$0")/.."
action="${1:-}"; shift || true
case "$action" in run|test|setup) ;; *) echo "usage: bash scripts/dev.sh run|test|setup [args]" >&2; exit 2 ;; esac

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
packages=()
lean=()  # installed without their recommended packages
command -v python3 >/dev/null || packages+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || packages+=(python3-venv python3-pip)
if [ "$action" = test ]; then
  command -v clickhouse-server >/dev/null || packages+=(clickhouse-server clickhouse-client)
  command -v promtool >/dev/null || lean+=(prometheus)  # the boards' PromQL, the alerting tests
  command -v amtool >/dev/null || lean+=(prometheus-alertmanager)
  command -v docker-compose >/dev/null || lean+=(docker-compose)  # tests/test_stack.py (no engine needed)
  [ -e /usr/share/java/zookeeper.jar ] || lean+=(zookeeper)  # tests/test_cluster.py: ClickHouse replication
fi
if [ $(( ${#packages[@]} + ${#lean[@]} )) -gt 0 ]; then
  $SUDO apt-get update -qq
  [ ${#packages[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
  [ ${#lean[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${lean[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

case "$action" in
  run)  exec .venv/bin/opscentre run "$@" ;;
  # Three test processes, each with its own servers: most tests wait on a broker or a server, so
  # three share two cores well (16 min in one process, 6 in three). `-n 0` runs them in one.
  test) exec .venv/bin/python -m pytest -n 3 "$@" ;;
  setup) echo "ready: .venv/bin/opscentre" ;;
esac
