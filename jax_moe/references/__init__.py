"""Pure-JAX formulations of our ops: test references and benchmark baselines."""
