"""Sampling from the decoder with a KV cache: `generate` / `sample` on token ids, `Sampler` on text, and a CLI."""
from mlc_jax.generate.decode import GenerateOutput, bucket_length, generate, row_keys, sample
from mlc_jax.generate.sampling import SamplingSettings

__all__ = ["GenerateOutput", "SamplingSettings", "bucket_length", "generate", "row_keys", "sample"]
