"""Which lines of hf_init/ each test file runs: the map that lets tools/mutate_random.py judge a
mutant by the whole suite while running only the test files that can see it.

A test file that never executes the statement holding a mutated spot runs the same with the
mutant as without it, so the test files that execute it give the whole suite's verdict. A
survivor then costs the files that run its line, not the whole suite (minutes each on 2 cores).

Each test file of tests/ runs alone, as the README's test command runs it (``-m "not slow"``),
under coverage with ``patch = subprocess`` so the scripts, launchers and spawned ranks it starts
count too. The map (runs/coverage_map.json) holds, per test file, the lines of each hf_init
file it executed and the hash of the test file, and the hash of every hf_init file, script and
conftest the map was made on. A mutant of an hf_init file whose hash changed falls back to the
tier order; a test file that changed or is new since the map always runs; a changed script or
conftest makes the whole map stale. Run it again after such changes: only stale entries rerun.

    python tools/coverage_map.py            # make or bring up to date, 2 test files at a time
    python tools/coverage_map.py --jobs 1   # on a busy machine
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
MAP = ROOT / "runs" / "coverage_map.json"
NOT_SLOW = ("-m", "not slow")  # the suite the README's test command runs

sys.path[:0] = [str(ROOT), str(TOOLS)]
from mutate import TEST_ENV  # noqa: E402

RCFILE = """\
[run]
source = {root}/hf_init
parallel = true
patch = subprocess, _exit
data_file = {tmp}/.coverage
"""


def file_hash(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12]


def test_files(root: Path = ROOT) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted((root / "tests").rglob("test_*.py"))]


def context_files(root: Path = ROOT) -> list[Path]:
    """What every test file's coverage depends on besides itself: conftest and scripts."""
    return sorted([*(root / "tests").rglob("conftest.py"), *(root / "scripts").glob("*.py")])


def context_hash(root: Path = ROOT) -> str:
    joined = "".join(f"{p.relative_to(root)}:{file_hash(p)}\n" for p in context_files(root))
    return hashlib.sha1(joined.encode()).hexdigest()[:12]


def source_hashes(root: Path = ROOT) -> dict[str, str]:
    files = sorted((root / "hf_init").rglob("*.py"))
    return {str(p.relative_to(root)): file_hash(p) for p in files}


def measure(test: str, root: Path = ROOT) -> dict:
    """One test file alone under coverage: {"lines": {hf_init file: executed lines}, "rc", "s"}."""
    import coverage

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covmap-") as tmp:
        rc_path = Path(tmp) / "covrc"
        rc_path.write_text(RCFILE.format(root=root, tmp=tmp))
        env = dict(os.environ, PYTHONPATH=str(root), **TEST_ENV)
        cmd = [sys.executable, "-m", "coverage", "run", f"--rcfile={rc_path}", "-m", "pytest"]
        cmd += ["-q", "-p", "no:cacheprovider", *NOT_SLOW, test]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        cov = coverage.Coverage(data_file=str(Path(tmp) / ".coverage"), config_file=str(rc_path))
        cov.combine()
        data = cov.get_data()
        lines = {
            str(Path(f).resolve().relative_to(root)): sorted(data.lines(f) or ())
            for f in data.measured_files()
            if Path(f).resolve().is_relative_to(root / "hf_init")
        }
    # 5: every test of the file is slow (deselected), which is no failure
    return {"lines": lines, "rc": proc.returncode, "s": round(time.perf_counter() - t0, 1)}


def load(path: Path = MAP) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def stale_tests(cmap: dict | None, root: Path = ROOT) -> list[str]:
    """The test files whose entry is missing or was made on another version of them."""
    if cmap is None or cmap.get("context") != context_hash(root):
        return test_files(root)
    have = cmap.get("tests", {})
    return [t for t in test_files(root) if have.get(t, {}).get("hash") != file_hash(root / t)]


def statement_spans(source: str) -> list[tuple[int, int, int]]:
    """(first line, last line of its header, depth) of every statement: a compound statement's
    header ends before its body starts; decorators belong to the definition they decorate."""
    spans = []

    def walk(node, depth):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                decorators = getattr(child, "decorator_list", ())
                start = min([child.lineno, *(d.lineno for d in decorators)])
                body = getattr(child, "body", None)
                if isinstance(body, list) and body:
                    end = max(start, body[0].lineno - 1)
                else:
                    end = child.end_lineno
                spans.append((start, end, depth))
            walk(child, depth + 1)

    walk(ast.parse(source), 0)
    return spans


def statement_lines(source: str, line: int) -> range:
    """The lines of the innermost statement (its header, for a compound one) holding ``line``:
    coverage records a multi-line statement on one of them, not always ``line`` itself."""
    holding = [(d, s, e) for s, e, d in statement_spans(source) if s <= line <= e]
    if not holding:
        return range(line, line + 1)
    _, start, end = max(holding)
    return range(start, end + 1)


class CoverageMap:
    """The test files to run for a mutant at (file, line), from a map that is current."""

    def __init__(self, cmap: dict, root: Path = ROOT):
        self.root, self.cmap = root, cmap
        self.fresh_sources = {
            f for f, h in source_hashes(root).items() if cmap["sources"].get(f) == h
        }
        self.unmapped = set(stale_tests(cmap, root))  # new or changed: they always run
        self._sources: dict[str, str] = {}

    def covers(self, file: str, line: int) -> list[str] | None:
        """The mapped test files that run the statement at ``line`` of ``file`` plus the
        unmapped ones; None when the map cannot say (``file`` changed since the map)."""
        if file not in self.fresh_sources:
            return None
        if file not in self._sources:
            self._sources[file] = (self.root / file).read_text(encoding="utf-8")
        span = set(statement_lines(self._sources[file], line))
        running = {
            test
            for test, entry in self.cmap["tests"].items()
            if test not in self.unmapped
            and entry["rc"] != 5  # every test of the file is slow: none runs
            and span & set(entry["lines"].get(file, ()))
        }
        return sorted(running | self.unmapped)


def current(root: Path = ROOT, path: Path = MAP) -> CoverageMap | None:
    """The map when its scripts and conftest are those of the tree, else None."""
    cmap = load(path)
    if cmap is None or cmap.get("context") != context_hash(root):
        return None
    return CoverageMap(cmap, root)


def update(jobs: int, root: Path = ROOT, path: Path = MAP) -> dict:
    """Remeasure the stale test files (all of them when scripts, conftest or hf_init changed)."""
    old = load(path)
    if old is not None and old.get("sources") != source_hashes(root):
        old = None  # line numbers moved: every entry is remeasured
    todo = stale_tests(old, root)
    cmap = {"context": context_hash(root), "sources": source_hashes(root), "tests": {}}
    if old is not None:
        cmap["tests"] = {t: e for t, e in old["tests"].items() if t in test_files(root)}
    print(f"{len(todo)} of {len(test_files(root))} test files to measure", flush=True)

    def one(test):
        entry = {"hash": file_hash(root / test), **measure(test, root)}
        lines = sum(map(len, entry["lines"].values()))
        print(f"{test}: {lines} lines, exit {entry['rc']}, {entry['s']:.0f} s", flush=True)
        return test, entry

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for test, entry in pool.map(one, todo):
            cmap["tests"][test] = entry
    failed = [t for t, e in cmap["tests"].items() if e["rc"] not in (0, 5)]
    if failed:
        print(f"warning: failing on the unmutated tree (their lines still count): {failed}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cmap))
    print(f"written: {path}")
    return cmap


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=2, help="test files measured at once (default 2)")
    args = p.parse_args(argv)
    update(args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
