"""The draft-model study (issue 12): each trained model's own exit layer as its early-exit drafter.

    python benchmarks/draft_study.py                     # measure (resumable per model) and publish
    python benchmarks/draft_study.py --publish_only      # rebuild the tables from finished measurements
    python benchmarks/draft_study.py --decoders shared_cache --draft_tokens 1 4   # only lit-idpo's loop, two lengths

It runs ``lit-idpo speculate`` (:func:`lit_idpo.speculate.speculate`) on the untrained SmolLM2-135M-Instruct
and on the seed study's trained models (``configs/sweeps/smollm2_onpolicy_seeds.yaml``: DPO, Intermediate
DPO at layer 10, the same with the early-exit loss, and at layer 21), for the requested training seeds,
with the same prompts, exit layers and decoding settings for every model, one model at a time. A model
whose ``speculate.json`` exists with the same settings is not measured again. Then it writes
``benchmarks/draft_study/``: ``RESULTS.md`` (agreement, acceptance and speed-up per model and exit layer,
next to each arm's win rate against DPO over the seeds from the seed study), ``draft_study.json``,
``draft_study.png`` and each model's ``speculate.md``.

Speed-ups are ratios within one process (plain and early-exit greedy decoding alternate prompt by prompt),
so a busy machine slows both sides; the absolute tokens per second are those of this CPU. ``RESULTS.md``
also gives, from a cost model (not a measurement), the top-1 agreement a layer would need for a given
speed-up when every decoder-layer call costs the same, which is the regime of batch-1 decoding on a GPU.
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


def models(sweep: Path, seeds: List[int], sft: str = SFT) -> Dict[str, str]:
    """Evaluation name -> model source: the untrained model, then every arm-seed trained so far."""
    out = {"sft": sft}
    for seed in seeds:
        for arm in ARMS:
            hf = sweep / "runs" / arm / f"seed{seed}" / "hf_model"
            if hf.is_dir():
                out[f"{arm}@seed{seed}"] = str(hf)
    return out


def work_name(name: str, draft_tokens: int) -> str:
    return f"{name.replace('@', '_').replace('+', '_')}_d{draft_tokens}"


def _speculate_once(label: str, source: str, out: Path, settings: Dict[str, Any], options) -> Dict[str, Any]:
    """``speculate`` on ``settings["limit"]`` held-out prompts into ``out``, unless a run with the same
    ``settings`` is already there."""
    from lit_idpo.evaluation.options import DataOptions
    from lit_idpo.speculate import speculate

    path = out / "speculate.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("study_settings") == settings:
            return done
    started = time.perf_counter()
    results = speculate(source, out, layers=settings["layers"], options=options, progress=False,
                        data=DataOptions(source="bundled:arithmetic", split="test", limit=settings["limit"]))
    results["study_settings"], results["study_seconds"] = settings, round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{label}: {results['study_seconds']} s", flush=True)
    return results


def measure(name: str, source: str, work: Path, draft_tokens: int, args) -> Dict[str, Any]:
    from lit_idpo.speculate import SpeculateOptions

    options = SpeculateOptions(max_new_tokens=args.max_new_tokens, num_assistant_tokens=draft_tokens,
                               transformers_early_exit="transformers" in args.decoders,
                               shared_cache="shared_cache" in args.decoders)
    settings = {"layers": args.layers, "limit": args.prompts, "settings": options.__dict__}
    return _speculate_once(name, source, work / work_name(name, draft_tokens), settings, options)


def measure_agreement(name: str, source: str, args) -> Dict[str, Any]:
    """Teacher-forced agreement only (``draft_decoding`` off: one plain greedy decoding per prompt), resumable."""
    from lit_idpo.speculate import SpeculateOptions

    out = Path(args.work_dir).parent / "draft_agreement" / work_name(name, 0)
    settings = {"layers": args.layers, "limit": args.agreement_prompts, "max_new_tokens": args.max_new_tokens}
    options = SpeculateOptions(max_new_tokens=args.max_new_tokens, draft_decoding=False)
    return _speculate_once(f"agreement {name}", source, out, settings, options)


def agreement_over_seeds(args) -> Dict[str, Any]:
    """Per arm and exit layer: agreement over training seeds, and its paired difference to the same seed's DPO."""
    from lit_idpo.evaluation.statistics import over_seeds, verdict

    sweep, found = Path(args.sweep_dir), {}
    for seed in args.agreement_seeds:
        for arm in ARMS:
            hf = sweep / "runs" / arm / f"seed{seed}" / "hf_model"
            if hf.is_dir():
                res = measure_agreement(f"{arm}@seed{seed}", str(hf), args)
                found[arm, seed] = {row["layer"]: row["agreement"] for row in res["layers"]}
                found[arm, seed]["seconds"] = res.get("study_seconds") or 0
    seeds = [s for s in args.agreement_seeds if all((arm, s) in found for arm in ARMS)]  # whole seeds only
    out = {"seeds": seeds, "prompts": args.agreement_prompts, "rows": [],
           "seconds": sum(v["seconds"] for v in found.values())}
    for arm in ARMS:
        for layer in args.layers:
            values = [found[arm, s][layer] for s in seeds]
            row = {"arm": arm, "layer": layer, "agreement": over_seeds(values, bounds=(0.0, 1.0)) if seeds else None}
            if arm != "dpo" and seeds:
                diff = over_seeds([found[arm, s][layer] - found["dpo", s][layer] for s in seeds])
                diff["verdict"] = verdict(diff["ci_low"], diff["ci_high"], 0.0, "DPO")
                row["minus_dpo"] = diff
            out["rows"].append(row)
    return out


