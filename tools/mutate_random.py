"""Mutants drawn at random from the operators and small constants of hf_init/, each run against
the whole test suite: how many bugs nobody chose does the suite see?

A site is a comparison, an arithmetic or boolean operator or a small integer constant (0..10)
in hf_init/**/*.py, found with Python's ast and pinned to its exact line and column with
tokenize. Each site gives one mutant, one change of the source text at that spot:

    <  -> <=    <= -> <     >  -> >=    >= -> >     == -> !=    != -> ==
    is -> is not    is not -> is    in -> not in    not in -> in
    + <-> -    * <-> /    // -> /    % -> //    ** -> *    (and +=, -=, *=, ... alike)
    and <-> or    & <-> |    not x -> x    -x -> x    n -> n + 1

Left alone: docstrings and every other string, type annotations, the arguments of print,
logging and warnings.warn calls, matplotlib's look-only keywords (figsize, fontsize, ms, lw,
alpha, ... : STYLE_KEYWORDS), f-strings (message text; Python 3.11's ast has no exact
positions inside them), operators with a string operand (formatting, path joins) and
`if __name__ == "__main__":` blocks.

--seed S --sample N draws N sites with random.Random(S).sample from all sites sorted by file,
line and column: the same tree and seed give the same mutants. A mutant's id hashes its file,
the text of its line, its column in that line and the change, so it stays the same when other
lines move (--only ID runs it again, drawn or not).

Each mutant is applied in a copy of the repository in a temporary folder (the working tree is
never written; an interrupted run leaves at most a temporary folder) and runs
`pytest -x -q -m "not slow"` there (the README's suite) on the test files that can see it: with
a current coverage map (python tools/coverage_map.py), those that run the statement holding its
line, which is the whole suite's verdict, since a file that never runs that statement runs the
same with the mutant; without one, every test file. Either way they are ordered so that the
likeliest to catch it come first:

    1. test files that import the mutated module (or name it, for a module loaded by path),
    2. test files that reach it through their imports, the scripts they run (a script's name as
       a string in the test) and the conftest fixtures and helpers they use, transitively,
    3. the rest; alphabetically within a tier.

--tiers 1 (or 2) runs the first tier (or two) only, the map unused. A mutant that survives them
is counted survived, though a later tier might catch it, so the catch rate is then a lower
bound; each survivor is triaged by hand anyway.

A failing test is rerun alone on the unmutated copy, so a test that fails anyway (flaky, or red
before the mutant) does not count as a catch; a pytest killed by a signal (a segfault) is a catch
when the same test files pass on the unmutated copy. Results: caught (first failing test named),
survived (the whole suite passed), equivalent (survived, and tools/mutants_equivalent.txt says
why no result can differ), timeout / unconfirmed / error (not counted: rerun or look at it).
Catch rate = caught / (caught + survived). Exit status 1 when a mutant survived.

    python tools/mutate_random.py --seed 1 --sample 20 --list   # the drawn mutants, nothing run
    python tools/mutate_random.py --seed 1 --sample 20          # run them: table, JSON in runs/
    python tools/mutate_random.py --only 90cecc0 581f8dd        # some again, by id
"""

from __future__ import annotations

import argparse
import ast
import bisect
import hashlib
import io
import random
import sys
import tempfile
import time
import tokenize
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path[:0] = [str(ROOT), str(TOOLS)]  # this checkout's hf_init, and tools/mutate.py

from coverage_map import NOT_SLOW, CoverageMap, current, test_files  # noqa: E402
from mutate import copy_tree, pytest_in_copy  # noqa: E402

TRIAGE = TOOLS / "mutants_equivalent.txt"
SMALL_INT = 10  # integer constants 0..SMALL_INT are sites

