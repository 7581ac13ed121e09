"""Measuring what a cache policy costs: long-text perplexity, needle retrieval, KV spectra.

Pure library (no terminal code): the `freqkv eval` and `freqkv spectrum` commands are thin
wrappers. Plots live in :mod:`.plots` and import matplotlib only when called.
"""

from __future__ import annotations

from .choices import parse_depths, parse_lengths, parse_policies
from .needle import NeedleTrial, needle_accuracy, run_needle_trial, score_answer
from .perplexity import PerplexityRun, perplexity_summary, run_perplexity
from .spectrum import LayerSpectrum, model_spectrum

__all__ = [
    "LayerSpectrum",
    "NeedleTrial",
    "PerplexityRun",
    "model_spectrum",
    "needle_accuracy",
    "parse_depths",
    "parse_lengths",
    "parse_policies",
    "perplexity_summary",
    "run_needle_trial",
    "run_perplexity",
    "score_answer",
]
