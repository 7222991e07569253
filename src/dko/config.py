"""Typed configuration: one YAML file, validated against ``config/schema.yaml``, then dataclasses.

The JSON Schema (draft 2020-12, shipped as package data ``dko/schema/config.yaml``) is the single
source of truth for keys, types, ranges and defaults. :func:`resolve_config` fills defaults, validates,
runs the checks a schema cannot express (paths that must exist, cross-key ranges) and returns a
plain dict; :func:`load_config` / :func:`config_from_dict` turn that into :class:`Config`.
Every error is a ``ValueError`` naming the offending key (dotted path) and value.

Input is read strictly: :func:`load_yaml_file` rejects a key written twice (naming key, file and lines),
:func:`parse_config_overrides` re-reads Snakemake's ``--config KEY=VALUE`` text with the schema's types,
and NaN / infinity are rejected wherever a number is expected.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import yaml

SCHEMA_PACKAGE_PATH = ("schema", "config.yaml")
IMAGE_CHANNELS = 3  # every data.source yields RGB images (dko.depth.model.DepthNet expects (B, 3, H, W))


def load_schema() -> dict:
    """The configuration JSON Schema as a dict (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_parsed_schema())


@functools.lru_cache(maxsize=1)
def _parsed_schema() -> dict:
    text = resources.files("dko").joinpath(*SCHEMA_PACKAGE_PATH).read_text()
    return parse_yaml(text, "config schema")


# ----------------------------------------------------------------------------- YAML input
def _duplicate_key(node: yaml.Node, path: str = "", seen: set | None = None) -> tuple[str, int, int] | None:
    """The first key written twice in one mapping of a composed YAML tree: (dotted key, line, first line)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked
        return None
    seen.add(id(node))
    children: list[tuple[str, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            name = f"{path}.{key}" if path else key
            if key == "<<" and key_node.style is None:  # merge key: overriding merged keys is YAML's own rule
                continue
            line = key_node.start_mark.line + 1
            if key in first_line:
                return name, line, first_line[key]
            first_line[key] = line
            children.append((name, value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{path}[{i}]", item) for i, item in enumerate(node.value)]
    for name, child in children:
        found = _duplicate_key(child, name, seen)
        if found:
            return found
    return None


def parse_yaml(text: str, source: str, *, loader: type = yaml.SafeLoader, key_prefix: str = "") -> Any:
    """Parse one YAML document, rejecting a key written twice in a mapping (PyYAML keeps the last one silently).

    Args:
        text: the YAML text.
        source: what it is, for messages (e.g. "config file 'my.yaml'").
        loader: PyYAML loader class (``yaml.BaseLoader`` keeps every scalar a string).
        key_prefix: dotted key the document sits under, for messages (e.g. "train" for ``--config train={...}``).
    Raises:
        ValueError: invalid YAML, or a duplicate key (named with its dotted path and both lines).
    """
    parser = loader(text)
    try:
        node = parser.get_single_node()
        if node is None:
            return None
        duplicate = _duplicate_key(node, key_prefix)
        if duplicate:
            name, line, first = duplicate
            raise ValueError(f"{source}: key '{name}' is given twice (line {first} and line {line}); "
                             "keep one (YAML would silently use the last)")
        return parser.construct_document(node)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source} is not valid YAML: {exc}") from exc
    finally:
        parser.dispose()


def _json_pairs(source: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"{source}: key '{key}' is given twice; keep one (JSON would silently use the last)")
            out[key] = value
        return out

    return hook


def load_yaml_file(path: str | Path) -> Any:
    """Read a YAML (or ``.json``) config file strictly: duplicate keys are errors naming key, file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file '{path}' does not exist")
    text = path.read_text(encoding="utf-8")
    source = f"config file '{path}'"
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_json_pairs(source))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not valid JSON: {exc}") from exc
    return parse_yaml(text, source)


_NULL_TEXTS = ("", "~", "null", "Null", "NULL")


