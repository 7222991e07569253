"""Config: schema + dataclasses agree, defaults fill, and invalid configs are rejected by name."""

import dataclasses
import subprocess
import typing
from pathlib import Path

import pytest
import yaml

from dko.config import Config, config_from_dict, config_hash, load_config, load_schema, resolve_config


def _schema_keys(schema: dict) -> dict:
    return {k: v for k, v in schema["properties"].items()}


def test_every_schema_key_is_described_and_defaulted():
    def walk(props: dict, path: str = ""):
        for key, sub in props.items():
            assert "description" in sub, f"{path}{key} lacks a description"
            assert "default" in sub, f"{path}{key} lacks a default"
            if sub.get("type") == "object" and "properties" in sub:
                assert sub.get("additionalProperties") is False, f"{path}{key} accepts unknown keys"
                walk(sub["properties"], f"{path}{key}.")

    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    walk(schema["properties"])


def test_dataclasses_mirror_the_schema():
    """Every schema key is a dataclass field and nothing else; the defaults live in the schema only."""
    schema = load_schema()

    def compare(props: dict, cls, path: str = ""):
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == set(props), f"{path or '<root>'}: schema {sorted(props)} vs dataclass {sorted(fields)}"
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, \
                f"{path}{f.name} has a dataclass default: defaults belong in the schema only"
        for key, sub in props.items():
            if sub.get("type") == "object" and "properties" in sub:
                assert dataclasses.is_dataclass(hints[key]), f"{path}{key} is not a dataclass section"
                compare(sub["properties"], hints[key], f"{path}{key}.")

    compare(schema["properties"], Config)
    defaults = config_from_dict({}).to_dict()
    from dko.config import SOURCE_DEFAULTS

    def check_defaults(props: dict, values: dict, path: str = ""):
        for key, sub in props.items():
            if sub.get("type") == "object" and "properties" in sub:
                check_defaults(sub["properties"], values[key], f"{path}{key}.")
            elif path == "data." and key in SOURCE_DEFAULTS["synthetic"]:   # null = the source's value
                assert sub["default"] is None and values[key] == SOURCE_DEFAULTS["synthetic"][key]
            else:
                assert values[key] == sub["default"], f"{path}{key}: {values[key]!r} != schema {sub['default']!r}"

    check_defaults(schema["properties"], defaults)


def test_shipped_configs_are_valid(repo_root):
    for name in ("config.yaml", "smoke.yaml"):
        cfg = load_config(repo_root / "config" / name)
        assert cfg.experiment
    assert load_config(repo_root / "config" / "smoke.yaml").experiment == "smoke"


def test_defaults_fill_and_types():
    cfg = config_from_dict({"data": {"height": 64}})
    assert cfg.data.height == 64 and cfg.data.width == 320
    assert isinstance(cfg.network.blocks_per_stage, tuple)
    assert isinstance(cfg.data.min_depth_m, float)


def test_config_hash_is_stable_and_sensitive():
    a = config_from_dict({})
    assert config_hash(a) == config_hash(config_from_dict({}))
    assert config_hash(a) != config_hash(config_from_dict({"seed": 1}))


INVALID = [
    ({"seed": "zero"}, "seed"),                                   # wrong type
    ({"seed": -3}, "seed"),                                       # out of range
    ({"seeed": 1}, "seeed"),                                      # unknown top-level key
    ({"data": {"heigth": 96}}, "data.heigth"),                    # unknown nested key
    ({"data": {"height": 4}}, "data.height"),                     # below minimum
    ({"data": {"source": "imagenet"}}, "data.source"),            # not in enum
    ({"data": {"source": "kitti"}}, "data.root"),                 # missing dataset root
    ({"data": {"source": "kitti", "root": "/nonexistent/kitti"}}, "data.root"),  # root does not exist
    ({"data": {"min_depth_m": 90.0, "max_depth_m": 80.0}}, "data.min_depth_m"),  # cross-key range
    ({"data": {"n_train": 0}}, "data.n_train"),                   # at least one image
    ({"device": "tpu"}, "device"),                                # enum
    ({"experiment": "has space"}, "experiment"),                  # pattern
    ({"network": {"blocks_per_stage": [1, 1, 1]}}, "network.blocks_per_stage"),  # array length
    ({"network": {"conv1_kernel": 4}}, "network.conv1_kernel"),   # even kernel
    ({"train": {"lr": 0}}, "train.lr"),                           # exclusive minimum
    ({"train": {"steps": 10, "warmup_steps": 50}}, "train.warmup_steps"),
    ({"tracking": {"enabled": "yes"}}, "tracking.enabled"),
    ({"data": []}, "data"),                                       # wrong container type
    # non-finite numbers (JSON Schema's minimum / maximum let NaN through)
    ({"train": {"lr": float("nan")}}, "train.lr"),
    ({"train": {"weight_decay": float("inf")}}, "train.weight_decay"),   # no maximum in the schema
    ({"dko": {"element_pitch_m": float("nan")}}, "dko.element_pitch_m"),  # number or null
    ({"optics": {"object_distances_m": [10.0, float("-inf")]}}, "optics.object_distances_m[1]"),
    ({"sweep": {"grid": {"train.lr": [0.1, float("nan")]}}}, "sweep.grid.train.lr[1]"),
    # one wavelength per RGB input channel
    ({"optics": {"wavelengths_m": [6.4e-7, 5.5e-7]}}, "optics.wavelengths_m"),
    ({"optics": {"wavelengths_m": [6.4e-7, 5.5e-7, 4.6e-7, 5.0e-7]}}, "optics.wavelengths_m"),
    ({"optics": {"wavelengths_m": [5.5e-7, 5.5e-7, 5.5e-7]}}, "optics.wavelengths_m"),  # table needs distinct ones
    # the experiment folder stays inside results_dir
    ({"experiment": ".."}, "experiment"),
    ({"experiment": "."}, "experiment"),
    ({"experiment": "a/b"}, "experiment"),
]