COMPARE = {
    ast.Lt: ("<", "<="),
    ast.LtE: ("<=", "<"),
    ast.Gt: (">", ">="),
    ast.GtE: (">=", ">"),
    ast.Eq: ("==", "!="),
    ast.NotEq: ("!=", "=="),
    ast.Is: ("is", "is not"),
    ast.IsNot: ("is not", "is"),
    ast.In: ("in", "not in"),
    ast.NotIn: ("not in", "in"),
}
ARITHMETIC = {
    ast.Add: ("+", "-"),
    ast.Sub: ("-", "+"),
    ast.Mult: ("*", "/"),
    ast.Div: ("/", "*"),
    ast.FloorDiv: ("//", "/"),
    ast.Mod: ("%", "//"),
    ast.Pow: ("**", "*"),
    ast.BitAnd: ("&", "|"),
    ast.BitOr: ("|", "&"),
}
BOOLEAN = {ast.And: ("and", "or"), ast.Or: ("or", "and")}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
# matplotlib's look-only keywords: a figure's size, fonts, line and marker widths, transparency and
# layout padding; no number drawn, written or printed depends on them
STYLE_KEYWORDS = {
    "alpha", "bbox_to_anchor", "capsize", "figsize", "fontsize", "linewidth", "lw", "markersize",
    "mew", "ms", "ncol", "pad", "rect", "title_fontsize", "zorder",
}  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    """One change of one file's text: ``original`` at (line, col)..end becomes ``replacement``."""

    file: str
    line: int
    col: int
    end: tuple[int, int]
    original: str
    replacement: str
    line_text: str
    occurrence: int = 0  # the same line text, column and change seen earlier in the file

    @property
    def change(self) -> str:
        return f"{self.original.strip()} -> {self.replacement.strip() or '(removed)'}"

    @property
    def id(self) -> str:
        indent = len(self.line_text) - len(self.line_text.lstrip())
        key = f"{self.file}\n{self.line_text.strip()}\n{self.col - indent}\n{self.change}"
        key += f"\n{self.occurrence}" if self.occurrence else ""
        return hashlib.sha1(key.encode()).hexdigest()[:7]

    def apply(self, source: str) -> str:
        """``source`` with this one change; the text at the site must still be ``original``."""
        lines = source.splitlines(keepends=True)
        start = sum(map(len, lines[: self.line - 1])) + self.col
        stop = sum(map(len, lines[: self.end[0] - 1])) + self.end[1]
        if source[start:stop] != self.original:
            raise ValueError(f"{self.file}:{self.line}: {self.original!r} is no longer there")
        return source[:start] + self.replacement + source[stop:]


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _is_output_call(func: ast.expr) -> bool:
    """print(...), logger.info(...) and the like, warnings.warn(...): text for a reader."""
    if isinstance(func, ast.Name):
        return func.id == "print"
    if isinstance(func, ast.Attribute):
        base = ast.unparse(func.value)
        return (func.attr in LOG_METHODS and "log" in base.lower()) or base == "warnings"
    return False


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))
    )


