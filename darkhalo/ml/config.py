"""Training params of one generation (torch-free: the data gates and compare parse them without loading torch).

``train:`` holds the defaults and ``generations.<name>.train`` overrides any of them
(params.yaml); ``runtime.threads`` / ``runtime.device`` say how, never what, is trained.
"""
from __future__ import annotations

from dataclasses import dataclass

from darkhalo.core.params import FRACTION, NON_NEGATIVE, POSITIVE, ParamError, build, section
from darkhalo.core.runtime import runtime_config
from darkhalo.physics.normalize import OUTER_ANNULUS_MAD, PREPROCESSINGS, Normalization

ARCHITECTURES = ("resnet_small", "resnet18", "gen5_convnext", "core_flux_baseline")   # each built by models.build_model
GEN5_METADATA = ("psfsize_r", "psfdepth_r")   # the metadata the users' Gen5 model takes


@dataclass(frozen=True)
class TrainConfig:
    """``train:`` params (defaults) overridden by ``generations.<name>.train``."""

    architecture: str = "resnet_small"
    width: int = 16      # resnet_small: channels of the first stage (16/32/64 by default)
    metadata_columns: tuple = ()
    metadata_transform: str = "standardize"  # standardize (train mean/std) | raw
    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"  # cosine | constant
    hard_negative_frac: float = 0.0
    augment_flips: bool = True
    augment_rot90: bool = True
    centre_mask_prob: float = 0.0
    centre_mask_radius_pix: float = 0.0
    centre_mask_radius_theta_e: float = 0.0
    threads: int = 2     # runtime.threads (darkhalo/core/runtime.py), not a train: key: torch threads
    device: str = "cpu"  # runtime.device: cpu | cuda | auto (under torchrun: this rank's GPU)
    import_checkpoint: str = ""
    max_train_rows: int = 0  # 0: all
    preprocessing: str = OUTER_ANNULUS_MAD   # the model input (darkhalo/physics/normalize.py): outer_annulus_mad | residual
    input_crop_pix: int = 0                  # > 0: the model sees the central crop (px) of the preprocessed stamp
    early_stopping_patience: int = 0         # stop after this many epochs without a better val AUC (0: never)
    early_stopping_min_delta: float = 0.002  # a val AUC gain smaller than this is not an improvement
    seeds: int = 1                           # models trained with different seeds (compare combines their spread)
    ema_decay: float = 0.0                   # > 0: validate and keep an exponential moving average of the weights

    @property
    def n_metadata(self) -> int:
        return len(self.metadata_columns)

    @property
    def input_spec(self) -> Normalization:
        """The named preprocessing this generation's model sees (stored in its checkpoint)."""
        return Normalization(name=self.preprocessing, crop_pix=self.input_crop_pix)


TRAIN_RULES = {
    "architecture": (lambda v: v in ARCHITECTURES, f"must be one of {', '.join(ARCHITECTURES)}"),
    "width": (lambda v: 4 <= v <= 256, "must be within [4, 256]"),
    "metadata_transform": (lambda v: v in ("standardize", "raw"), "must be standardize or raw"),
    "lr_schedule": (lambda v: v in ("cosine", "constant"), "must be cosine or constant"),
    "epochs": NON_NEGATIVE, "batch_size": POSITIVE, "learning_rate": POSITIVE, "weight_decay": NON_NEGATIVE,
    "hard_negative_frac": (lambda v: 0 <= v < 1, "must be within [0, 1)"), "centre_mask_prob": FRACTION,
    "centre_mask_radius_pix": NON_NEGATIVE, "centre_mask_radius_theta_e": NON_NEGATIVE,
    "max_train_rows": NON_NEGATIVE,
    "preprocessing": (lambda v: v in PREPROCESSINGS, f"must be one of {', '.join(PREPROCESSINGS)}"),
    "input_crop_pix": (lambda v: v >= 0 and v % 2 == 0, "must be 0 (no crop) or a positive even number of pixels"),
    "early_stopping_patience": NON_NEGATIVE, "early_stopping_min_delta": NON_NEGATIVE, "seeds": POSITIVE,
    "ema_decay": (lambda v: 0 <= v < 1, "must be within [0, 1) (0: no weight averaging)"),
}


def seed_file_name(stem: str, suffix: str, seed_index: int) -> str:
    """File of training seed ``seed_index`` (``model.pt``, ``model_seed1.pt``, ``scores_seed2.parquet``, ...)."""
    return f"{stem}{suffix}" if seed_index == 0 else f"{stem}_seed{seed_index}{suffix}"


def run_key(generation: str, seed_index: int) -> str:
    """RNG key of one training run: the generation's name for seed 0 (unchanged), + ``:seed<k>`` for others."""
    return generation if seed_index == 0 else f"{generation}:seed{seed_index}"


def train_config(params: dict, generation: str, path: str) -> TrainConfig:
    """TrainConfig of one generation: ``train`` defaults + ``generations.<generation>.train``."""
    gens = section(params, "generations", path)
    if generation not in gens:
        raise ParamError(f"{path}: generations.{generation} is not defined")
    values = {**section(params, "train", path), **(gens[generation].get("train") or {})}
    if "metadata_columns" in values:
        cols = values["metadata_columns"]
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise ParamError(f"{path}: train.metadata_columns = {cols!r}: must be a list of column names")
        values["metadata_columns"] = tuple(cols)
    rt = runtime_config(params, path)
    config = build(TrainConfig, values, f"train (+ generations.{generation}.train)", path, TRAIN_RULES,
                   threads=rt.threads, device=rt.device)
    if config.architecture == "gen5_convnext" and config.metadata_columns != GEN5_METADATA:
        raise ParamError(f"{path}: gen5_convnext needs metadata_columns {list(GEN5_METADATA)}")
    if config.centre_mask_prob > 0 and not (config.centre_mask_radius_pix or config.centre_mask_radius_theta_e):
        raise ParamError(f"{path}: centre_mask_prob > 0 needs centre_mask_radius_pix or centre_mask_radius_theta_e")
    if config.seeds > 1 and config.import_checkpoint:
        raise ParamError(f"{path}: train.seeds = {config.seeds} (generation {generation}) with import_checkpoint: "
                         "an imported model has one seed; set seeds: 1")
    if config.epochs < 1 and not config.import_checkpoint:
        raise ParamError(f"{path}: train.epochs = {config.epochs} (generation {generation}): must be >= 1 "
                         "(or set import_checkpoint)")
    return config
