"""What a decorated function becomes: a wrapt proxy that calls the engine, and what calling
the function it wraps produces (which of the engine's wrappers it needs).

The proxy looks like the function it wraps (name, signature, inspect flags, attributes),
binds as a method the way the function would, and pickles and copies as the function does.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import sys
import types
from collections.abc import Callable
from typing import Any, Protocol

import wrapt

__all__ = [
    "ASYNC_GENERATOR",
    "BY_RESULT",
    "COROUTINE",
    "GENERATOR",
    "SYNC",
    "InstrumentedFunction",
    "Wrapper",
    "kind_of",
]

logger = logging.getLogger("instrument")


class Wrapper(Protocol):
    """The engine's side of a decorated call: the undecorated callable (a bound method for
    method access), then the call's own arguments."""

    def __call__(self, wrapped: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


# -- what calling a function produces ------------------------------------------------------------

SYNC, COROUTINE, GENERATOR, ASYNC_GENERATOR, BY_RESULT = range(5)

#: How many forwarding layers (methods, partials, ``__call__``, ``__wrapped__``) are followed:
#: enough for any real stack of decorators, and a stop for a ``__wrapped__`` that loops.
_MAX_LAYERS = 64


def kind_of(func: Any, depth: int = 0) -> int:
    """What calling ``func`` produces, seen through the layers that only forward the call.

    Python's own answer comes first (it sees through bound methods and partials of plain
    functions). Python does not look into a callable instance's ``__call__``, a partial of
    one, or a sync function that ``functools.wraps`` an async one: a sync layer over a
    coroutine or generator function is ``BY_RESULT``, decided at each call by what it
    returns, because it may hand the coroutine on or may run it to the end itself.
    """
    if depth > _MAX_LAYERS:
        return SYNC
    try:
        if inspect.isasyncgenfunction(func):
            return ASYNC_GENERATOR
        if inspect.iscoroutinefunction(func):
            return COROUTINE
        if inspect.isgeneratorfunction(func):
            return GENERATOR
        if isinstance(func, type):
            return SYNC  # calling a class builds an instance, whatever its __call__ does
        if inspect.ismethod(func):
            kind = kind_of(func.__func__, depth + 1)
        elif isinstance(func, functools.partial):
            kind = kind_of(func.func, depth + 1)
        elif not inspect.isroutine(func):  # an instance: the call runs its type's __call__
            kind = kind_of(type(func).__call__, depth + 1)
        else:
            kind = SYNC
        if kind != SYNC:
            return kind
        inner = getattr(func, "__wrapped__", None)
        if inner is not None and inner is not func and kind_of(inner, depth + 1) != SYNC:
            return BY_RESULT
    except Exception:  # an object whose attributes raise: called as what it claims to be
        logger.debug(
            "instrument: could not tell what a %s returns; wrapped as sync", type(func).__name__
        )
    return SYNC


# -- the proxy -----------------------------------------------------------------------------------
# wrapt's FunctionWrapper gives the transparent proxy (name, signature, inspect flags,
# attributes) and descriptor binding for methods. Changes, invisible to the wrapped
# function and to code that inspects it:
#
# - wrapt's __call__ on an unbound wrapper looks up ``__self__`` on the wrapped object at
#   every call, to support wrapping an already bound method. On a plain function that
#   lookup raises and swallows an AttributeError: most of wrapt's per-call cost. The proxy
#   has its own ``__call__`` instead: the engine's call for this function, bound at
#   decoration time (``partial(wrapper, wrapped)``) and kept in a slot whose descriptor is
#   the class's ``__call__``. Calling the proxy thus calls the engine straight from C, with
#   no Python frame between and no wrapt API beyond the public constructor.
# - Method access binds through wrapt's descriptor, to a bound wrapper whose __call__ calls
#   the bound method wrapt prepared (``__wrapped__``), so ``Class.method(obj, ...)`` and
#   ``obj.method(...)`` reach the engine the same way.
# - wrapt's proxies refuse pickling and copying; these pickle and copy as what they wrap
#   does, so a decorated function can go to a process pool or sit in a deep-copied object.


class _BoundInstrumentedFunction(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]
    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        wrapper: Wrapper = self._self_wrapper  # type: ignore[assignment]
        return wrapper(self.__wrapped__, *args, **kwargs)

    # ``__wrapped__`` is what Python's attribute access gives for the undecorated method:
    # a bound method (of the instance, or of the class for a classmethod), or a plain
    # function (a staticmethod, or a method looked up on its class).

    def _lookup(self) -> tuple[Any, str]:
        """Where this method is found again: its owner and its name."""
        bound = self.__wrapped__
        name: str = bound.__name__
        if inspect.ismethod(bound):
            return bound.__self__, name
        return self._self_owner, name

    def __reduce_ex__(self, protocol: Any) -> Any:
        # As a bound method pickles: the instance (or class) and the name, looked up again
        # when unpickled; a function reached through its class pickles by its class too.
        return getattr, self._lookup()

    def __copy__(self) -> Any:
        if not inspect.ismethod(self.__wrapped__):
            return self  # a function: copies are the function itself
        return getattr(*self._lookup())

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        if not inspect.ismethod(self.__wrapped__):
            return self
        owner, name = self._lookup()
        return getattr(copy.deepcopy(owner, memo), name)


class InstrumentedFunction(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """A decorated function: ``wrapped`` called through the engine's ``wrapper``."""

    __bound_function_wrapper__ = _BoundInstrumentedFunction
    # wrapt stores a proxy's own attributes, named ``_self_*``, on the proxy: this one in a
    # slot, whose descriptor serves as ``__call__`` (set below the class).
    __slots__ = ("_self_call",)

    def __new__(cls, wrapped: Callable[..., Any], wrapper: Wrapper) -> InstrumentedFunction:
        if cls is InstrumentedFunction and _call_function(wrapped) is not None:
            cls = _InstrumentedInstance
        proxy: InstrumentedFunction = super().__new__(cls)
        return proxy

    def __init__(self, wrapped: Callable[..., Any], wrapper: Wrapper) -> None:
        super().__init__(wrapped, wrapper)
        self._self_call = functools.partial(wrapper, wrapped)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # By reference, as a function pickles: pickle resolves the module-level name (and
        # checks that it is this very wrapper), so the unpickling process imports the
        # module, whose decorator records there.
        wrapped = self.__wrapped__
        qualname = getattr(wrapped, "__qualname__", None)
        # A bound method, or a function decorated under another name, has a qualified name
        # that finds the undecorated one: pickle would only say "not the same object".
        if not isinstance(qualname, str) or inspect.ismethod(wrapped) or _finds_other(self):
            import pickle  # here: only a pickling process needs it, not every import

            raise pickle.PicklingError(
                f"cannot pickle a decorated {type(wrapped).__name__}: a decorated "
                "callable pickles by its module-level name, and this one has none; decorate "
                "a module-level function or method instead"
            )
        return qualname

    def _rewrapped(self, copied: Any) -> Any:
        # A function copies as itself; a callable instance or partial as a new wrapper of
        # its copy, recording as this one does.
        if copied is self.__wrapped__:
            return self
        wrapper: Wrapper = self._self_wrapper  # type: ignore[assignment]
        return type(self)(copied, wrapper)

    def __copy__(self) -> Any:
        return self._rewrapped(copy.copy(self.__wrapped__))

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self._rewrapped(copy.deepcopy(self.__wrapped__, memo))


def _call_function(obj: Any) -> Any:
    """The function a callable instance's calls run, when it makes a coroutine or an
    (async) generator; None for anything else (functions, classes, partials, sync calls)."""
    if inspect.isroutine(obj) or isinstance(obj, type | functools.partial):
        return None
    try:
        func = type(obj).__call__
        for _ in range(_MAX_LAYERS):
            if inspect.ismethod(func):
                func = func.__func__
            elif isinstance(func, functools.partial):
                func = func.func
            else:
                break
        code = func.__code__ if inspect.isfunction(func) else None
    except Exception:  # a class whose attributes raise: left as it is
        return None
    if not isinstance(code, types.CodeType) or not code.co_flags & _PRODUCES:
        return None
    return func


# What calling a function whose code has one of these flags makes: a coroutine, an async
# generator or a generator.
_PRODUCES = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_GENERATOR


class _InstrumentedInstance(InstrumentedFunction):
    """A decorated callable instance whose ``__call__`` makes a coroutine or an (async)
    generator, as calling the proxy then does.

    ``inspect.iscoroutinefunction`` (which ``asyncio.iscoroutinefunction`` asks first),
    ``isasyncgenfunction`` and ``isgeneratorfunction`` answer False for any instance on
    3.11, which has no ``inspect.markcoroutinefunction``; a framework that asks them would
    run the proxy as sync. They take an object with a function's attributes for a function
    (as they do Cython's functions), so the proxy has those of the ``__call__`` it runs:
    ``__code__``, ``__defaults__``, ``__kwdefaults__``, and a ``__name__`` (the class's,
    where the instance has none). ``inspect.signature`` still follows ``__wrapped__`` to the
    instance, so the signature is the instance's own.
    """

    __slots__ = ()

    @property
    def __code__(self) -> types.CodeType:
        code: types.CodeType = _call_function(self.__wrapped__).__code__
        return code

    @property
    def __defaults__(self) -> tuple[Any, ...] | None:
        defaults: tuple[Any, ...] | None = _call_function(self.__wrapped__).__defaults__
        return defaults

    @property
    def __kwdefaults__(self) -> dict[str, Any] | None:
        kwdefaults: dict[str, Any] | None = _call_function(self.__wrapped__).__kwdefaults__
        return kwdefaults

    @property
    def __name__(self) -> str:
        wrapped = self.__wrapped__
        name = getattr(wrapped, "__name__", None)
        return name if isinstance(name, str) else type(wrapped).__name__

    @__name__.setter
    def __name__(self, value: str) -> None:
        self.__wrapped__.__name__ = value


def _finds_other(proxy: InstrumentedFunction) -> bool:
    """Whether the proxy's module and qualified name lead to an object other than it.

    A name that leads nowhere (a local function) is left to pickle, whose message for it
    is the one an undecorated function gets.
    """
    found: Any = sys.modules.get(getattr(proxy, "__module__", None) or "")
    if found is None:
        return False
    for part in proxy.__qualname__.split("."):
        try:
            found = getattr(found, part)
        except Exception:  # a class attribute that raises: as good as no name
            return False
    return found is not proxy


# Python calls ``type(proxy).__call__`` as a descriptor: the slot's gives the partial, which
# is then called with the call's arguments. Assigned after the class is made, since the
# slot's descriptor exists only then.
InstrumentedFunction.__call__ = InstrumentedFunction.__dict__["_self_call"]  # type: ignore[method-assign]
