"""The data arguments of the pretraining job: where the training text comes from and how it
becomes blocks of token ids, with every check that needs no data in ``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_init.core.cli import UsageError

#: The one column every loader yields (``load_raw_text`` renames ``--text_column`` to it) and that
#: the tokenizer trainer and the blocks read.
TEXT_COLUMN = "text"
#: How a .txt file is cut into documents (the ``sample_by`` of datasets' text builder).
SAMPLE_BY = ("line", "paragraph", "document")


@dataclass
class DataArguments:
    """Where the training text comes from and how it becomes blocks of token ids."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset to train on (e.g. wikitext). Default: the built-in offline corpus."
        },
    )
    dataset_config_name: str | None = field(
        default=None,
        metadata={"help": "Configuration of --dataset_name (e.g. wikitext-103-raw-v1)."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the Hub dataset instead of downloading it (no map cache, no num_proc)."
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Local training text: .txt (one document per line; see --sample_by), "
            ".json/.jsonl, .csv, .tsv or .parquet (a text column, see --text_column)."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={
            "help": "Local validation text (same format as --train_file). Default: carved from "
            "train."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column that holds the text."})
    sample_by: str = field(
        default="line",
        metadata={
            "help": "What one document of a .txt file is: line (every non-empty line, as in "
            "run_clm.py), paragraph (text between blank lines) or document (the whole file)."
        },
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": "Percent of training documents held out for validation when the data has no "
            "validation split (chosen by --validation_split_seed)."
        },
    )
    validation_split_seed: int = field(
        default=42,
        metadata={
            "help": "Seed of the train/validation carve. Separate from --seed so that runs "
            "comparing init schemes or seeds see the same split."
        },
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence."})
    add_eos_token: bool = field(
        default=True,
        metadata={
            "help": "Append the eos token after every non-empty document. Turn off for datasets "
            "whose rows are lines of longer documents (e.g. wikitext)."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for datasets.map (tokenize, group)."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Recompute cached datasets.map results."}
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cache folder for datasets (default: the Hugging Face datasets cache)."},
    )
    max_train_documents: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the first N training documents after the validation carve (for "
            "quick runs and tests: the tokenizer then trains on less text)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training blocks (after grouping)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation blocks (after grouping)."}
    )
    group_batch_size: int = field(
        default=1000,
        metadata={
            "help": "Documents per datasets.map batch when grouping; each batch drops its last "
            "partial block (fewer than block_size tokens)."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer: a local folder or Hub id. Default: train a ByteLevel BPE on the "
            "train split."
        },
    )
    vocab_size: int = field(
        default=1024, metadata={"help": "Vocabulary size of the trained BPE tokenizer."}
    )
    tokenizer_train_documents: int | None = field(
        default=None,
        metadata={
            "help": "Train the BPE on the first N training documents (default: all of them; "
            "50,000 when streaming)."
        },
    )

    def __post_init__(self):
        if self.sample_by not in SAMPLE_BY:
            raise UsageError(
                f"--sample_by must be one of {', '.join(SAMPLE_BY)}, got {self.sample_by!r}"
            )
        if self.dataset_name and (self.train_file or self.validation_file):
            raise UsageError(
                "pass either --dataset_name or --train_file/--validation_file, not both"
            )
        if self.validation_file and not self.train_file:
            raise UsageError("--validation_file needs --train_file")
        if not 0 < self.validation_split_percentage < 100:
            raise UsageError(
                f"--validation_split_percentage must be between 1 and 99, "
                f"got {self.validation_split_percentage}"
            )
        if self.block_size < 1:
            raise UsageError(
                f"--block_size must be a positive number of tokens, got {self.block_size}"
            )
        for name in (
            "max_train_documents",
            "max_train_samples",
            "max_eval_samples",
            "tokenizer_train_documents",
            "group_batch_size",
            "preprocessing_num_workers",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be a positive integer, got {value}")
        from hf_init.lm.data.tokenizer import MIN_VOCAB_SIZE

        if self.tokenizer_name is None and self.vocab_size < MIN_VOCAB_SIZE:
            # checked here, before any data is read, as well as where the BPE is trained
            raise UsageError(
                f"--vocab_size must be >= {MIN_VOCAB_SIZE} (256 byte symbols + the end-of-text "
                f"token), got {self.vocab_size}"
            )
