"""Scoring the frozen benchmark and comparing generations: evaluation, selection function, paired comparison, judgement, ablation."""
