"""Dark Halo Scope: library behind the DVC stages in ``stages/``.

One job per module; see ARCHITECTURE.md for the map.
"""
