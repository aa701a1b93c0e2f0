"""Where the time of one ``@monitored_analysis`` sync call goes: ``python -m benchmarks.hotpath``.

Not part of the table: a profiling aid for whoever works on the hot path. Everything
attributed to the engine is the shipped code (``instrument._engine`` and its proxy,
``instrument._proxy``); only the baselines are written here.

1. Step timings, interleaved like the main benchmark, each step adding one layer:
   bare call, a plain closure and wrapt's stock ``FunctionWrapper`` (pass-through
   baselines), the shipped proxy ``InstrumentedFunction`` with a pass-through wrapper, the
   shipped sync call path (``_sync_wrapper``) with a start whose probe records nothing, the
   real ``@monitored_analysis`` (recording into per-thread cells), and the hand-inlined
   prometheus_client updates. The differences say what each layer costs; an uncontended
   lock pair beside them is what a job's end pays for its cell's lock.
2. wrapt's stock ``FunctionWrapper.__call__`` looks up ``__self__`` on the wrapped object
   whenever the wrapper has no instance and the binding is "function" (to find the
   instance of an already-bound method); on a plain function that lookup raises and clears
   an AttributeError on every call. The shipped proxy has its own ``__call__``, a slot
   holding the engine's call bound at decoration, so wrapt's is never run: stock vs shipped
   pass-through is its cost. The previous way of skipping it, wrapt's private base
   ``__init__`` called again with a marker instance, is measured beside it as a baseline.
3. cProfile of the decorated call, of ``track_ai_call`` (a chat completion as a dict and
   as an SDK object, each with its usage and a finish reason) and of its stream wrapper: which
   functions run per call (per chunk) and their own time (inflated by the profiler; read
   it for shares).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import threading
from collections.abc import Callable, Iterator
from typing import Any

import wrapt
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument._dispatch import _sync_wrapper
from instrument._engine import Probe
from instrument._proxy import InstrumentedFunction

from .ai_calls import returning
from .calls import KIND, MODULE, Children, fresh_metrics, inlined_sync, sync_batch
from .fakes import ai_unavailable, chat_completion, chat_completion_dict, make_stream, make_work
from .harness import Variant, measure

__all__ = ["main"]

_NULL_PROBE = Probe()


def null_start(
    wrapped: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Probe:
    """A policy's ``start`` that records nothing: the engine's control flow alone."""
    return _NULL_PROBE


def passthrough(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A pass-through in wrapt's wrapper form."""
    return wrapped(*args, **kwargs)


