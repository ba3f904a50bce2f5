"""Real source morphologies from an HDF5 bank laid out like the users' COSMOS bank.

Layout (docs/domain.md): dataset ``images`` (N, H, W) float (HST stamps, 128x128 at
0.03"/px), attribute ``pixel_scale_arcsec`` on the file (or on ``images``), and
optionally a dataset ``half_light_radius_arcsec`` (N,).  Dataset names are
parameters so another bank with the same structure reads too.  Images are
normalised to unit flux by the engine (darkhalo.physics.lensing.pixelised_unit_sb);
negative pixels (sky noise in HST cutouts) are clipped to zero first.
"""
from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np


class SourceBankError(ValueError):
    """A bank that cannot be used; the message names the file and what is wrong."""


@dataclass
class SourceBank:
    """An opened bank: images are read lazily by index."""

    path: str
    images_key: str = "images"
    radius_key: str = "half_light_radius_arcsec"

    def __post_init__(self):
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise SourceBankError(f"{self.path}: not a readable HDF5 source bank ({exc})") from exc
        if self.images_key not in self._file:
            raise SourceBankError(f"{self.path}: no dataset '{self.images_key}' (have {sorted(self._file)})")
        images = self._file[self.images_key]
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise SourceBankError(f"{self.path}: '{self.images_key}' has shape {images.shape}, expected (N, H, H)")
        scale = images.attrs.get("pixel_scale_arcsec", self._file.attrs.get("pixel_scale_arcsec"))
        if scale is None or not float(scale) > 0:
            raise SourceBankError(f"{self.path}: attribute 'pixel_scale_arcsec' missing or not positive")
        self.pixel_scale_arcsec = float(scale)
        self.n_sources = images.shape[0]

    def images(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), H, W) float32 images, negatives clipped to 0; a blank image is an error."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_sources):
            raise SourceBankError(f"{self.path}: source index out of range [0, {self.n_sources})")
        order = np.argsort(indices)
        data = np.empty((len(indices),) + self._file[self.images_key].shape[1:], np.float32)
        for i, idx in zip(order, indices[order]):
            data[i] = self._file[self.images_key][int(idx)]
        data = np.clip(np.nan_to_num(data, nan=0.0), 0.0, None)
        blank = data.sum(axis=(1, 2)) <= 0
        if blank.any():
            raise SourceBankError(f"{self.path}: source(s) {indices[blank][:5].tolist()} have no positive flux")
        return data

    def close(self) -> None:
        self._file.close()
