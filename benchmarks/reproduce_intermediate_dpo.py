"""The reproduction in miniature: SFT vs DPO vs Intermediate DPO on SmolLM2-135M-Instruct, rule-judged.

    python benchmarks/reproduce_intermediate_dpo.py             # run (or resume) and publish
    python benchmarks/reproduce_intermediate_dpo.py --dry_run   # print the exact fit commands only
    python benchmarks/reproduce_intermediate_dpo.py --publish_only   # re-publish a finished run

It runs ``lit-idpo sweep --config configs/sweeps/smollm2_arithmetic.yaml`` (six full fine-tunes on
the CPU, then generation for 200 held-out prompts per model, rule judging in both orders, and the
implicit-reward accuracy per layer), timing each invocation; an interrupted run resumes where it
stopped (finished trainings are skipped, generated responses are cached). Then it copies what is
worth committing into ``benchmarks/reproduction/``:

- ``RESULTS.md``: the table, a one-line reading of every interval, the wall time, the machine;
- ``sweep_results.json``, ``sweep_plot.png``, ``evaluation.md`` / ``evaluation.json`` (every pair,
  per-model accuracy, implicit-reward accuracy per layer);
- ``responses/``: every model's generated responses (one JSONL file per model);
- ``commands.txt``: the sweep command and each training run's exact ``lit-idpo fit`` command;
- ``timings.json``: wall time of every invocation and of every training run.

The method, the choices and the expected cost are described in ``benchmarks/REPRODUCTION.md``.

The seed study (issue 11) runs the same way from its own sweep file, which has a ``seeds`` axis; the
tables then give, per arm, the mean over training runs with its interval:

    python benchmarks/reproduce_intermediate_dpo.py --config configs/sweeps/smollm2_onpolicy_seeds.yaml \
        --dest benchmarks/seed_study
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "sweeps" / "smollm2_arithmetic.yaml"
DEFAULT_DEST = ROOT / "benchmarks" / "reproduction"


def environment() -> dict:
    import lightning
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "platform": platform.platform()}


def reading(p: dict | None, against: str) -> str:
    """What an interval says, in words (no more than it says)."""
    if p is None:
        return "n/a"
    lo, hi = 100 * p["ci_low"], 100 * p["ci_high"]
    if lo > 50:
        return f"better than {against} (interval above 50 %)"
    if hi < 50:
        return f"worse than {against} (interval below 50 %)"
    return f"no detectable difference from {against} (interval contains 50 %)"


def seed_readings(summary: dict) -> list:
    """One line per arm of a seeded sweep: the verdict of each interval over training runs and its half-width."""
    def half(c: dict | None) -> str:
        if c is None or c.get("ci_low") is None:
            return "n/a"
        return f"{100 * (c['ci_high'] - c['ci_low']) / 2:.1f} points"

    lines = []
    for r in summary["rows"]:
        parts = []
        for key, what in (("vs_dpo", "win rate vs DPO"), ("accuracy_vs_dpo", "accuracy minus DPO's"),
                          ("vs_sft", "win rate vs SFT")):
            c = r.get(key)
            if c is not None:
                parts.append(f"{what}: {c['verdict']} (mean {100 * c['mean']:.1f}, half-width {half(c)})")
        readings = "; ".join(parts) or "baseline"
        lines.append(f"- **{r['name']}** (layers {r['layers']}, gamma {r['gamma']:g}): {readings}.")
    return lines


def publish(out: Path, dest: Path, config: Path, timings: dict, title: str | None = None) -> Path:
    from lit_idpo.sweep import Sweep, format_sweep_markdown, load_spec
    from lit_idpo.sweep.report import format_seeds_markdown

    summary = json.loads((out / "sweep_results.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("sweep_results.json", "sweep_plot.png"):
        shutil.copy2(out / name, dest / name)
    shutil.copy2(out / "eval" / "results.md", dest / "evaluation.md")
    shutil.copy2(out / "eval" / "results.json", dest / "evaluation.json")
    if (out / "eval" / "responses").is_dir():  # every model's generated responses (JSONL per model)
        shutil.copytree(out / "eval" / "responses", dest / "responses", dirs_exist_ok=True)
    sweep = Sweep(load_spec(config, str(out)))
    relative = lambda text: text.replace(str(ROOT) + os.sep, "")
    commands = [f"lit-idpo sweep --config {relative(str(config))} --output_dir {relative(str(out))}", "",
                "# the training runs it makes (each repeatable by hand once the sweep, or its --dry_run, has written",
                "# the config files they read from the sweep file):"] + [relative(l) for l in sweep.plan()]
    (dest / "commands.txt").write_text("\n".join(commands) + "\n")
    (dest / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    env = environment()
    total = sum(t["seconds"] for t in timings["invocations"])
    fit_total = sum(r.get("fit_seconds") or 0 for r in summary["rows"])  # over seeds too: a seeded row sums them
    trainings = len(summary["rows"]) * (len(summary["seeds"]) if "seeds" in summary else 1)
    title = title or ("Seed study" if "seeds" in summary else "Reproduction in miniature")
    lines = [f"# {title}: results", "",
             f"Written by `benchmarks/reproduce_intermediate_dpo.py` on {time.strftime('%Y-%m-%d')}. "
             "Method and choices: "
             f"[`../REPRODUCTION.md`](../REPRODUCTION.md).", "",
             (format_seeds_markdown if "seeds" in summary else format_sweep_markdown)(summary), "",
             "## Reading the intervals", ""]
    lines += seed_readings(summary) if "seeds" in summary else []
    for r in ([] if "seeds" in summary else summary["rows"]):
        if r["name"] == "dpo":
            lines.append(f"- **dpo**: {reading(r['vs_sft'], 'SFT')}.")
        else:
            lines.append(f"- **{r['name']}** (layers {r['layers']}, K={r['k']}, gamma {r['gamma']:g}): "
                         f"{reading(r['vs_dpo'], 'DPO')}; {reading(r['vs_sft'], 'SFT')}.")
    lines += ["", "![win rates](sweep_plot.png)", "", "## Wall time", "",
              f"- Total over {len(timings['invocations'])} invocation(s): **{total / 60:.1f} min** "
              f"(training {fit_total / 60:.1f} min over {trainings} trainings; the rest is model loading, "
              f"generation, judging and the implicit-reward pass).",
              f"- Machine: {env['cpu']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads), "
              f"GPU: {env['cuda'] or 'none'}; Python {env['python']}, torch {env['torch']}, transformers "
              f"{env['transformers']}, lightning {env['lightning']}.",
              "", "Exact commands: [`commands.txt`](commands.txt). Every pair, per-model accuracy and the per-layer "
              "implicit-reward accuracy: [`evaluation.md`](evaluation.md)."]
    (dest / "RESULTS.md").write_text("\n".join(lines) + "\n")
    return dest / "RESULTS.md"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the sweep file")
    parser.add_argument("--output_dir", default=None, help="override the sweep's output_dir")
    parser.add_argument("--dest", default=str(DEFAULT_DEST), help="where the committable results go")
    parser.add_argument("--dry_run", action="store_true", help="print the exact commands; run nothing")
    parser.add_argument("--publish_only", action="store_true", help="only copy a finished run's results to --dest")
    parser.add_argument("--title", default=None, help="RESULTS.md's title (default: 'Seed study' for a seeded sweep, "
                        "else 'Reproduction in miniature')")
    args = parser.parse_args(argv)

    from lit_idpo.sweep import Sweep, load_spec, run_sweep

    config = Path(args.config).resolve()
    spec = load_spec(config, args.output_dir)
    out = spec.output_dir
    if args.dry_run:
        print(f"lit-idpo sweep --config {config} --output_dir {out}")
        print("\n".join(Sweep(spec).plan()))
        return
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {"invocations": []}
    if not args.publish_only:
        started = time.perf_counter()
        record = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": None, "finished": False}
        timings["invocations"].append(record)
        try:
            run_sweep(config, output_dir=str(out))
            record["finished"] = True
        finally:
            record["seconds"] = round(time.perf_counter() - started, 1)
            out.mkdir(parents=True, exist_ok=True)
            manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
            timings["fit_seconds"] = {k: v.get("fit_seconds") for k, v in manifest.get("settings", {}).items()}
            timings_path.write_text(json.dumps(timings, indent=2) + "\n")
    path = publish(out, Path(args.dest), config, timings, args.title)
    print(path.read_text())
    print(f"Published to {Path(args.dest)}", file=sys.stderr)


if __name__ == "__main__":
    main()
