"""Datasets and loaders: records (plain or conversational), chat templates, preference, prompt
and SFT datasets, length buckets and packing, grain pipelines."""
from rlhf_jax.data.buckets import (BucketedBatches, LengthSource, describe_shapes, ladder,
                                   pack_rows)
from rlhf_jax.data.chat import (ChatEncoder, ChatTemplateError, encoder_for, read_template,
                                use_template)
from rlhf_jax.data.conversation import (ConversationError, prompt_from_text,
                                        prompt_record_text, prompt_text, render_plain,
                                        response_text)
from rlhf_jax.data.preference import (PreferenceBatch, PreferenceDataset,
                                      build_preference_dataset, preference_batches,
                                      tokenize_record)
from rlhf_jax.data.prompts import (PromptDataset, build_prompt_dataset, prompt_arrays,
                                   prompt_batches)
from rlhf_jax.data.records import (DataFormatError, RecordStats, describe_dataset,
                                   iter_raw_records, normalise_rating, read_records,
                                   truncation_warnings)
from rlhf_jax.data.sft import PackedBatches, SFTDataset, build_sft_dataset, sft_batches
from rlhf_jax.data import builtin
from rlhf_jax.data.synthetic import progression_batches, progression_example
