"""Writes requirements.lock, the exact versions the image installs (Dockerfile), from pyproject.toml.

    .venv/bin/python scripts/lock_requirements.py

pip resolves the project's runtime dependencies as a fresh install would, for this interpreter
(CPython 3.11 on Linux, as the image's base), without installing anything; every version it
picks is written out. tests/test_stack.py checks that the lock still satisfies pyproject.toml.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
HEADER = """\
# The image's Python packages, every one pinned (the Dockerfile installs them with --no-deps).
# Written by scripts/lock_requirements.py from pyproject.toml for CPython 3.11 on Linux; do not edit.
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--report", str(report), str(ROOT)], check=True)
        installs = json.loads(report.read_text())["install"]
    pins = sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in installs
                  if i["metadata"]["name"] != "opscentre")
    LOCK.write_text(HEADER + "".join(f"{name}=={version}\n" for name, version in
                                     sorted(pins, key=lambda pin: pin[0].lower())), encoding="utf-8")
    print(f"{LOCK.name}: {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
