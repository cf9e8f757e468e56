"""Re-score every published response set under both answer readings: the sensitivity table of issue 19.

What: scores each response the studies published (``benchmarks/{seed_study, seed_study_l21, reproduction,
reproduction_seed1, confirmation}/responses/*.jsonl``) under both readings of the rule judge
(:mod:`lit_idpo.data.tasks.arithmetic_reading`): ``asked_expression`` (truncated = stopped at ``max_new_tokens``)
and ``last_equation`` (the one the studies before issue 19 used; the confirmation used ``asked_expression``).
Per study and arm: accuracy, win rate against the same seed's DPO and against SFT, accuracy minus DPO's,
each with its 95 % interval and verdict; the same with the prompts
where either model of the pair was cut left out; the truncated share, mean new tokens, reading disagreements.

Why: the old reading misread run-on and cut answers, and DPO runs on more than layer 21 does (issue 19);
this measures how much of each published claim depends on the reading. No model is loaded.

How: ``python benchmarks/rescore_published.py`` (seconds) writes ``benchmarks/rescoring/RESULTS.md`` and
``rescoring.json``. The statistics are the project's (:mod:`lit_idpo.evaluation.statistics`) as ``lit-idpo
sweep`` applied them: per prompt the rule judge scores 1 / 1/2 / 0 (only A right / tie / only B right; both
orders agree), so a win rate is 50 + (accuracy difference) / 2; Student-t over seeds with several seeds, t over
prompts (Wilson for accuracy) for one run. The reading each study used must reproduce its ``sweep_results.json``
and ``evaluation.json`` exactly; the report says whether it does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lit_idpo.data.tasks.arithmetic_reading import EXTRACTIONS, parse_question, score_response
from lit_idpo.evaluation.audit import TRUNCATION_WARN_SHARE
from lit_idpo.evaluation.options import slug
from lit_idpo.evaluation.statistics import compare_over_seeds, mean_interval, over_seeds, score_summary, verdict
from lit_idpo.sweep.seeds import eval_name, run_key
from lit_idpo.sweep.spec import DPO, SFT

BENCH = Path(__file__).resolve().parent
TEST_SET = BENCH.parent / "lit_idpo" / "data" / "arithmetic_test.jsonl"
NEW, OLD = EXTRACTIONS  # asked_expression (issue 19), last_equation (what the studies used)
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    dirs: Tuple[str, ...]  # folders under benchmarks/ whose responses/ hold the runs (first match wins)
    arms: Tuple[str, ...]  # DPO first
    seeds: Tuple[Optional[int], ...]  # (None,): one training run per arm, files named <arm>.jsonl
    published: str  # the folder whose sweep_results.json / evaluation.json its own reading must reproduce
    reading: str = OLD  # the reading the study's published numbers used


STUDIES = (
    Study("seed_study", "Seed study, 5 seeds (48 new tokens)", ("seed_study",),
          (DPO, "L21", "L14+21", "L10", "L10+exit0.5"), (0, 1, 2, 3, 4), "seed_study"),
    Study("seed_study_6", "Seed study, layer 21 vs DPO, 6 seeds (48 new tokens)", ("seed_study", "seed_study_l21"),
          (DPO, "L21"), (0, 1, 2, 3, 4, 5), "seed_study_l21"),
    Study("reproduction", "Reproduction, data order 0, one run per arm (64 new tokens)", ("reproduction",),
          (DPO, "L5", "L21", "L27", "L14+21", "L7+14+21"), (None,), "reproduction"),
    Study("reproduction_seed1", "Reproduction, data order 1, one run per arm (64 new tokens)", ("reproduction_seed1",),
          (DPO, "L21", "L27", "L14+21"), (None,), "reproduction_seed1"),
    Study("confirmation", "Confirmation (pre-registered), layer 21 vs DPO, seeds 100-109 (128 new tokens)",
          ("confirmation",), (DPO, "L21"), tuple(range(100, 110)), "confirmation", reading=NEW),
)


def true_answer(prompt: str, test_answers: Dict[str, int]) -> int:
    """The answer computed from the prompt, checked against the test set's ``answer`` field."""
    a, op, b = parse_question(prompt)
    answer = OPS[op](a, b)
    if test_answers.get(prompt, answer) != answer:
        raise ValueError(f"{prompt!r}: the test set says {test_answers[prompt]}, the prompt {answer}")
    return answer


