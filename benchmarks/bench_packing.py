"""The full DPO training step, lit-idpo's packing modes against TRL's ``DPOTrainer``, on the same pairs.

Rows (each configuration in a fresh process, one after the other):

- lit-idpo ``packing`` = ``none`` (padded), ``padding_free``, ``prefix_shared``; for plain DPO (K = 0) and
  Intermediate DPO with K = 1 (the paper's default layer, 21 of SmolLM2's 30) and K = 3 (evenly spaced) extra
  layers. Run as a user runs it: ``PreferenceDataModule`` + ``IntermediateDPO`` under a Lightning ``Trainer``.
- TRL's ``DPOTrainer`` (when ``trl`` is installed), configured the same way: the same model directory (lit-idpo's
  ``resolve_model_dir`` of ``--model``), the same token sequences in the same batch order (lit-idpo's decoded
  pairs, checked token for token after TRL's own tokenisation: column ``same_tokens``), 8 pairs per optimiser
  step, AdamW at the same learning rate (constant, no weight decay), fp32, no gradient checkpointing, the
  reference model run live (not precomputed), sigmoid loss, beta 0.1. TRL's ``padding_free=True`` is tried as a
  row of its own; a TRL that ignores it (1.16 warns and falls back to padding) gets a row saying so, not timings.

Shared by all rows: embeddings (tied to the LM head in SmolLM2) frozen, dropout off, AdamW(lr, weight_decay 0),
torch's default thread count, large allocations forced to ``mmap`` so freed memory leaves the RSS.

Measured per row:

- step time: the wall time between the ends of consecutive optimiser steps (data loading and collation,
  policy forward + backward, the live reference's forward, the optimiser update, the framework's own work);
  the first step is the warm-up and not counted; ``time_s`` is the median of the ``--repeats`` steps after it.
- tokens/s: REAL tokens of the timed steps' pairs, each counted once (prompt + chosen + rejected; no padding,
  the prompt once even where a layout computes it twice), over the timed steps' total time; the same count
  for every layout, so the rows compare directly. ``positions`` is what one network actually computes per step:
  the batch's rows x width, pads included (padded: 2B rows as wide as the longest sequence; the packed modes lay
  sequences or whole pairs into fewer rows, the prompt once per pair with prefix_shared).
- a check, not a speed: ``loss_first`` / ``loss_last`` are the first and last step's losses; the same pairs, order,
  learning rate and loss must give padded lit-idpo's values in every packing mode and in TRL (the table notes a
  row whose last loss differs by more than 1e-3).
- peak memory: the process's resident-set high-water mark (``VmHWM``) over the training steps, reset when
  training starts (both models and the data already loaded): models, activations, gradients, optimiser state.

Data sets: ``bundled`` (the bundled arithmetic pairs, about 55 tokens each) and ``longtail`` (lengths spread
like UltraFeedback's, scaled down for a CPU step; see ``benchmarks/longtail_pairs.py``). Each run uses the first
``8 x (repeats + 1)`` pairs, in the order of lit-idpo's training sampler (seed 0).

The full CPU measurement (one run gives both tables; run it on a quiet machine):

    python benchmarks/bench_packing.py --markdown-out benchmarks/results/train_step_packing_cpu.md

Writes
``benchmarks/results/train_step_packing_cpu.csv`` and prints one markdown table per data set (CPU only for now: a
GPU row needs the CUDA memory counters and device placement that ``bench_train_step.py`` has for its heads). It
runs 22 processes (per data set: 9 lit-idpo rows, TRL, and TRL's padding_free check, which builds the trainer but
runs no step), each about 15 s of start-up plus ``repeats + 1`` steps. Estimated wall time on the quiet 2-core CPU
at the default ``--repeats 3``: about 23-25 minutes (bundled ~9 min: steps of ~5-10 s, TRL ~15 s; longtail ~15 min:
padded steps ~20-25 s, packed ~10-15 s, TRL ~35 s; extrapolated from the issue's quiet-machine step times by
positions computed, not timed end to end); ``--repeats 2`` takes about 4 minutes less. Quick smoke test:
``--repeats 1 --datasets bundled --ks 0``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import loadavg, spread_layers  # noqa: E402  (the benchmarks' shared helpers)
from step_rows import StepRecord, data_module, pair_tokens, steps_of  # noqa: E402  (shared with TRL's row)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PACKINGS = ("none", "padding_free", "prefix_shared")
PAPER_LAYER_K1 = None  # K = 1: IntermediateDPO's default layer (the paper's relative depth)


def adamw(args):
    """The optimiser of every row: AdamW at ``--lr``, no weight decay (TRL's default), constant rate."""
    import torch

    return functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0)


