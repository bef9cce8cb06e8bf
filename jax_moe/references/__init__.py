"""Pure-JAX formulations of our ops (no custom calls), written from the specs:
test references and the baselines our kernels are measured against."""
