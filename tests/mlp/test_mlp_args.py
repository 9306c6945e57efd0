"""The MLP study scripts parse arguments the one way: YAML config, then flags on top; shared flags
declared once; bad input is one clear line (the scripts' exit 2: tests/mlp/test_mlp_scripts.py)."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from hf_init.core.cli import UsageError
from hf_init.mlp.args import (
    CompareArguments,
    MLPModelArguments,
    MLPRunArguments,
    SweepArguments,
    TabularDataArguments,
    parse,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "study,config",
    [(SweepArguments, "mlp_sweep.yaml"), (CompareArguments, "mlp_init_compare.yaml")],
)
def test_shipped_config_states_the_defaults(study, config):
    path = ROOT / "configs" / config
    from_yaml = parse(study, [str(path)])
    defaults = parse(study, [])
    assert from_yaml == defaults
    written = yaml.safe_load(path.read_text())
    declared = {
        f.name
        for cls in (TabularDataArguments, MLPModelArguments, MLPRunArguments, study)
        for f in fields(cls)
    }
    assert set(written) <= declared


def test_the_default_sweep_is_three_stds_per_decade_from_1e_4_to_10():
    """The sweep's default grid, written out: 10 ** (k / 3) for k = -12 .. 3, both ends in."""
    stds = parse(SweepArguments, [])[3].stds
    assert stds == pytest.approx([10 ** (k / 3) for k in range(-12, 4)], rel=1e-12)


def test_flags_override_the_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "dataset: digits\nstds: [1.0e-3, 0.1, 1.0e-3]\ndepths: [1, 2]\n"
        "optimizer: adam\nthreads: 2\n"
    )
    data, model, run, sweep = parse(
        SweepArguments, [str(cfg), "--dataset", "wine", "--depths", "3", "5"]
    )
    assert data.dataset == "wine" and sweep.depths == [3, 5]
    assert sweep.stds == [1e-3, 0.1]  # sorted, distinct, floats
    assert model.optimizer == "adam" and model.lr == 1e-3 and run.threads == 2
    # the same shared flags for the comparison
    data, model, run, cmp = parse(
        CompareArguments, ["--depth", "2", "--schemes", "xavier_normal", "kaiming_normal"]
    )
    assert (
        model.depth == 2 and cmp.schemes == ["xavier_normal", "kaiming_normal"] and model.lr == 0.01
    )


def test_every_theory_activation_is_accepted():
    from hf_init.theory.recursions import ACTIVATIONS

    for act in ACTIVATIONS:
        assert parse(SweepArguments, ["--activation", act])[3].activation == act
    assert parse(CompareArguments, ["--activations", *ACTIVATIONS])[3].activations == list(
        ACTIVATIONS
    )


@pytest.mark.parametrize(
    "study,argv,message",
    [
        (SweepArguments, ["--threads", "-1"], "--threads must be >= 0"),
        (SweepArguments, ["--activation", "swish"], "unknown activation 'swish'"),
        (SweepArguments, ["--lr", "0"], "lr must be a finite number > 0"),
        (SweepArguments, ["--width", "0"], "width must be >= 1, got 0"),
        (SweepArguments, ["--bogus", "1"], "unknown argument --bogus"),
        (
            CompareArguments,
            ["--schemes", "kaiming_normal", "xavier_normal", "normal"],
            "exactly two schemes",
        ),
        (CompareArguments, ["--seeds", "1"], "--seeds must be >= 2"),
    ],
)
def test_bad_flags(study, argv, message):
    with pytest.raises((UsageError, ValueError), match=None) as err:
        parse(study, argv)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "study,text,message",
    [
        (SweepArguments, "stds: []\n", "--stds is empty"),
        (SweepArguments, "depths: []\n", "--depths is empty"),
        (CompareArguments, "activations: []\n", "--activations is empty"),
        (SweepArguments, "depths: [2, x]\n", "--depths must be int values"),
    ],
)
def test_bad_yaml_lists(tmp_path, study, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(UsageError, match=message):
        parse(study, [str(cfg)])


def test_yaml_scalar_for_a_list_flag(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stds: 0.5\ndepths: 3\n")
    sweep = parse(SweepArguments, [str(cfg)])[3]
    assert sweep.stds == [0.5] and sweep.depths == [3]