def _schema_types(schema: Mapping) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _typed(value: Any, schema: Mapping) -> Any:
    """Give the all-string ``value`` (YAML BaseLoader output) the types ``schema`` expects, recursively.

    A scalar of a string key keeps its text (``experiment=007`` stays "007"); any other scalar is read
    as YAML (``0.0`` -> float, ``true`` -> bool, ``null`` -> None), and as a Python number where the
    schema wants one and YAML 1.1 says string (``1e-3``). What fits no type is left for the schema to
    reject by name.
    """
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _typed(v, props.get(k, extra if isinstance(extra, Mapping) else {})) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v, schema.get("items", {})) for v in value]
    if not isinstance(value, str):
        return value
    types = _schema_types(schema)
    if "string" in types:
        return None if "null" in types and value in _NULL_TEXTS else value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, (dict, list)):  # the text was quoted; it stays one scalar
        parsed = value
    if isinstance(parsed, str):
        for kind, cast in (("integer", int), ("number", float)):
            if kind in types:
                try:
                    return cast(parsed)
                except ValueError:
                    pass
    return parsed


def parse_config_overrides(entries: Sequence[str] | None) -> dict:
    """Nested, typed overrides from Snakemake ``--config KEY=VALUE`` entries (the raw command-line text).

    Snakemake itself reads nested values with YAML's BaseLoader, so ``--config 'train={conv1_smoothness:
    0.0}'`` would give the string '0.0'. Here each value is read as YAML (duplicate keys rejected) and its
    scalars take the types the schema gives their keys (see :func:`_typed`); an empty value is null.
    Later entries override earlier ones, nested mappings merge (as in Snakemake).
    """
    if not entries:
        return {}
    properties = load_schema()["properties"]
    out: dict = {}
    for entry in entries:
        key, sep, text = str(entry).partition("=")
        if not sep or not key:
            raise ValueError(f"--config entry '{entry}' is not KEY=VALUE")
        value = None if text == "" else parse_yaml(text, f"--config entry '{entry}'", loader=yaml.BaseLoader,
                                                   key_prefix=key)
        out = deep_merge(out, {key: _typed(value, properties.get(key, {}))})
    return out


# ----------------------------------------------------------------------------- dataclasses
# The schema holds every default; these classes have none: config_from_dict({}) is the default configuration.
@dataclass(frozen=True)
class DataConfig:
    source: str
    root: str | None
    protocol: str
    splits_dir: str | None
    train_split: str
    test_split: str | None
    train_gt: str | None
    linear_light: bool
    gt_dir: str | None
    height: int
    width: int
    n_train: int | None
    n_val: int | None
    n_test: int | None
    min_depth_m: float
    max_depth_m: float
    workers: int


@dataclass(frozen=True)
class NetworkConfig:
    blocks_per_stage: tuple[int, ...]
    base_width: int
    conv1_kernel: int
    norm_mean: float
    norm_std: float
    pretrained_dir: str | None
    depth_range_m: tuple[float, ...] | None
    decoder_channels: tuple[int, ...]


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str
    warmup_steps: int
    flip: bool
    color_jitter: float
    checkpoint_every: int
    log_every: int
    val_every: int
    si_lambda: float
    conv1_smoothness: float
    collapse_check: bool


@dataclass(frozen=True)
class EvalConfig:
    median_scaling: bool
    n_figure_images: int


@dataclass(frozen=True)
class OpticsConfig:
    wavelengths_m: tuple[float, ...]
    superpixel_m: float
    n_superpixels: int
    sensor_distance_m: float
    pixel_pitch_m: float
    object_distances_m: tuple[float | None, ...]
    aperture: str
    pad_factor: float
    oversample: int
    psf_size_px: int
    dtype: str


