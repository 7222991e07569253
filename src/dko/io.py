"""File helpers: atomic writes (write to a temporary file in the same folder, then rename over the target), the
file-format guard of DKO's own files (:func:`check_format`), run keys (:func:`run_key`) and the resumable
checkpoint reader (:func:`read_checkpoint`) shared by stage 1, E2E and the DKO shards."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    ``suffix`` defaults to the target's own suffix, so writers that infer the format from the file
    name (``np.save``, ``savefig``, ``torch.save``) behave the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path) -> Any:
    """Read JSON, raising ``ValueError`` naming the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file '{path}' does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"file '{path}' is not valid JSON: {exc}") from exc


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write ``rows`` atomically as CSV with header ``columns`` (default: the first row's keys); missing cells empty."""
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in columns})


# ----------------------------------------------------------------------------- file formats, run keys, checkpoints
def file_format(obj: Any) -> str | None:
    """The ``"format"`` tag of a loaded file (a dict from ``torch.load`` or an ``np.load`` archive), else None."""
    if not isinstance(obj, Mapping) or "format" not in obj:
        return None
    return str(obj["format"])  # a 0-d numpy string array in an .npz prints as its text


def check_format(obj: Any, expected: str, path: str | Path, what: str = "file") -> None:
    """Raise ``ValueError`` naming ``path``, the ``expected`` and the found format unless ``obj`` (a loaded
    dict or ``.npz`` archive) carries the tag ``"format": expected``. ``what`` names the kind of file."""
    found = file_format(obj)
    if found != expected:
        shown = f"format {found!r}" if found is not None else f"no format tag ({type(obj).__name__})"
        raise ValueError(f"{what} '{path}' is not a {expected} file (found {shown})")


def run_key(settings: Mapping, *, exclude: Iterable[str] = (), extra: Mapping | None = None,
            extra_bytes: Iterable[bytes] = ()) -> str:
    """16 hex digits of SHA-256 identifying the settings a checkpoint was written under.

    Args:
        settings: plain nested config data (``cfg.to_dict()``; for a job's view only its declared keys).
        exclude: keys that must not prevent a resume, as dotted paths (``train.log_every``) or whole
            sections / top-level keys (``tracking``); absent ones are ignored.
        extra: job-specific JSON-like values hashed with the settings (variant, budget plan, element indices).
        extra_bytes: raw bytes hashed after them (e.g. target kernels' ``numpy().tobytes()``).
    A checkpoint resumes only under an equal key (:func:`read_checkpoint`).
    """
    plain = _without(settings, {tuple(k.split(".")) for k in exclude})
    blob = json.dumps({"settings": plain, "extra": dict(extra or {})}, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(blob)
    for chunk in extra_bytes:
        digest.update(chunk)
    return digest.hexdigest()[:16]


def files_fingerprint(*paths: str | Path | None) -> dict[str, list]:
    """``{file: [size, mtime_ns]}`` of every file under ``paths`` (files or folders; None skipped): the identity of
    a job's input files for :func:`run_key`. A job's config view holds only the keys it reads, not those that made
    its inputs (e.g. ``data.*`` for stage 1), so a checkpoint must not resume once an input was made anew."""
    out: dict[str, list] = {}
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            stat = f.stat()
            out[str(f.resolve())] = [stat.st_size, stat.st_mtime_ns]
    return out


def _without(settings: Mapping, drop: set[tuple[str, ...]], prefix: tuple[str, ...] = ()) -> dict:
    out = {}
    for key, value in settings.items():
        path = prefix + (str(key),)
        if path in drop:
            continue
        out[key] = _without(value, drop, path) if isinstance(value, Mapping) else value
    return out


def read_checkpoint(path: str | Path, run_key: str | None, expected_format: str, *,
                    validate: Callable[[dict], str | None] | None = None) -> dict | None:
    """The checkpoint at ``path`` if it can be resumed from, else None (the caller starts over).

    A checkpoint is ignored, with a warning naming the file and the reason, when it is missing (no warning),
    unreadable, not an ``expected_format`` file (:func:`check_format`), written under another ``run_key``
    (:func:`run_key`), or when ``validate(ckpt)`` returns a reason (e.g. a shape that does not fit).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        check_format(ckpt, expected_format, path, "checkpoint")
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign checkpoint means starting over
        log.warning("checkpoint %s ignored, starting from scratch: %s", path, exc)
        return None
    reason = "it belongs to different settings (run key)" if ckpt.get("run_key") != run_key else None
    if reason is None and validate is not None:
        reason = validate(ckpt)
    if reason is not None:
        log.warning("checkpoint %s ignored, starting from scratch: %s", path, reason)
        return None
    return ckpt