# ------------------------------------------------------------------------------------------ a lit-idpo row


def run_lit(args) -> Dict:
    """One lit-idpo configuration: ``fit`` for ``repeats + 1`` steps under Lightning, timed by a callback."""
    import lightning.pytorch as pl
    from transformers import AutoConfig

    from lit_idpo.models import resolve_model_dir
    from lit_idpo.module import IntermediateDPO

    num_layers = AutoConfig.from_pretrained(resolve_model_dir(args.model)).num_hidden_layers
    layers = [] if args.k == 0 else (PAPER_LAYER_K1 if args.k == 1 else spread_layers(num_layers, args.k))
    dm = data_module(args, args.packing)
    dm.setup("fit")
    out_dir = tempfile.mkdtemp(prefix="lit_idpo_bench_")
    class Module(IntermediateDPO):
        def on_train_end(self) -> None:
            """No export of the trained policy: it is not part of a step and only lengthens the run."""

    module = Module(model=args.model, layers=layers, gamma=0.5 if args.k else 1.0, beta=args.beta, dtype="float32",
                    freeze_embeddings=True, optimizer=adamw(args))
    record, real_tokens, positions, losses = StepRecord(), [], [], []

    class Timer(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            record.train_start()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            real_tokens.append(sum(pair_tokens(dm.train_pairs, i) for i in batch["pair_index"].tolist()))
            positions.append(int(batch["input_ids"].numel()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            record.step_end()
            losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=args.precision, max_steps=steps_of(args), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Timer()],
                         default_root_dir=out_dir)
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return dict(system="lit-idpo", packing=args.packing, packing_resolved=getattr(dm, "packing_mode", args.packing),
                k=args.k, layers=json.dumps(module.layer_ids[1:]),
                **record.summary(real_tokens, positions), loss_first=round(losses[0], 5),
                loss_last=round(losses[-1], 5), same_tokens=True, status="ok")


# ------------------------------------------------------------------------------------------ driver


def _versions() -> Dict[str, str]:
    import lightning
    import torch
    import transformers

    versions = dict(torch=torch.__version__, transformers=transformers.__version__, lightning=lightning.__version__)
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        versions["trl"] = ""
    return versions


def _configs(args) -> List[Dict]:
    configs = [dict(system="lit-idpo", packing=p, k=k) for k in map(int, args.ks.split(","))
               for p in args.packings.split(",")]
    try:
        import trl  # noqa: F401

        trl_rows = [dict(system="trl", packing="none", k=0)]
        if args.trl_padding_free:
            trl_rows.append(dict(system="trl", packing="padding_free", k=0))
    except ImportError:
        print("trl is not installed: no TRL rows (pip install trl)", file=sys.stderr)
        trl_rows = []
    return trl_rows + configs if "trl" in args.systems.split(",") else configs


def _run_config(args, dataset: str, config: Dict, env: Dict) -> Dict:
    cmd = [sys.executable, __file__, "--one", "--dataset", dataset, "--system", config["system"],
           "--packing", config["packing"], "--k", str(config["k"]), "--model", args.model,
           "--repeats", str(args.repeats), "--batch-pairs", str(args.batch_pairs), "--lr", str(args.lr),
           "--beta", str(args.beta), "--seed", str(args.seed), "--precision", args.precision]
    load_before = loadavg()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        error = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"{dataset} {config}: FAILED ({error})\n{done.stderr[-3000:]}", file=sys.stderr)
        row = dict(config, status=f"failed: {error}"[:300])
    else:
        row = json.loads(line[len("RESULT "):])
    row.update(dataset=dataset, load_before=load_before, load_after=loadavg())
    return row


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--datasets", default="bundled,longtail")
    parser.add_argument("--systems", default="lit-idpo,trl", help="lit-idpo and/or trl")
    parser.add_argument("--packings", default=",".join(PACKINGS),
                        help="lit-idpo packing modes (auto too: its resolved mode is the column packing_resolved)")
    parser.add_argument("--ks", default="0,1,3", help="lit-idpo intermediate layer counts")
    parser.add_argument("--no-trl-padding-free", dest="trl_padding_free", action="store_false",
                        help="skip the TRL padding_free row")
    parser.add_argument("--repeats", type=int, default=3, help="timed optimiser steps after one warm-up step")
    parser.add_argument("--batch-pairs", type=int, default=8, help="pairs per optimiser step")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="data order and long-tailed set seed")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                        help="every row's precision: fp32 weights, and with bf16-mixed bf16 autocast (lit-idpo: "
                             "trainer.precision; TRL: bf16=True)")
    parser.add_argument("--out", default=None, help="CSV (default benchmarks/results/train_step_packing_cpu.csv)")
    parser.add_argument("--markdown-out", default=None, help="also write the markdown tables here")
    # internal: one configuration in this process
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--packing", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        if args.system == "trl":
            from bench_trl_step import run_trl

            row = run_trl(args)
        else:
            row = run_lit(args)
        import torch

        row.update(threads=torch.get_num_threads())
        print("RESULT " + json.dumps(row), flush=True)
        return

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", TOKENIZERS_PARALLELISM="false")
    common = dict(device=f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores",
                  model=args.model, dtype="float32", precision=args.precision, batch_pairs=args.batch_pairs,
                  **_versions())
    rows = []
    for dataset in args.datasets.split(","):
        for config in _configs(args):
            row = _run_config(args, dataset, config, env)
            row.update(common, date=datetime.datetime.now().isoformat(timespec="seconds"))
            rows.append(row)
            print(f"{dataset:8s} {row['system']:8s} {row['packing']:13s} K={row['k']} "
                  f"step {row.get('time_s')} s  peak {row.get('peak_mb')} MB  {row.get('tokens_per_s')} tok/s  "
                  f"[{row['status'][:80]}]  (load {row['load_before']} -> {row['load_after']})", flush=True)
    out = Path(args.out) if args.out else RESULTS / "train_step_packing_cpu.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_tables(rows)
    print(f"\nwrote {out}\n\n{table}")
    if args.markdown_out:
        Path(args.markdown_out).write_text(table + "\n")


