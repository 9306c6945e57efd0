"""tools/mutate_random.py: the sites it finds in a hand-written file (positions counted by hand,
the mutated lines written out), what it leaves alone, stable ids, the triage file and the test
order on a small made-up tree."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mutate_random", ROOT / "tools" / "mutate_random.py")
mr = importlib.util.module_from_spec(_spec)
sys.modules["mutate_random"] = mr
_spec.loader.exec_module(mr)

SOURCE = '''"""Doc: 1 < 2 and x + 1."""
import logging

log = logging.getLogger(__name__)


def f(a: int = 3, b: "list[int]" = None) -> int:
    """a < b"""
    print(a + 1)
    log.info("%d", a - 1)
    msg = f"{a * 2}" + "%d" % (a - 1)
    width = len("né") * 2
    if a < b and not (a == 2):
        a += b ** 2
    return -a % 7 if a is not None else msg


if __name__ == "__main__":
    f(1 - 2)
'''

# (line, column in characters, original text, replacement), counted by hand on SOURCE
EXPECTED = [
    (7, 15, "3", "4"),
    (12, 22, "*", "/"),  # after "né": the byte column would be 23
    (12, 24, "2", "3"),
    (13, 9, "<", "<="),
    (13, 13, "and", "or"),
    (13, 17, "not ", ""),
    (13, 24, "==", "!="),
    (13, 27, "2", "3"),
    (14, 10, "+=", "-="),
    (14, 15, "**", "*"),
    (14, 18, "2", "3"),
    (15, 11, "-", ""),
    (15, 14, "%", "//"),
    (15, 16, "7", "8"),
    (15, 23, "is not", "is"),
]


def test_sites_are_the_hand_counted_ones():
    found = [(m.line, m.col, m.original, m.replacement) for m in mr.sites_in("x.py", SOURCE)]
    assert found == EXPECTED


def test_look_only_keywords_of_a_plot_call_are_not_sites():
    """A figure's size, font, marker size, line width: no number depends on them; the call's
    data, its other keywords and its receiver's index stay sites."""
    source = "axes[1].plot(a - 1, ms=2, lw=a * 2, figsize=(6 * n, 4), color=c[0], fontsize=9)\n"
    found = [(m.col, m.original, m.replacement) for m in mr.sites_in("x.py", source)]
    assert found == [(5, "1", "2"), (15, "-", "+"), (17, "1", "2"), (64, "0", "1")]


def test_each_mutant_changes_only_its_site():
    by_site = {(m.line, m.col): m for m in mr.sites_in("x.py", SOURCE)}
    lines = SOURCE.splitlines()
    expected_lines = {
        (12, 22): '    width = len("né") / 2',
        (13, 17): "    if a < b and (a == 2):",
        (15, 11): "    return a % 7 if a is not None else msg",
        (15, 23): "    return -a % 7 if a is None else msg",
    }
    for site, new_line in expected_lines.items():
        mutated = by_site[site].apply(SOURCE).splitlines()
        assert mutated == lines[: site[0] - 1] + [new_line] + lines[site[0] :]


def test_ids_are_unique_and_survive_lines_moving():
    before = mr.sites_in("x.py", SOURCE)
    after = mr.sites_in("x.py", "# a new first line\n" + SOURCE)
    assert [m.id for m in before] == [m.id for m in after]
    assert [m.line + 1 for m in before] == [m.line for m in after]
    twice = mr.sites_in("y.py", "a = b < 1\na = b < 1\n")
    assert len(twice) == 4 and len({m.id for m in twice}) == 4


