"""Benchmarks a user runs before adopting the parameter server (`distinception bench ...`).

Every figure is measured side by side in one invocation on one machine, with the same model,
batch and data, and reported as ratios; results and plots go to BENCHMARKS.md. `gpu` is pure
torch (no Ray), so it runs on a GPU machine that has only torch installed.
"""