def _packing_cell(row: Dict) -> str:
    resolved = row.get("packing_resolved")
    return f"{row['packing']} ({resolved})" if resolved and resolved != row["packing"] else row["packing"]


def markdown_tables(rows: List[Dict]) -> str:
    """One table per data set: step time, ratios to lit-idpo padded plain DPO and to TRL, memory, token rate."""
    header = ("| system | packing | K | step s (median) | x lit-idpo padded DPO | x TRL | peak RSS MB | "
              "real tokens/s | real tokens / step | positions / step | note |\n" + "|---" * 11 + "|")
    parts = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        base = next((r.get("time_s") for r in mine if r["system"] == "lit-idpo" and r["packing"] == "none"
                     and r["k"] == 0), None)
        trl = next((r.get("time_s") for r in mine if r["system"] == "trl" and r["packing"] == "none"), None)
        first = mine[0]
        losses = {r["k"]: r.get("loss_last") for r in mine
                  if r["system"] == "lit-idpo" and r["packing"] == "none" and r["status"] == "ok"}
        lines = [f"**{dataset}** ({first.get('device')}, {first.get('model')} fp32, {first.get('batch_pairs')} pairs "
                 f"per optimiser step, embeddings frozen, live reference; torch {first.get('torch')}, transformers "
                 f"{first.get('transformers')}, trl {first.get('trl') or 'not installed'}). Step: median wall time "
                 f"between optimiser-step ends after one warm-up step. Real tokens: prompt + chosen + rejected of "
                 f"each pair, each once, no padding. Positions: input positions (rows x width, pads included) "
                 f"one network computes per step.", "", header]
        for r in mine:
            t = r.get("time_s")
            note = "" if r["status"] == "ok" else r["status"]
            if r["status"] == "ok" and not r.get("same_tokens", True):
                note = "token sequences differ from lit-idpo's"
            padded_loss = losses.get(r["k"])
            if r["status"] == "ok" and padded_loss is not None and r.get("loss_last") is not None \
                    and abs(float(r["loss_last"]) - float(padded_loss)) > 1e-3:
                # Same pairs, order, learning rate and loss: the last step's loss should agree with padded lit-idpo.
                note = (note + "; " if note else "") + f"last loss {r['loss_last']} vs padded lit-idpo {padded_loss}"
            lines.append("| " + " | ".join([
                r["system"], _packing_cell(r), str(r["k"]), f"{t:.2f}" if t else "-",
                f"{t / base:.2f}" if t and base else "-", f"{t / trl:.2f}" if t and trl else "-",
                f"{r['peak_mb']:.0f}" if r.get("peak_mb") else "-",
                f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-",
                f"{r['real_tokens_per_step']:.0f}" if r.get("real_tokens_per_step") else "-",
                f"{r['positions_per_step']:.0f}" if r.get("positions_per_step") else "-", note]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