class _SiteFinder(ast.NodeVisitor):
    """Every site of one file, in (line, character column) positions of its text."""

    def __init__(self, file: str, source: str):
        self.file, self.mutants = file, []
        self.lines = source.splitlines(keepends=True)
        readline = io.StringIO(source).readline
        layout = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
        self.tokens = [t for t in tokenize.generate_tokens(readline) if t.type not in layout]
        self.starts = [t.start for t in self.tokens]

    def _pos(self, line: int, byte_col: int) -> tuple[int, int]:
        """ast columns count UTF-8 bytes, tokenize and the text count characters."""
        return line, len(self.lines[line - 1].encode()[:byte_col].decode())

    def _start(self, node) -> tuple[int, int]:
        return self._pos(node.lineno, node.col_offset)

    def _end(self, node) -> tuple[int, int]:
        return self._pos(node.end_lineno, node.end_col_offset)

    def _add(self, start, end, replacement: str) -> None:
        lines = self.lines[start[0] - 1 : end[0]]
        text = "".join(lines)[start[1] : sum(map(len, lines[:-1])) + end[1]]
        line_text = self.lines[start[0] - 1].rstrip("\n")
        self.mutants.append(
            Mutant(self.file, start[0], start[1], end, text, replacement, line_text)
        )

    def _operator(self, after, before, words: tuple[str, str]) -> None:
        """The operator between two operands: ``words`` = (its text, the replacement)."""
        first, *rest = words[0].split()
        lo, hi = bisect.bisect_left(self.starts, after), bisect.bisect_left(self.starts, before)
        inside = [t for t in self.tokens[lo:hi] if t.end <= before]
        for i, t in enumerate(inside):
            following = [u.string for u in inside[i + 1 : i + 1 + len(rest)]]
            if t.string == first and following == rest:
                self._add(t.start, inside[i + len(rest)].end, words[1])
                return
        raise ValueError(f"{self.file}:{after[0]}: no {words[0]!r} token between the operands")

    def visit_If(self, node):
        if not _is_main_guard(node.test):
            self.generic_visit(node)

    def visit_FunctionDef(self, node):  # the annotations (returns, arg.annotation) are skipped
        for child in (*node.decorator_list, node.args, *node.body):
            self.visit(child)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arg(self, node):
        pass

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_JoinedStr(self, node):
        pass

    def visit_Call(self, node):
        if _is_output_call(node.func):
            return
        for child in (node.func, *node.args):
            self.visit(child)
        for keyword in node.keywords:
            if keyword.arg not in STYLE_KEYWORDS:
                self.visit(keyword.value)

    def visit_Constant(self, node):
        value = node.value
        if type(value) is int and 0 <= value <= SMALL_INT:
            (line, start), (_, end) = self._start(node), self._end(node)
            if self.lines[line - 1][start:end].isdigit():  # not 0x1, 1_0 or a wrapped literal
                self._add((line, start), (line, end), str(value + 1))

    def visit_BinOp(self, node):
        if _is_text(node.left) or _is_text(node.right):
            return
        if type(node.op) in ARITHMETIC:
            self._operator(self._end(node.left), self._start(node.right), ARITHMETIC[type(node.op)])
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        if type(node.op) in ARITHMETIC and not _is_text(node.value):
            old, new = ARITHMETIC[type(node.op)]
            self._operator(self._end(node.target), self._start(node.value), (old + "=", new + "="))
        self.generic_visit(node)

    def visit_Compare(self, node):
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            self._operator(self._end(left), self._start(right), COMPARE[type(op)])
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        for left, right in zip(node.values, node.values[1:]):
            self._operator(self._end(left), self._start(right), BOOLEAN[type(node.op)])
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.Not, ast.USub)):  # the operator and the space after it go
            start = self._start(node)
            i = bisect.bisect_left(self.starts, start)
            self._add(start, self.tokens[i + 1].start, "")
        self.generic_visit(node)


def sites_in(file: str, source: str) -> list[Mutant]:
    """Every mutant of one file's text, in order of position; a repeat of the same line text,
    column and change is numbered so that every id is unique."""
    finder = _SiteFinder(file, source)
    finder.visit(ast.parse(source))
    seen: dict[str, int] = {}
    mutants = []
    for m in sorted(finder.mutants, key=lambda m: (m.line, m.col, m.change)):
        n = seen[m.id] = seen.get(m.id, -1) + 1
        mutants.append(replace(m, occurrence=n))
    return mutants


def all_sites(root: Path = ROOT) -> list[Mutant]:
    """Every mutant of hf_init/**/*.py, sorted by file, line and column."""
    return [
        m
        for path in sorted((root / "hf_init").rglob("*.py"))
        for m in sites_in(str(path.relative_to(root)), path.read_text(encoding="utf-8"))
    ]


# --- the triage of equivalent mutants


@dataclass(frozen=True)
class Equivalent:
    """A triage entry: mutants of ``file`` whose line contains ``line`` with this ``change``."""

    file: str
    line: str
    change: str
    why: str

    def matches(self, m: Mutant) -> bool:
        return m.file == self.file and self.line in m.line_text and m.change == self.change


def read_triage(path: Path = TRIAGE) -> list[Equivalent]:
    """The entries of the triage file: blocks of ``file:``, ``line:``, ``change:``, ``why:`` lines
    separated by blank lines, ``#`` lines are comments."""
    text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("#"))
    entries = []
    for block in filter(str.strip, text.split("\n\n")):
        fields = dict(ln.partition(":")[::2] for ln in block.strip().splitlines())
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if set(fields) != {"file", "line", "change", "why"} or not all(fields.values()):
            raise ValueError(f"{path.name}: an entry needs file, line, change and why: {block!r}")
        entries.append(Equivalent(**fields))
    return entries


# --- which tests first


def _dotted(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class TestOrder:
    """Test files ordered for a mutated file: importers first, then those that reach it."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        files = sorted((root / "hf_init").rglob("*.py"))
        package = [p for p in files if (p.parent / "__init__.py").is_file()]
        self.modules = {_dotted(p, root): self._rel(p) for p in package}
        self.by_path = {p.stem: self._rel(p) for p in files if p not in package}
        self.scripts = {p.stem: self._rel(p) for p in sorted((root / "scripts").glob("*.py"))}
        conftest = ast.parse((root / "tests" / "conftest.py").read_text())
        fixtures = {f.name: f for f in conftest.body if isinstance(f, ast.FunctionDef)}
        self.fixtures = set(fixtures)
        self.nodes = {f"conftest:{name}" for name in fixtures}
        self.nodes |= {*self.modules.values(), *self.by_path.values(), *self.scripts.values()}
        self.edges = {f"conftest:{name}": self._refs(f) for name, f in fixtures.items()}
        for rel in [*self.modules.values(), *self.by_path.values(), *self.scripts.values()]:
            self.edges[rel] = self._refs(ast.parse((root / rel).read_text()))
        self.tests = {}
        for rel in test_files(root):
            tree = ast.parse((root / rel).read_text())
            self.tests[rel] = (self._direct(tree), self._reach(self._refs(tree)))

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def _direct(self, tree) -> set[str]:
        """Files of hf_init that ``tree`` imports, or names by its stem (loaded by path)."""
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {self.modules.get(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(self.modules.get(node.module))
                found |= {self.modules.get(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(self.by_path.get(node.value))
        return found - {None}

    def _refs(self, tree) -> set[str]:
        """What ``tree`` runs: its imports and their packages, the scripts it names, the conftest
        functions it calls or takes as fixtures."""
        refs = set(self._direct(tree))
        for rel in list(refs):
            parts = rel.split("/")
            refs |= {"/".join(parts[:i]) + "/__init__.py" for i in range(1, len(parts))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                refs.add(self.scripts.get(Path(node.value).stem))
            name = getattr(node, "id", None) or getattr(node, "arg", None)
            if name in self.fixtures:
                refs.add(f"conftest:{name}")
        return refs & self.nodes

    def _reach(self, roots: set[str]) -> set[str]:
        seen, todo = set(roots), deque(roots)
        while todo:
            for nxt in self.edges.get(todo.popleft(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def tiers(self, file: str) -> list[list[str]]:
        """The test files for a mutant of ``file``: [importers, reachers, the rest]."""
        tiers = [[], [], []]
        for test, (direct, reach) in self.tests.items():
            tiers[0 if file in direct else 1 if file in reach else 2].append(test)
        return tiers


# --- running


def verdict(rc: int | None, failed: str, timeout: float) -> tuple[str, str]:
    """(status, detail) of ``pytest -x`` on a mutant: its exit code (None: timed out) and first
    failing test. A pytest killed by a signal (a segfault in torch on a mis-shaped tensor) is
    caught: the suite fails, as it would in CI."""
    if rc is None:
        return "timeout", f"over {timeout:.0f} s"
    if rc in (0, 5):  # 5: every test of the files is slow, deselected as the README's command does
        return "survived", ""
    if rc < 0:
        return "caught", f"(pytest killed by signal {-rc})"
    if rc not in (1, 2) or not failed:
        return "error", f"pytest exit code {rc}, no failing test named"
    return "caught", failed


def run_mutant(m: Mutant, tests: list[str], timeout: float, confirm: bool) -> dict:
    """The mutant in a copy of the tree, ``pytest -x`` on ``tests``; a failing test is rerun on the
    unmutated copy when ``confirm`` (it must pass there for the mutant to count as caught)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.id}-") as tmp:
        copy = Path(tmp) / "repo"
        copy_tree(copy)
        target = copy / m.file
        source = target.read_text(encoding="utf-8")
        target.write_text(m.apply(source), encoding="utf-8")
        rc, failed = pytest_in_copy(copy, tests, timeout, NOT_SLOW)
        status, detail = verdict(rc, failed, timeout)
        if status == "caught" and confirm:  # the failing test, or after a crash all the tests
            target.write_text(source, encoding="utf-8")
            if pytest_in_copy(copy, [failed] if failed else tests, timeout, NOT_SLOW)[0] != 0:
                status, detail = "unconfirmed", f"{detail} fails without the mutant too"
    return {
        "id": m.id,
        "file": m.file,
        "line": m.line,
        "col": m.col,
        "change": m.change,
        "line_text": m.line_text.strip(),
        "status": status,
        "first_failing_test": detail,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _triaged(result: dict, m: Mutant, triage: list[Equivalent]) -> dict:
    """A survivor the triage file lists becomes ``equivalent``; a listed one that is caught says
    that its entry is wrong."""
    entry = next((e for e in triage if e.matches(m)), None)
    if entry is None:
        return result
    if result["status"] == "survived":
        return {**result, "status": "equivalent", "first_failing_test": entry.why}
    note = f"{result['first_failing_test']} (listed as equivalent: fix the entry)"
    return {**result, "first_failing_test": note.strip()}


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def markdown(results: list[dict], counts: dict, context: str) -> str:
    rows = [
        context,
        "",
        "| id | file:line | change | result | first failing test |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        change = f"`{_cell(r['change'])}` in `{_cell(r['line_text'])}`"
        rows.append(
            f"| {r['id']} | {r['file']}:{r['line']} | {change} | {r['status']} "
            f"| {_cell(r['first_failing_test'])} |"
        )
    return "\n".join(rows) + "\n\n" + summary(counts) + "\n"


def summary(counts: dict) -> str:
    judged = counts["caught"] + counts["survived"]
    rate = f"{counts['caught']}/{judged}" + (
        f" ({counts['caught'] / judged:.0%})" if judged else ""
    )
    others = ", ".join(f"{n} {k}" for k, n in counts.items() if n and k not in ("caught",))
    return f"caught {rate}" + (f"; {others}" if others else "")


def _choose(args, sites: list[Mutant]) -> list[Mutant]:
    """The drawn sample, or the mutants named by --only (an unknown id is a usage error)."""
    if args.only:
        by_id = {m.id: m for m in sites}
        unknown = [i for i in args.only if i not in by_id]
        if unknown:
            raise SystemExit(f"error: no mutant with id {', '.join(unknown)} in this tree")
        return [by_id[i] for i in args.only]
    if args.sample < 1:
        raise SystemExit(f"error: --sample must be at least 1, got {args.sample}")
    drawn = random.Random(args.seed).sample(sites, min(args.sample, len(sites)))
    return sorted(drawn, key=lambda m: (m.file, m.line, m.col))


def _test_files(args, order: TestOrder, m: Mutant, cmap: CoverageMap | None = None) -> list[str]:
    """The test files a mutant runs, in tier order: with a current coverage map and all tiers,
    those that run its line (the whole suite's verdict), or when none does the first tier that
    holds any (in case coverage missed a process); without a map those of the first --tiers
    tiers (up to the first that holds any); with --tests only those files."""
    tiers = order.tiers(m.file)
    first = next((i + 1 for i, tier in enumerate(tiers) if tier), len(tiers))
    running = cmap.covers(m.file, m.line) if cmap is not None and args.tiers == 3 else None
    if running:
        tests = [t for tier in tiers for t in tier if t in running]
    else:
        last = first if running is not None else max(args.tiers, first)
        tests = [t for tier in tiers[:last] for t in tier]
    return [t for t in tests if t in args.tests] if args.tests else tests


def _print_list(chosen: list[Mutant], order: TestOrder, triage: list[Equivalent]) -> None:
    for m in chosen:
        listed = next((e for e in triage if e.matches(m)), None)
        print(
            f"{m.id}  {m.file}:{m.line}:{m.col}  {m.change}" + ("  (equivalent)" if listed else "")
        )
        print(f"         {m.line_text.strip()}")
        print(f"         tests first: {' '.join(order.tiers(m.file)[0]) or '-'}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the draw (default 1)")
    p.add_argument("--sample", type=int, default=20, help="mutants drawn (default 20)")
    p.add_argument("--only", nargs="+", default=None, help="mutant ids to run instead of a draw")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    p.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per mutant (default 1800)")
    p.add_argument(
        "--tests",
        nargs="+",
        default=None,
        help="only these test files (a quick try: a survivor then says nothing about the suite)",
    )
    p.add_argument(
        "--tiers",
        type=int,
        choices=(1, 2, 3),
        default=3,
        help="run the test files of the first N tiers only: 1 = those that import the mutated "
        "module, 2 = also those that reach it, 3 = all (default); below 3 a mutant that survives "
        "is counted survived, so the catch rate is a lower bound",
    )
    p.add_argument(
        "--no_map",
        action="store_true",
        help="with all tiers, run the whole suite, not only the test files that the coverage "
        "map says run the mutated line",
    )
    p.add_argument(
        "--no_confirm", action="store_true", help="do not rerun a failing test without the mutant"
    )
    p.add_argument(
        "--out", default=None, help="report prefix (default runs/mutate_random/seed<S>): .md, .json"
    )
    return p


def _write_reports(out: Path, table: str, report: dict) -> None:
    """The table as Markdown and the same results as JSON, ``out`` with .md and .json."""
    from hf_init.core.outputs import write_atomic, write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".md"), lambda f: f.write(table))
    write_json(out.with_suffix(".json"), report)
    print(f"\n{table}\nwritten: {out.with_suffix('.md')}, {out.with_suffix('.json')}")