@dataclass(frozen=True)
class MetaAtomConfig:
    pillar_index: float
    substrate_index: float
    pillar_height_m: float
    period_m: float
    radius_min_m: float
    radius_max_m: float
    n_radii: int
    rcwa_order: int
    convergence_order_step: int
    convergence_radii: int
    resonance_factor: float | None


@dataclass(frozen=True)
class SensorConfig:
    full_well_e: float
    read_noise_e: float
    bit_depth: int
    exposure: float


@dataclass(frozen=True)
class DKOConfig:
    shard_size: int
    steps: int
    lr: float
    window_factor: float
    efficiency_weight: float
    parametrization: str
    plateau_patience: int
    plateau_rel_tol: float
    init_noise_std: float
    distance_mode: str
    fidelity_distances_m: tuple[float | None, ...]
    gain_calibration: str
    element_pitch_m: float | None
    gds_radius_step_m: float
    checkpoint_every: int
    log_every: int


@dataclass(frozen=True)
class FaithfulConfig:
    samples_per_superpixel: int | None
    route: str
    pad_factor: float | None
    window_px: int | None
    passband_fwhm_m: tuple[float, ...]
    passband_shape: str
    spectral_samples: int | None
    field_positions: tuple[tuple[float, float], ...]
    fresnel: bool
    exact_pixels: bool
    batch_size: int
    field_grid: tuple[int, int]
    image_spectral_samples: int
    image_window_px: int | None
    relative_illumination: bool
    flat_field: bool
    flat_field_max_gain: float | None
    metaatom_model: str
    table_radii: int
    table_order: int | None


@dataclass(frozen=True)
class E2EConfig:
    variants: tuple[str, ...]
    budget: str
    budget_basis: str
    optics_budget: str
    budget_scale: float
    steps: int
    max_steps: int | None
    lr_optics: float
    lr_optics_scratch: float | None
    lr_backend: float | None
    warmup_fraction: float
    schedule: str
    train_noise: bool
    n_val: int
    log_every: int
    checkpoint_every: int
    divergence_factor: float | None


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool
    uri: str | None
    artifacts_dir: str | None


@dataclass(frozen=True)
class SweepConfig:
    grid: dict
    table: str | None


@dataclass(frozen=True)
class Config:
    experiment: str
    results_dir: str
    seed: int
    device: str
    threads: int
    data: DataConfig
    network: NetworkConfig
    train: TrainConfig
    eval: EvalConfig
    optics: OpticsConfig
    metaatoms: MetaAtomConfig
    sensor: SensorConfig
    dko: DKOConfig
    faithful: FaithfulConfig
    e2e: E2EConfig
    tracking: TrackingConfig
    sweep: SweepConfig

    @property
    def experiment_dir(self) -> Path:
        """``<results_dir>/<experiment>`` (absolute)."""
        return Path(self.results_dir).resolve() / self.experiment

    def to_dict(self) -> dict:
        """The resolved configuration as plain JSON-compatible data.

        For a job's view (:func:`restrict_config`) only the keys declared for the job; reading them this way is
        not recorded as a read (run keys hash this dict).
        """
        plain = _to_plain(_field_values(self))
        reads = self.__dict__.get(_READS_ATTR)
        return plain if reads is None else reads.select(plain)


# ----------------------------------------------------------------------------- a job's view of the config
# A Snakemake job reruns when its params change; its params carry the config keys declared for it
# (dko.catalogue). The job's library calls then get a view of the config in which every other key raises
# UndeclaredConfigRead, so a job cannot depend on a key whose change would not rerun it.
EXECUTION_KEYS = ("experiment", "results_dir", "device", "threads", "tracking", "data.workers")
"""Where and how a job runs, not what it computes (keys or whole sections): readable by every job, never declared,
never in a job's params (a change reruns nothing). ``data.workers``: the dataset does not depend on it."""

_READS_ATTR = "_dko_reads"
_PREFIX_ATTR = "_dko_prefix"


class UndeclaredConfigRead(RuntimeError):
    """A job read a config key that its declaration (``dko.catalogue``) does not list."""


