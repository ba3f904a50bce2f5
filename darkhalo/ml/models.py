"""Lens-finder architectures (torch) and checkpoint import.

* ``resnet_small``: a compact residual network for 64x64 grz stamps, sized for
  CPUs (stride-2 stem, three stages of two basic blocks, 16/32/64 channels,
  ~0.2 M parameters), in the spirit of the small ResNets of DESI lens searches.
* ``gen5_convnext``: the users' Gen5 model (docs/domain.md, "The users' data"): torchvision
  ``convnext_tiny`` with its final Linear replaced by identity (768 features
  after the classifier's LayerNorm2d + Flatten), a metadata MLP on
  ``[psfsize_r, psfdepth_r]`` (Linear 2->256, ReLU, Dropout 0.1, Linear
  256->256, ReLU), concatenated (1024) and a head Linear 1024->256, ReLU,
  Dropout 0.1, Linear 256->1.  Module names: ``backbone``, ``meta_mlp``, ``head``.

* ``resnet18``: torchvision ``resnet18`` (11 M parameters; a modern small network for a GPU)
  with its final Linear replaced by the same metadata-joining head as ``resnet_small``.

* ``core_flux_baseline``: logistic regression on the mean normalised flux per
  band inside r < 4 px -- the core-only shortcut as a model, to show what the
  model gates and the centre-masked diagnostic say about a model that reads
  core brightness alone.

Every model maps (images (N, 3, S, S) normalised, metadata (N, M)) to logits (N,).
"""
from __future__ import annotations

import torch
from torch import nn

from darkhalo.ml.config import ARCHITECTURES, GEN5_METADATA


class CheckpointMismatch(ValueError):
    """A checkpoint whose keys or shapes do not fit the architecture; the message lists them."""


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNetSmall(nn.Module):
    """Compact residual network; metadata (if any) joins before the last layer."""

    def __init__(self, n_metadata: int = 0, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c_in = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock(c_in, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            c_in = w
        self.blocks = nn.Sequential(*blocks)
        self.n_metadata = n_metadata
        self.head = nn.Sequential(nn.Linear(c_in + n_metadata, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, images, metadata=None):
        x = self.blocks(self.stem(images)).mean(dim=(2, 3))
        if self.n_metadata:
            x = torch.cat([x, metadata], dim=1)
        return self.head(x)[:, 0]


class ResNet18(nn.Module):
    """torchvision resnet18 (random init); metadata (if any) joins before the last layer."""

    def __init__(self, n_metadata: int = 0):
        super().__init__()
        from torchvision.models import resnet18

        self.backbone = resnet18(weights=None)
        self.backbone.fc = nn.Identity()
        self.n_metadata = n_metadata
        self.head = nn.Sequential(nn.Linear(512 + n_metadata, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, images, metadata=None):
        x = self.backbone(images)
        if self.n_metadata:
            x = torch.cat([x, metadata], dim=1)
        return self.head(x)[:, 0]


class Gen5ConvNeXt(nn.Module):
    """The users' Gen5 architecture (see module docstring)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import convnext_tiny

        self.backbone = convnext_tiny(weights=None)
        self.backbone.classifier[2] = nn.Identity()
        self.meta_mlp = nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 256), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 1))

    def forward(self, images, metadata):
        return self.head(torch.cat([self.backbone(images), self.meta_mlp(metadata)], dim=1))[:, 0]


class CoreFluxBaseline(nn.Module):
    """Logistic regression on the mean normalised flux inside r < ``core_radius_pix`` per band."""

    def __init__(self, core_radius_pix: float = 4.0, size: int = 64):
        super().__init__()
        c = (size - 1) / 2.0
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.register_buffer("core", (((yy - c) ** 2 + (xx - c) ** 2) < core_radius_pix**2).float())
        self.linear = nn.Linear(3, 1)

    def forward(self, images, metadata=None):
        core_mean = (images * self.core).sum(dim=(2, 3)) / self.core.sum()
        return self.linear(core_mean)[:, 0]


def build_model(architecture: str, n_metadata: int, width: int = 16) -> nn.Module:
    """A freshly initialised model (call torch.manual_seed first for determinism); ``width``: channels of
    resnet_small's first stage (doubled at each of the next two)."""
    if architecture == "resnet_small":
        return ResNetSmall(n_metadata, widths=(width, 2 * width, 4 * width))
    if architecture == "resnet18":
        return ResNet18(n_metadata)
    if architecture == "gen5_convnext":
        if n_metadata != len(GEN5_METADATA):
            raise ValueError(f"gen5_convnext takes exactly the metadata {GEN5_METADATA}, got {n_metadata} columns")
        return Gen5ConvNeXt()
    if architecture == "core_flux_baseline":
        return CoreFluxBaseline()
    raise ValueError(f"unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})")


def load_state_strict(model: nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``model`` requiring identical keys and shapes; list every difference."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:12]) + (f" ... (+{len(items) - 12} more)" if len(items) > 12 else "")
        parts = [f"missing keys ({len(missing)}): {show(missing)}" if missing else "",
                 f"unexpected keys ({len(unexpected)}): {show(unexpected)}" if unexpected else "",
                 f"shape mismatches: {show(shapes)}" if shapes else ""]
        raise CheckpointMismatch(f"{source}: checkpoint does not fit {type(model).__name__}; "
                                 + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def import_gen5_checkpoint(path: str) -> tuple[nn.Module, dict]:
    """The users' Gen5 ``.pt`` ({'model': state_dict, 'epoch': int}) loaded strictly into Gen5ConvNeXt."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "model" not in blob:
        keys = list(blob)[:8] if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointMismatch(f"{path}: expected a dict with 'model' (state_dict) and 'epoch', got {keys}")
    model = Gen5ConvNeXt()
    load_state_strict(model, blob["model"], path)
    return model, {"epoch": int(blob.get("epoch", -1))}
