"""One Intermediate DPO training step end to end: peak memory and time, naive head vs fused head.

A step is what Lightning runs per batch before the optimiser: the policy's forward and backward through
``IntermediateDPO.compute_loss`` (the reference's no-grad forward included) and ``loss.backward()``.
The optimiser update is left out: its memory and time are the same for both heads.

For each head (``naive``: materialises ``[rows, V]`` logits per layer; fused: ``torch`` on CPU, ``triton``
on CUDA) and each number K of intermediate layers (0, 1, 3, 5; evenly spaced, the final layer always
included), one fresh process loads the models, builds the batch and runs the steps:

- memory: the FIRST step. CPU: the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before the step) and the rise over the resident set just before it;
  large allocations are forced to ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the RSS at
  once. CUDA: ``torch.cuda.max_memory_allocated`` (reset before the step) and its rise over
  ``memory_allocated`` before it.
- time: the median of ``--repeats`` further steps (the first step is the warm-up).

Tied embeddings: with SmolLM2 the LM head IS the input embedding, so in a full fine-tune the head weight
gets a gradient (the fused head's most expensive mode); ``--freeze-embeddings`` measures the frozen-head
mode (the LoRA setting of the paper).

Batches: ``bundled`` is 8 pairs of the bundled arithmetic task (about 55 tokens each, short completions);
``long`` is synthetic (random token ids: cost does not depend on their values), ``--pairs`` pairs with
``--prompt-tokens`` + ``--completion-tokens`` tokens per sequence.

    python benchmarks/bench_train_step.py                                 # CPU, SmolLM2-135M, both variants
    python benchmarks/bench_train_step.py --device cuda --model random:llama-1b --variants long \\
        --pairs 8 --prompt-tokens 256 --completion-tokens 768

``random:llama-1b`` / ``random:llama-3b`` are randomly initialised models with the shapes of Llama 3.2
1B / 3B (vocabulary 128256), written once to a temporary directory: a GPU machine needs no download.
Writes ``benchmarks/results/train_step_<device>.csv`` and prints a markdown table.

The other train-step benchmark, the full optimiser step per packing mode against TRL's ``DPOTrainer``, is
``benchmarks/bench_packing.py``; the helpers both use are in ``benchmarks/bench_common.py``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import loadavg, rss_kb, spread_layers  # noqa: E402  (the benchmarks' shared helpers)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KS = (0, 1, 3, 5)
RANDOM_SHAPES = {  # Llama 3.2 shapes (tied embeddings)
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64),
    "llama-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                     num_key_value_heads=8, head_dim=128),
}


# ------------------------------------------------------------------------------------------ one configuration


def _random_model_dir(name: str, dtype: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target = Path(tempfile.gettempdir()) / f"lit_idpo_bench_{name}_{dtype}"
    if not (target / "config.json").is_file():
        config = LlamaConfig(vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=8192,
                             **RANDOM_SHAPES[name])
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
        model.save_pretrained(target, safe_serialization=True)
    return str(target)


def _batch(variant: str, args, vocab: int):
    import torch

    if variant == "bundled":
        from lit_idpo.data import PreferenceDataModule

        data = PreferenceDataModule(tokenizer="embedded:smollm2-135m-instruct", batch_size=args.pairs_bundled,
                                    limit_train_pairs=args.pairs_bundled, val_split=None)
        data.setup("fit")
        return data.collator([data.train_pairs[i] for i in range(args.pairs_bundled)])
    g = torch.Generator().manual_seed(0)
    rows, length = 2 * args.pairs, args.prompt_tokens + args.completion_tokens
    ids = torch.randint(1, vocab, (rows, length), generator=g)
    ids[args.pairs:, : args.prompt_tokens] = ids[: args.pairs, : args.prompt_tokens]  # shared prompts
    completion = torch.zeros_like(ids)
    completion[:, args.prompt_tokens:] = 1
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=completion,
                pair_index=torch.arange(args.pairs))


def run_one(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from lit_idpo.module import IntermediateDPO

    model = args.model
    if model.startswith("random:"):
        model = _random_model_dir(model.split(":", 1)[1], args.dtype)
    cuda = args.device == "cuda"
    from transformers import AutoConfig

    from lit_idpo.models import resolve_model_dir

    config = AutoConfig.from_pretrained(resolve_model_dir(model))
    num_layers, vocab = config.num_hidden_layers, config.vocab_size
    module = IntermediateDPO(model=model, layers=spread_layers(num_layers, args.k), gamma=0.5 if args.k else 1.0,
                             backend=args.backend, dtype=args.dtype, freeze_embeddings=args.freeze_embeddings)
    module.train()
    module.to(args.device)
    if not cuda:
        # Weights loaded from safetensors may still be file-backed pages that only count towards the RSS once
        # read; copy them into ordinary memory so that the step's rise is the step's own.
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                tensor.data = tensor.data.clone()
    batch = {k: v.to(args.device) for k, v in _batch(args.variant, args, vocab).items()}

    def step():
        loss, _ = module.compute_loss(batch)
        loss.backward()
        module.policy.zero_grad(set_to_none=True)
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # Memory: the first step of a fresh process.
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = rss_kb("VmRSS") * 1024
    start = time.perf_counter()
    loss = step()
    sync()
    first = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else rss_kb("VmHWM") * 1024
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    rows = int(batch["completion_mask"][:, 1:].sum())
    return dict(variant=args.variant, backend=args.backend, k=args.k, layers=json.dumps(module.layer_ids),
                sequences=int(batch["input_ids"].shape[0]), tokens=int(batch["attention_mask"].sum()),
                head_rows_per_layer=rows, peak_mb=round(peak / 2**20, 1), before_mb=round(before / 2**20, 1),
                step_rise_mb=round((peak - before) / 2**20, 1), time_s=round(statistics.median(times), 3),
                times_s=json.dumps([round(t, 3) for t in times]), first_step_s=round(first, 3),
                loss=round(float(loss), 5), threads=torch.get_num_threads())


# ------------------------------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default=None, help="model source (default: embedded SmolLM2-135M on CPU, "
                                                      "random:llama-1b on CUDA)")
    parser.add_argument("--dtype", default=None, help="weights' dtype (default float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--variants", default="bundled,long")
    parser.add_argument("--ks", default=",".join(map(str, KS)))
    parser.add_argument("--backends", default=None, help="default: naive and the fused one (torch / triton)")
    parser.add_argument("--pairs-bundled", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2, help="pairs of the long variant")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--completion-tokens", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--freeze-embeddings", action="store_true", help="frozen embeddings / LM head")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=None)
    # internal: one configuration in this process
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or ("embedded:smollm2-135m-instruct" if args.device == "cpu" else "random:llama-1b")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")

    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return

    import torch

    fused = "triton" if args.device == "cuda" else "torch"
    backends = args.backends.split(",") if args.backends else ["naive", fused]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", TOKENIZERS_PARALLELISM="false")
    passthrough = ["--device", args.device, "--model", args.model, "--dtype", args.dtype,
                   "--repeats", str(args.repeats), "--pairs-bundled", str(args.pairs_bundled),
                   "--pairs", str(args.pairs),
                   "--prompt-tokens", str(args.prompt_tokens), "--completion-tokens", str(args.completion_tokens)]
    if args.freeze_embeddings:
        passthrough.append("--freeze-embeddings")
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                   else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores")
    rows = []
    for variant in args.variants.split(","):
        for k in map(int, args.ks.split(",")):
            for backend in backends:
                load_before = loadavg()
                cmd = [sys.executable, __file__, "--one", "--variant", variant, "--backend", backend, "--k", str(k),
                       *passthrough]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(f"{variant} K={k} {backend}: FAILED\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(line[len("RESULT "):])
                row.update(load_before=load_before, load_after=loadavg(), device=device_name, model=args.model,
                           dtype=args.dtype, torch=torch.__version__,
                           date=datetime.datetime.now().isoformat(timespec="seconds"))
                rows.append(row)
                print(f"{variant:8s} K={k} {backend:6s} peak {row['peak_mb']:9.1f} MB  "
                      f"rise {row['step_rise_mb']:8.1f} MB  step {row['time_s']:7.3f} s  "
                      f"(load {load_before} -> {row['load_after']})", flush=True)
    out = Path(args.out) if args.out else RESULTS / f"train_step_{args.device}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {out}\n")
    print(markdown_table(rows))


def markdown_table(rows) -> str:
    """Per variant and K: naive and fused peak memory, their per-added-layer cost, and step times."""
    lines = ["| batch | K | naive peak MB | fused peak MB | naive +/layer | fused +/layer | naive step s "
             "| fused step s |", "|---|---|---|---|---|---|---|---|"]
    by = {(r["variant"], r["backend"], r["k"]): r for r in rows}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        backends = list(dict.fromkeys(r["backend"] for r in rows if r["variant"] == variant))
        naive, fused = "naive", next((b for b in backends if b != "naive"), None)
        for k in sorted({r["k"] for r in rows if r["variant"] == variant}):
            cells = [variant, str(k)]
            for b in (naive, fused):
                cells.append(f"{by[variant, b, k]['peak_mb']:.0f}" if (variant, b, k) in by else "-")
            for b in (naive, fused):
                base, row = by.get((variant, b, 0)), by.get((variant, b, k))
                cells.append(f"{100 * (row['peak_mb'] - base['peak_mb']) / base['peak_mb'] / k:+.1f} %"
                             if k and base and row else "")
            for b in (naive, fused):
                cells.append(f"{by[variant, b, k]['time_s']:.2f}" if (variant, b, k) in by else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
