import math

import pytest
import torch

from dko.dko import OptimizationError, center_window, fidelity_metrics, kernel_loss, loss_window, optimize_designs


def _gauss(n, sigma, shift=0.0):
    x = torch.arange(n, dtype=torch.float64) - n // 2 - shift
    g = torch.exp(-x[:, None] ** 2 / (2 * sigma ** 2) - x[None] ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def test_fidelity_perfect_psf_is_exact():
    t = torch.stack([_gauss(5, 1.0), _gauss(5, 0.7)])
    m = fidelity_metrics(center_window(t, 11), t)
    assert torch.allclose(m["rel_l2"], torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(m["energy_in_window"], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(m["ncc"], torch.ones(2, dtype=torch.float64))


def test_fidelity_hand_computed():
    t = torch.zeros(1, 3, 3, dtype=torch.float64)
    t[0, 1, 1] = 1.0
    psf = torch.zeros(1, 5, 5, dtype=torch.float64)
    psf[0, 2, 2] = 0.5   # inside the 3x3 window
    psf[0, 0, 0] = 0.5   # outside
    psf[0, 2, 3] = 0.25  # inside, off centre
    m = fidelity_metrics(psf, t, total_power=torch.tensor([1.0]))
    # crop normalised: centre 2/3, neighbour 1/3 -> error sqrt((1/3)^2 + (1/3)^2) / 1
    assert m["rel_l2"].item() == pytest.approx(math.sqrt(2) / 3)
    assert m["energy_in_window"].item() == pytest.approx(0.75)
    # ncc by hand: crop = [.5 at centre, .25 right], target = 1 at centre (9 px)
    a = torch.zeros(9, dtype=torch.float64); a[4] = 0.5; a[5] = 0.25
    b = torch.zeros(9, dtype=torch.float64); b[4] = 1.0
    a, b = a - a.mean(), b - b.mean()
    assert m["ncc"].item() == pytest.approx(float((a @ b) / (a.norm() * b.norm())))


def test_loss_window_and_leakage_penalised():
    assert loss_window(7, 2.0) == 15 and loss_window(3, 1.0) == 3
    t = _gauss(3, 0.8)[None]
    inside = center_window(t, 9)[None]
    leaky = inside.clone()
    leaky[..., 0, 0] += 0.3
    l0, _ = kernel_loss(inside, t, window_factor=3.0)
    l1, _ = kernel_loss(leaky, t, window_factor=3.0)
    assert l0.item() == pytest.approx(0.0, abs=1e-15) and l1.item() > 0


def _toy_psf_fn(p):
    # a differentiable toy "optics": PSF = softmax of the design map (D=1, efficiency = sigmoid mean)
    psf = torch.softmax(p.flatten(1), dim=1).reshape(p.shape)
    return psf[None], torch.sigmoid(p.mean(dim=(-2, -1)))[None]


def test_optimisation_reduces_loss_and_resumes(tmp_path):
    torch.manual_seed(0)
    targets = torch.stack([_gauss(3, 0.6), _gauss(3, 1.2, shift=0.5)]).float()
    p0 = 0.01 * torch.randn(2, 7, 7)
    seen = []
    p, hist = optimize_designs(p0, targets, _toy_psf_fn, steps=60, lr=0.2, plateau_patience=0,
                               checkpoint_path=tmp_path / "ck.pt", checkpoint_every=20,
                               on_metrics=lambda s, m: seen.append(s))
    assert seen == list(range(60))
    assert hist[-1]["loss"] < 0.2 * hist[0]["loss"]
    assert math.isfinite(hist[-1]["efficiency"])
    # resume: a finished checkpoint with more steps continues from step 60
    _, hist2 = optimize_designs(p0, targets, _toy_psf_fn, steps=70, lr=0.2, plateau_patience=0,
                                checkpoint_path=tmp_path / "ck.pt")
    assert len(hist2) == 70 and hist2[:60] == hist


def test_nan_guard():
    targets = _gauss(3, 0.6)[None].float()

    def bad(p):
        return (p * float("nan"))[None], None

    with pytest.raises(OptimizationError, match="step 0"):
        optimize_designs(torch.zeros(1, 5, 5), targets, bad, steps=5)


def test_plateau_does_not_stop_a_slow_steady_descent():
    """A loss falling by 0.05 % per step never improves by 0.1 % in one step, but does over the patience."""
    p0 = torch.zeros(1, 2, 2)
    targets = torch.ones(1, 3, 3) / 9
    calls = {"n": 0}

    def psf_fn(p):
        calls["n"] += 1
        scale = 0.9995 ** calls["n"]  # the shape loss shrinks geometrically, whatever p does
        psf = center_window(torch.ones(1, 1, 3, 3) / 9, 3) + (p.sum() * 0 + scale) * torch.eye(3)[None, None] * 0.1
        return psf, None

    _, hist = optimize_designs(p0, targets, psf_fn, steps=300, lr=0.01, plateau_patience=20, plateau_rel_tol=1e-3)
    assert len(hist) == 300
    flat = lambda p: (torch.ones(1, 1, 3, 3) / 9 + p.sum() * 0 + 0.01 * torch.eye(3)[None, None], None)  # noqa: E731
    _, hist = optimize_designs(p0, targets, flat, steps=300, lr=0.01, plateau_patience=20, plateau_rel_tol=1e-3)
    assert len(hist) == 21  # a constant loss stops after the patience


def test_checkpoint_of_other_settings_is_ignored(tmp_path):
    targets = torch.stack([_gauss(3, 0.8)])
    p0 = torch.zeros(1, 5, 5)

    def psf_fn(p):
        psf = torch.nn.functional.softmax(p.reshape(1, -1), dim=-1).reshape(1, 1, 5, 5)
        return psf, None

    ck = tmp_path / "ck.pt"
    optimize_designs(p0, targets, psf_fn, steps=5, lr=0.1, checkpoint_path=ck, run_key="a")
    assert torch.load(ck, weights_only=False)["run_key"] == "a"
    # other settings: starts over (5 fresh steps), no error
    _, history = optimize_designs(p0, targets, psf_fn, steps=5, lr=0.1, checkpoint_path=ck, run_key="b")
    assert len(history) == 5
    # same settings, more steps: resumes from step 5
    _, history = optimize_designs(p0, targets, psf_fn, steps=8, lr=0.1, checkpoint_path=ck, run_key="b")
    assert len(history) == 8
    # two elements instead of one (other shape), same key: starts over
    _, history = optimize_designs(torch.zeros(2, 5, 5), targets.expand(2, 3, 3), lambda p: (
        torch.nn.functional.softmax(p.reshape(2, -1), dim=-1).reshape(1, 2, 5, 5), None), steps=3, lr=0.1,
        checkpoint_path=ck, run_key="b")
    assert len(history) == 3
    ck.write_bytes(b"not a checkpoint")
    _, history = optimize_designs(p0, targets, psf_fn, steps=2, lr=0.1, checkpoint_path=ck, run_key="c")
    assert len(history) == 2


class _Killed(RuntimeError):
    pass


@pytest.mark.parametrize("patience", [0, 4])
def test_resume_keeps_a_best_design_found_before_the_checkpoint(tmp_path, patience):
    """The best loss comes at step 0 (the start is the optimum) and is never beaten afterwards (lr far too large):
    a run killed after its checkpoint and resumed returns the same design, history and stop step as one
    uninterrupted run (the best design and the plateau counter travel in the checkpoint)."""
    logits = torch.randn(1, 5, 5, generator=torch.Generator().manual_seed(1))

    def psf_fn(p):
        return torch.nn.functional.softmax(p.reshape(1, -1), dim=-1).reshape(1, 1, 5, 5), None

    targets = center_window(psf_fn(logits)[0][0], 5)
    start = logits + 0.01 * torch.randn(1, 5, 5, generator=torch.Generator().manual_seed(2))
    kwargs = dict(steps=12, lr=3.0, window_factor=1.0, plateau_patience=patience, checkpoint_every=2)
    best_full, hist_full = optimize_designs(start, targets, psf_fn, checkpoint_path=tmp_path / "full.pt", **kwargs)
    assert all(h["loss"] > hist_full[0]["loss"] for h in hist_full[1:])  # the premise of the test

    def kill_at_step_3(step, metrics):
        if step == 3:
            raise _Killed

    ck = tmp_path / "killed.pt"
    with pytest.raises(_Killed):
        optimize_designs(start, targets, psf_fn, checkpoint_path=ck, on_metrics=kill_at_step_3, **kwargs)
    assert torch.load(ck, weights_only=False)["step"] == 2
    best_resumed, hist_resumed = optimize_designs(start, targets, psf_fn, checkpoint_path=ck, **kwargs)
    assert [h["loss"] for h in hist_resumed] == [h["loss"] for h in hist_full]
    assert len(hist_full) == (12 if patience == 0 else patience + 1)
    assert torch.equal(best_resumed, best_full) and torch.equal(best_full, start)


def test_checkpoint_without_best_design_starts_over(tmp_path):
    """A checkpoint written before the best design was recorded is not resumed from (it would return a worse one)."""
    targets = torch.stack([_gauss(3, 0.8)])
    p0 = torch.zeros(1, 5, 5)

    def psf_fn(p):
        return torch.nn.functional.softmax(p.reshape(1, -1), dim=-1).reshape(1, 1, 5, 5), None

    ck = tmp_path / "ck.pt"
    optimize_designs(p0, targets, psf_fn, steps=5, lr=0.1, checkpoint_path=ck, run_key="a")
    old = torch.load(ck, weights_only=False)
    for key in ("best_p", "best", "plateau_ref", "since_best"):
        old.pop(key)
    torch.save(old, ck)
    _, history = optimize_designs(p0, targets, psf_fn, steps=8, lr=0.1, checkpoint_path=ck, run_key="a")
    assert len(history) == 8 and history[0]["loss"] == pytest.approx(optimize_designs(
        p0, targets, psf_fn, steps=1, lr=0.1)[1][0]["loss"])
