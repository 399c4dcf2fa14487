"""A strict reader of the Prometheus text exposition format (0.0.4), for tests.

Written from the format's description, independently of
:mod:`agents.node.metrics` (which writes it): :func:`parse` checks every line
(``# HELP``/``# TYPE`` once per family and before its samples, metric and
label names, quoted and escaped label values, numbers, no duplicate series)
and returns the samples; :class:`ParseError` names the first bad line.
"""

from __future__ import annotations

import math
import re

__all__ = ["ParseError", "parse", "value"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)( -?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class ParseError(ValueError):
    pass


def _labels(text: str, line: int) -> tuple[tuple[str, str], ...]:
    out = []
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            raise ParseError(f"line {line}: bad labels {text!r}")
        raw = m.group(2)
        if not re.fullmatch(r'(?:[^"\\]|\\[\\"n])*', raw):
            raise ParseError(f"line {line}: bad escape in {raw!r}")
        out.append((m.group(1), re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e.group(0)], raw)))
        pos = m.end()
    names = [k for k, _ in out]
    if len(set(names)) != len(names):
        raise ParseError(f"line {line}: repeated label")
    return tuple(sorted(out))


def _number(text: str, line: int) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}[text]
    try:
        return float(text)
    except ValueError:
        raise ParseError(f"line {line}: bad value {text!r}") from None


def parse(text: str) -> dict[str, dict[str, object]]:
    """``{family: {"type": str, "help": str, "samples": {labels tuple: value}}}``."""
    families: dict[str, dict[str, object]] = {}
    if text and not text.endswith("\n"):
        raise ParseError("the exposition must end with a newline")
    for n, line in enumerate(text.split("\n"), 1):  # lines end at \n only (a label value may hold \r)
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not re.fullmatch(_NAME, name):
                    raise ParseError(f"line {n}: bad metric name {name!r}")
                fam = families.setdefault(name, {"type": "untyped", "help": None, "samples": {}})
                if fam["samples"]:
                    raise ParseError(f"line {n}: {parts[1]} of {name} after its samples")
                key = parts[1].lower()
                if key == "type":
                    if fam.get("typed"):
                        raise ParseError(f"line {n}: second TYPE of {name}")
                    if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                        raise ParseError(f"line {n}: bad TYPE")
                    fam["type"], fam["typed"] = parts[3], True
                else:
                    if fam["help"] is not None:
                        raise ParseError(f"line {n}: second HELP of {name}")
                    fam["help"] = parts[3] if len(parts) == 4 else ""
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ParseError(f"line {n}: not a sample: {line!r}")
        name = m.group(1)
        fam = families.setdefault(name, {"type": "untyped", "help": None, "samples": {}})
        labels = _labels(m.group(3) or "", n)
        samples = fam["samples"]
        assert isinstance(samples, dict)
        if labels in samples:
            raise ParseError(f"line {n}: duplicate series {name}{dict(labels)}")
        samples[labels] = _number(m.group(4), n)
        if fam["type"] == "counter" and samples[labels] < 0:
            raise ParseError(f"line {n}: negative counter")
    for fam in families.values():
        fam.pop("typed", None)
    return families


def value(families: dict[str, dict[str, object]], name: str, **labels: str) -> float:
    """The value of one series (KeyError if absent)."""
    samples = families[name]["samples"]
    assert isinstance(samples, dict)
    return samples[tuple(sorted(labels.items()))]
