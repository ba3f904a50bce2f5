"""DVC stage `benchmark`: freeze the evaluation set shared by every generation.

The benchmark is the test-region injections (positives + controls from the
broad ``benchmark.injection`` prior), the test-region hard negatives and the
anchors.  This stage records each part's path, row count and content hash and
one combined hash in ``metrics/benchmark.json``; every evaluate@<generation>
checks the parts against it and copies the hash into its metrics, so a metrics
diff between generations is only made on identical test data.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from darkhalo.io.dataset import content_hash, open_dataset
from darkhalo.core.outputs import run_stage, write_json


def describe_part(path: str) -> dict:
    return {"path": path, "rows": open_dataset(path).count_rows(), "sha256": content_hash(path)}


def benchmark_manifest(parts: dict[str, str]) -> dict:
    """{'parts': {name: {path, rows, sha256}}, 'sha256': combined} for the given part paths."""
    described = {name: describe_part(path) for name, path in sorted(parts.items())}
    combined = hashlib.sha256("".join(f"{k}:{v['sha256']};" for k, v in described.items()).encode()).hexdigest()
    return {"parts": described, "sha256": combined}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--injections", default="data/benchmark/injections")
    parser.add_argument("--hard-negatives", default="data/hard_negatives/region_split=test")
    parser.add_argument("--anchors", default=None, help="anchor dataset, when the anchors stage has run")
    parser.add_argument("--out", default="metrics/benchmark.json")
    args = parser.parse_args(argv)
    parts = {"injections": args.injections, "hard_negatives": args.hard_negatives}
    if args.anchors:
        parts["anchors"] = args.anchors
    missing = [f"{k} ({v})" for k, v in parts.items() if not Path(v).exists()]
    if missing:
        raise FileNotFoundError(f"benchmark parts missing: {', '.join(missing)}")
    manifest = benchmark_manifest(parts)
    write_json(args.out, manifest)
    print(f"benchmark {manifest['sha256'][:12]}: " + ", ".join(f"{k} {v['rows']} rows" for k, v in
                                                              manifest["parts"].items()))


if __name__ == "__main__":
    run_stage(main)
