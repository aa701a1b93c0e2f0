"""How long each section measures: the full run, and the quick one CI uses as a smoke test."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    quick: bool
    #: Interleaved rounds per timed section, and the target duration of one batch.
    rounds: int
    batch_seconds: float
    #: Items per generator / chunks per stream in section 3.
    stream_length: int
    #: Push section: rounds, batch length of the fast modes, calls per round of the slow ones,
    #: and the coalescing interval (shorter than a batch, so every batch includes pushes).
    push_rounds: int
    push_batch_seconds: float
    push_slow_calls: int
    push_interval: float
    #: Memory section: decorated calls, and distinct model names.
    memory_calls: int
    memory_models: int
    #: Import section: fresh interpreters per command.
    import_runs: int

    @classmethod
    def full(cls) -> Settings:
        return cls(
            quick=False,
            rounds=25,
            batch_seconds=0.02,
            stream_length=100,
            push_rounds=7,
            push_batch_seconds=0.25,
            push_slow_calls=40,
            push_interval=0.1,
            memory_calls=1_000_000,
            memory_models=10_000,
            import_runs=21,
        )

    @classmethod
    def for_quick(cls) -> Settings:
        return cls(
            quick=True,
            rounds=7,
            batch_seconds=0.004,
            stream_length=100,
            push_rounds=3,
            push_batch_seconds=0.1,
            push_slow_calls=8,
            push_interval=0.05,
            memory_calls=100_000,
            memory_models=10_000,
            import_runs=5,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
