"""Typed configuration: one YAML file, validated against ``config/schema.yaml``, then dataclasses.

The JSON Schema (draft 2020-12, shipped as package data ``dko/schema/config.yaml``) is the single
source of truth for keys, types, ranges and defaults. :func:`resolve_config` fills defaults, validates,
runs the checks a schema cannot express (paths that must exist, cross-key ranges) and returns a
plain dict; :func:`load_config` / :func:`config_from_dict` turn that into :class:`Config`.
Every error is a ``ValueError`` naming the offending key (dotted path) and value.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

SCHEMA_PACKAGE_PATH = ("schema", "config.yaml")


def load_schema() -> dict:
    """The configuration JSON Schema as a dict."""
    text = resources.files("dko").joinpath(*SCHEMA_PACKAGE_PATH).read_text()
    return yaml.safe_load(text)


# ----------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    root: str | None = None
    split_dir: str | None = None
    height: int = 96
    width: int = 320
    n_train: int | None = 600
    n_val: int | None = 100
    n_test: int | None = 100
    min_depth_m: float = 1.0
    max_depth_m: float = 80.0
    workers: int = 2


@dataclass(frozen=True)
class NetworkConfig:
    blocks_per_stage: tuple[int, ...] = (1, 1, 1, 1)
    base_width: int = 16
    conv1_kernel: int = 7
    norm_mean: float = 0.45
    norm_std: float = 0.225
    pretrained_dir: str | None = None
    decoder_channels: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 50
    flip: bool = True
    color_jitter: float = 0.2
    checkpoint_every: int = 200
    log_every: int = 25
    val_every: int = 250
    si_lambda: float = 0.85
    conv1_smoothness: float = 0.05


@dataclass(frozen=True)
class EvalConfig:
    median_scaling: bool = False
    n_figure_images: int = 4


@dataclass(frozen=True)
class OpticsConfig:
    wavelengths_m: tuple[float, ...] = (6.4e-7, 5.5e-7, 4.6e-7)
    superpixel_m: float = 6.0e-7
    n_superpixels: int = 192
    sensor_distance_m: float = 1.5e-4
    pixel_pitch_m: float = 2.74e-6
    object_distances_m: tuple[float | None, ...] = (10.0,)
    aperture: str = "circular"
    pad_factor: float = 2.0
    oversample: int = 1
    psf_size_px: int = 21
    dtype: str = "complex64"


@dataclass(frozen=True)
class MetaAtomConfig:
    pillar_index: float = 2.4
    substrate_index: float = 1.46
    pillar_height_m: float = 6.0e-7
    period_m: float = 3.0e-7
    radius_min_m: float = 3.0e-8
    radius_max_m: float = 1.35e-7
    n_radii: int = 64
    rcwa_order: int = 7
    convergence_order_step: int = 2
    convergence_radii: int = 8


@dataclass(frozen=True)
class SensorConfig:
    full_well_e: float = 10000.0
    read_noise_e: float = 2.0
    bit_depth: int = 10
    exposure: float = 1.0


@dataclass(frozen=True)
class DKOConfig:
    shard_size: int = 4
    steps: int = 1000
    lr: float = 0.5
    window_factor: float = 2.0
    efficiency_weight: float = 0.03
    parametrization: str = "phase"
    plateau_patience: int = 100
    plateau_rel_tol: float = 1.0e-3
    init_noise_std: float = 0.05
    distance_mode: str = "single"
    fidelity_distances_m: tuple[float | None, ...] = (1.0, 2.0, 4.0, 10.0, 20.0, 40.0, 80.0)
    gain_calibration: str = "total"
    element_pitch_m: float | None = None
    gds_radius_step_m: float = 1.0e-9
    checkpoint_every: int = 100
    log_every: int = 25


@dataclass(frozen=True)
class E2EConfig:
    variants: tuple[str, ...] = ("optics", "scratch")
    budget: str = "time"
    budget_basis: str = "cpu"
    optics_budget: str = "stage2"
    budget_scale: float = 1.0
    steps: int = 100
    max_steps: int | None = None
    lr_optics: float = 0.3
    lr_optics_scratch: float | None = 1.0
    lr_backend: float | None = None
    warmup_fraction: float = 0.05
    schedule: str = "cosine"
    train_noise: bool = False
    n_val: int = 6
    log_every: int = 5
    checkpoint_every: int = 20
    divergence_factor: float | None = 10.0


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    artifacts_dir: str | None = None


@dataclass(frozen=True)
class SweepConfig:
    grid: dict = field(default_factory=dict)
    table: str | None = None


@dataclass(frozen=True)
class Config:
    experiment: str = "default"
    results_dir: str = "results"
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optics: OpticsConfig = field(default_factory=OpticsConfig)
    metaatoms: MetaAtomConfig = field(default_factory=MetaAtomConfig)
    sensor: SensorConfig = field(default_factory=SensorConfig)
    dko: DKOConfig = field(default_factory=DKOConfig)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def experiment_dir(self) -> Path:
        """``<results_dir>/<experiment>`` (absolute)."""
        return Path(self.results_dir).resolve() / self.experiment

    def to_dict(self) -> dict:
        """The resolved configuration as plain JSON-compatible data."""
        return _to_plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------- validation
def _fill_defaults(instance: Any, schema: Mapping) -> Any:
    """Return ``instance`` with schema defaults inserted for missing object keys (recursively)."""
    if not isinstance(instance, dict) or schema.get("type") != "object" or "properties" not in schema:
        return instance
    out = dict(instance)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _fill_defaults(out[key], sub)
    return out


def _format_error(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = f" in '{path}'" if path else ""
        names = ", ".join(f"'{path + '.' if path else ''}{k}'" for k in extra)
        return f"unknown config key {names}{where}; allowed keys: {', '.join(allowed)}"
    return f"config key '{path or '<root>'}': {error.message}"


def resolve_config(raw: Mapping | None, *, check_paths: bool = True) -> dict:
    """Fill defaults, validate against the schema and run semantic checks.

    Args:
        raw: the parsed YAML (may be empty / None).
        check_paths: check that dataset folders named in the config exist.
    Returns:
        The resolved config as a plain dict (every key present).
    Raises:
        ValueError: naming the first offending key and value.
        TypeError: if ``raw`` is not a mapping.
    """
    import jsonschema

    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TypeError(f"config must be a mapping of keys to values, got {type(raw).__name__}")
    schema = load_schema()
    resolved = _fill_defaults(_to_plain(dict(raw)), schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(resolved), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ValueError(_format_error(errors[0]))
    _semantic_checks(resolved, check_paths=check_paths)
    return resolved


def _semantic_checks(cfg: dict, *, check_paths: bool) -> None:
    data = cfg["data"]
    if data["min_depth_m"] >= data["max_depth_m"]:
        raise ValueError(
            f"config key 'data.min_depth_m' ({data['min_depth_m']}) must be smaller than "
            f"'data.max_depth_m' ({data['max_depth_m']})"
        )
    if data["source"] == "synthetic":
        for key in ("n_train", "n_val", "n_test"):
            if data[key] is None:
                raise ValueError(f"config key 'data.{key}' must be an integer for data.source=synthetic (got null)")
    else:
        if data["root"] is None:
            raise ValueError(f"config key 'data.root' is required for data.source={data['source']}")
        if check_paths and not Path(data["root"]).is_dir():
            raise ValueError(f"config key 'data.root': dataset folder '{data['root']}' does not exist")
        if check_paths and data["split_dir"] is not None and not Path(data["split_dir"]).is_dir():
            raise ValueError(f"config key 'data.split_dir': folder '{data['split_dir']}' does not exist")
    net = cfg["network"]
    if net["pretrained_dir"] is not None and check_paths and not Path(net["pretrained_dir"]).is_dir():
        raise ValueError(f"config key 'network.pretrained_dir': folder '{net['pretrained_dir']}' does not exist")
    train = cfg["train"]
    if train["warmup_steps"] >= train["steps"]:
        raise ValueError(
            f"config key 'train.warmup_steps' ({train['warmup_steps']}) must be smaller than 'train.steps' ({train['steps']})"
        )
    _metaatom_checks(cfg)
    _optics_checks(cfg)
    if cfg["device"] == "cuda":
        try:
            import torch

            cuda_ok = torch.cuda.is_available()
        except ImportError:  # pragma: no cover
            cuda_ok = False
        if not cuda_ok:
            raise ValueError("config key 'device' is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")


def _metaatom_checks(cfg: dict) -> None:
    meta = cfg.get("metaatoms")
    if meta is None:
        return
    if meta["radius_min_m"] >= meta["radius_max_m"]:
        raise ValueError(f"config key 'metaatoms.radius_min_m' ({meta['radius_min_m']}) must be smaller than "
                         f"'metaatoms.radius_max_m' ({meta['radius_max_m']})")
    if meta["radius_max_m"] >= meta["period_m"] / 2:
        raise ValueError(f"config key 'metaatoms.radius_max_m' ({meta['radius_max_m']}) must be smaller than "
                         f"metaatoms.period_m / 2 ({meta['period_m'] / 2}): neighbouring pillars would touch")
    wavelengths = (cfg.get("optics") or {}).get("wavelengths_m") or []
    if wavelengths:
        limit = min(wavelengths) / meta["substrate_index"]
        if meta["period_m"] >= limit:
            raise ValueError(
                f"config key 'metaatoms.period_m' ({meta['period_m']}) must be smaller than min(optics.wavelengths_m) / "
                f"metaatoms.substrate_index = {min(wavelengths)} / {meta['substrate_index']} = {limit:.4e} m: a larger "
                "period opens diffraction orders in the substrate and the zeroth-order table no longer describes the "
                "metasurface")


def _optics_checks(cfg: dict) -> None:
    optics = cfg.get("optics")
    if optics is None:
        return
    if optics["psf_size_px"] % 2 == 0:
        raise ValueError(f"config key 'optics.psf_size_px' must be odd (PSF centred on a pixel), got {optics['psf_size_px']}")
    period = (cfg.get("metaatoms") or {}).get("period_m")
    if period:
        ratio = optics["superpixel_m"] / period
        if round(ratio) < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(
                f"config key 'optics.superpixel_m' ({optics['superpixel_m']}) must be a positive multiple of "
                f"'metaatoms.period_m' ({period})"
            )
    grid = -(-optics["n_superpixels"] * optics["oversample"] * optics["pad_factor"] // 1)
    extent = grid * optics["superpixel_m"] / optics["oversample"]
    window = optics["psf_size_px"] * optics["pixel_pitch_m"]
    if window > extent * (1 + 1e-6):
        raise ValueError(
            f"config key 'optics.psf_size_px' ({optics['psf_size_px']}) x pixel_pitch_m = {window:.3e} m exceeds the "
            f"simulated sensor plane n_superpixels x superpixel_m x pad_factor = {extent:.3e} m"
        )


# ----------------------------------------------------------------------------- construction
def _to_plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _build(cls, values: Mapping):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_dict(raw: Mapping | None, *, check_paths: bool = True) -> Config:
    """Validate ``raw`` (see :func:`resolve_config`) and return the typed :class:`Config`."""
    return _build(Config, resolve_config(raw, check_paths=check_paths))


def load_config(path: str | Path, *, overrides: Mapping | None = None, check_paths: bool = True) -> Config:
    """Read a YAML config file, apply nested ``overrides`` and return the typed :class:`Config`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file '{path}' is not valid YAML: {exc}") from exc
    if overrides:
        raw = deep_merge(raw, overrides)
    return config_from_dict(raw, check_paths=check_paths)


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_hash(cfg: Config | Mapping, length: int = 12) -> str:
    """Stable short SHA-256 of the resolved configuration."""
    plain = cfg.to_dict() if isinstance(cfg, Config) else _to_plain(cfg)
    blob = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def flatten(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"data.height": 96, ...}``: dotted keys for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resolve_device(device: str) -> "torch.device":  # noqa: F821
    """``auto`` -> CUDA when available else CPU; ``cpu`` / ``cuda`` as given."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"config key 'device': unknown device '{device}' (auto, cpu, cuda)")
    return torch.device(device)


def schema_markdown() -> str:
    """Markdown tables of every config key (type, default, range, description), from the schema.

    ``config/README.md`` embeds this between markers; a test keeps it in sync.
    """
    schema = load_schema()
    lines: list[str] = []

    def type_of(sub: dict) -> str:
        kind = sub.get("type", "")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        if "enum" in sub:
            kind += " (" + " / ".join(map(str, sub["enum"])) + ")"
        return kind

    def bounds(sub: dict) -> str:
        parts = []
        for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in sub:
                parts.append(f"{sym} {sub[key]}")
        if "items" in sub:
            parts.append("items: " + (bounds(sub["items"]) or type_of(sub["items"])))
        if "minItems" in sub or "maxItems" in sub:
            parts.append(f"{sub.get('minItems', 0)}..{sub.get('maxItems', 'n')} items")
        return ", ".join(parts)

    def table(props: dict, prefix: str) -> None:
        lines.append("| key | type | default | range | meaning |")
        lines.append("|---|---|---|---|---|")
        nested = []
        for key, sub in props.items():
            if sub.get("type") == "object" and "properties" in sub:
                nested.append((key, sub))
                continue
            default = json.dumps(sub.get("default"))
            desc = " ".join(str(sub.get("description", "")).split())
            lines.append(f"| `{prefix}{key}` | {type_of(sub)} | `{default}` | {bounds(sub)} | {desc} |")
        for key, sub in nested:
            lines.append("")
            lines.append(f"### `{prefix}{key}`")
            lines.append("")
            lines.append(" ".join(str(sub.get("description", "")).split()))
            lines.append("")
            table(sub["properties"], f"{prefix}{key}.")

    table(schema["properties"], "")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin CLI
    """``python -m dko.config [--docs FILE]``: rewrite the generated part of config/README.md."""
    import argparse

    parser = argparse.ArgumentParser(description="DKO config tools")
    parser.add_argument("--docs", help="README file whose generated section to rewrite")
    args = parser.parse_args(argv)
    if args.docs:
        update_docs(args.docs)
    else:
        print(schema_markdown())


DOCS_BEGIN = "<!-- BEGIN GENERATED: python -m dko.config --docs config/README.md -->"
DOCS_END = "<!-- END GENERATED -->"


def update_docs(path: str | Path) -> None:
    """Replace the text between the generated-section markers of ``path`` with :func:`schema_markdown`."""
    from dko.io import write_text

    path = Path(path)
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ValueError(f"file '{path}' lacks the generated-section markers")
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    write_text(path, head + DOCS_BEGIN + "\n\n" + schema_markdown() + "\n" + DOCS_END + tail)


if __name__ == "__main__":  # pragma: no cover
    main()
