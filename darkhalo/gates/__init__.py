"""The data gates: Great Expectations suites (contracts, split, shortcuts) over a stamp manifest.

Entry point: ``audit.run_audit`` (used by ``stages/data_gates.py``).  One job per module:
``config`` (params), ``columns`` (column contract), ``scan`` (streaming pass), ``contracts``
(row contracts, quarantine), ``splits`` (split tables), ``core_baseline`` (gate 1.6
classifier), ``stats`` (effect sizes and intervals), ``expectations`` (custom GX
expectations), ``suites`` (suite definitions <-> expectations/*.json), ``validate`` (GX
runner), ``report`` (verdict lines, metrics, markdown), ``audit`` (orchestration).
Nothing here imports great_expectations at module import time except ``expectations``.
"""
