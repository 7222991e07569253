"""Stage 1: the electronic monocular-depth CNN (Monodepth2-style), its training, checkpoints and evaluation."""