def win_rates() -> Dict[str, Any]:
    """Per arm, the seed study's win rate against DPO (mean over seeds, interval, verdict), if published."""
    if not SEED_STUDY.is_file():
        return {}
    summary = json.loads(SEED_STUDY.read_text())
    return {r["name"]: {"vs_dpo": r.get("vs_dpo"), "accuracy_vs_dpo": r.get("accuracy_vs_dpo"),
                        "seeds": summary["seeds"]} for r in summary["rows"]}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def needed_agreement(target: float, layer: int, num_layers: int, draft_tokens: int) -> float:
    """Cost model: the per-token acceptance ``a`` at which drafting ``draft_tokens`` tokens from ``layer`` reaches
    speed-up ``target`` when every decoder-layer call costs the same. A round yields ``1 + a + ... + a^d`` tokens
    in expectation (drafts kept up to the first miss, plus the verifier's token) for ``d*k + L`` layer calls;
    plain greedy pays ``L`` per token. Returns a value above 1 when even ``a = 1`` falls short."""
    def speedup(a: float) -> float:
        return sum(a ** i for i in range(draft_tokens + 1)) * num_layers / (draft_tokens * layer + num_layers)

    if speedup(1.0) < target:
        return float("inf")
    low, high = 0.0, 1.0
    for _ in range(60):
        low, high = ((low + high) / 2, high) if speedup((low + high) / 2) < target else (low, (low + high) / 2)
    return high


