"""Where the time of one ``@monitored_analysis`` sync call goes: ``python -m benchmarks.hotpath``.

Not part of the table: a profiling aid for whoever works on the hot path.

1. Step timings, interleaved like the main benchmark, each step adding one layer:
   bare call, a pass-through ``wrapt.FunctionWrapper``, the engine with a probe that records
   nothing, the full decorator, and the hand-inlined updates (the floor). The differences
   say what each layer costs.
2. wrapt's unbound ``FunctionWrapper.__call__`` looks up ``__self__`` on the wrapped object
   whenever the wrapper has no instance and the binding is "function" (to find the instance
   of an already-bound method). A plain function has no ``__self__``: the lookup raises and
   clears an AttributeError on every call. Two ways around it that leave the user's function
   untouched are timed: a subclass that gives unbound calls a marker instance (the C
   ``__call__`` then skips the lookup), and a subclass with a Python ``__call__``.
3. cProfile of the decorated call, of ``track_ai_call`` and of its stream wrapper: which
   functions run per call (per chunk) and their own time (inflated by the profiler; read
   it for shares).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
from collections.abc import Callable, Iterator
from typing import Any

import wrapt
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument._wrapping import Instrumenter, Probe

from .calls import KIND, MODULE, Children, fresh_metrics, inlined_sync, sync_batch
from .fakes import ai_unavailable, chat_completion, make_stream, make_work
from .harness import Variant, measure

__all__ = ["UnboundCallWrapper", "main"]

logger = logging.getLogger("instrument")

_UNBOUND = object()


class UnboundCallWrapper(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """A FunctionWrapper whose unbound calls skip the ``__self__`` lookup.

    The base class's ``instance`` for an unbound wrapper is only read by its ``__call__``;
    with a non-None marker there, the C ``__call__`` goes straight to the wrapper function
    (which receives the marker as ``instance``; the engine never reads it). Binding through
    ``__get__`` (methods, classmethods) builds a BoundFunctionWrapper from the descriptor
    call's own instance, so methods behave exactly as before; only functions, whose binding
    is "function", get the marker.
    """

    def __init__(self, wrapped: Any, wrapper: Any, enabled: Any = None) -> None:
        super().__init__(wrapped, wrapper, enabled)
        if self._self_binding == "function":
            base: Any = wrapt.FunctionWrapper.__base__
            base.__init__(self, wrapped, _UNBOUND, wrapper, enabled, "function")


class PythonCallWrapper(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """A FunctionWrapper with a Python ``__call__`` for unbound calls (public API only)."""

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        wrapper: Any = self._self_wrapper
        return wrapper(self.__wrapped__, None, args, kwargs)


def passthrough(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return wrapped(*args, **kwargs)


class _Nothing(Instrumenter[Probe]):
    """The engine with a probe that records nothing: the cost of the control flow alone."""

    _probe = Probe()

    def start(
        self, wrapped: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Probe:
        return self._probe


def _guard(what: str) -> None:
    logger.exception("instrument: %s failed; the instrumented call is unaffected", what)


def marker_engine(instrumenter: Instrumenter[Any], func: Callable[..., Any]) -> Any:
    """The engine's sync call path, as a wrapt wrapper function behind the marker subclass.

    The suggestion, measured: the same start / success / deliver protocol and guards as the
    engine's own ``__call__``, but reached through wrapt's C ``__call__`` (which hands over
    ``wrapped`` as an argument) instead of a Python ``__call__`` that reads ``__wrapped__``
    and ``_self_wrapper`` through the proxy's attribute lookup on every call.
    """
    instrumenter.prepare(func)
    start = instrumenter.start

    def call(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            probe = start(wrapped, args, kwargs)
        except Exception:
            _guard("starting a job")
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            try:
                if isinstance(exc, Exception):
                    probe.error(exc)
                else:
                    probe.cancel()
                deliver = probe.deliver
                if deliver is not None:
                    deliver()
            except Exception:
                _guard("recording an exception")
            raise
        try:
            result = probe.success(result)
        except Exception:
            _guard("recording a result")
        try:
            deliver = probe.deliver
            if deliver is not None:
                deliver()
        except Exception:
            _guard("delivery")
        return result

    return UnboundCallWrapper(func, call)


def check_behaviour() -> None:
    """The marker subclass behaves like FunctionWrapper for functions, methods, classmethods."""

    def wrap(func: Any) -> Any:
        return UnboundCallWrapper(func, passthrough)

    class Owner:
        @wrap
        def method(self, x: int) -> tuple[Any, int]:
            return self, x

        @wrap
        @classmethod
        def cls_method(cls, x: int) -> tuple[Any, int]:
            return cls, x

        @staticmethod
        @wrap
        def static(x: int) -> int:
            return x

    owner = Owner()
    plain = wrap(make_work())
    assert plain(1) == 2 and plain.__wrapped__.__name__ == "work"
    assert owner.method(1) == (owner, 1) and Owner.method(owner, 2) == (owner, 2)
    assert Owner.cls_method(3) == (Owner, 3) and owner.cls_method(4) == (Owner, 4)
    assert Owner.static(5) == 5 and owner.static(6) == 6
    assert not hasattr(plain, "__self__")  # the user's function is not touched


def step_timings(rounds: int, batch_seconds: float) -> tuple[dict[str, float], bool]:
    """Median ns per call of each step, and whether the engine's proxy uses wrapt's __call__."""
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    monitored = inst.monitored_analysis(MODULE, KIND)(make_work())
    uses_wrapt_call = type(monitored).__call__ is wrapt.FunctionWrapper.__call__
    work = make_work()

    def lookup_raising(x: int) -> int:
        try:  # noqa: SIM105 - contextlib.suppress would time a with-block too
            work.__self__  # type: ignore[attr-defined]  # noqa: B018
        except AttributeError:
            pass
        return x

    steps: list[tuple[str, str, Callable[[int], Any]]] = [
        ("bare", "bare call", make_work()),
        ("self_lookup", "bare call + raising __self__ lookup", lookup_raising),
        ("closure", "plain closure, pass-through", _closure(make_work())),
        ("wrapt", "wrapt.FunctionWrapper, pass-through", wrapt.FunctionWrapper(work, passthrough)),
        (
            "wrapt_marker",
            "  subclass with marker instance",
            UnboundCallWrapper(make_work(), passthrough),
        ),
        (
            "wrapt_pycall",
            "  subclass with Python __call__",
            PythonCallWrapper(make_work(), passthrough),
        ),
        ("engine", "engine, probe records nothing", _Nothing()(make_work())),
        (
            "engine_marker",
            "  same path via marker subclass",
            marker_engine(_Nothing(), make_work()),
        ),
        ("monitored", "@monitored_analysis", monitored),
        (
            "monitored_marker",
            "  same path via marker subclass",
            marker_engine(inst.monitored_analysis(MODULE, KIND), make_work()),
        ),
        ("inlined", "hand-inlined updates", inlined_sync(make_work(), Children(fresh_metrics()))),
    ]
    variants = [Variant(key, label, sync_batch(func)) for key, label, func in steps]
    timings = measure(variants, rounds=rounds, batch_seconds=batch_seconds)
    inst.close()
    ns = {key: t.median * 1e9 for key, t in timings.items()}
    print("Step timings (median ns per call, loop included)")
    for key, label, _ in steps:
        print(f"  {label:<44}{ns[key]:>8.0f}")
    return ns, uses_wrapt_call


def _closure(func: Callable[[int], int]) -> Callable[[int], int]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return passthrough(func, None, args, kwargs)

    return call


def breakdown(ns: dict[str, float], uses_wrapt_call: bool) -> None:
    floor = ns["inlined"] - ns["bare"]
    lookup = ns["wrapt"] - ns["wrapt_marker"]
    print("\nWhere one @monitored_analysis call goes (ns, differences of the medians above)")
    rows = [
        ("bare call and loop", ns["bare"]),
        ("metric updates themselves (inlined - bare)", floor),
        ("proxy and engine control flow (null probe - bare)", ns["engine"] - ns["bare"]),
        (
            "probe object, policy calls, delivery hook (the rest)",
            ns["monitored"] - ns["engine"] - floor,
        ),
        ("total over bare", ns["monitored"] - ns["bare"]),
        ("total over hand-inlined", ns["monitored"] - ns["inlined"]),
    ]
    for label, value in rows:
        print(f"  {label:<56}{value:>8.0f}")
    print(f"\n  ratio to hand-inlined: {ns['monitored'] / ns['inlined']:.2f}x")
    print(
        f"  pass-through proxies: FunctionWrapper {ns['wrapt']:.0f}, marker subclass "
        f"{ns['wrapt_marker']:.0f}, Python __call__ {ns['wrapt_pycall']:.0f}, "
        f"plain closure {ns['closure']:.0f}; the raising __self__ lookup costs {lookup:.0f} "
        f"(alone in Python: {ns['self_lookup'] - ns['bare']:.0f})"
    )
    print(
        f"  the engine's call path behind the marker subclass: {ns['engine_marker']:.0f} ns "
        f"with a null probe (engine now: {ns['engine']:.0f}); @monitored_analysis "
        f"{ns['monitored_marker']:.0f} ns = {ns['monitored_marker'] / ns['inlined']:.2f}x "
        f"hand-inlined (now {ns['monitored'] / ns['inlined']:.2f}x)"
    )
    if uses_wrapt_call:
        print(
            f"  the engine's proxy uses wrapt's __call__: the marker subclass would save about "
            f"{lookup:.0f} ns per call ({(ns['monitored'] - lookup) / ns['inlined']:.2f}x "
            "hand-inlined)"
        )
    else:
        print("  the engine's proxy has its own __call__: no __self__ lookup on its calls")


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
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    response = chat_completion()

    def ask(prompt: str) -> Any:
        return response

    func = inst.track_ai_call("openai", "gpt-4o")(ask)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        func("hi")
    profile.disable()
    inst.close()
    _print_profile(profile, calls, "@track_ai_call call (chat completion with usage)")


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
    check_behaviour()
    rounds, batch = (7, 0.005) if args.quick else (31, 0.02)
    breakdown(*step_timings(rounds, batch))
    profile_call(20_000 if args.quick else 200_000)
    profile_ai_call(20_000 if args.quick else 100_000)
    profile_stream(20 if args.quick else 200, 100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