def score_run(rows: Sequence[Dict[str, Any]], test_answers: Dict[str, int]) -> Dict[str, Any]:
    """One model's responses scored under both readings: per-prompt 0/1 per reading, truncation, lengths."""
    truncated = [r["stopped"] == "length" for r in rows]
    answers = [true_answer(r["prompt"], test_answers) for r in rows]
    return {"truncated": truncated, "new_tokens": [r["new_tokens"] for r in rows],
            "correct": {ext: [float(score_response(r["response"], ans, prompt=r["prompt"], truncated=cut,
                                                   extraction=ext)) for r, ans, cut in zip(rows, answers, truncated)]
                        for ext in EXTRACTIONS}}


def win_scores(a: Dict[str, Any], b: Dict[str, Any], ext: str, drop_truncated: bool = False) -> List[float]:
    """Per-prompt win score of ``a`` against ``b`` under a correctness judge: 1 only a right, 1/2 tie, 0 only b
    right (identical responses, ties unjudged in ``lit-idpo evaluate``, score alike here); with ``drop_truncated``
    the prompts where either response stopped at the length limit are left out."""
    return [0.5 + (ca - cb) / 2 for ca, cb, ta, tb in zip(a["correct"][ext], b["correct"][ext], a["truncated"],
                                                          b["truncated"]) if not (drop_truncated and (ta or tb))]


def compare(per_seed: Sequence[Sequence[float]], *, null: float, versus: str,
            bounds: Tuple[float, float]) -> Dict[str, Any]:
    """Mean, 95 % interval and verdict: over seeds with several seeds, over prompts for one training run."""
    if len(per_seed) >= 2:
        out = compare_over_seeds(per_seed, null=null, versus=versus, bounds=bounds)
    else:
        # One run: the per-prompt t-interval the single-run reports used (on win scores in [0, 1]); a difference
        # in [-1, 1] is 2 * win score - 1 per prompt, so its interval is the win score's mapped the same way.
        scores, lo = list(per_seed[0]), bounds[0]
        unit = [(v - lo) / (bounds[1] - lo) for v in scores]
        ci = mean_interval(unit)
        out = {"mean": statistics.fmean(scores), "ci_low": lo + ci.low * (bounds[1] - lo),
               "ci_high": lo + ci.high * (bounds[1] - lo), "ci_method": f"{ci.method} over prompts (one run)",
               "seeds": 1, "per_seed": [statistics.fmean(scores)], "prompts": [len(scores)]}
        out["verdict"] = verdict(out["ci_low"], out["ci_high"], null, versus)
    out["half_width"] = (out["ci_high"] - out["ci_low"]) / 2
    return out


def accuracy(runs: Sequence[Dict[str, Any]], ext: str) -> Dict[str, Any]:
    """Mean accuracy over seeds with the t-interval over seeds (Wilson over prompts for one run), as published."""
    if len(runs) == 1:
        return score_summary(runs[0]["correct"][ext])
    return over_seeds([statistics.fmean(r["correct"][ext]) for r in runs])


