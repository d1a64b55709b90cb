"""Name and address normalisation, and fuzzy matching of names with rapidfuzz.

Free-text names are compared after normalisation: lower case, dots and apostrophes
dropped, other punctuation to spaces,
runs of spaces collapsed, and trailing legal-form words removed ("Pte. Ltd.",
"Sdn. Bhd.", "Co., Ltd.", "LLC", "GmbH" ...), so that "ACME Trading Co., Ltd." and
"Acme Trading" are the same key. Fuzzy matching runs on *unique* normalised strings
(there are far fewer distinct names than records) with `process.cdist`.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

# Legal-form words removed from the end of a normalised name (after punctuation has
# become spaces, so "Co., Ltd." is "co ltd" and "Sdn. Bhd." is "sdn bhd").
LEGAL_FORM_WORDS = (
    "pte", "pvt", "private", "ltd", "limited", "sdn", "bhd", "berhad", "co", "company",
    "corp", "corporation", "inc", "incorporated", "llc", "llp", "lp", "plc", "gmbh", "ag",
    "kg", "sa", "sas", "sarl", "srl", "spa", "bv", "nv", "pty", "kk", "oy", "ab", "as",
    "jsc", "pjsc", "ooo", "liability", "tbk", "pt", "fze", "fzco", "fzc", "jsc",
)
_LEGAL_SUFFIX = r"(?:\s+(?:" + "|".join(sorted(set(LEGAL_FORM_WORDS), key=len, reverse=True)) + r"))+$"
# Leading "PT" (Indonesia) is a legal form as well.
_LEGAL_PREFIX = r"^(?:pt|cv)\s+"


def normalise_name(expr: pl.Expr) -> pl.Expr:
    """Comparable form of a company name; null stays null, a name of only legal words is ''."""
    text = (
        expr.str.to_lowercase()
        .str.replace_all(r"&", " and ")
        # "S.C." is "sc", "O'Neil" is "oneil"; other punctuation separates words
        .str.replace_all(r"[.'’]", "")
        .str.replace_all(r"[^\p{L}\p{N}]+", " ")
        .str.strip_chars()
    )
    text = text.str.replace(_LEGAL_SUFFIX, "").str.replace(_LEGAL_PREFIX, "")
    return text.str.replace_all(r"\s+", " ").str.strip_chars()


def normalise_address(expr: pl.Expr) -> pl.Expr:
    """Comparable form of an address: lower case, punctuation to spaces, spaces collapsed."""
    return (
        expr.str.to_lowercase()
        .str.replace_all(r"[^\p{L}\p{N}]+", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def _sorted_tokens(texts: list[str]) -> list[str]:
    return [" ".join(sorted(t.split())) for t in texts]


def best_matches(queries: list[str], choices: list[str], *, score_cutoff: int = 0,
                 chunk: int = 2_000) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the best token_sort_ratio over ``choices`` and that choice's index.

    Returns (scores as float64, indices as int64); index -1 and score 0 where no choice
    reaches ``score_cutoff``. Work is chunked so the score matrix stays small.
    """
    n = len(queries)
    scores = np.zeros(n, dtype=np.float64)
    index = np.full(n, -1, dtype=np.int64)
    if n == 0 or not choices:
        return scores, index
    # token_sort_ratio is ratio over the sorted tokens: sorting each string once here and
    # scoring with plain ratio gives identical scores at twice the speed (rapidfuzz has a
    # vectorised path for ratio in cdist).
    queries, choices = _sorted_tokens(queries), _sorted_tokens(choices)
    for start in range(0, n, chunk):
        block = queries[start:start + chunk]
        matrix = process.cdist(block, choices, scorer=fuzz.ratio,
                               score_cutoff=score_cutoff, workers=-1, dtype=np.uint8)
        best = matrix.argmax(axis=1)
        best_score = matrix[np.arange(len(block)), best].astype(np.float64)
        found = best_score > 0
        scores[start:start + len(block)] = best_score
        index[start:start + len(block)] = np.where(found, best, -1)
    return scores, index