class ConfigReads:
    """The config keys a job may read (``declared``: dotted keys or whole sections) and those it read (``read``)."""

    def __init__(self, declared: Sequence[str], job: str):
        known = set(leaf_keys())
        sections = {key.split(".")[0] for key in known if "." in key}
        for key in declared:
            if key not in known and key not in sections:
                raise ValueError(f"job {job}: '{key}' is not a config key (declared in dko.catalogue)")
            if is_execution_key(key):
                raise ValueError(f"job {job}: '{key}' is an execution key, readable by every job; do not declare it")
        self.declared = frozenset(declared)
        self.job = job
        self.read: set[str] = set()
        self._sections = sections

    def allows(self, key: str) -> bool:
        parts = key.split(".")
        return is_execution_key(key) or any(".".join(parts[:i]) in self.declared for i in range(1, len(parts) + 1))

    def check(self, key: str) -> None:
        if is_execution_key(key):
            return
        if not self.allows(key):
            raise UndeclaredConfigRead(
                f"job {self.job} reads config key '{key}', which its declaration in dko.catalogue does not list: "
                f"add it there (the rule's params then carry it, so that changing it reruns the job)")
        self.read.add(key)

    def select(self, plain: Mapping, prefix: str = "") -> dict:
        """The declared part of a plain config dict (execution keys left out)."""
        out = {}
        for key, value in plain.items():
            name = f"{prefix}{key}"
            if is_execution_key(name):
                continue
            if name in self._sections:
                if self.allows(name) or any(d.startswith(name + ".") for d in self.declared):
                    out[key] = self.select(value, name + ".")
            elif self.allows(name):
                out[key] = value
        return out


def is_execution_key(key: str) -> bool:
    """Whether dotted ``key`` is, or lies in, one of the :data:`EXECUTION_KEYS`."""
    return any(key == e or key.startswith(e + ".") for e in EXECUTION_KEYS)


@functools.lru_cache(maxsize=None)
def leaf_keys(cls: type = None, prefix: str = "") -> tuple[str, ...]:
    """Every leaf config key as a dotted name (``data.height``, ``seed``, ...), in schema order (computed once:
    every job's config view and every rule's params use it)."""
    cls = Config if cls is None else cls
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return tuple(keys)


def restrict_config(cfg: "Config", declared: Sequence[str], job: str) -> tuple["Config", ConfigReads]:
    """A view of ``cfg`` in which only ``declared`` keys (and :data:`EXECUTION_KEYS`) can be read.

    Reading any other key raises :class:`UndeclaredConfigRead`; the reads are recorded in the returned
    :class:`ConfigReads` (``read``). The view is still a :class:`Config` (same attributes, same types).
    """
    reads = ConfigReads(declared, job)
    return _guarded(cfg, reads, ""), reads


def _field_values(obj: Any) -> dict:
    """A (restricted) dataclass's field values as nested dicts, without recording reads."""
    out = {}
    for f in dataclasses.fields(obj):
        value = obj.__dict__[f.name]
        out[f.name] = _field_values(value) if dataclasses.is_dataclass(value) else value
    return out


def _guarded_getattribute(self, name: str):
    cls = type(self)
    if name in cls.__dataclass_fields__ and name not in cls._dko_sections:
        object.__getattribute__(self, _READS_ATTR).check(object.__getattribute__(self, _PREFIX_ATTR) + name)
    return object.__getattribute__(self, name)


def _guarded_repr(self) -> str:
    reads = object.__getattribute__(self, _READS_ATTR)
    return f"<{type(self).__name__} of job {reads.job}: {sorted(reads.declared)}>"


@functools.lru_cache(maxsize=None)
def _guarded_class(cls: type) -> type:
    hints = typing.get_type_hints(cls)
    sections = frozenset(f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name]))
    return type(cls.__name__, (cls,), {"__getattribute__": _guarded_getattribute, "__repr__": _guarded_repr,
                                       "_dko_sections": sections, "__module__": cls.__module__})


