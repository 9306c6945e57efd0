"""Next-token accuracy of a causal language model, as an `evaluate` metric module."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Next-token accuracy: the fraction of positions whose arg-max prediction equals the next token.
`predictions[i, t]` is the model's arg-max token at position t of sequence i (a prediction of
token t + 1) and `references[i, t]` the input/label token at position t; the metric compares
predictions[:, :-1] with references[:, 1:], ignoring positions whose reference is -100.
"""

_CITATION = """
@misc{hf_init_next_token_accuracy,
  title = {Next-token accuracy (hf-init local metric)},
  note = {Share of positions where the arg-max prediction equals the next token.}
}
"""

_KWARGS = """
Args:
    predictions: int sequences (batch, time), arg-max token ids of the model's logits.
    references: int sequences (batch, time), the label ids (the inputs; -100 = ignore).
Returns:
    accuracy: float in [0, 1]; n_tokens: number of positions compared.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class NextTokenAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        correct = total = 0
        for pred, ref in zip(predictions, references):  # sequences may differ in length
            pred, ref = np.asarray(pred[:-1]), np.asarray(ref[1:])
            keep = ref != -100
            total += int(keep.sum())
            correct += int((pred[keep] == ref[keep]).sum())
        return {"accuracy": correct / total if total else float("nan"), "n_tokens": total}
