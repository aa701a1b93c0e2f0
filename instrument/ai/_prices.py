"""Per-token prices: :class:`ModelPrice`, and :func:`load_prices` for tables in LiteLLM's
model price map format."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from .._validation import check_number
from ._usage import Usage


class ModelPrice(NamedTuple):
    """US dollars per token of one model; None where the table gives no price."""

    input: float | None
    output: float | None
    cache_read: float | None = None
    cache_creation: float | None = None

    def cost(self, usage: Usage) -> float | None:
        """The cost of ``usage``, or None when a token kind it used has no price.

        Cached input is priced at its own rate; without one, at the input rate.
        """
        cache_read_rate = self.input if self.cache_read is None else self.cache_read
        cache_creation_rate = self.input if self.cache_creation is None else self.cache_creation
        uncached = max(usage.input_tokens - usage.cache_read - usage.cache_creation, 0)
        total = 0.0
        for tokens, rate in (
            (uncached, self.input),
            (usage.cache_read, cache_read_rate),
            (usage.cache_creation, cache_creation_rate),
            (usage.output_tokens, self.output),
        ):
            if tokens:
                if rate is None:
                    return None
                total += tokens * rate
        return total


# LiteLLM's model price map field -> ModelPrice field.
_PRICE_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_creation",
}


def load_prices(table: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, ModelPrice]:
    """Validate a price table in LiteLLM's model price map format (a mapping, or the path
    of a JSON file) and return it as ``{model: ModelPrice}``.

    >>> load_prices({"gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
    ...                         "cache_read_input_token_cost": 1.25e-06}})["gpt-4o"].output
    1e-05

    Keys are model names, optionally ``provider/model``. Entries without any per-token
    price (LiteLLM's image and audio models) are skipped; other LiteLLM fields are ignored.
    """
    source = "prices"
    if isinstance(table, str | os.PathLike):
        source = os.fspath(table)
        try:
            with open(source, encoding="utf-8") as file:
                table = json.load(file)
        except OSError as exc:
            raise ValueError(
                f"cannot read the price table {source!r} ({exc.strerror or exc}); pass the path "
                "of a JSON file in LiteLLM's model price map format"
            ) from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"the price table {source!r} is not valid JSON: {exc}") from None
    if not isinstance(table, Mapping):
        raise TypeError(
            f"{source} must be a mapping of model name to prices (LiteLLM's model price map "
            f"format), got {type(table).__name__}"
        )
    prices: dict[str, ModelPrice] = {}
    for model, entry in table.items():
        if model == "sample_spec":  # LiteLLM's documentation entry
            continue
        if not isinstance(model, str) or not model:
            raise TypeError(f"{source}: model names must be non-empty strings, got {model!r}")
        if not isinstance(entry, Mapping):
            raise TypeError(
                f"{source}[{model!r}] must be a mapping such as "
                '{"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05}, '
                f"got {type(entry).__name__}"
            )
        rates: dict[str, float | None] = {}
        for field, name in _PRICE_FIELDS.items():
            value = entry.get(field)
            if value is None:
                rates[name] = None
                continue
            what = f"{source}[{model!r}][{field!r}]"
            rate = check_number(what, value)
            if not 0 <= rate < math.inf:
                raise ValueError(f"{what} must be a finite, non-negative number, got {value!r}")
            rates[name] = rate
        if rates["input"] is None and rates["output"] is None:
            continue
        prices[model] = ModelPrice(**rates)
    if not prices:
        raise ValueError(
            f"no model in {source} has a per-token price: give each model "
            "input_cost_per_token and output_cost_per_token (US dollars per token), as "
            "LiteLLM's model price map does"
        )
    return prices
