"""DVC stage `survey_gallery`: a grz colour gallery of survey stamps (plots/survey_gallery.png).

Shows the first parents plus up to six stamps with NaN pixels or a missing
band (a third of the gallery at most), so a person can see what the data
contracts must catch.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from darkhalo.io.dataset import Chunk, iter_chunks, stamps_of
from darkhalo.io.gallery import gallery_png
from darkhalo.core.outputs import atomic_write_bytes, run_stage
from darkhalo.core.params import POSITIVE, build, load_params, section

LABEL_COLUMNS = ["parent_id", "lrg_type", "lrg_mag_r", "sim_defect", "bad_pixel_frac", "cutout_ok", "stamp_size"]


@dataclass(frozen=True)
class GalleryConfig:
    n_stamps: int = 36
    columns: int = 6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--survey", default="data/survey")
    parser.add_argument("--out", default="plots/survey_gallery.png")
    args = parser.parse_args(argv)
    config = build(GalleryConfig, section(load_params(args.params), "survey_gallery", args.params),
                   "survey_gallery", args.params, {"n_stamps": POSITIVE, "columns": POSITIVE})
    n_defect = min(6, config.n_stamps // 3)
    selections = [ds.field("parent_id") < config.n_stamps - n_defect,
                  (ds.field("sim_defect") != "") & (ds.field("parent_id") >= config.n_stamps - n_defect)]
    tables, images = [], []
    for selection, limit in zip(selections, (config.n_stamps - n_defect, n_defect)):
        taken = 0
        for chunk in iter_chunks(args.survey, LABEL_COLUMNS + [f"image_{b}" for b in "grz"] +
                                 [f"invvar_{b}" for b in "grz"], filter=selection):
            rows = chunk.table.slice(0, limit - taken)
            size = int(pc.max(rows.column("stamp_size")).as_py())
            tables.append(rows.select(LABEL_COLUMNS))
            images.append(stamps_of(Chunk(rows, chunk.source, chunk.row_offset), size).image)
            taken += rows.num_rows
            if taken >= limit:
                break
    meta = pa.concat_tables(tables).to_pylist()
    labels = [f"#{m['parent_id']} {m['lrg_type']} r={m['lrg_mag_r']:.1f}"
              + (f" [{m['sim_defect'].split('_')[0]} ok={m['cutout_ok']}]" if m["sim_defect"] else "")
              + (f" [mask {m['bad_pixel_frac']:.1%}]" if m["bad_pixel_frac"] > 0.005 else "") for m in meta]
    png = gallery_png(np.concatenate(images), labels, config.columns,
                      title="Embedded DR10 survey: LRG cutouts (grz, Lupton asinh)")
    atomic_write_bytes(args.out, png)


if __name__ == "__main__":
    run_stage(main)
