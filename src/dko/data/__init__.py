"""Datasets: the embedded synthetic scenes and readers for KITTI / NYUv2, all producing one on-disk format."""
