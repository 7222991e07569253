"""dko.config.restrict_config: a job's view of the config (declared keys only), and declared_config (its params)."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dko.config import (Config, is_execution_key, TrainConfig, UndeclaredConfigRead, config_from_dict, declared_config,
                        leaf_keys, restrict_config)

CFG = config_from_dict({}, check_paths=False)


def test_declared_keys_read_through_undeclared_raise():
    view, reads = restrict_config(CFG, ["train", "optics.wavelengths_m", "seed"], job="unit")
    assert view.train.steps == CFG.train.steps and view.optics.wavelengths_m == CFG.optics.wavelengths_m
    assert view.seed == CFG.seed
    with pytest.raises(UndeclaredConfigRead, match=r"job unit reads config key 'optics.superpixel_m'"):
        view.optics.superpixel_m
    with pytest.raises(UndeclaredConfigRead, match="'data.height'"):
        getattr(view.data, "height", None)  # not an AttributeError: a default cannot hide the read
    assert reads.read == {"train.steps", "optics.wavelengths_m", "seed"}


def test_the_view_keeps_the_types():
    view, _ = restrict_config(CFG, ["train"], job="unit")
    assert isinstance(view, Config) and isinstance(view.train, TrainConfig)
    assert dataclasses.is_dataclass(view.train) and view.train.steps == CFG.train.steps
    assert "unit" in repr(view)


def test_execution_keys_are_free_and_not_recorded():
    view, reads = restrict_config(CFG, [], job="unit")
    assert (view.experiment, view.results_dir, view.device, view.threads, view.tracking.enabled) == \
        (CFG.experiment, CFG.results_dir, CFG.device, CFG.threads, CFG.tracking.enabled)
    assert reads.read == set()
    with pytest.raises(ValueError, match="execution key"):
        restrict_config(CFG, ["tracking.uri"], job="unit")


def test_an_execution_key_inside_a_declared_section_stays_out_of_the_params():
    params = declared_config(CFG.to_dict(), ["data"])
    assert "workers" not in params["data"] and params["data"]["height"] == CFG.data.height
    view, reads = restrict_config(CFG, ["data"], job="unit")
    assert view.data.workers == CFG.data.workers and reads.read == set()
    assert "workers" not in view.to_dict()["data"]


def test_unknown_declared_keys_are_rejected():
    with pytest.raises(ValueError, match=r"'train.nonsense' is not a config key"):
        restrict_config(CFG, ["train.nonsense"], job="unit")
    with pytest.raises(ValueError, match=r"'nosection' is not a config key"):
        restrict_config(CFG, ["nosection"], job="unit")


def test_to_dict_of_a_view_holds_only_the_declared_keys_and_records_nothing():
    view, reads = restrict_config(CFG, ["train.steps", "dko", "seed"], job="unit")
    plain = view.to_dict()
    assert plain == {"seed": CFG.seed, "train": {"steps": CFG.train.steps}, "dko": CFG.to_dict()["dko"]}
    assert reads.read == set()
    assert plain == declared_config(CFG.to_dict(), ["train.steps", "dko", "seed"])


def test_declared_config_sorts_its_keys():
    params = declared_config(CFG.to_dict(), ["train", "data.height", "seed"])
    assert list(params) == ["data", "seed", "train"] and list(params["train"]) == sorted(params["train"])


@settings(max_examples=60, deadline=None)
@given(st.sets(st.sampled_from([k for k in leaf_keys() if not is_execution_key(k)]), max_size=8))
def test_exactly_the_declared_leaves_are_readable(declared):
    view, reads = restrict_config(CFG, sorted(declared), job="prop")
    for key in leaf_keys():
        if is_execution_key(key):
            continue
        obj = view
        *sections, leaf = key.split(".")
        for name in sections:
            obj = getattr(obj, name)
        if key in declared:
            getattr(obj, leaf)
        else:
            with pytest.raises(UndeclaredConfigRead):
                getattr(obj, leaf)
    assert reads.read == set(declared)
