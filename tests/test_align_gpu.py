"""moe_align_block_size on CUDA equals the CPU kernel bit for bit (marker gpu).

Covers the CUDA paths (one warp's worth of routes, <= 32, and <= 1024 local
experts; grid sync from 8192 routes and <= 1024 local experts; one pass of
several CTAs for 512 < numel <= 32768 and <= 1024 local experts; single block
up to 8192 routes; multi block beyond) and their boundaries, all id dtypes,
expert maps, vmapped batches, and repeated runs."""
import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_moe
from jax_moe import _align_cuda_plan as plan
from backends import cpu_and_cuda as both
from reference_align import align_reference
from test_align import random_ids

pytestmark = pytest.mark.gpu


def assert_same(a, b, what=""):
    for x, y, name in zip(a, b, ("sorted_token_ids", "expert_ids", "num_tokens_post_pad")):
        assert x.shape == y.shape, (what, name)
        np.testing.assert_array_equal(x, y, err_msg=f"{what} {name}")


# Route counts at and around every path boundary.
NUMELS = sorted({0, 1, 2, 255, 1023, 1024, 1025, 4095, 4096, 4097, 8191, 8192, 8193,
                 plan.TILE * 2 + 1, plan.TILE * plan.MAX_CTAS - 1, plan.TILE * plan.MAX_CTAS + 7,
                 65536 * 8})
EXPERTS = [1, 8, 64, 256, 1024, 4095, 4096, 4097, 6000]


def cases(rng, n):
    out = []
    combos = list(itertools.product(NUMELS, EXPERTS))
    rng.shuffle(combos)
    for numel, E in combos[:n]:
        bs = int(rng.choice([1, 3, 16, 64, 128, 256]))
        K = int(rng.choice([1, 2, 8]))
        if numel % K:
            K = 1
        out.append((numel, K, E, bs))
    return out


