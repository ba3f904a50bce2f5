"""Scoring stamps with a checkpoint: the one inference path (same normalisation as training)."""
from __future__ import annotations

import numpy as np
import torch

from darkhalo.ml.models import build_model, load_state_strict
from darkhalo.physics.normalize import Normalization, normalization_from_dict, normalize
from darkhalo.ml.training import MetadataTransform, predict


class PreprocessingMismatch(ValueError):
    """A checkpoint whose stored preprocessing differs from the one the params ask for."""


class Scorer:
    """A loaded checkpoint: ``score(images_nmgy, metadata_raw)`` -> lens probabilities."""

    def __init__(self, checkpoint: dict, source: str, expected: Normalization | None = None, threads: int = 1):
        self.checkpoint = checkpoint
        self.threads = threads       # preprocessing threads (the same bytes whatever the count)
        self.metadata_columns = tuple(checkpoint["metadata_columns"])
        self.normalization = normalization_from_dict(checkpoint["normalization"])
        if expected is not None and expected.to_dict() != self.normalization.to_dict():
            raise PreprocessingMismatch(
                f"{source}: the checkpoint was trained on preprocessing {self.normalization.to_dict()} but this "
                f"generation's params ask for {expected.to_dict()}: retrain (dvc repro) or fix the params")
        tf = checkpoint["metadata_transform"]
        self.metadata_transform = MetadataTransform(tf["kind"], tf["mean"], tf["std"])
        self.model = build_model(checkpoint["architecture"], len(self.metadata_columns), checkpoint.get("width", 16))
        load_state_strict(self.model, checkpoint["state_dict"], source)
        self.model.eval()

    @classmethod
    def load(cls, path: str, expected: Normalization | None = None, threads: int = 1) -> "Scorer":
        """Load a checkpoint; ``expected`` (the params' preprocessing) must equal the stored one."""
        return cls(torch.load(path, map_location="cpu", weights_only=True), path, expected, threads)

    def preprocess(self, images_nmgy: np.ndarray) -> np.ndarray:
        """The model input of (N, 3, S, S) stamps in nmgy (the checkpoint's preprocessing)."""
        return normalize(images_nmgy, self.normalization, threads=self.threads)

    def score(self, images_nmgy: np.ndarray, metadata_raw: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities (N,) for (N, 3, S, S) stamps in nmgy and (N, M) raw metadata columns."""
        return predict(self.model, self.preprocess(images_nmgy),
                       self.metadata_transform(np.asarray(metadata_raw, np.float64)), batch_size)
