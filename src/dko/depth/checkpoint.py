"""Monodepth2 checkpoint files: ``encoder.pth`` and ``depth.pth``.

Monodepth2 saves ``encoder.state_dict()`` of its ``ResnetEncoder`` (a torchvision ResNet under the
attribute ``encoder``: keys ``encoder.conv1.weight``, ``encoder.layer1.0.bn1.running_mean``, ...,
including the unused ImageNet classifier ``encoder.fc.weight`` / ``encoder.fc.bias``) plus the extra
entries ``height``, ``width`` (training resolution, ints) and ``use_stereo`` (bool); ``depth.pth`` is the
``DepthDecoder`` state_dict (``decoder.0.conv.conv.weight``, ...). :class:`dko.depth.model.DepthNet`
uses the same names, so these files load directly (and files written here load into Monodepth2).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dko.io import atomic_path, check_format

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.pth"
DECODER_FILE = "depth.pth"
ENCODER_EXTRA_KEYS = ("height", "width", "use_stereo")
IMAGENET_CLASSES = 1000


def save_monodepth2(model, out_dir: str | Path, height: int, width: int) -> tuple[Path, Path]:
    """Write ``encoder.pth`` / ``depth.pth`` of a :class:`DepthNet` in Monodepth2's format (atomically).

    The classifier ``encoder.fc.*`` (zeros; ImageNet's 1000 classes) is included so Monodepth2's strict
    ``load_state_dict`` accepts the file. Returns the two paths.
    """
    out_dir = Path(out_dir)
    enc = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
    c4 = model.encoder.num_ch_enc[-1]
    enc["encoder.fc.weight"] = torch.zeros(IMAGENET_CLASSES, c4)
    enc["encoder.fc.bias"] = torch.zeros(IMAGENET_CLASSES)
    enc["height"], enc["width"], enc["use_stereo"] = int(height), int(width), False
    dec = {k: v.detach().cpu().clone() for k, v in model.decoder.state_dict().items()}
    paths = []
    for name, state in ((ENCODER_FILE, enc), (DECODER_FILE, dec)):
        with atomic_path(out_dir / name) as tmp:
            torch.save(state, tmp)
        paths.append(out_dir / name)
    return paths[0], paths[1]


def _load_into(module: torch.nn.Module, state: dict, path: Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` strictly, except that BatchNorm step counters (``*.num_batches_tracked``) may be absent, as
    in files saved by older PyTorch versions or stripped ones (Monodepth2's own loader accepts them too): they
    keep the module's values (unused: the BatchNorm layers have a fixed momentum)."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    counters = [k for k in set(own) - set(state) if k.endswith(".num_batches_tracked")]
    if counters:
        log.info("checkpoint '%s' has no BatchNorm num_batches_tracked (%d entries): keeping the network's", path,
                 len(counters))
        state.update({k: own[k] for k in counters})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint '{path}' does not match the network (check network.blocks_per_stage / "
                         f"base_width / decoder_channels): missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"checkpoint '{path}': key '{k}' has shape {shape}, the network expects "
                             f"{tuple(own[k].shape)} (check network.conv1_kernel / base_width)")
    module.load_state_dict(state, strict=True)


def load_monodepth2(model, in_dir: str | Path) -> dict:
    """Load ``encoder.pth`` / ``depth.pth`` from ``in_dir`` into a :class:`DepthNet` (CPU-mapped).

    Returns ``{"height": int | None, "width": int | None, "use_stereo": bool | None}`` from the encoder file.
    Raises ValueError naming the file and key when a file is missing, unreadable or does not fit the network.
    """
    in_dir = Path(in_dir)
    states = {}
    for name in (ENCODER_FILE, DECODER_FILE):
        path = in_dir / name
        if not path.is_file():
            raise ValueError(f"Monodepth2 checkpoint file '{path}' does not exist")
        try:
            states[name] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - report any unreadable file the same way
            raise ValueError(f"Monodepth2 checkpoint file '{path}' could not be read: {exc}") from exc
        if not isinstance(states[name], dict):
            raise ValueError(f"Monodepth2 checkpoint file '{path}' is not a state dict")
    enc = dict(states[ENCODER_FILE])
    extras = {k: enc.pop(k, None) for k in ENCODER_EXTRA_KEYS}
    extras = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in extras.items()}
    _load_into(model.encoder, enc, in_dir / ENCODER_FILE, ignore_prefixes=("encoder.fc.",))
    _load_into(model.decoder, states[DECODER_FILE], in_dir / DECODER_FILE)
    log.info("loaded Monodepth2 checkpoint from %s (trained at %sx%s)", in_dir, extras["height"], extras["width"])
    return extras


# ----------------------------------------------------------------------------- DKO's own model file
MODEL_FORMAT = "dko.depthnet/1"


def save_depthnet(model, path: str | Path, **info) -> Path:
    """Write a trained :class:`DepthNet` to ``path`` (atomically): format tag, ``arch`` (constructor
    arguments), CPU ``state_dict`` and any JSON-like ``info`` (config, dataset meta, steps)."""
    path = Path(path)
    payload = {"format": MODEL_FORMAT, "arch": dict(model.arch),
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, **info}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_depthnet(path: str | Path, device: str | torch.device = "cpu"):
    """Read a file written by :func:`save_depthnet`; returns ``(model in eval mode on device, payload)``."""
    from dko.depth.model import build_from_arch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file '{path}' does not exist (run train_electronic)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"model file '{path}' could not be read: {exc}") from exc
    check_format(payload, MODEL_FORMAT, path, "model file")
    model = build_from_arch(payload["arch"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload
