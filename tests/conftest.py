import os

# Every test runs offline: the Hub is unreachable on CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- study runs shared by the test files of several folders (mlp/, theory/, core/test_figures.py,
# tiny sizes)

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP_ARGS = [
    "--dataset",
    "wine",
    "--stds",
    "1e-4",
    "0.1",
    "50",
    "--seeds",
    "2",
    "--depths",
    "1",
    "3",
    "--epochs",
    "10",
    "--record_every",
    "5",
    "--no_progress",
]
COMPARE_ARGS = [
    "--dataset",
    "wine",
    "--seeds",
    "3",
    "--epochs",
    "4",
    "--activations",
    "relu",
    "tanh",
    "--no_progress",
]
THEORY_ARGS = [
    "--width",
    "64",
    "--depth",
    "3",
    "--batch",
    "16",
    "--seeds",
    "2",
    "--activations",
    "relu",
    "tanh",
    "--std_multiples",
    "0.7",
    "1",
    "--gpt2_schemes",
    "gpt2",
    "--gpt2_n_layer",
    "2",
    "--gpt2_n_embd",
    "32",
    "--gpt2_seq_len",
    "8",
    "--gpt2_batch",
    "2",
    "--gpt2_seeds",
    "1",
    "--llama_schemes",
    "gpt2",
]
# tiny model and data so a pretraining run takes seconds on a CPU (tests/lm/test_pretrain.py)
PRETRAIN_TINY = [
    "--n_layer",
    "2",
    "--n_embd",
    "32",
    "--n_head",
    "2",
    "--block_size",
    "32",
    "--vocab_size",
    "300",
    "--max_train_documents",
    "40",
    "--max_eval_samples",
    "16",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--logging_steps",
    "5",
    "--variance_steps",
    "5",
    "--disable_tqdm",
    "true",
]
PRETRAIN_ARGS = [*PRETRAIN_TINY, "--max_steps", "10", "--init_scheme", "xavier_normal"]


def free_port() -> int:
    """A TCP port on localhost free right now, for a test's own process group or launcher (a
    fixed port would collide with a test running beside it under pytest -n)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(name, *args, timeout=300):
    """scripts/<name>.py in a subprocess (this checkout's hf_init, offline); CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(name, *args):
    """scripts/<name>.py's main(argv) in this process (no interpreter start and torch import per
    call), through hf_init.core.cli.fail_cleanly as the script's __main__ does: (exit code,
    stdout, stderr).

    What a subprocess's stderr would hold is captured here too, so that a test of "one line on
    stderr" sees what the script's own process would print: sys.stdout/sys.stderr, every logging
    StreamHandler bound earlier to a stream (transformers binds its handler once, at first use),
    and warnings under a fresh interpreter's filters, shown on stderr as Python shows them (pytest
    would otherwise record them out of sight). Like run_script, it runs in the repository root
    with sys.argv as the script's (a printed rerun command names the script), and sys.argv and
    os.environ are restored after it (pretrain sets HF_TOKEN). Not seen here: what only
    happens at import time (modules imported once per session) and transformers' warning_once
    messages already shown earlier in this session."""
    import contextlib
    import importlib.util
    import io
    import logging
    import warnings

    from hf_init.core.cli import fail_cleanly

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, err = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {
        h
        for lg in loggers
        for h in getattr(lg, "handlers", [])
        # a FileHandler writes a file; a _StderrHandler already writes to sys.stderr as it is then
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, (logging.FileHandler, logging._StderrHandler))
    }
    environ, argv = dict(os.environ), sys.argv
    args = [str(a) for a in args]
    streams = {h: h.stream for h in handlers}
    try:
        for h in handlers:
            h.setStream(out if h.stream in (sys.stdout, sys.__stdout__) else err)
        with (
            contextlib.chdir(ROOT),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            # a fresh interpreter's filters (python -W unset), then each warning printed on stderr
            warnings.resetwarnings()
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            for category in (
                DeprecationWarning,
                PendingDeprecationWarning,
                ImportWarning,
                ResourceWarning,
            ):
                warnings.simplefilter("ignore", category, append=True)
            warnings.showwarning = show
            sys.argv = [str(ROOT / "scripts" / f"{name}.py"), *args]
            rc = fail_cleanly(lambda: mod.main(list(args)))
    finally:
        for h, stream in streams.items():
            h.setStream(stream)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
    return rc, out.getvalue(), err.getvalue()


def _study(tmp_path_factory, name, args, flag="--output_dir", subprocess=False):
    """One study run shared by the session; its stdout is kept next to the folder (stdout.txt)."""
    out = tmp_path_factory.mktemp(name) / "out"
    if subprocess:
        proc = run_script(name, *args, flag, out)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        rc, stdout, stderr = run_main(name, *args, flag, out)
    assert rc == 0, stderr[-3000:]
    (out.parent / "stdout.txt").write_text(stdout)
    return out


@pytest.fixture
def captured(monkeypatch):
    """Figures passed to Figure.savefig while the test runs (they are still written)."""
    from matplotlib.figure import Figure

    figs = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figs.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figs


@pytest.fixture(scope="session")
def sweep_out(tmp_path_factory):
    return _study(tmp_path_factory, "mlp_sweep", SWEEP_ARGS)


@pytest.fixture(scope="session")
def compare_out(tmp_path_factory):
    return _study(tmp_path_factory, "mlp_init_compare", COMPARE_ARGS)


@pytest.fixture(scope="session")
def theory_out(tmp_path_factory):
    return _study(tmp_path_factory, "theory_check", THEORY_ARGS)


def leave_spawned_rank() -> None:
    """End a ``torch.multiprocessing.spawn`` worker that succeeded, once its process group is
    destroyed, without the interpreter's exit: rank 0 hosts the TCP store, and at exit its C++
    threads can be torn down while the other rank still talks to it ("terminate called without
    an active exception", SIGABRT; seen in two full runs). The worker's results are already in
    the parent's Manager dict or asserted, and a failing worker raises before this line, so
    nothing is lost."""
    os._exit(0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One 10-step pretraining run (subprocess: the Trainer's process state stays out of pytest),
    shared by tests/lm/test_pretrain.py and tests/core/test_figures.py: (run folder,
    CompletedProcess)."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    t0 = time.perf_counter()
    proc = run_script("pretrain", *PRETRAIN_ARGS, "--output_dir", out)
    proc.wall_s = time.perf_counter() - t0  # the whole process, start-up included
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="session")
def pretrain_out(tiny_run):
    return tiny_run[0]


# a tiny 2 schemes x 2 seeds init study (tests/lm/test_study.py, tests/test_report.py)
STUDY_TINY = [
    "--n_layer",
    "3",
    "--n_embd",
    "32",
    "--n_head",
    "2",
    "--block_size",
    "32",
    "--vocab_size",
    "300",
    "--max_train_documents",
    "40",
    "--max_eval_samples",
    "16",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--logging_steps",
    "3",
    "--variance_steps",
    "3",
    "--warmup_steps",
    "2",
    "--max_steps",
    "6",
    "--attention_probe_blocks",
    "4",
]
STUDY_SCHEMES = ["--schemes", "gpt2", "normal:0.05"]


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The study's folder, shared by the init-study and report tests."""
    from hf_init.lm.study import run_study

    out = tmp_path_factory.mktemp("study") / "s"
    run_study([*STUDY_SCHEMES, "--seeds", "2", "--output_dir", str(out), *STUDY_TINY])
    return out


def study_script(name, *args):
    """scripts/<name> (file name with .py) in a subprocess, offline; CompletedProcess."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


STUDY_RUNS = ["gpt2_seed0", "gpt2_seed1", "normal_std0.05_seed0", "normal_std0.05_seed1"]
