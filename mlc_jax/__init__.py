"""mlc_jax: multilingual safety alignment of LLMs in JAX/Flax NNX."""
from mlc_jax import cli, platforms

platforms.select()  # before anything imports jax
cli.exit_at_ctrl_c_before_run()
