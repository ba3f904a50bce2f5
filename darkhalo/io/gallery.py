"""grz colour galleries of stamps (Lupton et al. 2004 asinh colour, via astropy)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.visualization import make_lupton_rgb  # noqa: E402


def lupton_rgb(image_grz: np.ndarray, stretch: float = 0.25, q: float = 8.0) -> np.ndarray:
    """RGB (S, S, 3) uint8 of one (3, S, S) grz stamp in nmgy: z->red, r->green, g->blue.

    Non-finite pixels (NaN defects, missing bands) are drawn as zero flux.
    """
    g, r, z = (np.nan_to_num(image_grz[j], nan=0.0, posinf=0.0, neginf=0.0) for j in range(3))
    # scale bands to comparable LRG-colour brightness before the asinh stretch
    return make_lupton_rgb(z * 1.0, r * 1.5, g * 2.5, minimum=-0.02, stretch=stretch, Q=q)


def gallery_png(images: np.ndarray, labels: list[str], columns: int = 6, title: str = "",
                stretch: float = 0.25, q: float = 8.0) -> bytes:
    """PNG bytes of a grid of grz stamps (N, 3, S, S) with one label each."""
    n = len(images)
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.15 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            ax.imshow(lupton_rgb(images[k], stretch, q), origin="lower", interpolation="nearest")
            ax.set_title(labels[k], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