def engine_passthrough(wrapped: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """A pass-through in the engine's wrapper form (what the shipped proxy calls)."""
    return wrapped(*args, **kwargs)


def _closure(func: Callable[[int], int]) -> Callable[[int], int]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return passthrough(func, None, args, kwargs)

    return call


_MARKER = object()


class MarkerProxy(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """The previous fast path, kept as a baseline: wrapt's private base ``__init__`` called
    a second time, positionally, with a marker instance, so that wrapt's C ``__call__``
    skips its ``__self__`` lookup. It breaks if wrapt changes that constructor."""

    def __init__(self, wrapped: Callable[..., Any], wrapper: Any) -> None:
        super().__init__(wrapped, wrapper)
        base_init: Callable[..., None] = wrapt.FunctionWrapper.__base__.__init__  # type: ignore[misc]
        # If that constructor changed, this baseline is stock wrapt (and says so).
        with contextlib.suppress(TypeError):
            base_init(self, wrapped, _MARKER, wrapper, None, "function")


def marker_in_use(proxy: Any) -> bool:
    return getattr(proxy, "_self_instance", None) is _MARKER


def step_timings(rounds: int, batch_seconds: float) -> tuple[dict[str, float], bool]:
    """Median ns per call of each step, and whether the marker baseline took its marker."""
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    monitored = inst.monitored_analysis(MODULE, KIND)(make_work())
    proxy = InstrumentedFunction(make_work(), engine_passthrough)
    engine = InstrumentedFunction(make_work(), _sync_wrapper(null_start))
    marker = MarkerProxy(make_work(), passthrough)
    work = make_work()

    def lookup_raising(x: int) -> int:
        try:  # noqa: SIM105 - contextlib.suppress would time a with-block too
            work.__self__  # type: ignore[attr-defined]  # noqa: B018
        except AttributeError:
            pass
        return x

    lock = threading.RLock()

    def locked(x: int) -> int:  # what an end pays for its cell's lock (see instrument._cells)
        lock.acquire()
        lock.release()
        return x

    steps: list[tuple[str, str, Callable[[int], Any]]] = [
        ("bare", "bare call", make_work()),
        ("lock", "bare call + uncontended RLock acquire/release", locked),
        ("self_lookup", "bare call + raising __self__ lookup", lookup_raising),
        ("closure", "plain closure, pass-through", _closure(make_work())),
        (
            "wrapt",
            "wrapt.FunctionWrapper, pass-through",
            wrapt.FunctionWrapper(make_work(), passthrough),
        ),
        ("marker", "marker proxy (private wrapt API), pass-through", marker),
        ("proxy", "shipped proxy, pass-through", proxy),
        ("engine", "shipped engine, probe records nothing", engine),
        ("monitored", "@monitored_analysis", monitored),
        ("inlined", "hand-inlined updates", inlined_sync(make_work(), Children(fresh_metrics()))),
    ]
    variants = [Variant(key, label, sync_batch(func)) for key, label, func in steps]
    timings = measure(variants, rounds=rounds, batch_seconds=batch_seconds)
    inst.close()
    ns = {key: t.median * 1e9 for key, t in timings.items()}
    print("Step timings (median ns per call, loop included)")
    for key, label, _ in steps:
        print(f"  {label:<44}{ns[key]:>8.0f}")
    return ns, marker_in_use(marker)


def breakdown(ns: dict[str, float], marker: bool) -> None:
    floor = ns["inlined"] - ns["bare"]
    print("\nWhere one @monitored_analysis call goes (ns, differences of the medians above)")
    rows = [
        ("bare call and loop", ns["bare"]),
        ("hand-inlined prometheus_client updates (inlined - bare)", floor),
        ("shipped proxy, pass-through (proxy - bare)", ns["proxy"] - ns["bare"]),
        ("engine call path and guards (null probe - proxy)", ns["engine"] - ns["proxy"]),
        (
            "probe, policy calls, cell writes (monitored - null probe)",
            ns["monitored"] - ns["engine"],
        ),
        ("  of which the end's cell lock (lock - bare)", ns["lock"] - ns["bare"]),
        ("total over bare", ns["monitored"] - ns["bare"]),
        ("total over hand-inlined", ns["monitored"] - ns["inlined"]),
    ]
    for label, value in rows:
        print(f"  {label:<56}{value:>8.0f}")
    print(f"\n  ratio to hand-inlined: {ns['monitored'] / ns['inlined']:.2f}x")
    print(
        f"  wrapt's __self__ lookup: stock FunctionWrapper {ns['wrapt']:.0f}, shipped proxy "
        f"{ns['proxy']:.0f} (both pass-through): {ns['wrapt'] - ns['proxy']:.0f} per call"
    )
    print(
        f"  previous proxy (marker through wrapt's private base __init__) {ns['marker']:.0f}: "
        f"the shipped one costs {ns['proxy'] - ns['marker']:+.0f} per call against it"
        + ("" if marker else " (its marker did not take: wrapt's constructor changed)")
    )
    print(
        f"  (the raising lookup alone in Python: {ns['self_lookup'] - ns['bare']:.0f}; "
        f"plain closure, pass-through: {ns['closure']:.0f})"
    )


def _print_profile(profile: cProfile.Profile, per: int, what: str, top: int = 14) -> None:
    stats = pstats.Stats(profile)
    entries = []
    for (filename, line, name), data in stats.stats.items():  # type: ignore[attr-defined]
        _, calls, own, _, _ = data
        where = filename.rsplit("/", 2)
        location = f"{'/'.join(where[-2:])}:{line}" if line else filename
        entries.append((own, calls, f"{name} ({location})"))
    entries.sort(reverse=True)
    total = sum(own for own, _, _ in entries)
    print(f"\ncProfile, per {what} (own time; profiler overhead inflates every Python call)")
    print(f"  {'calls':>6} {'own µs':>8} {'share':>6}  function")
    for own, calls, label in entries[:top]:
        print(f"  {calls / per:>6.2f} {own / per * 1e6:>8.3f} {own / total:>6.0%}  {label}")


def profile_call(calls: int) -> None:
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    func = inst.monitored_analysis(MODULE, KIND)(make_work())
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        func(1)
    profile.disable()
    inst.close()
    _print_profile(profile, calls, "@monitored_analysis call")


def profile_ai_call(calls: int) -> None:
    unavailable = ai_unavailable()
    if unavailable is not None:
        print(f"\ntrack_ai_call: {unavailable}")
        return
    shapes = (
        ("usage as a dict", chat_completion_dict()),
        ("usage as attributes", chat_completion()),
    )
    for shape, response in shapes:
        inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
        func = inst.track_ai_call("openai", "gpt-4o")(returning(response))
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(calls):
            func("hi")
        profile.disable()
        inst.close()
        what = f"@track_ai_call call (chat completion, {shape}, finish reason stop)"
        _print_profile(profile, calls, what)


def profile_stream(streams: int, length: int) -> None:
    unavailable = ai_unavailable()
    if unavailable is not None:
        print(f"\nAI stream wrapper: {unavailable}")
        return
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    create: Callable[[], Iterator[Any]] = inst.track_ai_call("openai", "gpt-4o")(
        make_stream(length)
    )
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(streams):
        for _chunk in create():
            pass
    profile.disable()
    inst.close()
    _print_profile(profile, streams * length, "stream chunk (track_ai_call stream wrapper)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, batch = (7, 0.005) if args.quick else (31, 0.02)
    breakdown(*step_timings(rounds, batch))
    profile_call(20_000 if args.quick else 200_000)
    profile_ai_call(20_000 if args.quick else 100_000)
    profile_stream(20 if args.quick else 200, 100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