def _guarded(obj: Any, reads: ConfigReads, prefix: str) -> Any:
    view = object.__new__(_guarded_class(type(obj)))
    for f in dataclasses.fields(obj):
        value = obj.__dict__[f.name]
        if dataclasses.is_dataclass(value):
            value = _guarded(value, reads, f"{prefix}{f.name}.")
        object.__setattr__(view, f.name, value)
    object.__setattr__(view, _READS_ATTR, reads)
    object.__setattr__(view, _PREFIX_ATTR, prefix)
    return view


def declared_config(raw: Mapping, declared: Sequence[str]) -> dict:
    """The declared part of a resolved plain config (what a rule's params carry): nested dicts, sorted keys."""
    reads = ConfigReads(declared, "params")
    return _sorted(reads.select(raw))


def _sorted(value: Any) -> Any:
    return {k: _sorted(value[k]) for k in sorted(value)} if isinstance(value, Mapping) else value


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
    _check_finite(resolved)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(resolved), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ValueError(_format_error(errors[0]))
    resolved = _integral_floats_to_int(resolved, schema)
    resolved["data"] = source_defaults(resolved["data"])
    _semantic_checks(resolved, check_paths=check_paths)
    return resolved


SOURCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic": {"n_train": 600, "n_val": 100, "n_test": 100, "min_depth_m": 1.0, "max_depth_m": 80.0},
    "kitti": {"min_depth_m": 1e-3, "max_depth_m": 80.0},
    "nyu": {"min_depth_m": 1e-3, "max_depth_m": 10.0},
}
"""What a null ``data.n_*`` / ``data.min_depth_m`` / ``data.max_depth_m`` means per source (real data: whole splits,
the protocol's depth range; KITTI's and NYUv2's ranges are Monodepth2's MIN_DEPTH / MAX_DEPTH)."""

KITTI_PROTOCOL_TEST_SPLIT = {"eigen": "eigen", "eigen_benchmark": "eigen_benchmark"}
KITTI_PROTOCOL_GT = {"eigen": "velodyne", "eigen_benchmark": "annotated"}


def source_defaults(data: Mapping) -> dict:
    """The ``data`` section with every null that has a per-source meaning replaced by its value
    (:data:`SOURCE_DEFAULTS`; KITTI's ``test_split`` and ``train_gt`` follow ``data.protocol``)."""
    out = dict(data)
    for key, value in SOURCE_DEFAULTS[out["source"]].items():
        if out.get(key) is None:
            out[key] = value
    if out["source"] == "kitti":
        if out.get("test_split") is None:
            out["test_split"] = KITTI_PROTOCOL_TEST_SPLIT[out["protocol"]]
        if out.get("train_gt") is None:
            out["train_gt"] = KITTI_PROTOCOL_GT[out["protocol"]]
    return out


def _check_finite(value: Any, path: str = "") -> None:
    """Reject NaN and infinity anywhere (JSON Schema's minimum / maximum let NaN through)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key '{path or '<root>'}': {value} is not a finite number "
                         "(NaN and infinity are not allowed; where a distance may be infinite, write null)")
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _check_finite(sub, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            _check_finite(sub, f"{path}[{i}]")


def _integral_floats_to_int(value: Any, schema: Mapping) -> Any:
    """3.0 -> 3 where the schema says integer (JSON Schema counts 3.0 as an integer; range(3.0) would fail)."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _integral_floats_to_int(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_to_int(v, schema.get("items", {})) for v in value]
    types = _schema_types(schema)
    if isinstance(value, float) and "integer" in types and "number" not in types:
        return int(value)
    return value


