"""Model specs: `NAME[:PATH][?key=value&...]`, parsed and checked without importing any model code.

The producer needs three things of a spec and must not load torch or the model folder to get them:
whether it is valid, the threshold a run records, and the key that routes its jobs. Every option a
backend accepts is declared here (`OPTIONS`), with its default where one exists; backends read their
options through `ModelSpec.value`, so this table is the one definition of what a spec may say.

The routing key is a hash of the canonical spec (name, path, every option with defaults filled in),
so `vesselness` and `vesselness?method=frangi` share a queue while `vesselness?method=sato` or a
second checkpoint folder get their own. A worker consumes only its own key's queues.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl

from sa2va_queue.core.exceptions import ConfigError, UnknownModel


@dataclass(frozen=True)
class Option:
    """One option: how to read it, its default (None: no default), and a check of the value."""

    parse: Callable[[str], Any]
    default: Any = None
    check: Callable[[Any], bool] = lambda v: True
    rule: str = ""  # what `check` requires, for the error message
    routing: bool = True  # False: does not change the output (placement, memory), not part of the key


def _num(raw: str) -> float:
    """a finite number"""
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _int(raw: str) -> int:
    """an integer"""
    return int(raw)


def _choice(*allowed: str) -> Option:
    return Option(str, allowed[0], lambda v: v in allowed, f"one of {', '.join(allowed)}")


def _bool(raw: str) -> str:
    """1/0, true/false, yes/no or on/off"""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return "1"
    if lowered in ("0", "false", "no", "off"):
        return "0"
    raise ValueError(raw)


def _flag(default: str = "1") -> Option:
    return Option(_bool, default)


_UNIT = Option(_num, None, lambda v: 0.0 < v < 1.0, "between 0 and 1")

OPTIONS: dict[str, dict[str, Option]] = {
    "vesselness": {
        "method": _choice("frangi", "sato"),
        "sigma_min": Option(_num, 1.0, lambda v: v > 0, "> 0"),
        "sigma_max": Option(_num, 6.0, lambda v: v > 0, "> 0"),
        "sigma_steps": Option(_int, 6, lambda v: 1 <= v <= 64, "1..64"),
        "smooth": Option(_num, 1.0, lambda v: v >= 0, ">= 0"),
        "percentile": Option(_num, 99.0, lambda v: 0 < v <= 100, "in (0, 100]"),
        # per-image cut, as fractions of the response's `percentile`: keep pixels above `low` that
        # connect to one above `high` (hysteresis; rule=percentile: every pixel above `low`).
        # Defaults depend on the method (Sato's response is broader than Frangi's), so they live in
        # worker/backends/vesselness.py DEFAULT_CUTS, chosen with bench/cross_generator.py (README).
        "rule": _choice("hysteresis", "percentile"),
        "low": Option(_num, None, lambda v: 0 < v <= 1, "in (0, 1]"),
        "high": Option(_num, None, lambda v: 0 < v <= 1, "in (0, 1]"),
        # the cut is folded into the stored probability: 0.5 is the per-image cut; 0.4 keeps more
        "threshold": dataclasses.replace(_UNIT, default=0.5),
    },
    "noop": {
        "delay_ms": Option(_num, 0.0, lambda v: v >= 0, ">= 0"),
        "item_ms": Option(_num, 0.0, lambda v: v >= 0, ">= 0"),
        # noise: maps like a random-weight Sa2VA's (near 0.5, smooth), so PNG and metric costs are real
        "maps": _choice("zeros", "noise"),
    },
    "sa2va": {
        "dtype": Option(str.lower, None, lambda v: v in ("bf16", "fp16", "fp32"), "bf16, fp16 or fp32"),
        "threshold": dataclasses.replace(_UNIT, default=0.5),
        "gpus": Option(str, None, routing=False),
        "max_memory": Option(str, None, routing=False),
        "force_answer": Option(str, None),
        "max_new_tokens": Option(_int, None, lambda v: 1 <= v <= 32768, "1..32768"),
        "max_tiles": Option(_int, None, lambda v: 1 <= v <= 40, "1..40"),
        "seg_merge": _choice("first", "max"),
        "sam_autocast": _flag("1"),
        # same values in another memory order (fp32 bit for bit): a runtime choice, not in the key
        "sam_window_major": dataclasses.replace(_flag("1"), routing=False),
        "family": Option(str, None),
        "seed": Option(_int, None, lambda v: 0 <= v < 2**31, "0..2^31-1"),
    },
}
NEEDS_PATH = {"sa2va"}


@dataclass(frozen=True)
class ModelSpec:
    """`NAME[:PATH][?key=value&...]`, e.g. `vesselness?method=sato`, `sa2va:/models/ft?dtype=bf16`."""

    name: str
    path: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: "str | ModelSpec") -> "ModelSpec":
        """Parse and validate: unknown models and options, and bad values, raise a one-line error."""
        if isinstance(spec, ModelSpec):
            return spec
        text = spec.strip()
        if not text:
            raise ConfigError("empty model spec; give e.g. 'vesselness' or 'sa2va:/path/to/model'")
        head, _, query = text.partition("?")
        name, _, path = head.partition(":")
        try:
            options = dict(parse_qsl(query, keep_blank_values=False, strict_parsing=bool(query)))
        except ValueError:
            raise ConfigError(f"model spec {text!r}: options must look like ?key=value&key=value") from None
        out = cls(name=name.strip().lower(), path=path or None, options=options)
        out.validate()
        return out

    def validate(self) -> None:
        schema = OPTIONS.get(self.name)
        if schema is None:
            raise UnknownModel(
                f"unknown model {self.name!r}; known models: {', '.join(sorted(OPTIONS))} "
                "(spec format NAME[:PATH][?key=value&...])"
            )
        unknown = set(self.options) - set(schema)
        if unknown:
            raise ConfigError(
                f"unknown {self.name} option(s) {', '.join(sorted(unknown))} in {self}; known: {', '.join(schema)}"
            )
        if self.name in NEEDS_PATH and not self.path:
            raise ConfigError(f"{self}: give the model folder, e.g. {self.name}:/models/my-finetune (or {self.name}:tiny)")
        if self.name not in NEEDS_PATH and self.path:
            raise ConfigError(f"{self}: model {self.name!r} takes no path; remove ':{self.path}'")
        for key in self.options:
            self.value(key)

    def value(self, key: str, default: Any = None) -> Any:
        """The option parsed and checked; its declared default (or `default`) when not given."""
        opt = OPTIONS[self.name][key]
        raw = self.options.get(key)
        if raw is None:
            return opt.default if opt.default is not None else default
        try:
            value = opt.parse(raw)
        except (ValueError, TypeError):
            raise ConfigError(f"model option {key}={raw!r} in {self} is not {(opt.parse.__doc__ or 'valid').strip()}") from None
        if not opt.check(value):
            raise ConfigError(f"model option {key}={raw!r} in {self} must be {opt.rule}")
        return value

    @property
    def threshold(self) -> float:
        """The probability threshold this spec's predictions use (recorded on the run)."""
        schema = OPTIONS.get(self.name, {})
        return float(self.value("threshold")) if "threshold" in schema else 0.5

    def canonical(self) -> str:
        """Name, path and every output-deciding option with defaults filled in, sorted."""
        schema = OPTIONS[self.name]
        values = {}
        for key, opt in sorted(schema.items()):
            if not opt.routing:
                continue
            value = self.value(key)
            if value is not None:
                values[key] = repr(float(value)) if isinstance(value, float) else str(value)
        out = self.name + (f":{self.path}" if self.path else "")
        return out + ("?" + "&".join(f"{k}={v}" for k, v in values.items()) if values else "")

    @property
    def key(self) -> str:
        """Routing key: `name-<12 hex>` of the canonical spec. Equal keys, equal outputs."""
        return f"{self.name}-{hashlib.sha256(self.canonical().encode()).hexdigest()[:12]}"

    def with_options(self, **options: str) -> "ModelSpec":
        return dataclasses.replace(self, options={**self.options, **options})

    def __str__(self) -> str:
        out = self.name + (f":{self.path}" if self.path else "")
        if self.options:
            out += "?" + "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return out