BAD_TRACKING_URIS = ["htp://host:5000", "http//host:5000", "localhost:5000", "http://:5000", "http://host:port",
                     "http://host:99999", "sqlite://", "sqlite:///", "sqlite:/mlflow.db", "sqlite:///:memory:",
                     "mlflow.db", "/abs/mlruns", "file:///tmp/mlruns", "http://host:5000 ", "postgresql://u@h/db"]


@pytest.mark.parametrize("uri", BAD_TRACKING_URIS)
def test_malformed_tracking_uri_rejected(uri):
    with pytest.raises(ValueError, match="tracking.uri") as err:
        resolve_config({"tracking": {"uri": uri}})
    assert repr(uri).strip("'") in str(err.value)


@pytest.mark.parametrize("uri", [None, "", "sqlite:////tmp/dko/mlflow.db", "sqlite:///mlflow.db",
                                 "http://127.0.0.1:5000", "http://head-node:5000/", "https://mlflow.example.org/dko"])
def test_usable_tracking_uri_accepted(uri):
    assert resolve_config({"tracking": {"uri": uri}})["tracking"]["uri"] == uri


def test_nan_from_yaml_file_rejected_naming_key(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("train:\n  lr: .nan\n")
    with pytest.raises(ValueError, match=r"config key 'train\.lr': nan is not a finite number"):
        load_config(path)


def test_integral_float_for_integer_key_becomes_int():
    cfg = config_from_dict({"seed": 3.0, "train": {"steps": 120.0}})
    assert cfg.seed == 3 and type(cfg.seed) is int
    assert type(resolve_config({"train": {"steps": 120.0}})["train"]["steps"]) is int


@pytest.mark.parametrize("raw, key", INVALID, ids=[k for _, k in INVALID])
def test_invalid_config_rejected_naming_key(raw, key):
    with pytest.raises(ValueError) as err:
        resolve_config(raw)
    assert key in str(err.value), str(err.value)


def test_non_mapping_config_is_a_type_error():
    with pytest.raises(TypeError):
        resolve_config(["not", "a", "mapping"])


def test_duplicate_yaml_key_rejected_naming_key_file_and_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("experiment: dup\ntrain:\n  steps: 12\n  lr: 0.001\n  steps: 1000000\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    message = str(err.value)
    assert "'train.steps'" in message and "dup.yaml" in message and "line 3" in message and "line 5" in message
    top = tmp_path / "dup_top.yaml"
    top.write_text("seed: 1\ntrain: {steps: 12}\nseed: 2\n")
    with pytest.raises(ValueError, match="'seed' is given twice"):
        load_config(top)


def test_yaml_merge_keys_and_repeated_keys_in_different_mappings_are_fine(tmp_path):
    from dko.config import parse_yaml

    text = "base: &b {steps: 12, lr: 0.1}\ntrain:\n  <<: *b\n  lr: 0.2\neval:\n  steps: 3\n"
    assert parse_yaml(text, "t") == {"base": {"steps": 12, "lr": 0.1}, "train": {"steps": 12, "lr": 0.2},
                                     "eval": {"steps": 3}}


def test_duplicate_json_key_rejected(tmp_path):
    from dko.config import load_yaml_file

    path = tmp_path / "dup.json"
    path.write_text('{"seed": 1, "seed": 2}')
    with pytest.raises(ValueError, match=r"dup\.json': key 'seed' is given twice"):
        load_yaml_file(path)


def test_cli_overrides_take_schema_types():
    """Snakemake reads nested --config values as strings; the schema gives them their types back."""
    from dko.config import parse_config_overrides

    out = parse_config_overrides(["train={conv1_smoothness: 0.0, lr: 1e-3, steps: 200, flip: false}", "seed=3",
                                  "experiment=007", "tracking={uri: http://head-node:5000}",
                                  "data={root: null, splits_dir: '', n_train: 4}", "dko={element_pitch_m: 1.0e-4}",
                                  "sweep={grid: {seed: [0, 1]}}", "optics={wavelengths_m: [6.4e-7, 5.5e-7, 4.6e-7]}"])
    train = out["train"]
    assert train == {"conv1_smoothness": 0.0, "lr": 1e-3, "steps": 200, "flip": False}
    assert type(train["conv1_smoothness"]) is float and type(train["steps"]) is int
    assert out["seed"] == 3 and type(out["seed"]) is int
    assert out["experiment"] == "007"                       # a string key keeps its text
    assert out["tracking"] == {"uri": "http://head-node:5000"}
    assert out["data"] == {"root": None, "splits_dir": None, "n_train": 4}
    assert out["dko"]["element_pitch_m"] == 1.0e-4
    assert out["sweep"] == {"grid": {"seed": [0, 1]}}
    assert out["optics"]["wavelengths_m"] == [6.4e-7, 5.5e-7, 4.6e-7]
    assert parse_config_overrides(["experiment=true", "train={lr: 0.1}", "train={steps: 5}"]) == {
        "experiment": "true", "train": {"lr": 0.1, "steps": 5}}  # later entries merge into earlier ones
    resolve_config(out, check_paths=False)


def test_cli_override_errors_name_the_key():
    from dko.config import parse_config_overrides

    with pytest.raises(ValueError, match="'train.lr' is given twice"):
        parse_config_overrides(["train={lr: 0.1, lr: 0.2}"])
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_config_overrides(["seed"])
    with pytest.raises(ValueError, match="config key 'train.lr': nan is not a finite number"):
        resolve_config(parse_config_overrides(["train={lr: nan}"]))
    with pytest.raises(ValueError, match="config key 'train.steps'"):
        resolve_config(parse_config_overrides(["train={steps: many}"]))


def test_load_config_names_missing_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(bad)


@pytest.mark.parametrize("raw, key", [
    ({"experiment": "cli_bad", "data": {"width": "wide"}}, "data.width"),
    ({"experiment": "cli_bad", "bogus": 1}, "bogus"),
    ({"experiment": "cli_bad", "data": {"source": "nyu", "root": "/no/such/nyu"}}, "data.root"),
])
def test_snakefile_rejects_before_any_job(tmp_path, repo_root, venv_bin, raw, key):
    """A real (non-dry) snakemake invocation fails at validation: no job runs, nothing is written."""
    raw = dict(raw, results_dir=str(tmp_path / "results"))
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([str(venv_bin / "snakemake"), "--cores", "1", "--configfile", str(cfg_file),
                           "--directory", str(repo_root)],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "invalid configuration" in proc.stderr + proc.stdout
    assert key in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_config_readme_documents_every_key(repo_root):
    from dko.config import schema_markdown

    text = (repo_root / "config" / "README.md").read_text()
    assert schema_markdown() in text, "config/README.md is stale: run python -m dko.config --docs config/README.md"


def test_real_data_defaults_are_whole_splits_and_the_protocols_depth_range():
    """A null count or depth cap means the source's own: synthetic 600/100/100 and 1-80 m; real data whole splits
    and Monodepth2's evaluation ranges (KITTI 1e-3-80 m, NYUv2 1e-3-10 m); KITTI's test split and training
    ground truth follow data.protocol."""
    synthetic = config_from_dict({}).data
    assert (synthetic.n_train, synthetic.n_val, synthetic.n_test) == (600, 100, 100)
    assert (synthetic.min_depth_m, synthetic.max_depth_m) == (1.0, 80.0)
    kitti = config_from_dict({"data": {"source": "kitti", "root": "/x"}}, check_paths=False).data
    assert (kitti.n_train, kitti.n_val, kitti.n_test) == (None, None, None)
    assert (kitti.min_depth_m, kitti.max_depth_m) == (1e-3, 80.0)
    assert (kitti.protocol, kitti.train_split, kitti.test_split, kitti.train_gt) == ("eigen", "eigen_zhou", "eigen",
                                                                                     "velodyne")
    bench = config_from_dict({"data": {"source": "kitti", "root": "/x", "protocol": "eigen_benchmark",
                                       "max_depth_m": 50.0}}, check_paths=False).data
    assert (bench.test_split, bench.train_gt, bench.max_depth_m) == ("eigen_benchmark", "annotated", 50.0)
    mixed = config_from_dict({"data": {"source": "kitti", "root": "/x", "train_gt": "annotated"}},
                             check_paths=False).data
    assert (mixed.test_split, mixed.train_gt) == ("eigen", "annotated")
    nyu = config_from_dict({"data": {"source": "nyu", "root": "/x"}}, check_paths=False).data
    assert (nyu.min_depth_m, nyu.max_depth_m, nyu.n_test) == (1e-3, 10.0, None)
    with pytest.raises(ValueError, match="data.protocol"):
        config_from_dict({"data": {"source": "kitti", "root": "/x", "protocol": "kitti"}}, check_paths=False)
