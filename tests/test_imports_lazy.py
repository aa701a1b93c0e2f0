"""What ``import instrument`` leaves to first use, and that first use works wherever it
happens (issue 13, import target).

The AI tracker, the objectives and the settings table are imported when first reached:
``track_ai_call`` / ``AICallTracker``, ``objective=`` / ``Objective``, the environment read
for the default instrumentation. Each test runs a fresh interpreter (this one has imported
everything long ago) and asserts what a user would see: the names, the families of a
scrape, the counts read back from the registry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from .support import run_script

#: What ``import instrument`` plus ``Instrumentation()`` plus ``@monitored_analysis`` (and
#: its call) never need, so never load.
_DEFERRED = ("instrument.ai", "instrument.objectives", "instrument.config", "dataclasses")

#: A call's result an AI tracker reads 3 input and 2 output tokens from.
_RESPONSE = '{"usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
_AI_CALLS = (
    "'codomyrmex_ai_api_calls_total', "
    "{'provider': 'openai', 'model': 'gpt-4o', 'status': 'success'}"
)
_ANALYSES = (
    "'codomyrmex_analyses_total', {'module': 'm', 'analysis_type': 't', 'status': 'success'}"
)


def _run(tmp_path: Path, code: str, env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a fresh interpreter and return what it printed last, as JSON."""
    done = run_script(tmp_path / "script.py", code, env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _loaded(prefixes: tuple[str, ...] = _DEFERRED) -> str:
    """Python for the deferred modules found in sys.modules (a sorted list)."""
    return f"sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in {prefixes!r}))"


def test_the_typical_program_never_loads_the_deferred_modules(tmp_path: Path) -> None:
    """Import, an Instrumentation, a decorated analysis called, a scrape: none of the AI
    package, the objectives, the settings table or dataclasses is loaded on the way."""
    found = _run(
        tmp_path,
        f"""
        import json, sys
        import instrument
        after_import = {_loaded()}
        inst = instrument.Instrumentation()

        @inst.monitored_analysis("m", "t")
        def analyze(x):
            return x + 1

        result = analyze(1)
        from prometheus_client import generate_latest
        generate_latest(inst.registry)
        print(json.dumps({{
            "after_import": after_import,
            "after_use": {_loaded()},
            "result": result,
            "count": inst.registry.get_sample_value({_ANALYSES}),
        }}))
        """,
    )
    assert found == {"after_import": [], "after_use": [], "result": 2, "count": 1.0}


def test_each_deferred_part_loads_when_first_reached(tmp_path: Path) -> None:
    """``track_ai_call`` brings the AI package, ``objective=`` the objectives, the default
    instrumentation the settings table: each exactly when it is needed, and working."""
    found = _run(
        tmp_path,
        f"""
        import json, sys
        import instrument
        steps = {{}}
        inst = instrument.Instrumentation()
        tracked = inst.track_ai_call("openai", "gpt-4o")(lambda: {_RESPONSE})
        tracked()
        steps["ai"] = {_loaded()}
        fast = instrument.Objective("fast", latency=(1, 0.9))
        inst.monitored_analysis("m", "t", objective=fast)(lambda: None)()
        steps["objective"] = {_loaded()}

        @instrument.monitored_analysis("m", "t")
        def analyze():
            return "done"

        analyze()
        steps["default"] = {_loaded()}
        default = instrument.get_instrumentation()
        print(json.dumps({{
            "steps": steps,
            "ai_calls": inst.registry.get_sample_value({_AI_CALLS}),
            "objectives": [o.name for o in inst.objectives],
            "namespace": default.namespace,
            "default_count": default.registry.get_sample_value(
                "from_env_analyses_total",
                {{"module": "m", "analysis_type": "t", "status": "success"}},
            ),
        }}))
        """,
        env={"INSTRUMENT_NAMESPACE": "from_env"},
    )
    assert {"instrument.ai", "dataclasses"} <= set(found["steps"]["ai"])
    assert "instrument.config" not in found["steps"]["ai"]
    assert "instrument.objectives" in found["steps"]["objective"]
    assert "instrument.config" not in found["steps"]["objective"]
    assert "instrument.config" in found["steps"]["default"]
    assert found["ai_calls"] == 1.0
    assert found["objectives"] == ["fast"]
    # The environment is read, as before, when the default is first made.
    assert found["namespace"] == "from_env"
    assert found["default_count"] == 1.0


def test_every_public_name_resolves_to_its_defining_module(tmp_path: Path) -> None:
    """Each name of ``instrument.__all__`` and of the subpackages' ``__all__`` is reachable
    as an attribute and by ``from ... import``, and is the defining module's object;
    ``dir()`` lists them all; the deferred submodules are attributes of the package."""
    found = _run(
        tmp_path,
        """
        import importlib, json, sys
        import instrument
        lazy = dict(instrument._LAZY)
        plain = sorted(set(dir(instrument)) - set(sys.modules["instrument"].__dict__))
        same = {}
        for name in instrument.__all__:
            value = getattr(instrument, name)
            if name in lazy:
                origin = importlib.import_module("instrument" + lazy[name])
                same[name] = value is getattr(origin, name)
        missing = {}
        for package in ("instrument.ai", "instrument.delivery", "instrument.metrics",
                        "instrument.objectives", "instrument.config"):
            module = importlib.import_module(package)
            missing[package] = [n for n in module.__all__ if not hasattr(module, n)]
        namespace = {}
        exec("from instrument import *", namespace)
        print(json.dumps({
            "plain": plain,
            "same": same,
            "missing": missing,
            "star": sorted(set(instrument.__all__) - set(namespace)),
            "submodules": [
                getattr(instrument, name) is sys.modules["instrument." + name]
                for name in ("ai", "objectives", "config")
            ],
            "not_listed": sorted(set(instrument.__all__) - set(dir(instrument))),
        }))
        """,
    )
    # Before first use, dir() already names what only __getattr__ defines.
    assert {"AICall", "AICallTracker", "track_ai_call", "Objective", "ai"} <= set(found["plain"])
    assert found["same"] and all(found["same"].values()), found["same"]
    assert {"AICall", "AICallTracker", "track_ai_call", "Objective"} <= set(found["same"])
    assert found["missing"] == {p: [] for p in found["missing"]}
    assert found["star"] == []
    assert found["submodules"] == [True, True, True]
    assert found["not_listed"] == []


def test_from_instrument_import_each_deferred_name_in_a_fresh_interpreter() -> None:
    """``from instrument import X`` as the first thing a program does, for each name left to
    first use: the real object, and an unknown name still fails as Python's would."""
    code = """
import json, importlib
from instrument import AICall, AICallTracker, Objective, track_ai_call
import instrument.ai as ai, instrument.objectives as objectives
try:
    from instrument import no_such_name
except ImportError as exc:
    error = str(exc)
print(json.dumps({
    "same": [AICall is ai.AICall, AICallTracker is ai.AICallTracker,
             track_ai_call is ai.track_ai_call, Objective is objectives.Objective],
    "error": error,
    "hasattr": hasattr(importlib.import_module("instrument"), "no_such_name"),
}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["same"] == [True] * 4
    assert found["error"].startswith("cannot import name 'no_such_name' from 'instrument'")
    assert found["hasattr"] is False


@pytest.mark.parametrize("genai_semconv", [False, True])
def test_a_scrape_right_after_instrumentation_lists_the_same_families(
    tmp_path: Path, genai_semconv: bool
) -> None:
    """Every family is registered when Instrumentation() returns, as when everything was
    imported up front: the gen_ai_* families too (genai_semconv=True), before any AI call."""
    script = f"""
        import json, sys
        if sys.argv[-1] == "eager":
            import instrument.ai, instrument.objectives, instrument.config
        import instrument
        inst = instrument.Instrumentation(genai_semconv={genai_semconv})
        samples = sorted(
            [s.name, sorted(s.labels.items()), s.value]
            for family in inst.registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        )
        families = sorted(family.name for family in inst.registry.collect())
        print(json.dumps({{"families": families, "samples": samples,
                          "ai_loaded": "instrument.ai" in sys.modules}}))
        """
    path = tmp_path / "scrape.py"
    run_script(path, script)
    runs = {}
    for how in ("lazy", "eager"):
        done = subprocess.run(
            [sys.executable, str(path), how], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        runs[how] = json.loads(done.stdout)
    lazy, eager = runs["lazy"], runs["eager"]
    assert lazy["families"] == eager["families"]
    assert lazy["samples"] == eager["samples"]
    from instrument.metrics import GENAI_METRICS, METRICS

    expected = {"codomyrmex_" + s.suffix.removesuffix("_total") for s in METRICS}
    genai = {s.suffix for s in GENAI_METRICS}
    assert expected <= set(lazy["families"])
    assert (genai <= set(lazy["families"])) is genai_semconv
    # The gen_ai_* families needed the AI package's collectors: loaded then, and only then.
    assert lazy["ai_loaded"] is genai_semconv


def test_a_decorated_function_pickles_and_unpickles_where_nothing_was_imported(
    tmp_path: Path,
) -> None:
    """A function decorated with the lazily resolved track_ai_call pickles by name, and a
    fresh interpreter that unpickles it (importing its module, which reaches the name
    again) gets a decorated function that records."""
    (tmp_path / "lazy_module.py").write_text(
        "from instrument import monitored_analysis, track_ai_call\n\n\n"
        '@track_ai_call("openai", "gpt-4o")\n'
        f"def ask():\n    return {_RESPONSE}\n\n\n"
        '@monitored_analysis("m", "t")\n'
        "def analyze(x):\n    return x * 2\n"
    )
    dumped = run_script(
        tmp_path / "dump.py",
        """
        import pickle, sys
        import lazy_module
        sys.stdout.write(pickle.dumps((lazy_module.ask, lazy_module.analyze)).hex())
        """,
    )
    assert dumped.returncode == 0, dumped.stderr
    blob = dumped.stdout.strip()
    found = _run(
        tmp_path,
        f"""
        import json, pickle, sys
        import instrument
        before = "instrument.ai" in sys.modules
        ask, analyze = pickle.loads(bytes.fromhex({blob!r}))
        results = [ask(), analyze(21)]
        registry = instrument.get_instrumentation().registry
        print(json.dumps({{
            "before": before,
            "results": results,
            "ai_calls": registry.get_sample_value({_AI_CALLS}),
            "analyses": registry.get_sample_value({_ANALYSES}),
            "names": [ask.__module__ + "." + ask.__qualname__, analyze.__qualname__],
        }}))
        """,
    )
    assert found["before"] is False
    assert found["results"] == [json.loads(_RESPONSE), 42]
    assert found["ai_calls"] == 1.0
    assert found["analyses"] == 1.0
    assert found["names"] == ["lazy_module.ask", "analyze"]
    # Pickled by reference to the module, never by value: the payload names it.
    assert b"lazy_module" in bytes.fromhex(blob)


def test_first_use_in_a_forked_child(tmp_path: Path) -> None:
    """The child of a fork, made before anything was used, imports the AI package, the
    objectives and the settings itself, records, and leaves the parent as it was."""
    found = _run(
        tmp_path,
        f"""
        import json, os, sys
        import instrument
        inst = instrument.Instrumentation()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                tracked = inst.track_ai_call("openai", "gpt-4o")(lambda: {_RESPONSE})
                tracked()
                instrument.Objective("child", success=0.99)
                instrument.monitored_analysis("m", "t")(lambda: None)()
                default = instrument.get_instrumentation().registry
                out = [inst.registry.get_sample_value({_AI_CALLS}),
                       default.get_sample_value({_ANALYSES})]
            except BaseException as exc:
                out = repr(exc)
            os.write(write, json.dumps(out).encode())
            os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 4096):
            data += chunk
        _, status = os.waitpid(pid, 0)
        print(json.dumps({{"child": json.loads(data), "status": status,
                          "parent": {_loaded()},
                          "parent_calls": inst.registry.get_sample_value({_AI_CALLS})}}))
        """,
    )
    assert found == {"child": [1.0, 1.0], "status": 0, "parent": [], "parent_calls": None}


def test_first_use_in_a_signal_handler(tmp_path: Path) -> None:
    """A signal handler that is the first to reach the AI tracker and the default
    instrumentation (the settings table) records like any other caller."""
    found = _run(
        tmp_path,
        f"""
        import json, os, signal, sys
        import instrument
        out = {{}}

        def on_signal(signum, frame):
            from instrument import track_ai_call
            track_ai_call("openai", "gpt-4o")(lambda: {_RESPONSE})()
            instrument.monitored_analysis("m", "t")(lambda: None)()
            out["loaded"] = {_loaded()}

        signal.signal(signal.SIGUSR1, on_signal)
        before = {_loaded()}
        os.kill(os.getpid(), signal.SIGUSR1)  # handled before the next line runs
        default = instrument.get_instrumentation().registry
        print(json.dumps({{"before": before, "handler": out,
                          "ai_calls": default.get_sample_value({_AI_CALLS}),
                          "analyses": default.get_sample_value({_ANALYSES})}}))
        """,
    )
    assert found["before"] == []
    assert set(found["handler"]["loaded"]) >= {"instrument.ai", "instrument.config"}
    assert found["ai_calls"] == 1.0
    assert found["analyses"] == 1.0


def test_first_use_in_a_finalizer_and_at_exit(tmp_path: Path) -> None:
    """A weakref finalizer (run by the garbage collector) and an atexit handler may be the
    first to reach a deferred part: each imports it and records."""
    done = run_script(
        tmp_path / "script.py",
        f"""
        import atexit, gc, json, sys, weakref
        import instrument
        inst = instrument.Instrumentation()

        class Holder:
            pass

        def finalize():
            inst.track_ai_call("openai", "gpt-4o")(lambda: {_RESPONSE})()

        def at_exit():
            instrument.monitored_analysis("m", "t", objective=instrument.Objective(
                "exit", success=0.9))(lambda: None)()
            default = instrument.get_instrumentation()
            print(json.dumps({{
                "ai_calls": inst.registry.get_sample_value({_AI_CALLS}),
                "analyses": default.registry.get_sample_value({_ANALYSES}),
                "objectives": [o.name for o in default.objectives],
            }}))

        atexit.register(at_exit)
        holder = Holder()
        holder.cycle = holder  # only the collector frees it
        weakref.finalize(holder, finalize)
        print(json.dumps({_loaded()}))
        del holder
        gc.collect()
        """,
    )
    assert done.returncode == 0, done.stderr
    before, at_exit = (json.loads(line) for line in done.stdout.strip().splitlines())
    assert before == []
    assert at_exit == {"ai_calls": 1.0, "analyses": 1.0, "objectives": ["exit"]}


def test_threads_racing_to_first_use_get_one_set_of_objects_and_every_count(
    tmp_path: Path,
) -> None:
    """Eight threads released together, with a tiny switch interval, each reach the lazy
    names (and the default instrumentation) for the first time: one import, the same
    objects for all, no error, and every call counted."""
    found = _run(
        tmp_path,
        f"""
        import json, sys, threading
        sys.setswitchinterval(1e-6)
        import instrument
        inst = instrument.Instrumentation()
        start = threading.Barrier(8)
        seen, errors = [], []

        def worker():
            try:
                start.wait()
                from instrument import AICallTracker, Objective, track_ai_call
                seen.append((id(track_ai_call), id(AICallTracker), id(Objective),
                             id(instrument.get_instrumentation())))
                ask = inst.track_ai_call("openai", "gpt-4o")(lambda: {_RESPONSE})
                analyze = instrument.monitored_analysis("m", "t")(lambda: None)
                for _ in range(100):
                    ask()
                    analyze()
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        default = instrument.get_instrumentation().registry
        print(json.dumps({{
            "errors": errors,
            "distinct": len(set(seen)),
            "ai_calls": inst.registry.get_sample_value({_AI_CALLS}),
            "analyses": default.get_sample_value({_ANALYSES}),
        }}))
        """,
    )
    assert found == {"errors": [], "distinct": 1, "ai_calls": 800.0, "analyses": 800.0}


@given(st.text(min_size=1, max_size=20))
def test_an_unknown_name_is_an_attribute_error_and_imports_nothing(name: str) -> None:
    """Tools probe modules for names (``__wrapped__``, ``__path__`` of a plain module,
    whatever a user mistypes): anything the package does not define or leave to first
    use is Python's usual AttributeError, and no module is imported looking for it."""
    import instrument

    assume(name not in dir(instrument) and name not in instrument.__dict__)
    assume(name not in instrument._LAZY and name != "__version__")
    # What every module has (``__dict__``, ``__class__``): not the package's to refuse.
    assume(not hasattr(types.ModuleType("plain"), name))
    before = set(sys.modules)
    with pytest.raises(AttributeError) as raised:
        getattr(instrument, name)
    assert str(raised.value) == f"module 'instrument' has no attribute {name!r}"
    assert hasattr(instrument, name) is False
    assert set(sys.modules) == before


def test_metric_specs_stay_immutable_values() -> None:
    """MetricSpec is a NamedTuple now (no dataclasses at import): still immutable, equal by
    value, hashable, with its fields and name() as before."""
    from instrument.metrics import METRICS, MetricSpec

    spec = METRICS[0]
    with pytest.raises(AttributeError):
        spec.suffix = "changed"  # type: ignore[misc]
    assert spec.suffix == "analyses_total"
    copy = MetricSpec(*spec)
    assert copy == spec and hash(copy) == hash(spec) and copy is not spec
    assert spec.name("ns") == "ns_analyses_total"
    assert spec._replace(suffix="other_total").name("ns") == "ns_other_total"
    assert {s.attr for s in METRICS} >= {"analyses", "ai_api_calls", "build_info"}
