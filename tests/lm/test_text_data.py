"""Text data and tokenizer: checked against independent computation (hashlib, stock
tokenizers/transformers, the files read back by hand). Offline; a few seconds in all."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections import Counter

import datasets
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from hf_init.core.cli import UsageError
from hf_init.lm.data.args import DataArguments
from hf_init.lm.data.blocks import tokenize_and_group
from hf_init.lm.data.builtin_corpus import builtin_corpus
from hf_init.lm.data.loaders import load_raw_text
from hf_init.lm.data.tokenizer import EOS_TOKEN, load_or_train_tokenizer, train_bpe_tokenizer

datasets.disable_progress_bars()

PARAGRAPHS = [
    "Weights drawn too small make the signal vanish layer after layer.",
    "Weights drawn too large make it explode: a stability band lies between.\n"
    "Kaiming scales by fan in.",
    "Xavier averages fan in and fan out. GPT-2 scales residual projections by 1/sqrt(2 n_layer).",
    "Unicode survives byte-level BPE: naïve café, 変数, Ελληνικά.",
] * 6


def _sha(docs):
    return hashlib.sha256(b"\0".join(d.encode("utf-8") for d in docs)).hexdigest()


def _write_jsonl(path, docs, key="text"):
    path.write_text(
        "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8"
    )
    return str(path)


@pytest.fixture(scope="module")
def builtin():
    return load_raw_text(DataArguments())


def test_builtin_corpus_info_is_hash_and_size_of_the_text(builtin):
    raw, info = builtin
    docs = builtin_corpus()
    assert info["sha256"] == _sha(docs)
    assert info["n_documents"] == len(docs)
    assert info["n_chars"] == sum(len(d) for d in docs)
    assert info["source"] == "builtin" and info["n_chars"] > 1_500_000
    # the corpus is this Python's documentation: its name says which version
    import platform

    assert info["name"].endswith(f"Python {platform.python_version()})"), info["name"]
    # Python's own help topics come first, in topic order, and stdlib docstrings are in there.
    import pydoc_data.topics

    topics = [t.strip() for _, t in sorted(pydoc_data.topics.topics.items())]
    assert docs[: len(topics)] == topics
    import json as json_module

    assert any(inspect.cleandoc(json_module.__doc__) in d for d in docs[len(topics) :])


def test_validation_is_carved_by_seed_disjoint_and_the_right_fraction(builtin):
    raw, info = builtin
    docs = builtin_corpus()
    train, validation = list(raw["train"]["text"]), list(raw["validation"]["text"])
    assert len(validation) == math.ceil(0.05 * len(docs))
    assert Counter(train) + Counter(validation) == Counter(docs)  # a partition of the corpus
    assert info["train_documents"] == len(train) and info["validation_documents"] == len(validation)
    again, _ = load_raw_text(DataArguments())
    assert list(again["validation"]["text"]) == validation
    reseeded, _ = load_raw_text(DataArguments(validation_split_seed=7))
    assert len(reseeded["validation"]) == len(validation)
    assert set(reseeded["validation"]["text"]) != set(validation)
    wider, _ = load_raw_text(DataArguments(validation_split_percentage=10))
    assert len(wider["validation"]) == math.ceil(0.10 * len(docs))


def test_local_txt_jsonl_csv_load(tmp_path):
    text = "\n\n".join(PARAGRAPHS) + "\n"
    (tmp_path / "train.txt").write_text(text, encoding="utf-8")
    (tmp_path / "valid.txt").write_text(
        "One held-out paragraph.\n\nAnd another.\n", encoding="utf-8"
    )
    raw, info = load_raw_text(
        DataArguments(
            train_file=str(tmp_path / "train.txt"),
            validation_file=str(tmp_path / "valid.txt"),
            sample_by="paragraph",
        )
    )
    expected = [p for p in text.split("\n\n") if p]
    assert list(raw["train"]["text"]) == expected
    assert list(raw["validation"]["text"]) == ["One held-out paragraph.", "And another.\n"]
    assert info["sha256"] == _sha(expected + ["One held-out paragraph.", "And another.\n"])

    jsonl = _write_jsonl(tmp_path / "train.jsonl", PARAGRAPHS, key="body")
    raw, info = load_raw_text(
        DataArguments(train_file=jsonl, text_column="body", validation_split_percentage=25)
    )
    assert raw["train"].column_names == ["text"]
    assert Counter(raw["train"]["text"]) + Counter(raw["validation"]["text"]) == Counter(PARAGRAPHS)
    assert len(raw["validation"]) == math.ceil(0.25 * len(PARAGRAPHS))
    assert info["sha256"] == _sha(PARAGRAPHS) and info["n_documents"] == len(PARAGRAPHS)

    csv = tmp_path / "train.csv"
    csv.write_text("text\n" + "".join(f'"{p}"\n' for p in PARAGRAPHS[:4]), encoding="utf-8")
    raw, _ = load_raw_text(DataArguments(train_file=str(csv), validation_split_percentage=25))
    assert sorted(list(raw["train"]["text"]) + list(raw["validation"]["text"])) == sorted(
        PARAGRAPHS[:4]
    )


def test_blocks_are_the_encoding_of_the_concatenated_documents(tmp_path):
    train = _write_jsonl(
        tmp_path / "train.jsonl", PARAGRAPHS[:2] + [""] + PARAGRAPHS[2:]
    )  # "" gets no eos
    valid = _write_jsonl(tmp_path / "valid.jsonl", PARAGRAPHS[:3])
    args = DataArguments(train_file=train, validation_file=valid, block_size=16, vocab_size=300)
    raw, _ = load_raw_text(args)
    tokenizer = load_or_train_tokenizer(args, raw["train"])
    tokenizer.save_pretrained(tmp_path / "tok")
    grouped = tokenize_and_group(raw, tokenizer, args)

    stock = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    for split, docs in (("train", PARAGRAPHS), ("validation", PARAGRAPHS[:3])):
        stream = stock.encode(EOS_TOKEN.join(docs) + EOS_TOKEN).ids
        blocks = grouped[split]
        assert len(blocks) == len(stream) // 16 > 0
        assert all(len(b) == 16 for b in blocks["input_ids"])
        assert [t for b in blocks["input_ids"] for t in b] == stream[: len(blocks) * 16]
        assert blocks[:]["labels"] == blocks[:]["input_ids"]
        assert all(m == [1] * 16 for m in blocks[:]["attention_mask"])

    limited = tokenize_and_group(
        raw, tokenizer, DataArguments(**{**vars(args), "max_train_samples": 2})
    )
    assert limited["train"][:]["input_ids"] == grouped["train"][:2]["input_ids"]


def test_map_results_are_cached_and_reused(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", PARAGRAPHS)
    args = DataArguments(
        train_file=train, block_size=8, vocab_size=300, data_cache_dir=str(tmp_path / "cache")
    )
    raw, _ = load_raw_text(args)
    tokenizer = load_or_train_tokenizer(args, raw["train"])
    first = tokenize_and_group(raw, tokenizer, args)
    raw2, _ = load_raw_text(args)
    second = tokenize_and_group(raw2, load_or_train_tokenizer(args, raw2["train"]), args)
    assert first["train"].cache_files and first["train"].cache_files == second["train"].cache_files
    assert str(tmp_path / "cache") in first["train"].cache_files[0]["filename"]
    assert second["train"][:]["input_ids"] == first["train"][:]["input_ids"]


def test_trained_tokenizer_reloads_with_stock_autotokenizer(tmp_path, builtin):
    raw, _ = builtin
    texts = list(raw["train"].select(range(60))["text"])
    tokenizer = train_bpe_tokenizer(texts, vocab_size=512)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) <= 512
    assert (
        reloaded.eos_token
        == reloaded.bos_token
        == reloaded.pad_token
        == reloaded.unk_token
        == EOS_TOKEN
    )
    stock = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in [texts[0][:500], "def f(x):\n    return x ** 2  # naïve 変数", EOS_TOKEN + " tail"]:
        ids = reloaded(text)["input_ids"]
        assert ids == tokenizer(text)["input_ids"] == stock.encode(text).ids
        assert reloaded.decode(ids) == text  # byte-level BPE is lossless
    from_folder = load_or_train_tokenizer(DataArguments(tokenizer_name=str(tmp_path)), None)
    assert from_folder("hello world")["input_ids"] == stock.encode("hello world").ids


def test_corpus_shorter_than_one_block_is_a_clear_error(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", ["tiny corpus", "two docs"])
    valid = _write_jsonl(tmp_path / "valid.jsonl", ["held out"])
    args = DataArguments(train_file=train, validation_file=valid, block_size=128, vocab_size=257)
    raw, _ = load_raw_text(args)
    tokenizer = load_or_train_tokenizer(args, raw["train"])
    n_tokens = len(
        tokenizer.backend_tokenizer.encode(f"tiny corpus{EOS_TOKEN}two docs{EOS_TOKEN}").ids
    )
    with pytest.raises(ValueError, match=rf"train split has {n_tokens} tokens.*block_size 128"):
        tokenize_and_group(raw, tokenizer, args)


def test_bad_files_and_arguments(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_raw_text(DataArguments(train_file=missing))
    ok = _write_jsonl(tmp_path / "train.jsonl", PARAGRAPHS)
    with pytest.raises(FileNotFoundError, match="valid.jsonl"):
        load_raw_text(DataArguments(train_file=ok, validation_file=str(tmp_path / "valid.jsonl")))
    (tmp_path / "train.xlsx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"allowed: \.txt.*\.jsonl.*\.csv"):
        load_raw_text(DataArguments(train_file=str(tmp_path / "train.xlsx")))
    with pytest.raises(ValueError, match="has no column 'body'.*text"):
        load_raw_text(DataArguments(train_file=ok, text_column="body"))
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 257"):
        train_bpe_tokenizer(["some text"], vocab_size=100)
    with pytest.raises(ValueError, match="validation_split_percentage"):
        load_raw_text(DataArguments(validation_split_percentage=0))


def test_dataset_name_path_keeps_a_given_validation_split(tmp_path):
    # datasets.load_dataset(name) is the Hub path; a local folder with split-named files goes
    # through it offline.
    folder = tmp_path / "my_corpus"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", PARAGRAPHS, key="content")
    _write_jsonl(folder / "validation.jsonl", PARAGRAPHS[:2], key="content")
    raw, info = load_raw_text(DataArguments(dataset_name=str(folder), text_column="content"))
    assert (
        list(raw["train"]["text"]) == PARAGRAPHS
        and list(raw["validation"]["text"]) == PARAGRAPHS[:2]
    )
    assert info["source"] == "hub" and info["validation"] == "given"
    assert info["sha256"] == _sha(PARAGRAPHS + PARAGRAPHS[:2])


def test_hub_dataset_and_tokenizer_offline_name_the_alternatives():
    assert datasets.config.HF_HUB_OFFLINE  # tests/conftest.py sets the offline env vars
    with pytest.raises(ValueError) as err:
        load_raw_text(
            DataArguments(dataset_name="wikitext", dataset_config_name="wikitext-103-raw-v1")
        )
    message = str(err.value)
    assert "\n" not in message and "wikitext" in message
    assert "built-in corpus" in message and "--train_file" in message
    with pytest.raises(ValueError) as err:
        load_or_train_tokenizer(DataArguments(tokenizer_name="openai-community/gpt2"), None)
    message = str(err.value)
    assert "\n" not in message and "omit --tokenizer_name" in message and "local folder" in message


def test_folder_without_a_tokenizer_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError) as err:
        load_or_train_tokenizer(DataArguments(tokenizer_name=str(tmp_path)), None)
    assert (
        "\n" not in str(err.value)
        and str(tmp_path) in str(err.value)
        and "save_pretrained" in str(err.value)
    )


def test_streaming_local_file_carves_and_groups(tmp_path):
    docs = [f"document number {i}: " + PARAGRAPHS[i % len(PARAGRAPHS)] for i in range(2000)]
    train = _write_jsonl(tmp_path / "train.jsonl", docs)
    args = DataArguments(
        train_file=train,
        streaming=True,
        block_size=32,
        vocab_size=300,
        validation_split_percentage=10,
        group_batch_size=10_000,
    )
    raw, info = load_raw_text(args)
    assert isinstance(raw, datasets.IterableDatasetDict) and info["sha256"] is None
    train_docs = [row["text"] for row in raw["train"]]
    valid_docs = [row["text"] for row in raw["validation"]]
    assert Counter(train_docs) + Counter(valid_docs) == Counter(docs)
    # Each document is held out with probability 10% (a seeded hash of its index):
    # Binomial(2000, 0.1) has mean 200 and sd 13.4; the bounds are 3 sd.
    assert 160 <= len(valid_docs) <= 240
    tokenizer = load_or_train_tokenizer(args, raw["train"])
    grouped = tokenize_and_group(raw, tokenizer, args)
    blocks = [row["input_ids"] for row in grouped["train"]]
    stream = tokenizer.backend_tokenizer.encode(EOS_TOKEN.join(train_docs) + EOS_TOKEN).ids
    assert len(blocks) == len(stream) // 32
    assert [t for b in blocks for t in b] == stream[: len(blocks) * 32]


def test_builtin_pipeline_with_subset_and_workers(builtin):
    args = DataArguments(
        max_train_documents=40, vocab_size=400, block_size=64, preprocessing_num_workers=2
    )
    raw, info = load_raw_text(args)
    assert len(raw["train"]) == 40 and info["max_train_documents"] == 40
    assert list(raw["train"]["text"]) == list(builtin[0]["train"].select(range(40))["text"])
    tokenizer = load_or_train_tokenizer(args, raw["train"])
    grouped = tokenize_and_group(raw, tokenizer, args)
    # Two workers: each shard drops its own last partial block, so at most one block fewer.
    stream = tokenizer.backend_tokenizer.encode(
        EOS_TOKEN.join(raw["train"]["text"]) + EOS_TOKEN
    ).ids
    assert len(stream) // 64 - 1 <= len(grouped["train"]) <= len(stream) // 64
    assert all(len(b) == 64 for b in grouped["train"]["input_ids"])


def test_builtin_corpus_streams_when_asked(builtin):
    raw, info = load_raw_text(DataArguments(streaming=True, max_train_documents=5))
    assert isinstance(raw, datasets.IterableDatasetDict) and info["sha256"] == builtin[1]["sha256"]
    assert [row["text"] for row in raw["train"]] == list(
        builtin[0]["train"].select(range(5))["text"]
    )
    assert [row["text"] for row in raw["validation"]] == list(builtin[0]["validation"]["text"])


@pytest.mark.parametrize("name", ["train.txt", "train.jsonl", "train.csv"])
def test_empty_train_file_is_a_one_line_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=rf"--train_file .*{name}.* is empty; expected "):
        load_raw_text(
            DataArguments(train_file=str(tmp_path / name), data_cache_dir=str(tmp_path / "cache"))
        )


def test_train_and_validation_files_of_two_kinds_are_one_line(tmp_path):
    """A .txt training file with a .jsonl validation file (two loaders, two schemas) is refused
    before loading; .txt with .txt is fine."""
    (tmp_path / "train.txt").write_text("one line of text\nanother line\n")
    (tmp_path / "val.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    (tmp_path / "val.txt").write_text("held out\n")
    cache = str(tmp_path / "cache")
    train = str(tmp_path / "train.txt")
    with pytest.raises(ValueError, match="must be the same kind of file, got \\['json', 'text'\\]"):
        load_raw_text(
            DataArguments(train_file=train, validation_file=str(tmp_path / "val.jsonl"),
                          data_cache_dir=cache)
        )  # fmt: skip
    raw, _ = load_raw_text(
        DataArguments(train_file=train, validation_file=str(tmp_path / "val.txt"),
                      data_cache_dir=cache)
    )  # fmt: skip
    assert [t.strip() for t in raw["validation"]["text"]] == ["held out"]


def test_non_text_column_is_a_one_line_error(tmp_path):
    cache = str(tmp_path / "cache")
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("".join(json.dumps({"text": i}) + "\n" for i in range(5)))
    with pytest.raises(
        ValueError, match=r"numbers\.jsonl.*column 'text' holds int64.*expected text"
    ):
        load_raw_text(DataArguments(train_file=str(numbers), data_cache_dir=cache))
    (tmp_path / "numbers.csv").write_text("body,text\na,1\nb,2\nc,3\n")
    with pytest.raises(ValueError, match=r"numbers\.csv.*column 'text' holds int64"):
        load_raw_text(DataArguments(train_file=str(tmp_path / "numbers.csv"), data_cache_dir=cache))
    nulls = (
        tmp_path / "nulls.jsonl"
    )  # strings with a null among them: column type string, one row None
    nulls.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a b", "c d", None, "e f"]))
    with pytest.raises(
        ValueError, match=r"nulls\.jsonl.*document 2 .* NoneType.*expected a string"
    ):
        load_raw_text(DataArguments(train_file=str(nulls), data_cache_dir=cache))


def test_malformed_json_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken\n')
    with pytest.raises(ValueError, match=r"cannot read .*bad\.jsonl.* as json"):
        load_raw_text(DataArguments(train_file=str(bad), data_cache_dir=str(tmp_path / "cache")))


def test_text_column_other_than_text_trains_the_tokenizer_on_it(tmp_path):
    """--text_column body without --tokenizer_name: the BPE trains on the body column's documents
    (the same merges as training it on those strings directly) and the blocks encode them."""
    train = _write_jsonl(tmp_path / "train.jsonl", PARAGRAPHS, key="body")
    args = DataArguments(
        train_file=train,
        text_column="body",
        vocab_size=300,
        block_size=16,
        validation_split_percentage=10,
        data_cache_dir=str(tmp_path / "cache"),
    )
    raw, _ = load_raw_text(args)
    tokenizer = load_or_train_tokenizer(args, raw["train"])
    direct = train_bpe_tokenizer(list(raw["train"]["text"]), vocab_size=300)
    assert tokenizer.backend_tokenizer.to_str() == direct.backend_tokenizer.to_str()
    assert len(tokenize_and_group(raw, tokenizer, args)["train"]) > 0


LINES = [f"line {i}: the variance of a sum of {i} independent terms adds up." for i in range(40)]


def test_a_txt_file_is_one_document_per_line_by_default(tmp_path):
    from hf_init.lm.data.args import DataArguments
    from hf_init.lm.data.loaders import load_raw_text

    path = tmp_path / "train.txt"
    path.write_text("\n".join(LINES[:20]) + "\n\n" + "\n".join(LINES[20:]) + "\n", encoding="utf-8")
    raw, info = load_raw_text(DataArguments(train_file=str(path), validation_split_percentage=10))
    docs = sorted(t.rstrip("\n") for split in raw.values() for t in split["text"])
    assert docs == sorted(LINES) and len(raw["validation"]) == 4 and info["n_documents"] == 40
    # each line keeps its line break (run_clm.py's keep_linebreaks), so the corpus hash is of
    # the lines with theirs, in file order
    assert all(t.endswith("\n") for split in raw.values() for t in split["text"])
    assert info["sha256"] == _sha([line + "\n" for line in LINES])
    para, _ = load_raw_text(
        DataArguments(train_file=str(path), validation_split_percentage=50, sample_by="paragraph")
    )
    assert len(para["train"]) + len(para["validation"]) == 2
    with pytest.raises(
        ValueError,
        match=r"1 training document\(s\) \(a \.txt file holds one document per "
        r"document with --sample_by document; choose line, paragraph or document\)",
    ):
        load_raw_text(DataArguments(train_file=str(path), sample_by="document"))
    with pytest.raises(
        UsageError, match="--sample_by must be one of line, paragraph, document, got 'lines'"
    ):
        DataArguments(sample_by="lines")


def test_one_json_document_is_refused_without_the_txt_advice(tmp_path):
    """The --sample_by advice is for .txt files only: a one-record JSON Lines file has one
    document whatever --sample_by says, so its error must not suggest changing it."""
    from hf_init.lm.data.args import DataArguments
    from hf_init.lm.data.loaders import load_raw_text

    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "' + " ".join(LINES) + '"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"from 1 training document\(s\): ") as err:
        load_raw_text(DataArguments(train_file=str(path)))
    assert "--sample_by" not in str(err.value)


def test_tsv_and_parquet_files_are_read(tmp_path):
    import pandas as pd

    from hf_init.lm.data.args import DataArguments
    from hf_init.lm.data.loaders import load_raw_text

    frame = pd.DataFrame({"id": range(len(LINES)), "body": [f"{t}, with a comma" for t in LINES]})
    frame.to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "train.parquet")
    for name in ("train.tsv", "train.parquet"):
        raw, info = load_raw_text(
            DataArguments(train_file=str(tmp_path / name), text_column="body")
        )
        assert sorted(t for split in raw.values() for t in split["text"]) == sorted(
            frame["body"]
        ), name
        assert info["n_documents"] == len(LINES)
