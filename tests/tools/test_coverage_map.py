"""tools/coverage_map.py: the lines a test file runs (a subprocess's included), the statement a
mutated line belongs to, and which test files a mutant then runs, on small made-up trees whose
answers are counted by hand."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
_spec = importlib.util.spec_from_file_location("coverage_map", ROOT / "tools" / "coverage_map.py")
cm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cm)
_spec = importlib.util.spec_from_file_location("mutate_random", ROOT / "tools" / "mutate_random.py")
mr = importlib.util.module_from_spec(_spec)
sys.modules["mutate_random"] = mr
_spec.loader.exec_module(mr)

SOURCE = """import functools


@functools.lru_cache(maxsize=2)
def f(a,
      b=3):
    total = (a +
             b)
    if (total >
            4):
        return 1
    if a: return 2
    return 0
"""


def test_a_spot_belongs_to_its_statement_or_its_compound_statements_header():
    assert list(cm.statement_lines(SOURCE, 6)) == [4, 5, 6]  # a default: decorator to header
    assert list(cm.statement_lines(SOURCE, 8)) == [7, 8]  # the second line of an assignment
    assert list(cm.statement_lines(SOURCE, 10)) == [9, 10]  # an if's test, not its body
    assert list(cm.statement_lines(SOURCE, 11)) == [11]
    assert list(cm.statement_lines(SOURCE, 12)) == [12]  # header and body on one line
    assert list(cm.statement_lines(SOURCE, 2)) == [2]  # a blank line holds no statement


def _tree(tmp_path, files):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)


def test_measure_counts_the_lines_a_test_runs_in_its_own_process_and_in_a_subprocess(tmp_path):
    _tree(
        tmp_path,
        {
            "hf_init/__init__.py": "",
            "hf_init/a.py": "def here():\n    return 1\n\n\ndef there():\n    return 2\n\n\n"
            "def nowhere():\n    return 3\n",
            "tests/test_a.py": "import subprocess, sys\nfrom hf_init.a import here\n\n\n"
            "def test_a():\n    assert here() == 1\n"
            "    code = 'from hf_init.a import there; there()'\n"
            "    subprocess.run([sys.executable, '-c', code], check=True)\n",
        },
    )
    entry = cm.measure("tests/test_a.py", tmp_path)
    assert entry["rc"] == 0
    # defs run at import (1, 5, 9); here's body (2) in pytest, there's (6) in the subprocess
    assert entry["lines"]["hf_init/a.py"] == [1, 2, 5, 6, 9]


def test_a_mutant_runs_the_test_files_that_run_its_line_and_every_changed_one(tmp_path):
    _tree(
        tmp_path,
        {
            "hf_init/__init__.py": "",
            "hf_init/a.py": "X = 1\n\n\ndef f():\n    return X\n",
            "scripts/run.py": "",
            "tests/conftest.py": "",
            "tests/test_1.py": "from hf_init import a\n",
            "tests/test_2.py": "from hf_init import a\n",
            "tests/test_3.py": "from hf_init import a\n",
            "tests/test_4.py": "",
        },
    )
    lines = {"test_1": [1, 4, 5], "test_2": [1, 4], "test_3": [1, 4, 5], "test_4": []}
    cmap = {
        "context": cm.context_hash(tmp_path),
        "sources": cm.source_hashes(tmp_path),
        "tests": {
            f"tests/{name}.py": {
                "hash": cm.file_hash(tmp_path / f"tests/{name}.py"),
                "lines": {"hf_init/a.py": got},
                "rc": 5 if name == "test_3" else 0,  # test_3's tests are all slow
            }
            for name, got in lines.items()
        },
    }
    path = tmp_path / "runs" / "map.json"
    path.parent.mkdir()
    path.write_text(cm.json.dumps(cmap))
    covering = cm.current(tmp_path, path)
    assert covering.covers("hf_init/a.py", 5) == ["tests/test_1.py"]
    assert covering.covers("hf_init/a.py", 1) == ["tests/test_1.py", "tests/test_2.py"]

    order = mr.TestOrder(tmp_path)
    args = mr._parser().parse_args([])
    files = mr._test_files(args, order, SimpleNamespace(file="hf_init/a.py", line=4), covering)
    assert files == ["tests/test_1.py", "tests/test_2.py"]
    # no test file runs line 3 (blank): the first tier runs, in case coverage missed a process
    files = mr._test_files(args, order, SimpleNamespace(file="hf_init/a.py", line=3), covering)
    assert files == ["tests/test_1.py", "tests/test_2.py", "tests/test_3.py"]
    tier1 = mr._parser().parse_args(["--tiers", "1"])  # below all tiers the map is not used
    assert mr._test_files(tier1, order, SimpleNamespace(file="hf_init/a.py", line=5), covering) == [
        "tests/test_1.py",
        "tests/test_2.py",
        "tests/test_3.py",
    ]

    (tmp_path / "tests/test_4.py").write_text("# changed since the map\n")
    assert cm.current(tmp_path, path).covers("hf_init/a.py", 5) == [
        "tests/test_1.py",
        "tests/test_4.py",
    ]
    (tmp_path / "hf_init/a.py").write_text("X = 2\n\n\ndef f():\n    return X\n")
    assert cm.current(tmp_path, path).covers("hf_init/a.py", 5) is None  # lines may have moved
    (tmp_path / "tests/conftest.py").write_text("# a fixture changed\n")
    assert cm.current(tmp_path, path) is None
