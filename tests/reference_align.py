"""numpy reference of moe_align_block_size, written from shared/spec/align.md."""
import numpy as np


def align_reference(ids, num_experts, block_size, expert_map=None, num_local=None,
                    pad_sorted_ids=False):
    flat = np.asarray(ids).reshape(-1)
    numel = flat.size
    L = num_experts if num_local is None else num_local
    lane = np.full(numel, -1, np.int64)
    for i, v in enumerate(flat.tolist()):  # python ints: no overflow surprises
        if 0 <= v < num_experts:
            e = int(expert_map[v]) if expert_map is not None else v
            if 0 <= e < L:
                lane[i] = e
    valid = lane >= 0
    counts = np.bincount(lane[valid], minlength=L)
    padded = -(-counts // block_size) * block_size
    start = np.concatenate([[0], np.cumsum(padded)[:-1]])
    total = int(padded.sum())
    p = numel + min(numel, L) * (block_size - 1)
    if pad_sorted_ids:
        p = -(-p // block_size) * block_size
    sorted_ids = np.full(p, numel, np.int32)
    expert_ids = np.full(-(-p // block_size), -1, np.int32)
    for e in range(L):
        idx = np.nonzero(lane == e)[0]
        sorted_ids[start[e]:start[e] + counts[e]] = idx
        expert_ids[start[e] // block_size:(start[e] + padded[e]) // block_size] = e
    return sorted_ids, expert_ids, np.array([total], np.int32)
