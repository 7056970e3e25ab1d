"""`data/prices.json`: optional prices per model, for the cost of what keys use.

    {"currency": "USD",
     "models": {"llama3:70b": {"prompt": 0.6, "completion": 0.8}}}   # per million tokens

The api writes it (`PUT /api/analytics/prices`); the api's spend reports and the proxy's money
budgets read it. Models are matched by their exact name; a model without a price costs nothing
(the reports name it). A missing file is no prices; an invalid one is an error (`PricesError`),
and a reader keeps what it had.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.files import write_json_atomic

MAX_MODELS = 1000
MAX_MODEL_NAME = 200
MAX_PRICE = 1_000_000.0
_CURRENCY = re.compile(r"[A-Z]{3}")


class PricesError(Exception):
    """prices.json exists but cannot be read or is not in the expected format."""


@dataclass(frozen=True, slots=True)
class Price:
    """Per million tokens."""

    prompt: float
    completion: float


@dataclass(frozen=True)
class Prices:
    currency: str = "USD"
    models: dict[str, Price] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.models)

    def cost(self, model: str | None, prompt: int | None, completion: int | None) -> float | None:
        """What the tokens cost with `model`; None if it has no price."""
        price = self.models.get(model or "")
        if price is None:
            return None
        return ((prompt or 0) * price.prompt + (completion or 0) * price.completion) / 1_000_000

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "models": {
                name: {"prompt": p.prompt, "completion": p.completion}
                for name, p in sorted(self.models.items())
            },
        }

    @classmethod
    def from_json(cls, raw: Any) -> Prices:
        """Raises ValueError naming the bad field."""
        if not isinstance(raw, dict) or set(raw) - {"currency", "models"}:
            raise ValueError('"value" must be an object with "currency" and "models"')
        currency = raw.get("currency", "USD")
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            raise ValueError('"currency" must be a three-letter code like USD')
        models = raw.get("models", {})
        if not isinstance(models, dict):
            raise ValueError('"models" must be of type object')
        if len(models) > MAX_MODELS:
            raise ValueError(f'"models" must have less than or equal to {MAX_MODELS} keys')
        parsed = {}
        for name, price in models.items():
            if not name.strip() or len(name) > MAX_MODEL_NAME or not name.isprintable():
                raise ValueError(
                    f'"models" keys must be printable model names of 1 to {MAX_MODEL_NAME} '
                    "characters"
                )
            if not isinstance(price, dict) or set(price) != {"prompt", "completion"}:
                raise ValueError(f'"models.{name}" must have exactly "prompt" and "completion"')
            for part in ("prompt", "completion"):
                value = price[part]
                if (
                    not isinstance(value, int | float)
                    or isinstance(value, bool)
                    or not math.isfinite(value)
                    or not 0 <= value <= MAX_PRICE
                ):
                    raise ValueError(
                        f'"models.{name}.{part}" must be a number from 0 to {MAX_PRICE:g}'
                    )
            parsed[name] = Price(float(price["prompt"]), float(price["completion"]))
        return cls(currency, parsed)


def read_prices(path: Path) -> Prices:
    """The prices in `path`; a missing file is none. Raises PricesError otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Prices()
    except OSError as exc:
        raise PricesError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return Prices.from_json(json.loads(data))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PricesError(f"{path}: {exc}") from exc


def write_prices(path: Path, prices: Prices) -> None:
    write_json_atomic(path, prices.to_json(), mode=0o644)
