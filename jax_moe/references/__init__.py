"""Pure-JAX formulations of our ops: the baselines our kernels are measured
against, written from the specs (no custom calls)."""
