"""Loss functions: one pure-function module per objective."""
from mlc_jax.losses import logps, mlc, mpo, msd, preference
