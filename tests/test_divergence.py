"""The divergence stop in a Trainer: it reads the gradient norm the Trainer computed (checked
against a norm computed here from the gradients), stops before the bad update (the weights are
those of the step before), names the sub-layer where the forward pass first became non-finite
(the fault is planted here), and runs that forward pass again with the step's dropout masks."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_init.core.cli import RunStopped
from hf_init.lm.guards import DivergenceStop, keeps_grad_norm
from hf_init.lm.modeling import build_model

VOCAB, T = 40, 12


def tiny_model(dropout=0.0):
    torch.manual_seed(0)
    return build_model(
        n_layer=3,
        n_embd=24,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=T,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )


class Blocks(torch.utils.data.Dataset):
    def __init__(self, n=32):
        self.ids = torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer(tmp_path, model, callbacks, max_grad_norm=1.0, max_steps=4):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_grad_norm=max_grad_norm,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return keeps_grad_norm(Trainer)(
        model=model, args=args, train_dataset=Blocks(), callbacks=callbacks
    )


class NormSeen(TrainerCallback):
    """Before the stop (callbacks run in order): the norm handed to it, and the norm of the
    gradients the optimizer is about to apply, computed here."""

    def __init__(self, stop):
        self.stop, self.pairs = stop, []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        grads = torch.cat([p.grad.flatten().double() for p in model.parameters()])
        step, kept = self.stop.grad_norm
        assert step == state.global_step
        self.pairs.append((float(kept), torch.linalg.vector_norm(grads).item()))


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e9])  # no clipping; clipping that scales by 1
def test_the_stop_gets_the_norm_the_trainer_computed(tmp_path, max_grad_norm):
    stop = DivergenceStop()
    seen = NormSeen(stop)
    trainer(tmp_path, tiny_model(), [seen, stop], max_grad_norm=max_grad_norm).train()
    assert len(seen.pairs) == 4
    for kept, here in seen.pairs:
        assert kept == pytest.approx(here, rel=1e-5)


def test_a_healthy_step_reads_the_norm_not_the_gradients():
    model = tiny_model()
    ids = Blocks(2).ids
    model(input_ids=ids, labels=ids).loss.backward()
    model.transformer.h[1].mlp.c_fc.weight.grad[0, 0] = float("nan")

    class State:
        global_step = 6

    stop = DivergenceStop()
    stop.grad_norm = (6, torch.tensor(2.5))  # what the Trainer computed: finite
    stop.on_pre_optimizer_step(None, State(), None, model=model)  # the gradients are not read
    stop.grad_norm = (5, torch.tensor(2.5))  # another step's norm is not used: its own norm
    with pytest.raises(RunStopped, match=r"diverged at step 7: non-finite gradient of layer 1"):
        stop.on_pre_optimizer_step(None, State(), None, model=model)


class PlantInf(TrainerCallback):
    """At the start of step ``at`` (before its forward pass): one entry of layer 1's mlp.c_fc
    weight becomes inf; keeps every weight as it was after the step before."""

    def __init__(self, at):
        self.at, self.before = at, None

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step + 1 == self.at:
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
            with torch.no_grad():
                model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("inf")


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0])
def test_stops_before_the_update_naming_the_first_non_finite_sub_layer(tmp_path, max_grad_norm):
    model = tiny_model()
    plant = PlantInf(at=3)
    t = trainer(tmp_path, model, [plant, DivergenceStop()], max_grad_norm=max_grad_norm)
    with pytest.raises(RunStopped) as err:
        t.train()
    assert str(err.value).startswith(
        "error: training diverged at step 3: the forward pass first became non-finite at the "
        "output of layer 1 mlp (mlp.c_fc / mlp.c_proj weights)"
    )
    assert t.state.global_step == 2
    for name, p in model.named_parameters():  # update 3 was not applied
        if name != "transformer.h.1.mlp.c_fc.weight":
            assert torch.equal(p.detach(), plant.before[name]), name


def test_the_forward_pass_runs_again_with_the_steps_dropout_masks():
    model = tiny_model(dropout=0.5).train()
    stop = DivergenceStop()
    stop.on_train_begin(None, None, None, model=model)
    losses = []
    model.register_forward_hook(lambda m, a, out: losses.append(out.loss.item()))
    ids = Blocks(4).ids
    model(input_ids=ids, labels=ids)
    model(input_ids=ids, labels=ids)  # other masks: the kept random state is this pass's
    assert losses[0] != losses[1]
    with torch.no_grad():
        assert stop.first_non_finite_output(model) is None
    assert losses[2] == losses[1]
    stop.on_train_end(None, None, None)
