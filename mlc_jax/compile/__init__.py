"""Ahead-of-time compilation of a run's programs for a TPU topology on a CPU machine (MaxText's `train_compile`).

  python -m mlc_jax.compile --config configs/mlc.py:model=llama3p1_8b,langs=mlc10 --topology v5p:2x2x1

No data, tokenizer or weights: the shapes come from the config. `aot.compile_run` builds the abstract train state,
the project's own train step (and the reference precompute) and compiles them with libtpu for compile-only TPU
devices; `report` prints per-chip memory, whether it fits, compile time and the analytic FLOPs.
"""
