"""Datasets and loaders: preference/prompt data, tokenisation, grain pipelines."""
from rlhf_jax.data.preference import (PreferenceBatch, PreferenceDataset,
                                      build_preference_dataset, preference_batches,
                                      tokenize_record)
from rlhf_jax.data.prompts import (PromptDataset, build_prompt_dataset, prompt_arrays,
                                   prompt_batches)
from rlhf_jax.data.records import (DataFormatError, RecordStats, describe_dataset,
                                   iter_raw_records, normalise_rating, read_records,
                                   split_dialogue)
from rlhf_jax.data import builtin
from rlhf_jax.data.synthetic import progression_batches, progression_example
