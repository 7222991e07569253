"""The optical front end shared by DKO (stage 2) and the E2E baselines: conv1 -> elements -> PSFs -> conv1.

One module per job:

* :mod:`dko.frontend.bank` - the kernel bank (:class:`KernelBank`: a conv1 as optical elements, with
  :meth:`~KernelBank.replace` / :meth:`~KernelBank.subset`), its ``kernels.pt`` file and the shards of
  stage 2.
* :mod:`dko.frontend.layer` - the optical layer (:class:`OptoConv1`: PSFs + gains -> conv1 features).
* :mod:`dko.frontend.design` - design variables -> PSFs (the one PSF model of DKO and E2E), gain calibration,
  and the geometry both read from the config (distances, element pitch and layout, FFT cost).
* :mod:`dko.frontend.file` - the ``frontend.npz`` file (:class:`FrontEnd`: a bank, an optical system and what
  was realised).
* :mod:`dko.frontend.predictor` - the opto-electronic depth predictor (:func:`build_opto_predictor`).
"""

from dko.frontend.bank import (BANK_FORMAT, KernelBank, build_kernel_bank, extract_kernel_bank, load_kernel_bank,
                               plot_kernel_bank, save_kernel_bank, shards)
from dko.frontend.design import (GAIN_CALIBRATIONS, PARAMETRIZATIONS, array_layout, calibrate_gains, design_radius,
                                 design_transmission, element_pitch_m, element_psfs, evaluation_distances,
                                 initial_designs, optimization_distances, psf_fft_flops, radius_psfs)
from dko.frontend.file import (FRONTEND_FORMAT, FrontEnd, distances_from_array, distances_to_array, load_frontend,
                               save_frontend)
from dko.frontend.layer import OptoConv1, ideal_psfs, nearest_distance_index
from dko.frontend.predictor import OptoFront, OptoPredictor, build_opto_predictor

__all__ = [
    "BANK_FORMAT", "KernelBank", "build_kernel_bank", "extract_kernel_bank", "load_kernel_bank", "plot_kernel_bank",
    "save_kernel_bank", "shards",
    "GAIN_CALIBRATIONS", "PARAMETRIZATIONS", "array_layout", "calibrate_gains", "design_radius", "design_transmission",
    "element_pitch_m", "element_psfs", "evaluation_distances", "initial_designs", "optimization_distances",
    "psf_fft_flops", "radius_psfs",
    "FRONTEND_FORMAT", "FrontEnd", "distances_from_array", "distances_to_array", "load_frontend", "save_frontend",
    "OptoConv1", "ideal_psfs", "nearest_distance_index",
    "OptoFront", "OptoPredictor", "build_opto_predictor",
]
