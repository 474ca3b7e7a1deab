"""Data: the AG-VPReID on-disk layout, the synthetic aerial-ground set, sampling and transforms.

Kept import-light: the submodules are imported where they are used.
"""
