"""Patch geometry: a PCam patch is 96 x 96 RGB; its label is about the centre 32 x 32."""

import numpy as np

PATCH = 96  # side of a patch in px
CENTRE = slice(32, 64)  # rows and columns of the centre 32 x 32 that the label describes
PATCH_BYTES = PATCH * PATCH * 3  # one uint8 RGB patch
SPLITS = ("train", "valid", "test")  # in store order
PCAM_MPP = 0.972  # um per pixel of PCam patches: Camelyon16 level 2, 0.243 um/px * 4


def as_patches(images) -> np.ndarray:
    """`images` as an (N, 96, 96, 3) uint8 array; ValueError saying what it is instead."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (PATCH, PATCH, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, {PATCH}, {PATCH}, 3) uint8, got {images.shape} {images.dtype}")
    return images


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th dihedral transform of (..., H, W, C) images, numbered as `data.transforms.dihedral`: k % 4
    quarter turns, then a left-right flip when k >= 4."""
    x = np.rot90(x, k % 4, axes=(-3, -2))
    return x[..., ::-1, :] if k >= 4 else x
