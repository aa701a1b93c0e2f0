"""A batch worker that writes its metrics straight into Prometheus's remote-write receiver:
no Pushgateway, one series per worker process, ended cleanly when the worker exits.

    docker compose -f deploy/docker-compose.yml up -d prometheus   # has the receiver on
    INSTRUMENT_REMOTE_WRITE_URL=http://127.0.0.1:9090/api/v1/write \\
    INSTRUMENT_JOB=nightly-scan python deploy/remote-write/worker.py src/

Start as many as you like at once; each writes under its own instance (host-pid). Their
total, also after they exited (their series are stale then, not gone):

    sum(last_over_time(codomyrmex_analyses_total{job="nightly-scan"}[1h]))

For Mimir or Grafana Cloud, point the URL at its /api/v1/push and add the tenant:
INSTRUMENT_REMOTE_WRITE_HEADERS=X-Scope-OrgID=team-a (values are never logged).
"""

from __future__ import annotations

import sys
from pathlib import Path

import instrument


@instrument.monitored_analysis("static_analysis", "codebase")
def analyze(path: Path) -> int:
    """Count the lines of one file: a stand-in for real analysis work."""
    return len(path.read_text(encoding="utf-8", errors="replace").splitlines())


def main(argv: list[str]) -> int:
    # The environment says where to write (INSTRUMENT_REMOTE_WRITE_URL) and under which job;
    # a bad value stops the worker here, before any work.
    instrument.configure()
    root = Path(argv[0] if argv else ".")
    lines = sum(analyze(path) for path in sorted(root.rglob("*.py")))
    print(f"analysed {root}: {lines} lines")
    return 0  # at exit the final values are written, then every series is marked stale


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
