"""The draft-model study (issue 12): each trained model's own exit layer as its early-exit drafter.

    python benchmarks/draft_study.py                     # measure (resumable per model) and publish
    python benchmarks/draft_study.py --publish_only      # rebuild the tables from finished measurements

It runs ``lit-idpo speculate`` (:func:`lit_idpo.speculate.speculate`) on the untrained SmolLM2-135M-Instruct
and on the seed study's trained models (``configs/sweeps/smollm2_onpolicy_seeds.yaml``: DPO, Intermediate
DPO at layer 10, the same with the early-exit loss, and at layer 21), for the requested training seeds,
with the same prompts, exit layers and decoding settings for every model, one model at a time. A model
whose ``speculate.json`` exists with the same settings is not measured again. Then it writes
``benchmarks/draft_study/``: ``RESULTS.md`` (agreement, acceptance and speed-up per model and exit layer,
next to each arm's win rate against DPO over the seeds from the seed study), ``draft_study.json``,
``draft_study.png`` and each model's ``speculate.md``.

Speed-ups are ratios within one process (plain and early-exit greedy decoding alternate prompt by prompt),
so a busy machine slows both sides; the absolute tokens per second are those of this CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "runs" / "sweep_smollm2_onpolicy_seeds"
DEST = ROOT / "benchmarks" / "draft_study"
SEED_STUDY = ROOT / "benchmarks" / "seed_study" / "sweep_results.json"
SFT = "embedded:smollm2-135m-instruct"
ARMS = ["dpo", "L10", "L10+exit0.5", "L21"]


def models(sweep: Path, seeds: List[int]) -> Dict[str, str]:
    """Evaluation name -> model source: the untrained model, then every arm-seed trained so far."""
    out = {"sft": SFT}
    for seed in seeds:
        for arm in ARMS:
            hf = sweep / "runs" / arm / f"seed{seed}" / "hf_model"
            if hf.is_dir():
                out[f"{arm}@seed{seed}"] = str(hf)
    return out


def measure(name: str, source: str, work: Path, args) -> Dict[str, Any]:
    from lit_idpo.evaluation.options import DataOptions
    from lit_idpo.speculate import SpeculateOptions, speculate

    options = SpeculateOptions(max_new_tokens=args.max_new_tokens, num_assistant_tokens=args.draft_tokens)
    out = work / name.replace("@", "_").replace("+", "_")
    path = out / "speculate.json"
    settings = {"layers": args.layers, "limit": args.prompts, "settings": options.__dict__}
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("study_settings") == settings:
            return done
    started = time.perf_counter()
    results = speculate(source, out, layers=args.layers, options=options, progress=False,
                        data=DataOptions(source="bundled:arithmetic", split="test", limit=args.prompts))
    results["study_settings"], results["study_seconds"] = settings, round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{name}: {results['study_seconds']} s", flush=True)
    return results


def win_rates() -> Dict[str, Any]:
    """Per arm, the seed study's win rate against DPO (mean over seeds, interval, verdict), if published."""
    if not SEED_STUDY.is_file():
        return {}
    summary = json.loads(SEED_STUDY.read_text())
    return {r["name"]: {"vs_dpo": r.get("vs_dpo"), "accuracy_vs_dpo": r.get("accuracy_vs_dpo"),
                        "seeds": summary["seeds"]} for r in summary["rows"]}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def publish(measured: Dict[str, Dict[str, Any]], args) -> Path:
    DEST.mkdir(parents=True, exist_ok=True)
    wins = win_rates()
    rows = []
    for name, res in measured.items():
        arm = name.split("@")[0]
        for entry in res["layers"]:
            rows.append({"model": name, "arm": arm, **{k: entry.get(k) for k in (
                "layer", "agreement", "acceptance_rate", "tokens_per_round", "tokens_per_s", "baseline_tokens_per_s",
                "speedup", "identical")}})
        shutil.copy2(Path(res["_dir"]) / "speculate.md", DEST / f"{name.replace('@', '_')}.speculate.md")
    machine = next(iter(measured.values()))["machine"]
    lines = ["# Draft-model study: results", "",
             f"Written by `benchmarks/draft_study.py` on {time.strftime('%Y-%m-%d')}. Each model's own layer k (its "
             f"first k blocks, final norm and LM head) drafts {args.draft_tokens} tokens per round for greedy "
             f"decoding at batch size 1 (transformers' `assistant_early_exit`), verified by the full model; "
             f"{args.prompts} held-out prompts of `bundled:arithmetic` (test split), at most "
             f"{args.max_new_tokens} new tokens. Every early-exit output was checked token for token against "
             f"plain greedy decoding (`identical`).", "",
             "| model | exit layer | agreement (%) | acceptance (%) | tokens / round | tokens/s | plain tokens/s | "
             "speed-up | identical |", "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        tps = "n/a" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
        base = "n/a" if r["baseline_tokens_per_s"] is None else f"{r['baseline_tokens_per_s']:.1f}"
        speed = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        per_round = "n/a" if r["tokens_per_round"] is None else f"{r['tokens_per_round']:.2f}"
        lines.append(f"| {r['model']} | {r['layer']} | {_pct(r['agreement'])} | {_pct(r['acceptance_rate'])} | "
                     f"{per_round} | {tps} | {base} | {speed} | {'yes' if r['identical'] else 'NO'} |")
    if wins:
        lines += ["", "Quality of the same arms (from the seed study, "
                  "[`../seed_study/RESULTS.md`](../seed_study/RESULTS.md)): win rate against the same seed's DPO, "
                  "mean over seeds [95 % interval over training runs], verdict.", "",
                  "| arm | seeds | win rate vs DPO (%) | verdict | accuracy minus DPO's (points) |",
                  "|---|---|---|---|---|"]
        for arm in ARMS[1:]:
            w = wins.get(arm)
            if not w or not w["vs_dpo"]:
                continue
            c, a = w["vs_dpo"], w["accuracy_vs_dpo"]
            interval = "" if c["ci_low"] is None else f" [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]"
            acc = "n/a" if a is None else f"{100 * a['mean']:+.1f}"
            lines.append(f"| {arm} | {w['seeds']} | {_pct(c['mean'])}{interval} | {c['verdict']} | {acc} |")
    total = sum(res.get("study_seconds") or 0 for res in measured.values())
    lines += ["", f"Measurement time: {total / 60:.1f} min for {len(measured)} models. Machine: "
              f"{machine['device_name']} ({machine['device']}, {machine['torch_threads']} torch threads), torch "
              f"{machine['torch']}, transformers {machine['transformers']}.", "",
              "Per-model details: the `*.speculate.md` files beside this one. Commands: "
              "`python benchmarks/draft_study.py " + " ".join(args.argv) + "`.", "", "![agreement and speed-up]"
              "(draft_study.png)"]
    (DEST / "draft_study.json").write_text(json.dumps({"rows": rows, "win_rates": wins, "machine": machine,
                                                       "prompts": args.prompts, "layers": args.layers,
                                                       "max_new_tokens": args.max_new_tokens,
                                                       "draft_tokens": args.draft_tokens}, indent=2) + "\n")
    plot(rows, DEST / "draft_study.png")
    (DEST / "RESULTS.md").write_text("\n".join(lines) + "\n")
    return DEST / "RESULTS.md"


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        layers = [r["layer"] for r in mine]
        left.plot(layers, [100 * r["agreement"] for r in mine], marker="o", label=model)
        right.plot(layers, [r["speedup"] or 0 for r in mine], marker="o", label=model)
    left.set(xlabel="exit layer k", ylabel="top-1 agreement with the final layer (%)", ylim=(0, 100))
    right.axhline(1.0, color="grey", lw=0.8)
    right.set(xlabel="exit layer k", ylabel="greedy decoding speed-up (x)")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep_dir", default=str(SWEEP), help="the seed study's output_dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds whose models to measure")
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 21], help="exit layers")
    parser.add_argument("--prompts", type=int, default=20, help="held-out prompts per model")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--draft_tokens", type=int, default=4, help="draft tokens per round")
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "draft_study"))
    parser.add_argument("--publish_only", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    work = Path(args.work_dir)
    measured = {}
    for name, source in models(Path(args.sweep_dir), args.seeds).items():
        path = work / name.replace("@", "_").replace("+", "_") / "speculate.json"
        if args.publish_only:
            if not path.is_file():
                continue
            res = json.loads(path.read_text())
        else:
            res = measure(name, source, work, args)
        res["_dir"] = str(path.parent)
        measured[name] = res
    print(publish(measured, args).read_text())


if __name__ == "__main__":
    main()
