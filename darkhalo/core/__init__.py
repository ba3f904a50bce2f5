"""Shared by every room: params and their checks, units, keyed RNG, runtime knobs, atomic outputs, interval statistics and classifier metrics, per-stage DVC deps."""
