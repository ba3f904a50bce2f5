"""The model input (issue: Gen5' that remediates): the residual preprocessing, its checkpoint round
trip, shortcut gates on what the network sees, the brightness-support gate and early stopping."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import injection_table, write_manifest
from darkhalo.io.dataset import Chunk, read_table, stamps_of
from darkhalo.ml.inference import PreprocessingMismatch, Scorer
from darkhalo.ml.models import build_model
from darkhalo.physics.normalize import (DEFAULT_NORMALIZATION, RESIDUAL, Normalization, arc_snr_survival, core_mask,
                                normalization_from_dict, normalize)
from darkhalo.ml.config import TrainConfig
from darkhalo.ml.training import MetadataTransform, StampSet, checkpoint_dict, train_model
from test_gates_planted import audit, failed

RESIDUAL_32 = Normalization(name=RESIDUAL, crop_pix=32)


def survey_stamps(project, n=200):
    survey = read_table(str(project / "data" / "survey")).slice(0, n)
    stamps = stamps_of(Chunk(survey, "survey", 0), 64)
    ok = np.isfinite(stamps.image).all(axis=(1, 2, 3)) & stamps.present.all(axis=1)
    return stamps.image[ok]


def partial_ring(radius_pix, flux, n=1, full=False):
    yy, xx = np.mgrid[:64, :64] - 31.5
    r, phi = np.hypot(yy, xx), np.arctan2(yy, xx)
    ring = np.exp(-0.5 * ((r - radius_pix) / 1.0) ** 2) * (1.0 if full else (np.cos(phi) > 0.5))
    return np.broadcast_to(flux * ring / ring.sum(), (n, 3, 64, 64)).astype(np.float64)


def test_residual_input_on_controls_leaves_the_core_consistent_with_noise(gates_project):
    images = survey_stamps(gates_project)
    raw = normalize(images, Normalization(crop_pix=32))
    res = normalize(images, RESIDUAL_32)
    assert res.shape == (len(images), 3, 32, 32) and res.dtype == np.float32
    core = core_mask(32, 4.0)
    # the lens light dominates the raw core; the residual core is noise-like (unit robust sigma)
    assert np.median(raw[..., core]) > 3.0
    assert abs(np.median(res[..., core])) < 0.3
    assert np.percentile(np.abs(res[..., core]), 68) < 2.0
    edge = res[..., :4, :]
    assert abs(np.median(edge)) < 0.1 and 0.8 < np.percentile(np.abs(edge), 68) < 1.2


def test_an_arc_survives_the_residual_and_a_complete_ring_does_not(gates_project):
    background = survey_stamps(gates_project, 40)[:8].astype(np.float64)
    arc = partial_ring(8.0, 2.0, len(background))
    ring = partial_ring(8.0, 2.0, len(background), full=True)
    assert np.allclose(arc_snr_survival(background, arc, DEFAULT_NORMALIZATION), 1.0)
    arc_kept = arc_snr_survival(background, arc, RESIDUAL_32)
    ring_kept = arc_snr_survival(background, ring, RESIDUAL_32)
    assert np.median(arc_kept) > 0.7 and np.median(ring_kept) < 0.35


def test_preprocessing_round_trips_through_the_checkpoint_and_a_mismatch_is_refused():
    model = build_model("resnet_small", 0)
    config = TrainConfig(preprocessing=RESIDUAL, input_crop_pix=32)
    ckpt = checkpoint_dict(model, config, MetadataTransform("raw", [], []), config.input_spec, "g", 1, {})
    assert normalization_from_dict(ckpt["normalization"]) == RESIDUAL_32
    scorer = Scorer(ckpt, "model.pt", expected=RESIDUAL_32)
    images = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    assert scorer.preprocess(images).shape == (4, 3, 32, 32) and scorer.score(images, np.zeros((4, 0))).shape == (4,)
    with pytest.raises(PreprocessingMismatch, match="retrain"):
        Scorer(ckpt, "model.pt", expected=DEFAULT_NORMALIZATION)
    legacy = {k: v for k, v in DEFAULT_NORMALIZATION.to_dict().items() if k in ("name", "outer_radius_pix", "clip",
                                                                           "mad_to_sigma", "min_scale_nmgy")}
    assert normalization_from_dict(legacy).version == 1          # checkpoints from before versioning still load
    with pytest.raises(ValueError, match="version 7"):
        normalization_from_dict({**RESIDUAL_32.to_dict(), "version": 7})


def test_network_width_round_trips_through_the_checkpoint():
    config = TrainConfig(width=8)
    model = build_model("resnet_small", 0, config.width)
    ckpt = checkpoint_dict(model, config, MetadataTransform("raw", [], []), config.input_spec, "g", 1, {})
    scorer = Scorer(ckpt, "model.pt")
    assert ckpt["width"] == 8 and scorer.model.stem[0].out_channels == 8
    older = {k: v for k, v in checkpoint_dict(build_model("resnet_small", 0), TrainConfig(), MetadataTransform(
        "raw", [], []), TrainConfig().input_spec, "g", 1, {}).items() if k != "width"}
    assert Scorer(older, "model.pt").model.stem[0].out_channels == 16     # checkpoints from before the param


def test_a_planted_core_blob_fails_1_6_on_raw_pixels_and_on_the_model_input(gates_project, tmp_path, capsys):
    table = injection_table(gates_project, core_boost=0.5)
    rc, metrics, _ = audit(gates_project, table, tmp_path, "blob", "--model-input", "residual:32")
    err = capsys.readouterr().err
    assert rc == 1
    assert {"1.6:core_only_auc", "1.6:input_core_only_auc"} <= failed(metrics)
    assert metrics["gates"]["1.6:input_core_only_auc"]["statistic"]["auc"] > 0.6
    assert "GATE 1.6 FAILED [blob] input_core_only_auc = " in err


def test_the_model_input_figures_block_and_the_raw_ones_are_reported(gates_project, tmp_path, capsys):
    """A symmetric core excess (e.g. light of a counter-image ring) fails the raw 1.8 and is gone
    from a residual input: the run passes, the raw failure is printed as a warning."""
    table = injection_table(gates_project, ring_radius_pix=2.0, ring_flux_frac=0.02, ring_asymmetry=0.0)
    rc, metrics, _ = audit(gates_project, table, tmp_path, "sym", "--model-input", "residual:32")
    err = capsys.readouterr().err
    raw_failed = {g for g in failed(metrics) if g.startswith(("1.5", "1.6", "1.8")) and ":input_" not in g}
    input_failed = {g for g in failed(metrics) if ":input_" in g}
    assert raw_failed and not input_failed, (raw_failed, input_failed)
    assert rc == 0 and "raw pixels; the model-input figure blocks" in err


def test_brightness_support_fails_when_hard_negatives_outshine_the_positives(gates_project, clean_table, tmp_path):
    import pyarrow as pa

    from darkhalo.io.dataset import write_hive

    n = 60
    split = np.where(np.arange(n) % 3 == 0, "val", "train")
    for name, snr, expect in (("dim", np.full(n, 3.0), "pass"), ("bright", np.full(n, 500.0), "fail")):
        hn = pa.table({"parent_id": np.arange(n) + 2**40, "hn_annulus_snr": snr, "region_split": split})
        write_hive(hn, tmp_path / f"hn-{name}", ["region_split"], 32)
        rc, metrics, _ = audit(gates_project, clean_table, tmp_path, f"bs-{name}", "--hard-negatives",
                               str(tmp_path / f"hn-{name}"))
        gate = metrics["gates"]["brightness:support"]
        assert gate["verdict"] == expect, gate
    assert rc == 1 and gate["statistic"]


def test_early_stopping_stops_and_keeps_the_best_weights():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 3, 32, 32)).astype(np.float32)
    labels = (np.arange(64) % 2).astype(np.float32)
    data = StampSet(images, labels, np.arange(64), np.zeros((64, 0)), np.full(64, np.nan), {})
    config = TrainConfig(epochs=10, batch_size=32, threads=1, early_stopping_patience=2,
                         early_stopping_min_delta=1.0)    # nothing can improve by 1.0 AUC: stops after 1 + 2 epochs
    model, _, history = train_model(config, data, data, seed=1, generation="t")
    assert len(history) == 3 and [h["is_best"] for h in history] == [True, False, False]


def test_weight_averaging_returns_the_averaged_weights():
    """ema_decay close to 1: the average stays at the first step's weights (one Adam step from the initial
    ones), so the returned model is much closer to the initial weights than the last step's weights are."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 3, 32, 32)).astype(np.float32)
    labels = (np.arange(64) % 2).astype(np.float32)
    data = StampSet(images, labels, np.arange(64), np.zeros((64, 0)), np.full(64, np.nan), {})

    def weights(epochs: int, **overrides):
        config = TrainConfig(epochs=epochs, batch_size=16, threads=1, learning_rate=0.01, **overrides)
        model, _, history = train_model(config, data, data, seed=1, generation="t")
        return torch.cat([p.detach().flatten() for p in model.parameters()]), history

    initial, _ = weights(0)
    last, _ = weights(4)
    averaged, history = weights(4, ema_decay=1 - 1e-9)
    assert torch.norm(averaged - initial) < 0.5 * torch.norm(last - initial)
    assert len(history) == 4 and history[0]["is_best"]


@pytest.fixture(scope="module")
def clean_table(gates_project):
    return injection_table(gates_project)
