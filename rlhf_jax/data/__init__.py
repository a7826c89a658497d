"""Datasets and loaders: records (plain or conversational), chat templates, preference, prompt
and SFT datasets, length buckets and packing, grain pipelines."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "buckets": ("BucketedBatches", "LengthSource", "describe_shapes", "ladder", "pack_rows",),
    "chat": ("ChatEncoder", "ChatTemplateError", "encoder_for", "read_template", "use_template",),
    "conversation": (
        "ConversationError", "prompt_from_text", "prompt_record_text", "prompt_text",
        "render_plain", "response_text",
    ),
    "preference": (
        "PreferenceBatch", "PreferenceDataset", "build_preference_dataset", "preference_batches",
        "tokenize_record",
    ),
    "poison": ("ATTACKS", "AttackConfig", "attacker_choice", "poison_file", "poison_records",),
    "prompts": ("PromptDataset", "build_prompt_dataset", "prompt_arrays", "prompt_batches",),
    "records": (
        "DataFormatError", "RecordStats", "describe_dataset", "iter_raw_records",
        "normalise_rating", "read_records", "truncation_warnings",
    ),
    "sft": ("PackedBatches", "SFTDataset", "build_sft_dataset", "sft_batches",),
    "synthetic": ("progression_batches", "progression_example",),
})
