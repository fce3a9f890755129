"""The effective config as readable JSON (``melissa-sa run --dry-run``)."""

from __future__ import annotations

import json
from typing import Any

from melissa_sa.config.loader import StudyConfig

__all__ = ["format_config"]


def format_config(cfg: StudyConfig) -> str:
    """Pretty JSON of the effective config.

    Short lists of numbers or strings stay on one line. The text is valid
    JSON and loads back to the same config.
    """
    return _pretty(cfg.to_dict(), 0) + "\n"


def _pretty(value: Any, indent: int) -> str:
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        flat = json.dumps(value)
        if all(not isinstance(x, (dict, list)) for x in value.values()) \
                and len(flat) + indent <= 88:
            return flat
        items = [f"{inner}{json.dumps(k)}: {_pretty(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        flat = json.dumps(value)
        if all(not isinstance(x, (dict, list)) for x in value) and len(flat) + indent <= 88:
            return flat
        if not value:
            return "[]"
        items = [inner + _pretty(v, indent + 2) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)
