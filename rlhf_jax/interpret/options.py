"""The choices the audit's config offers (importable without JAX): how activations are pooled
over a response, and how the atlas lays them out."""

POOLINGS = ("last", "mean")  # the token the reward head reads, or the response's mean
PROJECTIONS = ("pca", "umap")  # the atlas's 2-D layout