def _run_all(args, chosen: list[Mutant], order: TestOrder, triage: list[Equivalent], cmap) -> list:
    """Every chosen mutant, --jobs at a time, a line printed as each ends; on an interrupt the
    mutants not started are dropped (each running one removes its own copy). ``cmap``: the
    current coverage map, or None."""

    if args.tiers == 3 and not args.no_map:
        print(
            "test files: those that run the mutated line (coverage map)"
            if cmap is not None
            else "no current coverage map (python tools/coverage_map.py): the whole suite"
        )

    def one(m: Mutant) -> dict:
        tests = _test_files(args, order, m, cmap)
        return _triaged(run_mutant(m, tests, args.timeout, not args.no_confirm), m, triage)

    results = []
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        for r in pool.map(one, chosen):
            print(
                f"{r['id']} {r['status']:<11} {r['seconds']:6.0f}s {r['file']}:{r['line']} "
                f"{r['change']}  {r['first_failing_test']}",
                flush=True,
            )
            results.append(r)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    sites, triage, order = all_sites(), read_triage(), TestOrder()
    unknown = sorted(set(args.tests or ()) - set(order.tests))
    if unknown:
        raise SystemExit(f"error: not a test file of tests/: {', '.join(unknown)}")
    chosen = _choose(args, sites)
    for e in triage:
        if not any(e.matches(m) for m in sites):
            print(f"triage entry matches no mutant (code changed?): {e.file}: {e.line}: {e.change}")
    drawn = f"{len(chosen)} given by id" if args.only else f"seed {args.seed}, {len(chosen)} drawn"
    print(f"{drawn} of {len(sites)} sites")
    if args.list:
        _print_list(chosen, order, triage)
        return 0
    cmap = None if args.no_map else current()
    results = _run_all(args, chosen, order, triage, cmap)
    kinds = ("caught", "survived", "equivalent", "timeout", "unconfirmed", "error")
    counts = {k: sum(r["status"] == k for r in results) for k in kinds}
    tests = "only " + " ".join(args.tests) if args.tests else "all"
    if args.tiers < 3:
        tests += f" of tiers 1-{args.tiers} (the catch rate is a lower bound)"
    elif cmap is not None:
        tests += " (those that run the mutated line, by the coverage map)"
    table = markdown(results, counts, f"{drawn} of {len(sites)} sites; test files: {tests}")
    report = {
        "seed": None if args.only else args.seed,
        "sample": len(chosen),
        "sites": len(sites),
        "tests": args.tests or "all",
        "tiers": args.tiers,
        "counts": counts,
        "mutants": results,
    }
    name = "only" if args.only else f"seed{args.seed}"
    _write_reports(Path(args.out or ROOT / "runs" / "mutate_random" / name), table, report)
    return 1 if counts["survived"] else 0


if __name__ == "__main__":
    sys.exit(main())
