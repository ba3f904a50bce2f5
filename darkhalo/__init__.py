"""Dark Halo Scope: library behind the DVC stages in ``stages/``.

One job per module; see ARCHITECTURE.md for the map.

Importing the package pins torch's CPU kernels to their AVX2 code paths and MKL to its conditional
numerical reproducibility mode ``COMPATIBLE`` on x86-64 (unless the environment already sets
``ATEN_CPU_CAPABILITY`` / ``MKL_CBWR``): left to choose, each machine picks its own (AVX2 or AVX-512;
Intel or AMD code paths), whose float32 results differ in the last bit, and the injected stamps would
differ byte-wise between machines (ARCHITECTURE.md, "Determinism").  ``MKL_CBWR=AVX2`` is not enough:
MKL's FFTs ignore it and differ between AVX2 and AVX-512 (and between Intel and AMD CPUs).
"""
import os as _os
import platform as _platform

if _platform.machine().lower() in ("x86_64", "amd64"):
    _os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    _os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
