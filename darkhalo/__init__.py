"""Dark Halo Scope: library behind the DVC stages in ``stages/``.

One job per module; see ARCHITECTURE.md for the map.

Importing the package pins torch's CPU kernels and MKL to their AVX2 code paths on x86-64 (unless the
environment already sets ``ATEN_CPU_CAPABILITY`` / ``MKL_CBWR``): left to choose, each machine picks its
own (AVX2 or AVX-512), whose float32 results differ in the last bit, and the injected stamps would
differ byte-wise between machines (ARCHITECTURE.md, "Determinism").
"""
import os as _os
import platform as _platform

if _platform.machine().lower() in ("x86_64", "amd64"):
    _os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    _os.environ.setdefault("MKL_CBWR", "AVX2")
