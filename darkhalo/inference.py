"""Scoring stamps with a checkpoint: the one inference path (same normalisation as training)."""
from __future__ import annotations

import numpy as np
import torch

from .models import build_model, load_state_strict
from .normalize import normalization_from_dict, normalize
from .training import MetadataTransform, predict


class Scorer:
    """A loaded checkpoint: ``score(images_nmgy, metadata_raw)`` -> lens probabilities."""

    def __init__(self, checkpoint: dict, source: str):
        self.checkpoint = checkpoint
        self.metadata_columns = tuple(checkpoint["metadata_columns"])
        self.normalization = normalization_from_dict(checkpoint["normalization"])
        tf = checkpoint["metadata_transform"]
        self.metadata_transform = MetadataTransform(tf["kind"], tf["mean"], tf["std"])
        self.model = build_model(checkpoint["architecture"], len(self.metadata_columns))
        load_state_strict(self.model, checkpoint["state_dict"], source)
        self.model.eval()

    @classmethod
    def load(cls, path: str) -> "Scorer":
        return cls(torch.load(path, map_location="cpu", weights_only=True), path)

    def score(self, images_nmgy: np.ndarray, metadata_raw: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities (N,) for (N, 3, S, S) stamps in nmgy and (N, M) raw metadata columns."""
        return predict(self.model, normalize(images_nmgy, self.normalization),
                       self.metadata_transform(np.asarray(metadata_raw, np.float64)), batch_size)