def _semantic_checks(cfg: dict, *, check_paths: bool) -> None:
    if cfg["experiment"] in (".", ".."):
        raise ValueError(f"config key 'experiment' ({cfg['experiment']!r}) must name a folder inside results_dir, "
                         "not '.' or '..'")
    _tracking_uri_check(cfg["tracking"]["uri"])
    data = cfg["data"]
    if data["min_depth_m"] >= data["max_depth_m"]:
        raise ValueError(
            f"config key 'data.min_depth_m' ({data['min_depth_m']}) must be smaller than "
            f"'data.max_depth_m' ({data['max_depth_m']})"
        )
    if data["source"] != "synthetic":
        if data["root"] is None:
            raise ValueError(f"config key 'data.root' is required for data.source={data['source']}")
        if check_paths and not Path(data["root"]).is_dir():
            raise ValueError(f"config key 'data.root': dataset folder '{data['root']}' does not exist")
        for key in ("splits_dir", "gt_dir"):
            if check_paths and data[key] is not None and not Path(data[key]).is_dir():
                raise ValueError(f"config key 'data.{key}': folder '{data[key]}' does not exist")
    net = cfg["network"]
    if net["pretrained_dir"] is not None and check_paths and not Path(net["pretrained_dir"]).is_dir():
        raise ValueError(f"config key 'network.pretrained_dir': folder '{net['pretrained_dir']}' does not exist")
    if net["depth_range_m"] is not None and not net["depth_range_m"][0] < net["depth_range_m"][1]:
        raise ValueError(f"config key 'network.depth_range_m': need min < max, got {net['depth_range_m']}")
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
    wavelengths = optics["wavelengths_m"]
    if len(wavelengths) != IMAGE_CHANNELS:
        raise ValueError(f"config key 'optics.wavelengths_m' has {len(wavelengths)} entries but the images have "
                         f"{IMAGE_CHANNELS} channels (R, G, B): give one wavelength per channel")
    if len(set(wavelengths)) != len(wavelengths):
        raise ValueError(f"config key 'optics.wavelengths_m' ({wavelengths}) repeats a wavelength; the meta-atom "
                         "table (one row per wavelength) needs distinct ones")
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


TRACKING_URI_FORMS = ("null (sqlite file <results_dir>/mlflow.db)", "sqlite:////abs/path.db", "http://host:port",
                      "https://host[:port][/path]")


def _tracking_uri_check(uri: str | None) -> None:
    """Reject a ``tracking.uri`` MLflow cannot use, before any job tries it."""
    if uri is None or uri == "":
        return
    problem = None
    if any(c.isspace() for c in uri):
        problem = "contains white space"
    elif uri.startswith("sqlite:"):
        db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not db or db == ":memory:" or db.endswith("/"):
            problem = "needs a database file, sqlite:////abs/path.db (four slashes for an absolute path)"
    elif uri.startswith(("http:", "https:")):
        parts = urlsplit(uri)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if not uri.startswith(("http://", "https://")) or not parts.hostname:
            problem = "needs a host, http://host:port"
        elif not port_ok:
            problem = "has an invalid port (an integer 1..65535)"
    elif uri.startswith("file:"):
        problem = "is a file store, which MLflow 3 refuses by default (use a sqlite file)"
    else:
        problem = "has an unsupported scheme"
    if problem:
        raise ValueError(f"config key 'tracking.uri': '{uri}' {problem}; accepted: {', '.join(TRACKING_URI_FORMS)}")


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
            raise ValueError(f"config key '{f.name}' of {cls.__name__} is missing: build configs with config_from_dict")
        value = values[f.name]
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)  # nested: field_positions
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_dict(raw: Mapping | None, *, check_paths: bool = True) -> Config:
    """Validate ``raw`` (see :func:`resolve_config`) and return the typed :class:`Config`."""
    return _build(Config, resolve_config(raw, check_paths=check_paths))


def load_config(path: str | Path, *, overrides: Mapping | None = None, check_paths: bool = True) -> Config:
    """Read a YAML config file, apply nested ``overrides`` and return the typed :class:`Config`."""
    raw = load_yaml_file(path) or {}
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
