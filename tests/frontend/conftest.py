"""Fixtures shared by the tests of dko.frontend: a small kernel bank, its optics and the meta-atom library."""

import pytest
import torch

from dko.frontend import build_kernel_bank
from dko.optics.metaatoms import MetaAtomLibrary
from dko.optics.psf import OpticalSystem

WLS = [6.4e-7, 5.5e-7, 4.6e-7]


@pytest.fixture
def conv():
    """A float64 conv1 (6 x 3 x 7 x 7, stride 2, bias): output 0 all-positive (one element per colour), output 1
    with an asymmetric support."""
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 6, 7, stride=2, padding=3, bias=True).double()
    with torch.no_grad():
        layer.weight[0] = torch.rand_like(layer.weight[0])  # all-positive kernel: one element per channel
        layer.weight[1, :, :, :3] = 0.0  # asymmetric support
    return layer


@pytest.fixture(scope="module")
def library():
    return MetaAtomLibrary.default()


@pytest.fixture(scope="module")
def system():
    # 24 superpixels (28.8 um) at 1.2 um, sensor at 0.2 mm: Airy radius ~1 pixel at 550 nm
    return OpticalSystem(superpixel_m=1.2e-6, n_superpixels=24, sensor_distance_m=2.0e-4, pixel_pitch_m=2.74e-6,
                         psf_size_px=15)


@pytest.fixture(scope="module")
def bank():
    """2 output channels x 3 colours of 5 x 5 random kernels (12 elements), stride 2."""
    torch.manual_seed(0)
    w = torch.randn(2, 3, 5, 5)
    return build_kernel_bank(w, 0.45, 0.225, WLS, stride=2)


@pytest.fixture
def write_frontend(tmp_path):
    """``write_frontend(bank, system, psfs (D, E, P, P), distances, gains=None, name=...)``: a frontend.npz in
    ``tmp_path`` with constant radii, efficiencies = PSF sums and the bank's gains (unless ``gains``)."""
    from dko.frontend import array_layout, save_frontend

    def write(bank, system, psfs, distances, gains=None, name="frontend.npz"):
        n, e = system.n_superpixels, bank.n_elements
        return save_frontend(tmp_path / name, radius_m=torch.full((e, n, n), 8e-8), psfs=psfs,
                             object_distances_m=distances, efficiency=psfs.sum(dim=(-2, -1)),
                             gains=bank.gains if gains is None else gains, bank=bank,
                             element_centers_m=array_layout(bank, 1e-4), system=system, info={"method": "test"})

    return write


@pytest.fixture(scope="session")
def write_lens_design():
    """``write_lens_design(out, cfg, library, calibrate=False) -> FrontEnd``: frontend.npz + array.gds in ``out`` of 6
    elements (1 output channel x 3 colours x 2 signs of a 5 x 5 kernel, seed 3): ideal lenses at each colour plus
    noise on the radii (not on the 1 nm grid, so the GDSII quantises them), PSFs of the cheap model at 10 m; gains
    the bank's, or calibrated (total) on those PSFs as assemble_frontend does when ``calibrate``."""
    from dko.frontend import array_layout, element_pitch_m, load_frontend, save_frontend
    from dko.optics.psf import ideal_lens_radii, psf_from_radii
    from dko.stage2 import write_frontend_gds

    def write(out, cfg, library, *, calibrate=False):
        torch.manual_seed(3)
        bank = build_kernel_bank(torch.randn(1, 3, 5, 5), 0.45, 0.225, WLS, stride=2)
        system = OpticalSystem.from_config(cfg.optics)
        radius = ideal_lens_radii(system, bank.wavelength_m.tolist(), library).double()
        radius = (radius + 3e-9 * torch.randn(radius.shape, dtype=torch.float64)).clamp(library.radius_min_m,
                                                                                         library.radius_max_m)
        psfs, eff = psf_from_radii(radius, bank.wavelength_m, system, library, 10.0, return_efficiency=True)
        gains = bank.gains / psfs.sum(dim=(-2, -1)).float() if calibrate else bank.gains
        save_frontend(out / "frontend.npz", radius_m=radius.float(), psfs=psfs[None], object_distances_m=[10.0],
                      efficiency=eff[None], gains=gains, bank=bank,
                      element_centers_m=array_layout(bank, element_pitch_m(cfg)), system=system,
                      info={"method": "test"})
        write_frontend_gds(out / "frontend.npz", out / "array.gds", period_m=cfg.metaatoms.period_m)
        return load_frontend(out / "frontend.npz")

    return write
