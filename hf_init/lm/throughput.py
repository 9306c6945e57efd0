"""How fast a pretraining run went against the hardware: model FLOPs per token, the peak FLOP/s
of known accelerators and the model FLOPs utilisation (MFU) that ``run_info.json`` reports."""

from __future__ import annotations


def model_flops_per_token(
    n_parameters: int, n_layer: int, n_head: int, head_dim: int, seq_len: int
) -> int:
    """Training FLOPs per token (forward + backward) as in the PaLM paper's MFU: 6 N for the
    weight matmuls plus 12 L H Q T for attention (L layers, H query heads, Q head size, T context;
    grouped-query attention shares keys and values, not the attention matmuls, and a gated MLP's
    third matrix is in N). N counts every parameter (embeddings included), as ``run_info.json``'s
    ``n_parameters``."""
    return 6 * n_parameters + 12 * n_layer * n_head * head_dim * seq_len


# dense peak FLOP/s per device (bf16/fp16 tensor cores, no sparsity), from the vendors' data sheets
PEAK_FLOPS_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
}


def peak_flops(device_name: str | None) -> float | None:
    """Peak bf16 FLOP/s of a known accelerator, matched by name (the longest table key contained in
    ``device_name``, e.g. torch.cuda.get_device_name()); None when unknown (a CPU, say)."""
    if not device_name:
        return None
    hits = [k for k in PEAK_FLOPS_BF16 if k.lower() in device_name.lower()]
    return PEAK_FLOPS_BF16[max(hits, key=len)] if hits else None


def device_name(device: str) -> str | None:
    """The accelerator's name (CUDA only), None on a CPU."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def mfu(
    tokens_per_second: float | None,
    flops_per_token: int,
    device: str,
    world_size: int,
    bf16: bool = True,
) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all ``world_size`` devices;
    None when the device's peak is unknown (CPU) or the run was not in half precision."""
    peak = peak_flops(device_name(device))
    if peak is None or not bf16 or not tokens_per_second:
        return None
    return tokens_per_second * flops_per_token / (peak * world_size)