def test_triage_entries_mark_survivors_equivalent(tmp_path):
    path = tmp_path / "equivalent.txt"
    path.write_text(
        '# comment\n\nfile: x.py\nline: len("né")\nchange: * -> /\nwhy: a made-up reason\n\n'
    )
    (entry,) = mr.read_triage(path)
    sites = mr.sites_in("x.py", SOURCE)
    assert [(m.line, m.col) for m in sites if entry.matches(m)] == [(12, 22)]
    m = next(m for m in sites if entry.matches(m))
    survived = {"status": "survived", "first_failing_test": ""}
    assert mr._triaged(survived, m, [entry])["status"] == "equivalent"
    caught = {"status": "caught", "first_failing_test": "tests/test_x.py::t"}
    wrong = mr._triaged(caught, m, [entry])
    assert wrong["status"] == "caught" and "fix the entry" in wrong["first_failing_test"]


def test_test_order_importers_then_reachers(tmp_path):
    files = {
        "hf_init/__init__.py": "",
        "hf_init/a.py": "X = 1\n",
        "hf_init/b.py": "from hf_init.a import X\n",
        "scripts/run.py": "def main():\n    from hf_init.b import X\n",
        "tests/conftest.py": 'def run_out():\n    return run("run")\n\ndef run(name):\n    pass\n',
        "tests/test_a.py": "from hf_init import a\n",
        "tests/test_b.py": "def test_b(run_out):\n    pass\n",
        "tests/test_c.py": "def test_c():\n    pass\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    order = mr.TestOrder(tmp_path)
    assert order.tiers("hf_init/a.py") == [
        ["tests/test_a.py"],
        ["tests/test_b.py"],
        ["tests/test_c.py"],
    ]
    assert order.tiers("hf_init/b.py") == [
        [],
        ["tests/test_b.py"],
        ["tests/test_a.py", "tests/test_c.py"],
    ]

    # --tiers N runs the first N tiers, or up to the first tier that holds a test
    def files(*flags, file="hf_init/a.py"):
        args = mr._parser().parse_args(list(flags))
        return mr._test_files(args, order, SimpleNamespace(file=file))

    assert files("--tiers", "1") == ["tests/test_a.py"]
    assert files("--tiers", "2") == ["tests/test_a.py", "tests/test_b.py"]
    assert files() == ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"]
    assert files("--tiers", "1", file="hf_init/b.py") == ["tests/test_b.py"]
    assert files("--tiers", "2", file="hf_init/b.py") == ["tests/test_b.py"]
    assert files("--tests", "tests/test_c.py") == ["tests/test_c.py"]


def test_the_first_failing_test_is_named_whole_when_its_id_holds_spaces(tmp_path):
    """pytest's summary line is "FAILED <node id> - <message>": a parametrized id with spaces
    (as in tests/core/test_input_boundaries.py) comes back whole, and a captured log line that
    starts with ERROR is not taken for a test, so that the caught mutant's test can be rerun
    alone on the unmutated copy."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n"
        "def test_passes():\n    pass\n\n"
        '@pytest.mark.parametrize("v", [1, 2], ids=["first one|1", "second one|2"])\n'
        "def test_fails(v):\n"
        "    import logging\n"
        "    logging.getLogger('lib').error('a logged error line')\n"
        "    assert v == 0, 'a message - with a dash'\n"
    )
    rc, failed = mr.pytest_in_copy(tmp_path, ["tests/test_x.py"], timeout=120)
    assert rc == 1 and failed == "tests/test_x.py::test_fails[first one|1]"
    assert mr.pytest_in_copy(tmp_path, [failed], timeout=120)[0] == 1  # reruns that one alone


def test_a_crashed_run_is_a_catch_and_an_odd_exit_without_a_test_is_an_error():
    assert mr.verdict(None, "", 60) == ("timeout", "over 60 s")
    assert mr.verdict(0, "", 60) == ("survived", "")
    assert mr.verdict(5, "", 60) == ("survived", "")  # every test slow: none ran
    assert mr.verdict(1, "tests/t.py::test_a", 60) == ("caught", "tests/t.py::test_a")
    assert mr.verdict(-11, "", 60) == ("caught", "(pytest killed by signal 11)")
    assert mr.verdict(1, "", 60)[0] == "error"  # failed, but no test named
    assert mr.verdict(4, "", 60)[0] == "error"  # pytest's usage error
