"""Where does bf16-mixed training lose accuracy? The gradient of one batch under bf16 autocast, against fp32.

What: for one batch of 8 bundled pairs (padded and prefix-shared), the final layer's sequence log-probs of
SmolLM2-135M-Instruct (embeddings frozen, as in training) and the gradient of a fixed linear functional of
them with respect to every trained weight, computed four ways: eager full-logits head in fp32 (the reference),
the fused CPU head in fp32, the eager head under bf16 autocast, and the fused head under bf16 autocast.

Why: the bf16 equivalence check (``benchmarks/bf16_equivalence/``) found DPO trained in bf16-mixed answering
worse than in 32-true. If the fused head's bf16 path were at fault, its gradient error would exceed the eager
bf16 head's; if both are alike, the error is bf16 autocast of the network itself.

How: ``python benchmarks/bf16_gradient_check.py`` (CPU, one thread, about a minute). Prints, per packing and
way: the largest log-prob difference to the reference (nats per sequence), the gradient's relative error
``|g - g_ref| / |g_ref|``, its cosine to the reference (float64) and its norm ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_rows import data_module  # noqa: E402


def sums_and_grad(model, params, batch, backend: str, bf16: bool):
    """The final layer's sequence log-probs and the gradient of a fixed linear mix of them (float64 copies)."""
    from lit_idpo.logprobs import batch_logprobs

    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        sums = batch_logprobs(model, batch, [model.config.num_hidden_layers], backend=backend)
    weights = torch.linspace(-1, 1, sums.numel()).reshape(sums.shape)  # a fixed mix of chosen and rejected
    (sums.float() * weights).sum().backward()
    return sums.detach().double(), torch.cat([p.grad.flatten().double() for p in params])


def main() -> None:
    from transformers import AutoModelForCausalLM

    from lit_idpo.models import resolve_model_dir

    torch.set_num_threads(1)
    args = argparse.Namespace(model="embedded:smollm2-135m-instruct", dataset="bundled", batch_pairs=8, seed=0,
                              repeats=1)
    print("| packing | head | autocast | max log-prob diff (nats) | grad rel. error | grad cosine | norm ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for packing in ("none", "prefix_shared"):
        dm = data_module(args, packing)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        model = AutoModelForCausalLM.from_pretrained(resolve_model_dir(args.model), dtype=torch.float32)
        model.get_input_embeddings().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]

        ref_sums, ref_grad = sums_and_grad(model, params, batch, "naive", False)
        for backend, bf16 in (("torch", False), ("naive", True), ("torch", True)):
            sums, grad = sums_and_grad(model, params, batch, backend, bf16)
            cosine = float(grad @ ref_grad / (grad.norm() * ref_grad.norm()))
            print(f"| {packing} | {'fused (torch)' if backend == 'torch' else 'eager (naive)'} | "
                  f"{'bf16' if bf16 else 'off (fp32)'} | {float((sums - ref_sums).abs().max()):.4f} | "
                  f"{float((grad - ref_grad).norm() / ref_grad.norm()):.4f} | {cosine:.5f} | "
                  f"{float(grad.norm() / ref_grad.norm()):.4f} |")


if __name__ == "__main__":
    main()
