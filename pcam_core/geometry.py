"""Patch geometry: a PCam patch is 96 x 96 RGB; its label is about the centre 32 x 32."""

PATCH = 96  # side of a patch in px
CENTRE = slice(32, 64)  # rows and columns of the centre 32 x 32 that the label describes
PATCH_BYTES = PATCH * PATCH * 3  # one uint8 RGB patch
SPLITS = ("train", "valid", "test")  # in store order
