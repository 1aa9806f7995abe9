"""A wrong argument or an unreachable server: one line on stderr, exit status 2."""

import os
import subprocess
import sys

import pytest

from opscentre.embedded import free_port


def opscentre(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPSCENTRE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "opscentre.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, env, message", [
    (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    (["kpi", "--province", "01", "--from", "yesterday", "--to", "2026-11-22T00:00:00Z"], {}, "expected an RFC 3339 time"),
    (["kpi", "--province", "01", "--from", "2026-11-22T00:00:00", "--to", "2026-11-23T00:00:00Z"], {}, "has no offset"),
    (["kpi", "--province", "99", "--from", "2026-11-22T00:00:00Z", "--to", "2026-11-23T00:00:00Z"],
     {"OPSCENTRE_CLICKHOUSE": "clickhouse://127.0.0.1:1/x"}, "unknown province code '99'"),
    (["kpi", "--province", "01", "--from", "2026-11-23T00:00:00Z", "--to", "2026-11-22T00:00:00Z"],
     {"OPSCENTRE_CLICKHOUSE": "clickhouse://127.0.0.1:1/x"}, "--to must be after --from"),
    (["kpi", "--province", "01", "--from", "2026-11-22T00:00:00Z", "--to", "2026-11-23T00:00:00Z"], {}, "OPSCENTRE_CLICKHOUSE is not set"),
    (["kpi", "--province", "01", "--from", "2026-11-22T00:00:00Z", "--to", "2026-11-23T00:00:00Z"],
     {"OPSCENTRE_CLICKHOUSE": f"clickhouse://127.0.0.1:{free_port()}/x"}, "is not reachable"),
    (["kpi", "--province", "01", "--from", "2026-11-22T00:00:00Z", "--to", "2026-11-23T00:00:00Z"],
     {"OPSCENTRE_CLICKHOUSE": "mysql://x"}, "unsupported scheme"),
    (["worker"], {}, "OPSCENTRE_KAFKA is not set"),
    (["worker"], {"OPSCENTRE_MEMORY_WINDOW_HOURS": "3"}, "OPSCENTRE_MEMORY_WINDOW_HOURS is replaced by OPSCENTRE_MEMORY_WINDOW_S"),
    (["simulate", "--rate", "-5", "--duration", "1"], {}, "must be > 0"),
    (["ingest", "/nonexistent/events.jsonl"], {"OPSCENTRE_KAFKA": "127.0.0.1:1"}, "cannot read /nonexistent/events.jsonl"),
    (["simulate", "--rate", "5", "--duration", "1"], {"OPSCENTRE_KAFKA": f"127.0.0.1:{free_port()}"}, "not reachable"),
    (["db", "migrate"], {"OPSCENTRE_CLICKHOUSE": f"clickhouse://127.0.0.1:{free_port()}/x"}, "is not reachable"),
])
def test_errors_are_one_line_with_status_2(args, env, message):
    result = opscentre(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["simulate"], ["ingest"], ["worker"], ["db"], ["db", "migrate"], ["kpi"]])
def test_every_command_has_help(command):
    result = opscentre(*command, "--help")
    assert result.returncode == 0
    assert "usage: opscentre" in result.stdout
