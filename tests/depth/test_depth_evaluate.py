"""Evaluation of the reference predictors and a trained model on a tiny dataset with a known answer."""

import json

import numpy as np
import pytest

from dko.config import config_from_dict
from dko.data.format import load_split
from dko.catalogue import evaluate_model
from dko.depth.evaluate import MeanDepthPredictor, RowMeanPredictor, evaluate_predictor, evaluate_predictor_model


def test_reference_predictors_hand_values(row_dataset, tmp_path):
    # depth[r] = 2 + r for r = 1..31 (row 0 invalid), identical in every image.
    train = load_split(row_dataset, "train")
    mean = MeanDepthPredictor(train.depth, 1.0, 80.0)
    rows = 2.0 + np.arange(1, 32)
    assert mean.mean_depth_m == pytest.approx(rows.mean())
    rowmean = RowMeanPredictor(train.depth, 1.0, 80.0)
    assert rowmean.row_depth_m[1:] == pytest.approx(rows)
    assert rowmean.row_depth_m[0] == pytest.approx(rows.mean())  # no valid pixel in row 0: global mean

    test = load_split(row_dataset, "test")
    res = evaluate_predictor(rowmean, test, "synthetic", 1.0, 80.0)
    assert res["metrics"]["abs_rel"] == pytest.approx(0.0, abs=1e-6) and res["metrics"]["a1"] == 1.0
    res = evaluate_predictor(mean, test, "synthetic", 1.0, 80.0, batch_size=2)
    assert res["n_images"] == 3
    assert res["metrics"]["abs_rel"] == pytest.approx(np.mean(np.abs(rows - rows.mean()) / rows), rel=1e-5)
    assert res["metrics"]["rmse"] == pytest.approx(np.sqrt(np.mean((rows - rows.mean()) ** 2)), rel=1e-5)


def test_evaluate_model_writes_metrics_and_figure(row_dataset, tmp_path):
    cfg = config_from_dict({"eval": {"n_figure_images": 2, "median_scaling": True}})
    res = evaluate_model(cfg, "mean", row_dataset, tmp_path / "mean")
    written = json.loads((tmp_path / "mean" / "metrics.json").read_text())
    assert written["metrics"] == pytest.approx(res["metrics"])
    assert written["median_scaling"] is True and written["model"] == "mean" and written["protocol"] == "synthetic"
    # Median scaling turns the constant mean into each image's median: abs rel of median vs the rows.
    rows = 2.0 + np.arange(1, 32)
    assert written["metrics"]["abs_rel"] == pytest.approx(np.mean(np.abs(rows - np.median(rows)) / rows), rel=1e-5)
    assert (tmp_path / "mean" / "examples.png").stat().st_size > 1000
    arrays = np.load(tmp_path / "mean" / "examples.npz")  # the figure's data, for dko.compare
    assert arrays["images"].shape[0] == arrays["depth"].shape[0] == arrays["pred"].shape[0] == 2
    assert arrays["pred"].shape == arrays["depth"].shape and arrays["images"].dtype == np.uint8
    assert np.all(arrays["pred"] == arrays["pred"][0, 0, 0])  # the mean predictor is constant
    with pytest.raises(ValueError, match="unknown model"):
        evaluate_model(cfg, "nonexistent", row_dataset, tmp_path / "x")


def test_any_predictor_builder_plugs_in(row_dataset, tmp_path):
    def build(ctx):
        rm = RowMeanPredictor(load_split(ctx.data_dir, "train").depth, 1.0, 80.0)
        return lambda images: 2 * rm(images)

    cfg = config_from_dict({"eval": {"n_figure_images": 1}})
    res = evaluate_predictor_model(cfg, "test_double_rowmean", build, row_dataset, tmp_path / "d")
    assert res["model"] == "test_double_rowmean"
    assert res["metrics"]["abs_rel"] == pytest.approx(1.0, rel=1e-5)  # twice the truth, up to the 80 m clip
