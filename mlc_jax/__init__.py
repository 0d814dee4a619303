"""mlc_jax: multilingual safety alignment of LLMs in JAX/Flax NNX."""
from mlc_jax import platforms

platforms.select()  # before anything imports jax
