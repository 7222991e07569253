"""Optics: meta-atom library, propagation, PSFs, sensor model, array layout and GDSII export.

Submodules are imported explicitly (``from dko.optics.psf import ...``); importing this package
imports nothing heavy.
"""