def _rows(name: str, res: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per (decoder, exit layer) of one speculate run."""
    rows = []
    base = res["baseline"]
    d = res["settings"]["num_assistant_tokens"]
    for entry in res["layers"]:
        common = {"model": name, "arm": name.split("@")[0], "draft_tokens": d, "layer": entry["layer"],
                  "agreement": entry["agreement"], "plain_tokens_per_s": base["tokens_per_s"]}
        if entry.get("acceptance_rate") is not None:
            rows.append({**common, "decoder": "transformers", **{k: entry.get(k) for k in (
                "acceptance_rate", "tokens_per_round", "tokens_per_s", "speedup", "identical")},
                "layer_call_speedup": None})
        if "shared_cache" in entry:
            loop = entry["shared_cache"]
            rows.append({**common, "decoder": "shared_cache", **{k: loop.get(k) for k in (
                "acceptance_rate", "tokens_per_round", "tokens_per_s", "speedup", "identical", "layer_call_speedup",
                "speedup_vs_same_loop")}, "same_loop_tokens_per_s": base.get("same_loop_tokens_per_s")})
    return rows


def publish(measured: Dict[str, Dict[str, Any]], args) -> Path:
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    wins = win_rates()
    rows = []
    for key, res in measured.items():
        rows += _rows(res["_name"], res)
        shutil.copy2(Path(res["_dir"]) / "speculate.md", dest / f"{key}.speculate.md")
    first = next(iter(measured.values()))
    machine, num_layers = first["machine"], first["num_layers"]

    def num(value, spec):
        return "n/a" if value is None else format(value, spec)

    def times(value):
        return "n/a" if value is None else f"{value:.2f}x"

    lines = ["# Draft-model study: results", "",
             f"Written by `benchmarks/draft_study.py` on {time.strftime('%Y-%m-%d')}. Each model's own layer k (its "
             f"first k blocks, final norm and LM head) drafts d tokens per round for greedy decoding at batch size 1, "
             f"verified by the full model; {args.prompts} held-out prompts of `bundled:arithmetic` (test split), at "
             f"most {args.max_new_tokens} new tokens. Decoders: `transformers` is `generate(assistant_early_exit=k)` "
             f"(a separate draft cache, every layer re-run to verify); `shared_cache` is lit-idpo's LayerSkip-style "
             f"loop (one cache; the verification runs only layers k+1..L from the draft's layer-k states). Every "
             f"output was checked token for token against plain greedy `generate` (`identical`).", "",
             "| model | d | decoder | exit layer | agreement (%) | acceptance (%) | tokens / round | tokens/s | "
             "plain tokens/s | speed-up | layer-call speed-up | identical |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['draft_tokens']} | {r['decoder']} | {r['layer']} | "
                     f"{_pct(r['agreement'])} | {_pct(r['acceptance_rate'])} | {num(r['tokens_per_round'], '.2f')} | "
                     f"{num(r['tokens_per_s'], '.1f')} | {num(r['plain_tokens_per_s'], '.1f')} | "
                     f"{times(r['speedup'])} | {times(r['layer_call_speedup'])} | "
                     f"{'yes' if r['identical'] else 'NO'} |")
    lines += ["", "speed-up: tokens/s over plain greedy `generate` in the same process (alternating prompt by "
              "prompt). layer-call speed-up: plain greedy's decoder-layer calls per token over the loop's, which is "
              "the speed-up if a layer call cost the same however many tokens it carries (batch-1 decoding bound by "
              "reading the weights, as on a GPU); counted, not timed.", "",
              f"Cost model (not a measurement): the per-token acceptance a layer needs for a given speed-up under "
              f"that equal-cost assumption, with independent acceptances (L = {num_layers}).", "",
              "| exit layer | d | for 1.0x | for 1.3x |", "|---:|---:|---:|---:|"]
    for layer in args.layers:
        for d in (1, 2, 4):
            need = [needed_agreement(t, layer, num_layers, d) for t in (1.0, 1.3)]
            lines.append(f"| {layer} | {d} | " + " | ".join("unreachable" if x > 1 else f"{100 * x:.0f} %"
                                                            for x in need) + " |")
    agreement = args.agreement
    if agreement and agreement["seeds"]:
        def cell(summary, signed=False):
            fmt = "+.1f" if signed else ".1f"
            interval = ("" if summary["ci_low"] is None else
                        f" [{format(100 * summary['ci_low'], fmt)}, {format(100 * summary['ci_high'], fmt)}]")
            return f"{format(100 * summary['mean'], fmt)}{interval}"

        lines += ["", f"Agreement over training runs: teacher-forced top-1 agreement of layer k with the final layer "
                  f"on each model's own greedy responses to the first {agreement['prompts']} held-out prompts, for "
                  f"every arm trained with seeds {agreement['seeds']}; mean [95 % t-interval over seeds], and the "
                  f"paired difference to the same seed's DPO.", "",
                  "| arm | exit layer | agreement (%) | minus DPO's (points) | verdict | per seed (%) |",
                  "|---|---:|---|---|---|---|"]
        for row in agreement["rows"]:
            diff = row.get("minus_dpo")
            lines.append(f"| {row['arm']} | {row['layer']} | {cell(row['agreement'])} | "
                         f"{cell(diff, signed=True) if diff else '-'} | {diff['verdict'] if diff else '-'} | "
                         + ", ".join(f"{100 * v:.1f}" for v in row["agreement"]["per_seed"]) + " |")
        lines += ["", f"Agreement runs: {agreement['seconds'] / 60:.1f} min."]
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
    lines += ["", f"Measurement time: {total / 60:.1f} min for {len(measured)} runs. Machine: "
              f"{machine['device_name']} ({machine['device']}, {machine['torch_threads']} torch threads), torch "
              f"{machine['torch']}, transformers {machine['transformers']}.", "",
              "Per-run details: the `*.speculate.md` files beside this one. Commands: "
              "`python benchmarks/draft_study.py " + " ".join(args.argv) + "`.", "", "![agreement and speed-up]"
              "(draft_study.png)"]
    (dest / "draft_study.json").write_text(json.dumps({"rows": rows, "win_rates": wins, "machine": machine,
                                                       "prompts": args.prompts, "layers": args.layers,
                                                       "max_new_tokens": args.max_new_tokens,
                                                       "draft_tokens": args.draft_tokens,
                                                       "decoders": args.decoders, "agreement_over_seeds": agreement},
                                                      indent=2) + "\n")
    plot(rows, dest / "draft_study.png")
    (dest / "RESULTS.md").write_text("\n".join(lines) + "\n")
    return dest / "RESULTS.md"


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    agreement_drawn = set()
    for key in dict.fromkeys((r["model"], r["decoder"], r["draft_tokens"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["decoder"], r["draft_tokens"]) == key]
        layers = [r["layer"] for r in mine]
        if key[0] not in agreement_drawn:
            agreement_drawn.add(key[0])
            left.plot(layers, [100 * r["agreement"] for r in mine], marker="o", label=key[0])
        style = "-" if key[1] == "shared_cache" else ":"
        right.plot(layers, [r["speedup"] or 0 for r in mine], style, marker="o", label=f"{key[0]} {key[1]} d={key[2]}")
    left.set(xlabel="exit layer k", ylabel="top-1 agreement with the final layer (%)", ylim=(0, 100))
    right.axhline(1.0, color="grey", lw=0.8)
    right.set(xlabel="exit layer k", ylabel="greedy decoding speed-up (x), measured")
    left.legend(fontsize=7)
    right.legend(fontsize=6)
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
    parser.add_argument("--draft_tokens", type=int, nargs="+", default=[4], help="draft tokens per round (each "
                        "value is a separate run per model)")
    parser.add_argument("--decoders", nargs="+", default=["transformers", "shared_cache"],
                        choices=["transformers", "shared_cache"], help="which early-exit decoders to time")
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "draft_study"))
    parser.add_argument("--publish_only", action="store_true")
    parser.add_argument("--dest", default=str(DEST), help="where RESULTS.md and the rest are written")
    parser.add_argument("--sft", default=SFT, help="the untrained model's source")
    parser.add_argument("--agreement_seeds", type=int, nargs="*", default=[], help="training seeds whose models get "
                        "an agreement-only run (no draft decoding), summarised over seeds against the same seed's DPO")
    parser.add_argument("--agreement_prompts", type=int, default=20, help="held-out prompts per agreement-only run")
    parser.add_argument("--also_publish", nargs="*", default=[], help="work dirs of earlier measurements (e.g. with "
                        "other decoders) whose finished runs for the same models and draft lengths join the tables")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    work = Path(args.work_dir)
    measured = {}
    for d in args.draft_tokens:
        for name, source in models(Path(args.sweep_dir), args.seeds, args.sft).items():
            path = work / work_name(name, d) / "speculate.json"
            if args.publish_only:
                if not path.is_file():
                    continue
                res = json.loads(path.read_text())
            else:
                res = measure(name, source, work, d, args)
            res["_dir"], res["_name"] = str(path.parent), name
            measured[work_name(name, d)] = res
    for extra in map(Path, args.also_publish):  # read only, never measured again
        for d in args.draft_tokens:
            for name in models(Path(args.sweep_dir), args.seeds, args.sft):
                path = extra / work_name(name, d) / "speculate.json"
                if path.is_file():
                    res = json.loads(path.read_text())
                    res["_dir"], res["_name"] = str(path.parent), name
                    measured[f"{work_name(name, d)}-{extra.name}"] = res
    args.agreement = agreement_over_seeds(args) if args.agreement_seeds else None
    print(publish(measured, args).read_text())


if __name__ == "__main__":
    main()