@pytest.mark.parametrize("chunk", range(4))
def test_cuda_equals_cpu_random(rng, chunk):
    for numel, K, E, bs in cases(rng, 55):
        dtype = rng.choice([np.int32, np.uint32, np.int16, np.int8]) if E < 100 else np.int32
        ids = random_ids(rng, (numel // K, K), E, dtype)
        pad = bool(rng.integers(2))
        f = lambda x: jax_moe.moe_align_block_size(x, E, bs, pad_sorted_ids=pad)
        cpu, gpu = both(f, ids)
        assert_same(cpu, gpu, f"numel={numel} E={E} bs={bs} {dtype}")
        if numel <= 4096:
            assert_same(gpu, align_reference(ids, E, bs, pad_sorted_ids=pad))


def test_cuda_expert_map(rng):
    for numel, E in [(100, 64), (5000, 256), (70000, 256), (20000, 4096)]:
        L = int(rng.integers(1, E + 1))
        emap = np.where(rng.random(E) < .3, -1, rng.integers(0, L + 3, size=E)).astype(np.int32)
        ids = random_ids(rng, (numel,), E)
        f = lambda x, m: jax_moe.moe_align_block_size(x, E, 16, expert_map=m, num_local_experts=L)
        cpu, gpu = both(f, ids, emap)
        assert_same(cpu, gpu, f"map numel={numel}")


def test_cuda_vmap(rng):
    for numel in (300, 20000):
        ids = random_ids(rng, (5, numel // 2, 2), 64)
        cpu, gpu = both(jax.vmap(lambda x: jax_moe.moe_align_block_size(x, 64, 32)), ids)
        assert_same(cpu, gpu, f"vmap numel={numel}")


def test_cuda_int64(rng):
    with jax.enable_x64(True):
        ids = random_ids(rng, (3000, 4), 77, np.int64)
        ids[0, 0] = 2**40
        cpu, gpu = both(lambda x: jax_moe.moe_align_block_size(x, 77, 8), ids)
        assert_same(cpu, gpu)


def test_cuda_repeated_runs_identical(rng):
    ids = jax.device_put(random_ids(rng, (65536, 8), 256), jax.devices("cuda")[0])
    f = jax.jit(lambda x: jax_moe.moe_align_block_size(x, 256, 64))
    first = [np.asarray(o) for o in f(ids)]
    for _ in range(5):
        assert_same(first, [np.asarray(o) for o in f(ids)])


def test_cuda_seed_shape_against_reference(rng):
    ids = random_ids(rng, (4096, 2), 64)
    _, gpu = both(lambda x: jax_moe.moe_align_block_size(x, 64, 128), ids)
    assert_same(gpu, align_reference(ids, 64, 128))


def test_cuda_chunks_of_several_tiles(rng):
    # Past 8192 * MAX_CTAS routes each CTA ranks its chunk in several staged
    # tiles (8192 routes each), carrying expert counts from tile to tile.
    rank_tile = 8192  # kRankTile in cc/align/align_warp_rank.cu
    numel = rank_tile * plan.MAX_CTAS + 4 * 1000 + 3
    for E, bs in [(8, 16), (256, 64), (1024, 3)]:
        ids = random_ids(rng, (numel,), E)
        cpu, gpu = both(lambda x: jax_moe.moe_align_block_size(x, E, bs), ids)
        assert_same(cpu, gpu, f"numel={numel} E={E}")


@pytest.mark.parametrize("numel,E,bs", [(8192, 64, 128), (8192, 1024, 4), (8192, 1024, 25),
                                        (8192, 1024, 26), (100, 1024, 256), (8, 1024, 4097),
                                        (8192, 4000, 3)])
def test_cuda_small_path_variants(rng, numel, E, bs):
    # One launch for <= 8192 routes: the output staged in shared memory when it
    # fits (P + P/bs words beside the tile and counters), else scattered
    # directly with padding by CTA 0 (P <= 32768) or by extra CTAs; the sort
    # ranking past 1024 experts. Both sides of each boundary.
    ids = random_ids(rng, (numel,), E)
    cpu, gpu = both(lambda x: jax_moe.moe_align_block_size(x, E, bs), ids)
    assert_same(cpu, gpu, f"numel={numel} E={E} bs={bs}")
    assert_same(gpu, align_reference(ids, E, bs))


# The one-warp path (cc/align/align_tiny.cu): <= 32 routes and <= 1024 local
# experts; 33 routes and 1025 experts take the older paths. Slots are spread
# over CTAs of 1024, so bs 4097 (P up to 32 * 4097) runs ~130 CTAs.
ONE_WARP_NUMELS = [0, 1, 2, 31, 32, 33]


def check_path(ids, E, bs, what, emap=None, L=None, **kw):
    """CUDA equals the CPU kernel and the reference (with an expert map when given)."""
    pad = kw.get("pad_sorted_ids", False)
    if emap is None:
        f = lambda x: jax_moe.moe_align_block_size(x, E, bs, **kw)
        cpu, gpu = both(f, ids)
    else:
        f = lambda x, m: jax_moe.moe_align_block_size(x, E, bs, expert_map=m,
                                                      num_local_experts=L, **kw)
        cpu, gpu = both(f, ids, emap)
    assert_same(cpu, gpu, what)
    assert_same(gpu, align_reference(ids, E, bs, emap, L, pad_sorted_ids=pad), what)


def wild_map(rng, E, L):
    """An expert map onto L local experts, 40% of its entries -1, >= L or far out."""
    emap = rng.integers(0, L, size=E)
    wild = rng.choice([-1, -7, L, L + 5, np.iinfo(np.int32).max, np.iinfo(np.int32).min], E)
    return np.where(rng.random(E) < .4, wild, emap).astype(np.int32)


@pytest.mark.parametrize("numel", ONE_WARP_NUMELS)
def test_cuda_one_warp_path(rng, numel):
    for E, bs in [(1, 1), (8, 3), (64, 128), (1024, 1), (1024, 64), (1024, 4097), (1025, 16)]:
        pad = bool(rng.integers(2))
        ids = random_ids(rng, (numel,), E)
        check_path(ids, E, bs, f"numel={numel} E={E} bs={bs}", pad_sorted_ids=pad)


def test_cuda_one_warp_peers_and_blocks(rng):
    # 32 routes of one expert at bs 1 (32 blocks, the most), 32 distinct
    # experts, few distinct experts with several blocks each, and all invalid.
    for ids, E, bs in [(np.zeros(32), 4, 1), (np.arange(32)[::-1], 1024, 1),
                       (np.arange(32) % 3, 3, 4), (rng.integers(0, 5, 32), 5, 2),
                       (np.full(32, -1), 64, 3), (np.full(7, 64), 64, 16)]:
        for pad in (False, True):
            check_path(np.asarray(ids, np.int32), E, bs, f"E={E} bs={bs}", pad_sorted_ids=pad)


def test_cuda_one_warp_many_ctas(rng):
    # Large P: bs 65536 with 32 distinct experts writes 2M slots (2048 CTAs).
    ids = rng.permutation(1000)[:32].astype(np.int32)
    ids[::5] = -1
    check_path(ids, 1000, 65536, "bs=65536", pad_sorted_ids=True)


def test_cuda_one_warp_expert_map(rng):
    # L from the map (up to 1024 with E 1100; 1025 falls back), map entries -1,
    # >= L and far out of range, ids out of range.
    for numel, E, L in [(1, 64, 8), (17, 256, 200), (32, 1100, 1024), (32, 1100, 1025),
                        (31, 2000, 1)]:
        emap = wild_map(rng, E, L)
        ids = random_ids(rng, (numel,), E)
        for bs in (1, 16, 300):
            check_path(ids, E, bs, f"map numel={numel} E={E} L={L} bs={bs}", emap, L,
                       pad_sorted_ids=True)


def test_cuda_one_warp_id_dtypes(rng):
    ids = random_ids(rng, (32,), 77, np.uint32)
    ids[:2] = [np.iinfo(np.uint32).max, 77]
    check_path(ids, 77, 8, "uint32")
    ids = random_ids(rng, (5,), 100, np.int8)
    check_path(ids, 100, 2, "int8")
    with jax.enable_x64(True):
        ids = random_ids(rng, (4, 8), 77, np.int64)
        ids[0, :3] = [2**40, -2**40, 77 + 2**32]
        check_path(ids, 77, 8, "int64")


def check_vmap(rng, batch, numel, bs):
    # Problems of a batch on blockIdx.y, with batched ids and batched maps.
    ids = random_ids(rng, (batch, numel), 64)
    cpu, gpu = both(jax.vmap(lambda x: jax_moe.moe_align_block_size(x, 64, bs)), ids)
    assert_same(cpu, gpu, f"vmap numel={numel} bs={bs}")
    maps = rng.integers(-1, 20, size=(batch, 64)).astype(np.int32)
    g = jax.vmap(lambda x, m: jax_moe.moe_align_block_size(x, 64, bs, expert_map=m,
                                                           num_local_experts=20))
    cpu, gpu = both(g, ids, maps)
    assert_same(cpu, gpu, f"vmap map numel={numel} bs={bs}")


def test_cuda_one_warp_vmap(rng):
    for numel, bs in [(7, 4), (32, 1), (32, 200)]:
        check_vmap(rng, 6, numel, bs)


# Mid sizes, 512 < numel <= 32768 routes and <= 1024 local experts: the
# one-pass path (cc/align/align_onepass.cu) below 8192 routes, the grid-sync
# path (cc/align/align_gridsync.cu) from there (one pass again where the grid
# cannot be co-resident or JAX_MOE_ALIGN_GRIDSYNC=0: test_cuda_one_pass_forced).
# Both bounds, chunk boundaries (545 = 3 one-pass chunks of 192, 192 and 161;
# 31745 = 125 chunks of 256, the last one 1 route; 32767) and the neighbours'
# sizes.
ONE_PASS_NUMELS = [512, 513, 544, 545, 1024, 1025, 2048, 2049, 8192, 8193, 16385, 31745, 32767,
                   32768, 32769]


@pytest.mark.parametrize("numel", ONE_PASS_NUMELS)
def test_cuda_one_pass_path(rng, numel):
    for E, bs in [(1, 1), (8, 3), (15, 16), (64, 128), (256, 64), (1024, 1), (1024, 256),
                  (1025, 16)]:
        ids = random_ids(rng, (numel,), E)
        check_path(ids, E, bs, f"numel={numel} E={E} bs={bs}",
                       pad_sorted_ids=bool(rng.integers(2)))


def test_cuda_one_pass_skewed(rng):
    # One expert for every route (one warp-aggregated or same-address count per
    # step), a few hot experts, every route dropped, routes only in the last chunk.
    numel = 5000
    hot = rng.choice([3, 40, 63], numel)
    last = np.full(numel, -1)
    last[-7:] = [5, 5, 0, 63, 5, 1, 0]
    for ids, bs in [(np.full(numel, 9), 16), (hot, 128), (np.full(numel, 64), 3), (last, 64),
                    (np.where(rng.random(numel) < .5, hot, rng.integers(0, 64, numel)), 1)]:
        for pad in (False, True):
            check_path(np.asarray(ids, np.int32), 64, bs, f"bs={bs}", pad_sorted_ids=pad)
    ids = np.where(rng.random(numel) < .9, 2, rng.integers(0, 8, numel)).astype(np.int32)
    check_path(ids, 8, 16, "E=8 skewed")


def test_cuda_one_pass_expert_map(rng):
    # L from the map (1024 with E 1100 takes the path; 1025 does not), map
    # entries -1, >= L and far out of range, ids out of range.
    for numel, E, L in [(1500, 64, 8), (8192, 256, 200), (20000, 1100, 1024),
                        (20000, 1100, 1025), (32768, 2000, 1)]:
        emap = wild_map(rng, E, L)
        ids = random_ids(rng, (numel,), E)
        for bs in (1, 16, 300):
            check_path(ids, E, bs, f"map numel={numel} E={E} L={L} bs={bs}", emap, L,
                           pad_sorted_ids=True)


def test_cuda_one_pass_large_padding(rng):
    # P far above numel: 2048 routes over 1024 experts at bs 4097 is ~4M slots,
    # 128 CTAs of which 120 only count and fill.
    ids = rng.permutation(np.arange(2048) % 1024).astype(np.int32)
    ids[::7] = -1
    check_path(ids, 1024, 4097, "bs=4097", pad_sorted_ids=True)


def run_forced(rng, sizes="onepass", **env):
    """tests/align_forced_path.py over its `sizes` cases in its own process (the
    path switches are read once per process) with the given environment
    variables."""
    run = subprocess.run([sys.executable, "align_forced_path.py", str(rng.integers(1 << 30)), sizes],
                         cwd=os.path.dirname(__file__), env=dict(os.environ, **env),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_cuda_one_pass_forced(rng):
    # JAX_MOE_ALIGN_ONEPASS=all (benchmark A/B) with the grid-sync path off gives
    # the one-pass kernel every size above the one-warp path up to 32768 (as when
    # the grid sync falls back): it must stay exact there.
    run_forced(rng, JAX_MOE_ALIGN_ONEPASS="all", JAX_MOE_ALIGN_GRIDSYNC="0")


# The grid-sync path beyond the one-pass sizes: chunks of <= 8192 routes over
# G <= 128 CTAs with G * L <= 65536 (so up to 1 M routes for L <= 512, 512 K for
# L = 1024), row sums split over several threads per expert when L < 512; the
# sorted scatter by default from chunks of 1024 routes over >= 64 experts.
GRID_SYNC_CASES = [(65535, 8, 16), (65536, 256, 64), (131072, 1024, 3), (131073, 1024, 64),
                   (524288, 256, 64), (524289, 511, 1), (1048576, 128, 128), (1048577, 8, 16),
                   (300000, 1, 1), (40000, 513, 7)]


@pytest.mark.parametrize("numel,E,bs", GRID_SYNC_CASES)
def test_cuda_grid_sync_large(rng, numel, E, bs):
    ids = random_ids(rng, (numel,), E)
    check_path(ids, E, bs, f"numel={numel} E={E} bs={bs}", pad_sorted_ids=bool(rng.integers(2)))


@pytest.mark.parametrize("scatter", ["sorted", "direct"])
def test_cuda_grid_sync_scatter_forced(rng, scatter):
    # Each of the grid sync's two scatters at every grid-sync size (the default
    # rule gives the sorted one to long chunks only).
    run_forced(rng, "gridsync", JAX_MOE_ALIGN_GRIDSYNC_SCATTER=scatter)


def test_cuda_grid_sync_vmap_fallback(rng):
    # A batch of 40 problems of 16 chunks each cannot be co-resident (640 CTAs on
    # 132 SMs): the launcher takes the one-pass kernel instead; a batch of 3 of
    # 40 chunks runs the grid sync over all 120 CTAs at once.
    check_vmap(rng, 40, 8192, 64)
    check_vmap(rng, 3, 20000, 16)


def test_cuda_one_pass_id_dtypes(rng):
    ids = random_ids(rng, (3000,), 77, np.uint32)
    ids[:2] = [np.iinfo(np.uint32).max, 77]
    check_path(ids, 77, 8, "uint32")
    check_path(random_ids(rng, (2049,), 100, np.int8), 100, 2, "int8")
    check_path(random_ids(rng, (4096, 8), 256, np.int16), 256, 64, "int16 4096 x 8")
    with jax.enable_x64(True):
        ids = random_ids(rng, (4096, 2), 77, np.int64)
        ids[0, :2] = [2**40, -2**40]
        ids[1, :2] = [77 + 2**32, 3 + 2**32]
        check_path(ids, 77, 8, "int64")


def test_cuda_one_pass_vmap(rng):
    for numel, bs in [(1100, 4), (8192, 128), (32768, 64)]:
        check_vmap(rng, 3, numel, bs)


def test_cuda_one_pass_seed_shapes_repeated(rng):
    # The targets' shapes, several runs: bit-identical every time.
    for (T, K, E, bs) in [(4096, 2, 64, 128), (4096, 8, 256, 64)]:
        ids = jax.device_put(random_ids(rng, (T, K), E), jax.devices("cuda")[0])
        f = jax.jit(lambda x: jax_moe.moe_align_block_size(x, E, bs))
        first = [np.asarray(o) for o in f(ids)]
        assert_same(first, align_reference(np.asarray(ids), E, bs))
        for _ in range(3):
            assert_same(first, [np.asarray(o) for o in f(ids)])
