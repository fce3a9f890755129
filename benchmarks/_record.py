"""Where a benchmark leaves its record: one JSON file, replaced whole.

``write_json`` creates the results directory, writes the record next to its
destination (``<name>.json.tmp``) and renames it over the destination, so an
interrupted run never leaves a half-written file where the previous record was.
The format is fixed here, once for every benchmark that uses it: one-space
indentation and a final newline.
"""

from __future__ import annotations

import json
import pathlib


def write_json(path, obj) -> pathlib.Path:
    """Write ``obj`` as JSON to ``path`` (atomically, by rename); return the path."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(out)
    return out
