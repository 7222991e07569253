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
    """Every schema key is a dataclass field with the same default, and nothing else."""
    schema = load_schema()

    def compare(props: dict, cls, path: str = ""):
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == set(props), f"{path or '<root>'}: schema {sorted(props)} vs dataclass {sorted(fields)}"
        instance = cls()
        for key, sub in props.items():
            if sub.get("type") == "object" and "properties" in sub:
                assert dataclasses.is_dataclass(hints[key]), f"{path}{key} is not a dataclass section"
                compare(sub["properties"], hints[key], f"{path}{key}.")
            else:
                value = getattr(instance, key)
                value = list(value) if isinstance(value, tuple) else value
                assert value == sub["default"], f"{path}{key}: dataclass {value!r} != schema default {sub['default']!r}"

    compare(schema["properties"], Config)
    assert Config().to_dict() == config_from_dict({}).to_dict()


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
    ({"data": {"n_train": None}}, "data.n_train"),                # synthetic needs counts
    ({"device": "tpu"}, "device"),                                # enum
    ({"experiment": "has space"}, "experiment"),                  # pattern
    ({"network": {"blocks_per_stage": [1, 1, 1]}}, "network.blocks_per_stage"),  # array length
    ({"network": {"conv1_kernel": 4}}, "network.conv1_kernel"),   # even kernel
    ({"train": {"lr": 0}}, "train.lr"),                           # exclusive minimum
    ({"train": {"steps": 10, "warmup_steps": 50}}, "train.warmup_steps"),
    ({"tracking": {"enabled": "yes"}}, "tracking.enabled"),
    ({"data": []}, "data"),                                       # wrong container type
]


@pytest.mark.parametrize("raw, key", INVALID, ids=[k for _, k in INVALID])
def test_invalid_config_rejected_naming_key(raw, key):
    with pytest.raises(ValueError) as err:
        resolve_config(raw)
    assert key in str(err.value), str(err.value)


def test_non_mapping_config_is_a_type_error():
    with pytest.raises(TypeError):
        resolve_config(["not", "a", "mapping"])


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