def arm_rows(study: Study, runs: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Per arm (SFT first): the audit and, per reading, accuracy, comparisons with DPO and SFT, and the row
    with truncated pairs left out."""
    rows = []
    for arm in (SFT,) + study.arms:
        mine, dpo, sft = runs[arm], runs[DPO], runs[SFT] * len(study.seeds)
        cut = [t for r in mine for t in r["truncated"]]
        both = [(r["correct"][NEW][i], r["correct"][OLD][i]) for r in mine for i in range(len(r["truncated"]))]
        row = {"arm": arm, "seeds": len(mine), "responses": len(cut), "truncated": sum(cut),
               "truncated_share": sum(cut) / len(cut),
               "mean_new_tokens": statistics.fmean(t for r in mine for t in r["new_tokens"]),
               "readings_disagree": sum(n != o for n, o in both),
               "right_only_under": {NEW: sum(n > o for n, o in both), OLD: sum(o > n for n, o in both)},
               "readings": {}}
        for ext in EXTRACTIONS:
            cell: Dict[str, Any] = {"accuracy": accuracy(mine, ext)}
            comparisons = [] if arm == SFT else [("sft", sft, False)] + ([] if arm == DPO else [
                ("dpo", dpo, False), ("dpo_no_truncated", dpo, True)])
            for name, other, drop in comparisons:
                per_seed = [win_scores(a, b, ext, drop) for a, b in zip(mine, other)]
                cell[f"vs_{name}"] = compare(per_seed, null=0.5, versus=name[:3].upper(), bounds=(0.0, 1.0))
                if name.startswith("dpo"):  # per prompt, accuracy difference = 2 * win score - 1
                    cell[f"accuracy_vs_{name}"] = compare([[2 * s - 1 for s in v] for v in per_seed], null=0.0,
                                                          versus="DPO", bounds=(-1.0, 1.0))
            row["readings"][ext] = cell
        rows.append(row)
    return rows


def load_runs(study: Study, test_answers: Dict[str, int]) -> Dict[str, List[Dict[str, Any]]]:
    """Every arm's scored runs, one per seed in seed order, and SFT's one run (it is not trained)."""
    def find(name: str) -> Path:
        paths = [BENCH / d / "responses" / f"{slug(name)}.jsonl" for d in study.dirs]
        return next(p for p in paths if p.exists())

    def read(name: str) -> Dict[str, Any]:
        rows = [json.loads(line) for line in find(name).read_text().splitlines()]
        assert [r["prompt_index"] for r in rows] == list(range(len(rows))), name
        return {"name": name, **score_run(rows, test_answers)}

    runs = {arm: [read(eval_name(run_key(arm, seed))) for seed in study.seeds] for arm in study.arms}
    runs[SFT] = [read(SFT)]
    return runs


def check_published(study: Study, runs: Dict[str, List[Dict[str, Any]]],
                    rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Compare the numbers under the study's own reading with its published ``sweep_results.json`` (means,
    intervals, per-seed values, bootstraps) and the responses' truncation counts with its ``evaluation.json``."""
    published = json.loads((BENCH / study.published / "sweep_results.json").read_text())
    evaluation = json.loads((BENCH / study.published / "evaluation.json").read_text())
    ours = {r["arm"]: r["readings"][study.reading] for r in rows}
    pairs: List[Tuple[str, Any, Any]] = [("sft accuracy", ours[SFT]["accuracy"]["mean"],
                                          published["sft_score"]["mean"])]
    for prow in published["rows"]:
        mine = ours[prow["name"]]
        for key, ours_key in (("score", "accuracy"), ("vs_dpo", "vs_dpo"), ("vs_sft", "vs_sft"),
                              ("accuracy_vs_dpo", "accuracy_vs_dpo")):
            if prow.get(key) is None:
                continue
            mean_key = "win_rate" if "win_rate" in prow[key] else "mean"
            for field in (mean_key, "ci_low", "ci_high", "per_seed", "bootstrap_low", "bootstrap_high"):
                if field in prow[key]:
                    mine_value = mine[ours_key]["mean" if field == mean_key else field]
                    pairs.append((f"{prow['name']} {key} {field}", mine_value, prow[key][field]))
    models = {m["name"]: m["generation"] for m in evaluation["models"]}
    for arm_runs in runs.values():
        for run in arm_runs:
            if run["name"] in models:
                pairs.append((f"{run['name']} truncated", sum(run["truncated"]),
                              models[run["name"]]["stopped_at_max_new_tokens"]))
                pairs.append((f"{run['name']} mean new tokens", round(statistics.fmean(run["new_tokens"]), 3),
                              models[run["name"]]["mean_new_tokens"]))

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, list):
            return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y))
        return abs(x - y) <= 1e-9

    return {"checked": len(pairs), "against": f"benchmarks/{study.published}/sweep_results.json, evaluation.json",
            "mismatches": [{"what": w, "ours": x, "published": y} for w, x, y in pairs if not same(x, y)]}


def pct(c: Optional[Dict[str, Any]], signed: bool = False, tag: bool = False) -> str:
    """``mean [low, high]`` in percent (points when ``signed``); with ``tag`` the verdict and half-width."""
    if c is None:
        return "-"
    f = (lambda x: f"{100 * x:+.1f}") if signed else (lambda x: f"{100 * x:.1f}")
    text = f"{f(c['mean'])}" + ("" if c.get("ci_low") is None else f" [{f(c['ci_low'])}, {f(c['ci_high'])}]")
    return text + (f"; {c['verdict']} (half-width {100 * c['half_width']:.1f})" if tag else "")


