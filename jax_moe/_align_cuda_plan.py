"""Launch plan of the CUDA align kernels, mirrored from cc/align/align_plan.h.

The CUDA custom call writes per-CTA histograms into a device workspace that the
lowering adds as an extra result; its size must be at least what the handler
computes (the handler checks and fails loudly otherwise).
"""
from __future__ import annotations

# Keep in sync with cc/align/align_plan.h.
TILE = 2048          # routes per CTA until MAX_CTAS (kCtaRoutes)
MAX_CTAS = 128       # CTAs of the multi-block path (about one per SM)


def num_ctas(numel: int) -> int:
    return max(1, min(MAX_CTAS, -(-numel // TILE)))


def workspace_words(numel: int, num_local: int) -> int:
    """int32 words: per-CTA offsets [G, L], expert starts [L+1], counts [L]."""
    g = num_ctas(numel)
    return g * num_local + 2 * num_local + 1
