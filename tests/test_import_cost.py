"""What ``import instrument`` costs beyond its dependencies (issue 13, import target).

Each test runs a fresh interpreter (about a second: not marked ``subprocess``, which is for
the CLI and builds): ``sys.modules`` of this one already holds everything.
The target compares ``import instrument`` with ``import prometheus_client, wrapt``, so what
matters is what instrument adds to them: its own modules and as little else as possible.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: Loaded by ``import instrument`` only on demand: the Grafana client and aiohttp, the
#: generated artifacts, the CLI, the demo, pickle (for a decorated callable's pickling), the
#: AI package, the objectives, the settings table and dataclasses (tests/test_imports_lazy.py).
_ON_DEMAND = (
    "aiohttp",
    "pickle",
    "dataclasses",
    "instrument.ai",
    "instrument.objectives",
    "instrument.config",
    "instrument.grafana",
    "instrument.dashboard",
    "instrument.rules",
    "instrument._slo",
    "instrument._promql",
    "instrument._panels",
    "instrument._yaml",
    "instrument.compat",
    "instrument.delivery._remote_write",
    "instrument.delivery._prune",
    "instrument.cli",
    "instrument.demo",
)
#: Modules the delivery uses, which the dependencies already import (prometheus_client's
#: exposition: ssl, urllib.request, http.client; wrapt: asyncio). If a dependency stops
#: importing one, instrument must not be what brings it in at import.
_DELIVERY_STDLIB = ("asyncio", "ssl", "urllib.request", "http.client")


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_adds_nothing_heavy_beyond_the_dependencies() -> None:
    out = _run(
        """
        import json, sys
        import prometheus_client, wrapt
        deps = set(sys.modules)
        import instrument
        print(json.dumps({"deps": sorted(deps), "added": sorted(set(sys.modules) - deps)}))
        """
    )
    found = json.loads(out)
    deps, added = set(found["deps"]), set(found["added"])
    assert "instrument" in added
    loaded = [m for m in added if any(m == p or m.startswith(p + ".") for p in _ON_DEMAND)]
    assert sorted(loaded) == []
    assert [m for m in _DELIVERY_STDLIB if m in added] == []
    # What the dependencies bring is theirs, not a cost of ours: said here so that a change
    # in them shows (then the delivery's imports of these must become lazy).
    assert [m for m in _DELIVERY_STDLIB if m not in deps] == []


def test_the_version_is_looked_up_on_first_use_only() -> None:
    """Finding the installed distribution scans sys.path: ``import instrument`` must not
    pay it; ``instrument.__version__`` (and the CLI's ``--version``) still give it."""
    out = _run(
        """
        import importlib.metadata as metadata
        real = metadata.version
        def refuse(name):
            raise SystemExit("version() called during import instrument")
        metadata.version = refuse
        import instrument
        metadata.version = real
        print(instrument.__version__ == real("codomyrmex-instrument"), instrument.__version__)
        """
    )
    same, version = out.split()
    assert same == "True"
    assert version[0].isdigit()


def test_the_seed_names_and_pruning_are_imported_on_first_use() -> None:
    """The seed's compatibility names (``compat``) and the gateway's pruning are not part
    of ``import instrument``; asked for, they are the real ones, and work."""
    out = _run(
        """
        import json, sys
        import instrument
        before = {m: m in sys.modules for m in ("instrument.compat", "instrument.delivery._prune")}
        from instrument import PrometheusIntegration, record_analysis, update_active_jobs
        from instrument.delivery import Pruned, prune_groups
        import instrument.compat as compat
        import instrument.delivery._prune as prune
        same = [
            PrometheusIntegration is compat.PrometheusIntegration,
            record_analysis is compat.record_analysis,
            update_active_jobs is compat.update_active_jobs,
            prune_groups is prune.prune_groups,
            Pruned is prune.Pruned,
        ]
        try:
            instrument.no_such_name
        except AttributeError as exc:
            missing = str(exc)
        print(json.dumps({"before": before, "same": same, "missing": missing}))
        """
    )
    found = json.loads(out)
    assert found["before"] == {"instrument.compat": False, "instrument.delivery._prune": False}
    assert found["same"] == [True] * 5
    assert found["missing"] == "module 'instrument' has no attribute 'no_such_name'"


def test_the_artifacts_and_the_grafana_client_are_the_real_ones_on_first_use() -> None:
    """Every name ``import instrument`` leaves to first use is in ``__all__`` or the seed's
    shims, is not imported before it is asked for, and is then the defining module's own."""
    out = _run(
        """
        import importlib, json, sys
        import instrument
        lazy = dict(instrument._LAZY)
        before = sorted({m for m in lazy.values() if "instrument" + m in sys.modules})
        same = {
            name: getattr(instrument, name)
            is getattr(importlib.import_module("instrument" + module), name)
            for name, module in lazy.items()
        }
        exported = sorted(set(instrument.__all__) - set(dir(instrument)) - set(lazy))
        print(json.dumps({"before": before, "same": same, "exported": exported}))
        """
    )
    found = json.loads(out)
    assert found["before"] == []
    assert found["same"] and all(found["same"].values()), found["same"]
    # dir() lists every name __all__ does, the ones resolved on first use included.
    assert found["exported"] == []
