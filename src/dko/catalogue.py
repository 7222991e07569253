"""The catalogue: every evaluated model and every job's config, declared once.

**Models** (:data:`MODELS`): name -> :class:`Model`: how it predicts (a builder of a predictor), the files its
evaluation reads, the training stages it depends on (their budgets are its training cost in ``dko.compare``),
the config keys its predictor reads, and whether a configuration includes it. The Snakemake rules derive the
evaluate targets and inputs from it, :func:`evaluate_model` dispatches through it, ``dko.compare`` takes the stages
from it. Adding a model variant is one entry here.

**Jobs** (:data:`RULE_CONFIG` and :func:`job_config_keys`): the config keys each rule's job reads. A rule's
``params`` carry exactly these keys' values (:func:`dko.config.declared_config`), so Snakemake reruns a job when,
and only when, a key it reads changes; ``dko.workflow.run_job`` hands the job a view of the config in which
every other key raises :class:`dko.config.UndeclaredConfigRead` and logs the keys it read. The execution keys
(:data:`dko.config.EXECUTION_KEYS`: experiment, results_dir, device, threads, tracking, data.workers) are readable by every job
and never rerun one. A declaration entry is a dotted leaf key (``optics.wavelengths_m``) or a whole section.
Keys that a job reads only under some settings are declared under those settings (:data:`CONDITIONAL_READS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from dko.config import Config, leaf_keys, load_schema
from dko.depth.evaluate import PredictFn, PredictorContext, build_electronic, build_mean, build_rowmean

E2E_VARIANTS: tuple[str, ...] = tuple(load_schema()["properties"]["e2e"]["properties"]["variants"]["items"]["enum"])
"""The E2E variants (the schema's values of ``e2e.variants``): ``optics`` trains the metasurface before the frozen
stage-1 back-end, ``scratch`` trains metasurface and back-end jointly from scratch."""


# ----------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """A training stage: the folder of its outputs (relative to the experiment) and whether it writes curves."""

    name: str
    curves: bool

    @property
    def budget_file(self) -> str:
        return f"{self.name}/budget.json"

    @property
    def curves_file(self) -> str | None:
        return f"{self.name}/curves.csv" if self.curves else None


STAGES: dict[str, Stage] = {
    "stage1": Stage("stage1", curves=True),
    "dko": Stage("dko", curves=False),
    **{f"e2e/{v}": Stage(f"e2e/{v}", curves=True) for v in E2E_VARIANTS},
}


def stage_order(stage: str) -> tuple[int, str]:
    """Sort key: stage 1, then DKO, then the E2E stages."""
    return ({"stage1": 0, "dko": 1}.get(stage, 2), stage)


# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Model:
    """One evaluated model.

    Attributes:
        name: the model name (``evaluate/<name>/``).
        method: ``reference``, ``electronic``, ``dko`` or ``e2e``.
        variant: e.g. ``layered`` (dko_layered), ``optics`` (e2e_optics); empty for the method's plain model.
        noisy: whether evaluation adds sensor noise.
        build: ``build(ctx: PredictorContext) -> PredictFn``.
        inputs: files its evaluation reads, ``{input name: path relative to the experiment folder}``.
        stages: training stages it depends on (keys of :data:`STAGES`), in order.
        reads: config keys its predictor reads (beyond every evaluation's :data:`EVALUATE_KEYS`).
        e2e_variant: the ``e2e.variants`` entry that includes it (None: always included).
        optical_model: ``faithful`` (image formation in the faithful optical model: the design's
            ``frontend_faithful.npz``, rule faithful_frontend), ``cheap`` (the model the design was optimised with:
            its ``frontend.npz``) or empty (no optics).
    """

    name: str
    method: str
    variant: str
    noisy: bool
    build: Callable[[PredictorContext], PredictFn]
    inputs: Mapping[str, str] = field(default_factory=dict)
    stages: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    e2e_variant: str | None = None
    optical_model: str = ""

    @property
    def noise(self) -> str:
        """``noisy`` or ``clean`` (the summary table's column)."""
        return "noisy" if self.noisy else "clean"

    def included(self, cfg: Config) -> bool:
        """Whether configuration ``cfg`` evaluates this model."""
        return self.e2e_variant is None or self.e2e_variant in cfg.e2e.variants


def _opto_builder(*, noise: bool, layered: bool) -> Callable[[PredictorContext], PredictFn]:
    def build(ctx: PredictorContext) -> PredictFn:
        from dko.frontend import build_opto_predictor  # torch-heavy: imported when a model is built

        return build_opto_predictor(ctx, noise=noise, layered=layered)

    return build


_STAGE1_MODEL = "stage1/model.pt"

DESIGNS: tuple[str, ...] = ("dko", *(f"e2e/{v}" for v in E2E_VARIANTS))
"""The metasurface designs (folders holding a ``frontend.npz``): DKO's and one per E2E variant. Each gets a GDSII
layout (rule metasurface_gds) and a faithful front end (rule faithful_frontend)."""

OPTICAL_MODELS: tuple[str, ...] = ("faithful", "cheap")


def frontend_file(design: str, optical_model: str) -> str:
    """The front-end file of ``design`` (a :data:`DESIGNS` folder) in ``optical_model``: ``<design>/frontend.npz``
    (cheap: as optimised) or ``<design>/frontend_faithful.npz`` (faithful: rule faithful_frontend)."""
    if design not in DESIGNS or optical_model not in OPTICAL_MODELS:
        raise ValueError(f"unknown design {design!r} or optical model {optical_model!r} (designs: {DESIGNS}; "
                         f"optical models: {OPTICAL_MODELS})")
    return f"{design}/frontend.npz" if optical_model == "cheap" else f"{design}/frontend_faithful.npz"
_OPTO_READS = ("seed",)  # the optics come from frontend.npz; the seed seeds the predictor's noise generator
_NOISE_READS = ("sensor",)


def _catalogue() -> dict[str, Model]:
    models = [
        Model("electronic", "electronic", "", False, build_electronic, {"model": _STAGE1_MODEL}, ("stage1",)),
        Model("mean", "reference", "mean", False, build_mean),
        Model("rowmean", "reference", "rowmean", False, build_rowmean),
    ]
    # (name suffix, noise, layered, optical model): the faithful image formation is what results report; the cheap
    # model's evaluation stands beside it. dko_layered needs PSFs at every depth layer's distance, which the faithful
    # front end (the design distance only) does not hold: it uses the cheap front end and says so (optical_model).
    dko_models = (("", False, False, "faithful"), ("_noisy", True, False, "faithful"),
                  ("_layered", False, True, "cheap"), ("_cheap", False, False, "cheap"))
    for suffix, noise, layered, optical in dko_models:
        inputs = {"model": _STAGE1_MODEL, "frontend": frontend_file("dko", optical), "teacher": _STAGE1_MODEL}
        models.append(Model(f"dko{suffix}", "dko", "layered" if layered else "", noise,
                            _opto_builder(noise=noise, layered=layered), inputs, ("stage1", "dko"),
                            _OPTO_READS + (_NOISE_READS if noise else ()), optical_model=optical))
    for variant in E2E_VARIANTS:
        stages = (("stage1",) if variant == "optics" else ()) + (f"e2e/{variant}",)
        for suffix, noise, optical in (("", False, "faithful"), ("_noisy", True, "faithful"), ("_cheap", False, "cheap")):
            inputs = {"model": f"e2e/{variant}/model.pt", "frontend": frontend_file(f"e2e/{variant}", optical),
                      "teacher": _STAGE1_MODEL}
            models.append(Model(f"e2e_{variant}{suffix}", "e2e", variant, noise, _opto_builder(noise=noise, layered=False),
                                inputs, stages, _OPTO_READS + (_NOISE_READS if noise else ()), e2e_variant=variant,
                                optical_model=optical))
    return {m.name: m for m in models}


MODELS: dict[str, Model] = _catalogue()


def model(name: str) -> Model:
    """The catalogue entry of model ``name``; ValueError naming the known models otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (the catalogue dko.catalogue.MODELS has: {', '.join(MODELS)})")
    return MODELS[name]


def evaluated_models(cfg: Config) -> list[str]:
    """The models configuration ``cfg`` evaluates (and ``compare`` gathers), in catalogue order."""
    return [m.name for m in MODELS.values() if m.included(cfg)]


def model_stages(models: Sequence[str]) -> list[str]:
    """The training stages the listed models depend on, in :func:`stage_order`."""
    return sorted({s for m in models for s in model(m).stages}, key=stage_order)


def evaluate_model(cfg: Config, name: str, data_dir: str | Path, out_dir: str | Path, *,
                   inputs: Mapping[str, str] | None = None, **kwargs: Any) -> dict:
    """Evaluate catalogue model ``name`` (:func:`dko.depth.evaluate.evaluate_predictor_model`; same keywords)."""
    from dko.depth.evaluate import evaluate_predictor_model

    entry = model(name)
    inputs = dict(inputs or {})
    missing = [k for k in entry.inputs if k not in inputs]
    if missing:
        raise ValueError(f"evaluating model '{name}' needs the input(s) {missing} "
                         f"({', '.join(entry.inputs[k] for k in missing)})")
    return evaluate_predictor_model(cfg, name, entry.build, data_dir, out_dir, inputs=inputs, **kwargs)


# ----------------------------------------------------------------------------- jobs
def n_shards(n_out: int, shard_size: int) -> int:
    """Number of optimize_metasurface jobs: ceil(n_out / shard_size) (n_out: conv1's output channels)."""
    if shard_size < 1 or n_out < 1:
        raise ValueError(f"need n_out >= 1 and dko.shard_size >= 1, got {n_out}, {shard_size}")
    return -(-n_out // shard_size)


def section(name: str, *, without: Sequence[str] = ()) -> tuple[str, ...]:
    """Every leaf key of config section ``name`` except ``without`` (leaf names): e.g. all of ``e2e`` but its
    variant list, which decides which jobs exist rather than what one computes."""
    leaves = [k.split(".", 1)[1] for k in leaf_keys() if k.startswith(name + ".")]
    unknown = sorted(set(without) - set(leaves))
    if not leaves or unknown:
        raise ValueError(f"config section '{name}' or its keys {unknown} do not exist")
    return tuple(f"{name}.{k}" for k in leaves if k not in without)


EVALUATE_KEYS: tuple[str, ...] = ("eval",)
"""Config keys every evaluation reads; a model adds its :attr:`Model.reads`."""

_OPTICS_GEOMETRY = section("optics", without=("wavelengths_m",))  # the wavelengths come with the kernel bank
_DKO_DESIGN = ("dko.distance_mode", "dko.parametrization")
_E2E_TIME_BUDGET = ("e2e.budget_basis", "e2e.budget_scale", "e2e.max_steps")
_E2E_COMMON = (
    *section("e2e", without=("variants", "lr_optics", "lr_optics_scratch", "optics_budget", "steps",
                             *[k.split(".")[1] for k in _E2E_TIME_BUDGET])),
    *section("optics"), "sensor", *_DKO_DESIGN, "dko.element_pitch_m", "dko.fidelity_distances_m",
    "dko.gain_calibration", "dko.init_noise_std", "train.batch_size", "train.collapse_check", "train.color_jitter",
    "train.flip", "train.lr", "train.si_lambda", "seed",
)

_FAITHFUL_IMAGE_KEYS = ("field_grid", "image_spectral_samples", "image_window_px", "relative_illumination",
                        "flat_field", "flat_field_max_gain")  # read by faithful_frontend only
_REAL_DATA_KEYS = ("data.root", "data.linear_light")
_KITTI_KEYS = ("data.protocol", "data.splits_dir", "data.train_split", "data.test_split", "data.train_gt",
               "data.gt_dir")

RULE_CONFIG: dict[str, tuple[str, ...]] = {
    "prepare_dataset": section("data", without=(*[k.split(".")[1] for k in (*_REAL_DATA_KEYS, *_KITTI_KEYS)], "workers")) + ("seed",),
    "train_electronic": ("network", "train", "seed"),
    "metaatom_library": ("metaatoms", "optics.wavelengths_m"),
    "metaatom_oblique": (*section("metaatoms", without=("n_radii", "convergence_order_step", "convergence_radii",
                                                        "resonance_factor", "rcwa_order")),
                         "optics.wavelengths_m", "optics.pixel_pitch_m", "optics.sensor_distance_m", "data.height",
                         "data.width", "faithful.field_grid", "faithful.field_positions",
                         "faithful.image_spectral_samples", "faithful.passband_fwhm_m", "faithful.passband_shape",
                         "faithful.table_radii", "faithful.table_order"),
    "extract_kernels": ("optics.wavelengths_m",),
    "optimize_metasurface": (*section("dko", without=("gds_radius_step_m", "fidelity_distances_m", "element_pitch_m",
                                                      "gain_calibration")), *_OPTICS_GEOMETRY, "seed"),
    "assemble_frontend": (*_DKO_DESIGN, "dko.element_pitch_m", "dko.fidelity_distances_m", "dko.gain_calibration",
                          "dko.window_factor", "metaatoms.period_m", *_OPTICS_GEOMETRY),
    "metasurface_gds": ("metaatoms.period_m", "dko.gds_radius_step_m"),
    "faithful_fidelity": (*section("faithful", without=(*_FAITHFUL_IMAGE_KEYS, "table_radii",
                                                                    "table_order")), *_OPTICS_GEOMETRY, "data.height",
                          "data.width", "dko.window_factor", "dko.element_pitch_m", "metaatoms.substrate_index"),
    "faithful_frontend": (*section("faithful", without=("field_positions", "window_px", "spectral_samples",
                                                        "table_radii", "table_order")),
                          *section("optics", without=("wavelengths_m", "object_distances_m")), "data.height", "data.width", "dko.element_pitch_m", "dko.gain_calibration",
                          "metaatoms.substrate_index"),
    "train_e2e[optics]": (*_E2E_COMMON, "e2e.lr_optics"),
    "train_e2e[scratch]": (*_E2E_COMMON, "e2e.lr_optics_scratch", "network", "train.weight_decay"),
    "compare": ("e2e.variants", "seed"),
    "compare_sweep": ("sweep",),
}
"""Config keys each job reads under every setting: per rule, ``rule[variant]`` for train_e2e, per model for
evaluate; :data:`CONDITIONAL_READS` adds those read under some settings (:func:`job_config_keys`)."""


@dataclass(frozen=True)
class ConditionalRead:
    """Config keys a job reads only when ``applies(cfg)``; ``when`` says when, in words."""

    keys: tuple[str, ...]
    when: str
    applies: Callable[[Config], bool]


_ELEMENT_PITCH = ConditionalRead(("data.height", "data.width"), "dko.element_pitch_m is null (the pitch follows the "
                                 "image size: dko.frontend.element_pitch_m)", lambda c: c.dko.element_pitch_m is None)
_TIME_BUDGET = ConditionalRead(_E2E_TIME_BUDGET, "e2e.budget is time", lambda c: c.e2e.budget == "time")
_STEPS_BUDGET = ConditionalRead(("e2e.steps",), "e2e.budget is steps", lambda c: c.e2e.budget == "steps")

CONDITIONAL_READS: dict[str, tuple[ConditionalRead, ...]] = {
    "prepare_dataset": (
        ConditionalRead(_REAL_DATA_KEYS, "data.source is kitti or nyu", lambda c: c.data.source != "synthetic"),
        ConditionalRead(_KITTI_KEYS, "data.source is kitti", lambda c: c.data.source == "kitti"),
    ),
    "assemble_frontend": (_ELEMENT_PITCH,),
    "metaatom_oblique": (ConditionalRead(("metaatoms.rcwa_order",), "faithful.table_order is null (its fallback)",
                                         lambda c: c.faithful.table_order is None),),
    "train_e2e[optics]": (_ELEMENT_PITCH, _TIME_BUDGET, _STEPS_BUDGET,
                          ConditionalRead(("e2e.optics_budget",), "e2e.budget is time", lambda c: c.e2e.budget == "time")),
    "train_e2e[scratch]": (_ELEMENT_PITCH, _TIME_BUDGET, _STEPS_BUDGET,
                           ConditionalRead(("e2e.lr_optics",), "e2e.lr_optics_scratch is null (its fallback)",
                                           lambda c: c.e2e.lr_optics_scratch is None)),
}
"""Keys a job reads only under some settings (the keys that decide are in its :data:`RULE_CONFIG` entry), so that
a change of such a key reruns the job exactly when the job reads it."""


def job_config_keys(rule: str, wildcards: Mapping[str, str] | None, cfg: Config) -> tuple[str, ...]:
    """The config keys the job of ``rule`` with ``wildcards`` reads under configuration ``cfg`` (sorted, unique)."""
    wildcards = dict(wildcards or {})
    if rule == "evaluate":
        if "model" not in wildcards:
            raise ValueError("rule evaluate: the job's wildcards lack 'model'")
        return tuple(sorted(set(EVALUATE_KEYS + model(wildcards["model"]).reads)))
    job = rule
    if rule == "train_e2e":
        job = f"train_e2e[{wildcards.get('variant')}]"
        if job not in RULE_CONFIG:
            raise ValueError(f"rule train_e2e: unknown variant {wildcards.get('variant')!r} (config key "
                             f"'e2e.variants' allows {', '.join(E2E_VARIANTS)})")
    if job not in RULE_CONFIG:
        raise ValueError(f"rule '{rule}' has no config declaration in dko.catalogue.RULE_CONFIG "
                         f"(known: {', '.join(sorted(RULE_CONFIG))}, evaluate)")
    keys = set(RULE_CONFIG[job])
    for conditional in CONDITIONAL_READS.get(job, ()):
        if conditional.applies(cfg):
            keys.update(conditional.keys)
    return tuple(sorted(keys))
