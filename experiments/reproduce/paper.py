"""The paper's numbers, as they appear in our copy (the slide transcription, docs/design.md).

Only numbers present in that transcription are here. A row it lacks is
``None`` and is printed as "not in our copy of the paper"; nothing is filled
in from memory or other sources.
"""

from __future__ import annotations

NOT_IN_COPY = "not in our copy of the paper"

# Table 1 ("CIFAR Final Validation Accuracy"), percent, mean ± std as printed.
# The slides' row "LOOKAHEAD" does not name its inner optimizer; it is put
# beside our LA(SGD). There is no Lookahead(Adam) row.
TABLE1: dict[str, dict[str, str] | None] = {
    "sgd": {"CIFAR-10": "95.23 ± .19", "CIFAR-100": "78.24 ± .18"},
    "polyak": {"CIFAR-10": "95.26 ± .04", "CIFAR-100": "77.99 ± .42"},
    "adam": {"CIFAR-10": "94.84 ± .16", "CIFAR-100": "76.88 ± .39"},
    "la_sgd": {"CIFAR-10": "95.27 ± .06", "CIFAR-100": "78.34 ± .05"},
    "la_adam": None,
}

# Table 3 (LSTM on Penn Treebank): train, validation, test perplexity, single
# numbers as printed (no error bars in our copy). "-" is printed for Polyak's train.
TABLE3: dict[str, tuple[str, str, str]] = {
    "sgd": ("43.62", "66.0", "63.90"),
    "la_sgd": ("35.02", "65.10", "63.04"),
    "adam": ("33.54", "61.64", "59.33"),
    "la_adam": ("31.92", "60.28", "57.72"),
    "polyak": ("-", "61.18", "58.79"),
}
