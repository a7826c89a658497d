"""Datasets and loaders: preference/prompt data, tokenisation, grain pipelines."""
from rlhf_jax.data.synthetic import progression_batches, progression_example