def study_markdown(study: Study, result: Dict[str, Any]) -> List[str]:
    """One study's section: the audit table per arm, then the sensitivity table (rows per reading)."""
    seeds = "one training run per arm: intervals over prompts" if study.seeds == (None,) else \
        f"seeds {list(study.seeds)}: intervals over training runs"
    folders = "`, `".join(f"benchmarks/{d}/responses/" for d in study.dirs)
    lines = [f"## {study.title}", "", f"From `{folders}`; {seeds}.", "",
             "| arm | responses | truncated (%) | mean new tokens | readings disagree | right only under "
             "asked_expression | right only under last_equation |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["arms"]:
        lines.append(f"| {r['arm']} | {r['responses']} | {100 * r['truncated_share']:.1f} | "
                     f"{r['mean_new_tokens']:.1f} | {r['readings_disagree']} | {r['right_only_under'][NEW]} | "
                     f"{r['right_only_under'][OLD]} |")
    lines += ["", "| arm | reading | prompts (mean per seed) | accuracy (%) | win rate vs DPO (%); verdict | "
              "accuracy minus DPO's (points); verdict | win rate vs SFT (%) |", "|---|---|---:|---|---|---|---|"]
    for r in result["arms"]:
        for ext in EXTRACTIONS:
            c = r["readings"][ext]
            lines.append(f"| {r['arm']} | {ext} | {r['responses'] // r['seeds']} | {pct(c['accuracy'])} | "
                         f"{pct(c.get('vs_dpo'), tag=True)} | {pct(c.get('accuracy_vs_dpo'), signed=True, tag=True)} | "
                         f"{pct(c.get('vs_sft'))} |")
        for ext in EXTRACTIONS:
            c = r["readings"][ext]
            if "vs_dpo_no_truncated" in c:
                kept = c["vs_dpo_no_truncated"]["prompts"]
                lines.append(f"| {r['arm']} | {ext}, truncated pairs left out | {statistics.fmean(kept):.1f} | - | "
                             f"{pct(c['vs_dpo_no_truncated'], tag=True)} | "
                             f"{pct(c['accuracy_vs_dpo_no_truncated'], signed=True, tag=True)} | - |")
    over = [f"{r['arm']} ({100 * r['truncated_share']:.1f} %)" for r in result["arms"]
            if r["truncated_share"] > TRUNCATION_WARN_SHARE]
    if over:
        lines += ["", f"More than {100 * TRUNCATION_WARN_SHARE:g} % of responses stopped at the length limit for "
                      f"{', '.join(over)}: the rows with truncated pairs left out are the sensitivity analysis."]
    check = result["published_check"]
    status = "reproduced exactly" if not check["mismatches"] else f"{len(check['mismatches'])} MISMATCHES (see json)"
    lines += ["", f"`{study.reading}` (the reading the study published) against its published numbers "
                  f"({check['against']}): {check['checked']} values compared, {status}.", ""]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BENCH / "rescoring")
    args = parser.parse_args(argv)
    test_answers = {r["prompt"]: int(r["answer"]) for r in map(json.loads, TEST_SET.read_text().splitlines())}
    results = {}
    for study in STUDIES:
        runs = load_runs(study, test_answers)
        arms = arm_rows(study, runs)
        results[study.key] = {"title": study.title, "dirs": [f"benchmarks/{d}" for d in study.dirs],
                              "seeds": list(study.seeds), "arms": arms,
                              "published_check": check_published(study, runs, arms)}
    reader = BENCH.parent / "lit_idpo" / "data" / "tasks" / "arithmetic_reading.py"
    out = {"reader": {"module": "lit_idpo/data/tasks/arithmetic_reading.py",
                      "sha256": hashlib.sha256(reader.read_bytes()).hexdigest()},
           "readings": {NEW: "issue 19: the result stated for the asked expression (truncated = stopped at the limit)",
                        OLD: "before issue 19: the first number after the last '=', else the last number"},
           "win_score": "per prompt 1 / 0.5 / 0 (only A right / tie / only B right), both orders agree",
           "studies": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rescoring.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / "RESULTS.md").write_text(render(results, out["reader"]["sha256"]))
    return out


