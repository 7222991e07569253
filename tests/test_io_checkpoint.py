"""dko.io's file-format guard, run keys and checkpoint reader (one of each for stage 1, E2E and the DKO shards)."""

import logging

import numpy as np
import pytest
import torch

from dko.io import check_format, read_checkpoint, run_key

SETTINGS = {"seed": 1, "train": {"lr": 0.1, "log_every": 5}, "dko": {"steps": 10, "lr": 0.05}, "tracking": {"uri": "a"}}


# ----------------------------------------------------------------------------- check_format
def test_check_format_accepts_the_expected_tag_in_a_dict_and_an_npz(tmp_path):
    check_format({"format": "dko.x/1"}, "dko.x/1", tmp_path / "a.pt")
    np.savez(tmp_path / "a.npz", format=np.array("dko.x/1"), data=np.zeros(2))
    with np.load(tmp_path / "a.npz") as archive:
        check_format(archive, "dko.x/1", tmp_path / "a.npz")


@pytest.mark.parametrize("obj, found", [({"format": "dko.y/2"}, "format 'dko.y/2'"), ({"x": 1}, "no format tag"),
                                        (torch.zeros(2), "no format tag"), ([1, 2], "no format tag")])
def test_check_format_names_the_file_the_expected_and_the_found_format(tmp_path, obj, found):
    with pytest.raises(ValueError, match=rf"model file '.*m\.pt' is not a dko\.x/1 file \(found {found}"):
        check_format(obj, "dko.x/1", tmp_path / "m.pt", "model file")


# ----------------------------------------------------------------------------- run_key
def test_run_key_ignores_excluded_keys_only():
    exclude = ("train.log_every", "tracking", "absent.key")
    key = run_key(SETTINGS, exclude=exclude)
    assert len(key) == 16 and int(key, 16) >= 0
    changed_bookkeeping = {**SETTINGS, "train": {"lr": 0.1, "log_every": 50}, "tracking": {"uri": "b"}}
    assert run_key(changed_bookkeeping, exclude=exclude) == key
    assert run_key(SETTINGS) != key  # nothing excluded: the bookkeeping counts
    assert run_key({**SETTINGS, "train": {"lr": 0.2, "log_every": 5}}, exclude=exclude) != key
    assert run_key({**SETTINGS, "dko": {"steps": 10, "lr": 0.06}}, exclude=exclude) != key
    # a section with only excluded keys left hashes like the empty section, not like a missing one
    assert run_key({"train": {"log_every": 1}}, exclude=("train.log_every",)) != run_key({})


def test_run_key_hashes_the_extras_and_raw_bytes():
    key = run_key(SETTINGS, extra={"variant": "optics"})
    assert run_key(dict(reversed(list(SETTINGS.items()))), extra={"variant": "optics"}) == key  # key order free
    assert run_key(SETTINGS, extra={"variant": "scratch"}) != key
    assert run_key(SETTINGS) != key
    with_bytes = run_key(SETTINGS, extra={"variant": "optics"}, extra_bytes=[np.ones(3, np.float32).tobytes()])
    assert with_bytes != key
    assert run_key(SETTINGS, extra={"variant": "optics"}, extra_bytes=[np.zeros(3, np.float32).tobytes()]) != with_bytes


# ----------------------------------------------------------------------------- read_checkpoint
def test_read_checkpoint_resumes_only_a_readable_one_of_the_format_and_run_key(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    assert read_checkpoint(path, "k", "dko.x/1") is None  # none there: nothing to say
    torch.save({"format": "dko.x/1", "run_key": "k", "step": 3, "p": torch.zeros(2)}, path)
    assert read_checkpoint(path, "k", "dko.x/1")["step"] == 3

    cases = [
        (lambda: read_checkpoint(path, "other", "dko.x/1"), "different settings"),
        (lambda: read_checkpoint(path, "k", "dko.y/1"), "is not a dko.y/1 file (found format 'dko.x/1')"),
        (lambda: read_checkpoint(path, "k", "dko.x/1", validate=lambda c: "p has the wrong shape"),
         "p has the wrong shape"),
    ]
    for read, reason in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dko.io"):
            assert read() is None
        assert str(path) in caplog.text and reason in caplog.text, caplog.text
    assert read_checkpoint(path, "k", "dko.x/1", validate=lambda c: None)["step"] == 3

    path.write_bytes(b"not a torch file")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dko.io"):
        assert read_checkpoint(path, "k", "dko.x/1") is None
    assert str(path) in caplog.text and "starting from scratch" in caplog.text


# ----------------------------------------------------------------------------- the readers that use them
def _foreign_pt(path):
    torch.save({"format": "dko.other/9"}, path)
    return path


def _foreign_npz(path):
    np.savez(path, format=np.array("dko.other/9"))
    return path


@pytest.mark.parametrize("reader, what, expected, write", [
    ("dko.depth.checkpoint:load_depthnet", "model file", "dko.depthnet/1", _foreign_pt),
    ("dko.frontend:load_kernel_bank", "kernel bank file", "dko.kernelbank/1", _foreign_pt),
    ("dko.stage2:load_shard", "shard file", "dko.shard/1", _foreign_pt),
    ("dko.frontend:load_frontend", "front-end file", "dko.frontend/1", _foreign_npz),
])
def test_every_file_reader_names_the_file_and_both_formats(tmp_path, reader, what, expected, write):
    import importlib

    module, name = reader.split(":")
    path = write(tmp_path / ("f.npz" if write is _foreign_npz else "f.pt"))
    with pytest.raises(ValueError, match=rf"{what} '{path}' is not a {expected} file \(found format 'dko.other/9'\)"):
        getattr(importlib.import_module(module), name)(path)


def test_design_optimisation_ignores_a_checkpoint_without_its_format_tag(tmp_path, caplog):
    from dko.dko import optimize_designs

    def psf_fn(p):
        return torch.nn.functional.softmax(p.reshape(1, -1), dim=-1).reshape(1, 1, 5, 5), None

    targets, p0, ck = torch.full((1, 3, 3), 1 / 9), torch.zeros(1, 5, 5), tmp_path / "ck.pt"
    optimize_designs(p0, targets, psf_fn, steps=3, lr=0.1, checkpoint_path=ck, run_key="a")
    state = torch.load(ck, weights_only=False)
    assert state["format"] == "dko.designstate/1"
    ran = []
    optimize_designs(p0, targets, psf_fn, steps=4, lr=0.1, checkpoint_path=ck, run_key="a",
                     on_metrics=lambda step, m: ran.append(step))
    assert ran == [3]  # resumed: only the fourth step runs
    optimize_designs(p0, targets, psf_fn, steps=3, lr=0.1, checkpoint_path=ck, run_key="a")
    state = torch.load(ck, weights_only=False)
    state.pop("format")
    torch.save(state, ck)
    ran.clear()
    with caplog.at_level(logging.WARNING, logger="dko.io"):
        optimize_designs(p0, targets, psf_fn, steps=4, lr=0.1, checkpoint_path=ck, run_key="a",
                         on_metrics=lambda step, m: ran.append(step))
    assert "is not a dko.designstate/1 file" in caplog.text and ran == [0, 1, 2, 3]  # started over
