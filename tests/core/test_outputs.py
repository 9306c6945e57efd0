"""hf_init.core.outputs: the one output-folder check and the keep-until-success overwrite."""

import pytest

from hf_init.core.cli import UsageError
from hf_init.core.outputs import check_output_dir, existing_outputs, kept_until_success


def test_refusal_names_folder_contents_and_flag(tmp_path):
    (tmp_path / "results.csv").write_text("a\n")
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "notes.txt").write_text("mine\n")
    assert existing_outputs(tmp_path, ["summary.json", "results.csv", "checkpoint-*"]) == [
        "results.csv",
        "checkpoint-3",
        "checkpoint-7",
    ]
    assert existing_outputs(tmp_path) == [
        "checkpoint-3",
        "checkpoint-7",
        "notes.txt",
        "results.csv",
    ]
    with pytest.raises(UsageError) as err:
        check_output_dir(
            tmp_path, False, ["summary.json", "results.csv"], flag="--overwrite_output_dir"
        )
    assert (
        str(tmp_path) in str(err.value)
        and "results.csv" in str(err.value)
        and "--overwrite_output_dir" in str(err.value)
    )
    assert check_output_dir(tmp_path, True, ["results.csv"]) == ["results.csv"]
    assert (
        check_output_dir(tmp_path / "new", False) == []
    )  # no folder: nothing held, nothing created
    assert not (tmp_path / "new").exists()


def test_a_file_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "f").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="not a folder"):
            check_output_dir(tmp_path / "f", overwrite)


def test_failed_run_puts_earlier_outputs_back_and_success_replaces_them(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.csv").write_text("old\n")
    (out / "tb").mkdir()
    (out / "tb" / "events").write_text("old events\n")
    (out / "notes.txt").write_text("not ours\n")
    found = check_output_dir(out, True, ["results.csv", "tb"])
    with pytest.raises(KeyboardInterrupt):
        with kept_until_success(out, found):
            assert sorted(p.name for p in out.iterdir()) == [
                "notes.txt"
            ]  # earlier outputs moved aside
            (out / "results.csv").write_text("half-written\n")
            (out / "extra.png").write_text("new\n")
            raise KeyboardInterrupt
    assert (out / "results.csv").read_text() == "old\n" and (
        out / "tb" / "events"
    ).read_text() == "old events\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.csv", "tb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no backup folder left behind
    with kept_until_success(out, found):
        (out / "results.csv").write_text("new\n")
    assert (out / "results.csv").read_text() == "new\n" and not (out / "tb").exists()
    assert (out / "notes.txt").read_text() == "not ours\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


@pytest.mark.parametrize("n_rows", [0, 1, 3])
def test_csv_rows_read_back_with_the_first_rows_columns(tmp_path, n_rows):
    """write_csv of 0, 1 and 3 dict rows, read back with the csv module: the header is the
    first row's keys in order (none without rows), then each row's values."""
    import csv

    from hf_init.core.outputs import write_csv

    rows = [{"scheme": f"s{i}", "seed": i, "loss": 0.5 + i} for i in range(n_rows)]
    path = write_csv(tmp_path / "r.csv", rows)
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == (["scheme", "seed", "loss"] if rows else [])
    assert lines[1:] == [[r["scheme"], str(r["seed"]), str(r["loss"])] for r in rows]


def test_keep_beside_takes_the_first_free_previous_number(tmp_path):
    """With out.previous-1 and -2 taken, the backup becomes out.previous-3, contents intact."""
    from hf_init.core.outputs import keep_beside

    for n in (1, 2):
        (tmp_path / f"out.previous-{n}").mkdir()
    backup = tmp_path / ".out.backup"
    backup.mkdir()
    (backup / "records.jsonl").write_text("kept\n")
    target = keep_beside(tmp_path / "out", backup)
    assert target == tmp_path / "out.previous-3"
    assert (target / "records.jsonl").read_text() == "kept\n" and not backup.exists()
    # none taken: the first is previous-1; then previous-2
    for n in (1, 2):
        (tmp_path / ".new.backup").mkdir()
        kept = keep_beside(tmp_path / "new", tmp_path / ".new.backup")
        assert kept == tmp_path / f"new.previous-{n}"


@pytest.mark.parametrize("n_written, listed", [(3, "a.txt, b.txt, c.txt"),
                                               (4, "a.txt, b.txt, c.txt, ...")])  # fmt: skip
def test_a_failed_training_run_names_up_to_three_of_its_outputs(tmp_path, n_written, listed):
    """keep_failed: a run that fails after writing keeps its outputs where they are, and the
    error names three of them in full, a fourth and more as "..."."""
    from hf_init.core.cli import RunStopped

    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("earlier run")
    with pytest.raises(RunStopped) as err:
        with kept_until_success(out, ["old.txt"], keep_failed=True):
            for name in "abcd"[:n_written]:
                (out / f"{name}.txt").write_text("new")
            raise RunStopped("error: training diverged")
    assert f"the failed run's outputs ({listed}) stay in" in str(err.value)
    assert not (out / "old.txt").exists() and (tmp_path / "run.previous-1" / "old.txt").is_file()
