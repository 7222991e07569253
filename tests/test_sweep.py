"""Sweeps: grid / table expansion, point ids, per-point validation, and DAG expansion."""

import subprocess

import pytest
import yaml

from dko.config import config_from_dict, resolve_config
from dko.sweep import point_config, point_id, point_overrides, sweep_points, sweep_table


def _base(**sweep):
    return resolve_config({"experiment": "sw", "sweep": sweep})


def test_no_sweep_means_no_points():
    assert sweep_points(_base()) == {}
    assert sweep_table(_base()) is None


def test_grid_is_a_cartesian_product_with_typed_values():
    points = sweep_points(_base(grid={"seed": [0, 1, 2], "data.min_depth_m": [0.5, 2.0]}))
    assert len(points) == 6
    assert "seed~2__data.min_depth_m~0.5" in points
    cfg = config_from_dict(points["seed~2__data.min_depth_m~0.5"])
    assert cfg.seed == 2 and isinstance(cfg.seed, int)
    assert cfg.data.min_depth_m == 0.5
    assert cfg.data.height == 96  # untouched keys keep the base value
    assert cfg.sweep.grid == {}   # a point is not itself a sweep


def test_table_file(tmp_path):
    table = tmp_path / "points.tsv"
    table.write_text("seed\tdata.height\n0\t32\n5\t48\n")
    points = sweep_points(_base(table=str(table)))
    assert list(points) == ["seed~0__data.height~32", "seed~5__data.height~48"]
    assert point_config(_base(table=str(table)), "seed~5__data.height~48")["data"]["height"] == 48


def test_round_trip_of_point_ids():
    ident = point_id({"seed": 3, "sensor.read_noise_e": 4.0})
    assert point_overrides(ident) == {"seed": "3", "sensor.read_noise_e": "4.0"}


@pytest.mark.parametrize("sweep, match", [
    ({"grid": {"seed": [-1, 1]}}, "seed~-1"),                       # invalid value names the point
    ({"grid": {"data.heigth": [32]}}, "data.heigth"),                # unknown key
    ({"grid": {"nosuchsection.x": [1]}}, "nosuchsection.x"),
    ({"grid": {"seed": [0]}, "table": "x.tsv"}, "exclusive"),
    ({"table": "/no/such/table.tsv"}, "does not exist"),
    ({"grid": {"experiment": ["a/b"]}}, "cannot name a folder"),
])
def test_bad_sweeps_are_rejected(sweep, match):
    with pytest.raises(ValueError, match=match):
        sweep_points(_base(**sweep))


def test_sweep_expands_the_dag(tmp_path, repo_root, venv_bin):
    raw = {"experiment": "sw", "results_dir": str(tmp_path / "r"),
           "data": {"height": 32, "width": 96, "n_train": 8, "n_val": 2, "n_test": 2},
           "sweep": {"grid": {"seed": [0, 1], "data.min_depth_m": [0.5, 1.0]}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.run([str(venv_bin / "snakemake"), "-n", "--cores", "1", "--configfile", str(path),
                           "--directory", str(repo_root)], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (0, 1):
        for depth in ("0.5", "1.0"):
            assert f"/sw/sweep/seed~{seed}__data.min_depth_m~{depth}/data/meta.json" in proc.stdout + proc.stderr
