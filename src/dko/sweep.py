"""Sweeps: a table of config combinations, each run through the whole DAG into its own folder.

The table comes from ``sweep.grid`` (Cartesian product of values per dotted key) or
``sweep.table`` (a TSV/CSV file, one row per combination, one column per dotted key). Each row is a
**point** with a readable, filesystem-safe id such as ``seed~1__sensor.read_noise_e~4.0``; the
Snakefile expands every rule over the points (wildcard ``point``) and gives each job the point's
resolved config (:func:`point_config`). Every point's config is validated before any job runs.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from dko.config import deep_merge, resolve_config

POINT_SEP = "__"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9.+-]+$")


def sweep_table(cfg: Mapping) -> pd.DataFrame | None:
    """The sweep's combinations as a DataFrame (columns = dotted keys), or None without a sweep."""
    sweep = cfg.get("sweep") or {}
    grid, table = sweep.get("grid") or {}, sweep.get("table")
    if grid and table:
        raise ValueError("config keys 'sweep.grid' and 'sweep.table' are exclusive; give one")
    if table:
        path = Path(table)
        if not path.is_file():
            raise ValueError(f"config key 'sweep.table': file '{table}' does not exist")
        frame = pd.read_csv(path, sep=None, engine="python")
        if frame.empty:
            raise ValueError(f"config key 'sweep.table': file '{table}' has no rows")
    elif grid:
        keys = list(grid)
        frame = pd.DataFrame(list(itertools.product(*(grid[k] for k in keys))), columns=keys)
    else:
        return None
    if frame.duplicated().any():
        raise ValueError("config key 'sweep': the sweep has duplicate combinations")
    return frame


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = "-".join(_format_value(key, v) for v in value)
    elif isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        text = repr(value)
    else:
        text = str(value)
    if not _SAFE_VALUE.match(text):
        raise ValueError(f"config key 'sweep': value {value!r} of '{key}' cannot name a folder (use letters, digits, . + -)")
    return text


def _plain(value: Any) -> Any:
    """numpy scalars from pandas -> python scalars."""
    return value.item() if hasattr(value, "item") else value


def point_id(row: Mapping[str, Any]) -> str:
    """``key~value__key~value`` for one combination."""
    return POINT_SEP.join(f"{key}~{_format_value(key, _plain(value))}" for key, value in row.items())


def _nested(dotted: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _plain(value)
    return out


def sweep_points(cfg: Mapping) -> dict[str, dict]:
    """``{point_id: resolved config}`` for every combination (empty without a sweep).

    Each point's config = the base config with the row's dotted keys overridden and ``sweep``
    emptied; it is validated like any config, so a bad value fails before any job runs, with a
    message naming the point.
    """
    frame = sweep_table(cfg)
    if frame is None:
        return {}
    base = {k: v for k, v in cfg.items() if k != "sweep"}
    points: dict[str, dict] = {}
    for row in frame.to_dict("records"):  # keeps each column's dtype (iterrows would upcast ints)
        ident = point_id(row)
        overrides = _nested(row)
        unknown = [k for k in row if k.split(".")[0] not in base]
        if unknown or "sweep" in overrides:
            raise ValueError(f"config key 'sweep': unknown or forbidden key(s) {unknown or ['sweep']}")
        try:
            points[ident] = resolve_config(deep_merge(base, overrides))
        except ValueError as exc:
            raise ValueError(f"sweep point '{ident}': {exc}") from exc
    return points


def point_config(cfg: Mapping, point: str) -> dict:
    """The resolved config of one sweep point (``point`` as produced by :func:`point_id`)."""
    points = sweep_points(cfg)
    if point not in points:
        raise ValueError(f"unknown sweep point '{point}' (known: {', '.join(points) or 'none'})")
    return points[point]


def point_overrides(point: str) -> dict[str, str]:
    """Parse a point id back into ``{dotted key: value text}`` (for tables and plots)."""
    out = {}
    for part in point.split(POINT_SEP):
        key, _, value = part.partition("~")
        out[key] = value
    return out
