"""The names of the ways :mod:`.recall` recalls passages for a question, apart from the code
that does it (which needs torch): the CLI lists them in its help."""

from __future__ import annotations

RECALL_METHODS = ("both", "tokens", "words", "held", "none")
DEFAULT_RECALL = "both"  # the best measured (docs/BENCHMARKS.md section 7)
