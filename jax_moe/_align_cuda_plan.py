"""Launch plan of the CUDA align kernels, mirrored from cc/align/align_plan.h.

The CUDA custom call writes per-CTA histograms into a device workspace that the
lowering adds as an extra result; its size must be at least what the handler
computes (the handler checks and fails loudly otherwise).
"""
from __future__ import annotations

# Keep in sync with cc/align/align_plan.h.
TILE = 2048          # routes per CTA until MAX_CTAS (kCtaRoutes)
MAX_CTAS = 128       # CTAs of the multi-block path (about one per SM)
SYNC_MIN_CHUNK = 512  # routes per workspace row of the grid-sync path (kSyncMinChunk)


def sync_rows(numel: int) -> int:
    return max(1, min(MAX_CTAS, -(-numel // SYNC_MIN_CHUNK)))


def workspace_words(numel: int, num_local: int) -> int:
    """int32 words: per-CTA offsets [G, L], expert starts [L+1], counts [L] (multi
    block, G = ceil(numel / TILE) <= MAX_CTAS), or per-CTA counts [G', L] (grid
    sync, G' = sync_rows(numel) >= G)."""
    return sync_rows(numel) * num_local + 2 * num_local + 1