def render(results: Dict[str, Any], reader_sha: str) -> str:
    lines = ["# Published responses re-scored under both answer readings (issue 19)", "",
             "Written by `python benchmarks/rescore_published.py` (no model; seconds). Each published response is "
             f"scored by the rule judge under `{NEW}` (the result the response states for the asked expression; "
             f"a response cut at `max_new_tokens` has its number touching the end ignored) and under `{OLD}` (the "
             "first number after the last `=`, else the last number: the reading every earlier table used). "
             "Win rates: per prompt 1 / 1/2 / 0 (only this arm right / both right or both wrong / only the other "
             "right), so a win rate is 50 + (accuracy difference) / 2. Intervals are 95 %: Student-t over the "
             "seeds' values where there are several seeds (the verdict reads it: \"better\" only if the lower bound "
             "is above 50 % (0 points), \"worse\" only if the upper is below, else \"no detectable difference\"), "
             "t over prompts for a single training run (says nothing about training noise), Wilson over prompts "
             "for a single run's accuracy. \"Truncated pairs left out\": the prompts where this arm's or DPO's "
             "response stopped at the length limit are dropped, seed by seed. \"Readings disagree\": responses "
             "the two readings score differently (summed over seeds). Every number, with per-seed values and "
             "the two-level bootstrap: [`rescoring.json`](rescoring.json). Reader: "
             f"`lit_idpo/data/tasks/arithmetic_reading.py` with sha256 `{reader_sha[:16]}`; rerun the script "
             "whenever it changes.", ""]
    checks = [(r["title"], r["published_check"]) for r in results.values()]
    if all(not c["mismatches"] for _, c in checks):
        lines += ["**Check:** under the reading each study used (`last_equation` for the four earlier studies, "
                  f"`{NEW}` for the confirmation) every published number is reproduced exactly (to 1e-9: means, "
                  "intervals, per-seed values, bootstrap bounds, truncation counts and mean new tokens; "
                  f"{sum(c['checked'] for _, c in checks)} values over the {len(checks)} studies).", ""]
    else:
        lines += ["**Check FAILED** for: " + "; ".join(t for t, c in checks if c["mismatches"]), ""]
    lines += headline(results)
    for study in STUDIES:
        lines += study_markdown(study, results[study.key])
    lines += ["The 256-token re-evaluations of the reproduction (`eval_256/`, `across_seeds/`) published no responses "
              "(their generations live in an uncommitted cache), so they cannot be re-scored here.", ""]
    return "\n".join(lines)


def headline(results: Dict[str, Any]) -> List[str]:
    """The seed study's comparisons with DPO (layer 21 over 6 seeds, the other arms over 5), every reading."""
    lines = ["## Headline: the seed study against the same seed's DPO", "",
             "| arm | seeds | reading | prompts (mean per seed) | DPO's accuracy (%) | arm's accuracy (%) | "
             "win rate vs DPO (%); verdict | accuracy minus DPO's (points); verdict |",
             "|---|---:|---|---:|---|---|---|---|"]
    for key, arms in (("seed_study_6", ("L21",)), ("seed_study", ("L21", "L14+21", "L10", "L10+exit0.5"))):
        rows = {r["arm"]: r for r in results[key]["arms"]}
        for arm in arms:
            for suffix, label, kept in (("", "", None), ("_no_truncated", ", truncated pairs left out", True)):
                for ext in EXTRACTIONS:
                    c, d = rows[arm]["readings"][ext], rows[DPO]["readings"][ext]
                    n = statistics.fmean(c[f"vs_dpo{suffix}"]["prompts"])
                    lines.append(f"| {arm} | {len(results[key]['seeds'])} | {ext}{label} | {n:.1f} | "
                                 f"{'-' if kept else pct(d['accuracy'])} | {'-' if kept else pct(c['accuracy'])} | "
                                 f"{pct(c[f'vs_dpo{suffix}'], tag=True)} | "
                                 f"{pct(c[f'accuracy_vs_dpo{suffix}'], signed=True, tag=True)} |")
    return lines + [""]


if __name__ == "__main__":
    main()
