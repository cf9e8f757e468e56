"""The seed axis of ``lit-idpo sweep``: run keys of arm-seeds and the summary over training runs.

With ``seeds`` in a sweep file every arm (setting or baseline) is trained once per seed; the runs are
``runs/<arm>/seed<k>/`` (key ``<arm>/seed<k>``, model ``<arm>@seed<k>`` in the evaluation). The summary
gives, per arm and comparison, the mean over seeds, a Student-t interval over the seeds' values (the
interval over training runs), a two-level bootstrap (seeds, then prompts) as a cross-check, the per-seed
values and a verdict in words (:mod:`lit_idpo.evaluation.statistics`). The comparisons with DPO are paired by
seed: the win rate against the same seed's DPO, and the differences to it of answer accuracy
(``accuracy_vs_dpo``) and of implicit-reward accuracy per layer (``implicit_vs_dpo``, from the evaluation's
per-pair correctness), each over the same prompts or pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from lit_idpo.evaluation.statistics import BOOTSTRAP_RESAMPLES, compare_over_seeds, over_seeds
from lit_idpo.layers import resolve_layers
from lit_idpo.sweep.spec import DPO, SFT


def run_key(arm: str, seed: Optional[int]) -> str:
    """A training run's key in the manifest and its folder under ``runs/``: the arm, or ``<arm>/seed<k>``."""
    return arm if seed is None else f"{arm}/seed{seed}"


def eval_name(key: str) -> str:
    """The model name of a training run in the evaluation: its key, ``<arm>@seed<k>`` for a seeded run."""
    return key.replace("/seed", "@seed")


def prompt_scores(eval_dir: Path) -> Dict[tuple, List[float]]:
    """Per-prompt win scores of every judged pair (first's side: both orders averaged, ties 1/2), from the
    evaluation's ``judgments.jsonl``; prompts without a verdict are left out, as in the pair's win rate."""
    per_pair: Dict[tuple, Dict[int, List[float]]] = {}
    for line in (eval_dir / "judgments.jsonl").read_text().splitlines():
        record = json.loads(line)
        first, second = record["pair"]
        by_prompt = per_pair.setdefault((first, second), {})
        if record["winner"] is None:
            by_prompt.setdefault(record["prompt_index"], [])
            continue
        score = 0.5 if record["winner"] == "tie" else float(record["winner_model"] == first)
        by_prompt.setdefault(record["prompt_index"], []).append(score)
    return {pair: [sum(v) / len(v) for _, v in sorted(prompts.items()) if v]
            for pair, prompts in per_pair.items()}

def answer_scores(eval_dir: Path, results: Mapping[str, Any]) -> Optional[Dict[str, List[float]]]:
    """Per-prompt scores of every model (answer accuracy for the rule judge), in prompt order; None when the
    judge gives no per-response score."""
    from lit_idpo.evaluation.options import slug

    if any(m.get("score") is None for m in results["models"]):
        return None
    out = {}
    for m in results["models"]:
        path = eval_dir / "responses" / f"{slug(m['name'])}.jsonl"
        out[m["name"]] = [json.loads(line)["score"] for line in path.read_text().splitlines()]
    return out

def implicit_vs_dpo(implicit: Mapping[str, Any], names: List[str], dpo: List[str],
                    confidence: float) -> Optional[List[Dict[str, Any]]]:
    """Per layer, an arm's implicit-reward accuracy minus the same seed's DPO's, over seeds.

    ``names[k]`` and ``dpo[k]`` are seed k's models in the evaluation's ``implicit_reward``. Each seed's value is
    the mean over held-out pairs of the paired difference of 0/1 correctness (-1, 0 or 1 per pair), so it is
    that seed's accuracy difference; :func:`compare_over_seeds` gives the mean over seeds, the Student-t interval
    over training runs, the two-level bootstrap (seeds, then pairs) and the verdict. None when a model is missing
    or the evaluation recorded no per-pair correctness.
    """
    from lit_idpo.evaluation.implicit import pair_correctness  # torch-free, but its module loads torch

    models = implicit.get("models", {})
    if not implicit.get("layers") or any(n not in models for n in names + dpo):
        return None
    correct = {n: pair_correctness(models[n]) for n in names + dpo}
    if any(c is None for c in correct.values()):
        return None
    out = []
    for i, layer in enumerate(implicit["layers"]):
        differences = [[a - b for a, b in zip(correct[n][i], correct[d][i])] for n, d in zip(names, dpo)]
        out.append({"layer": layer, **compare_over_seeds(differences, null=0.0, versus="DPO", bounds=(-1.0, 1.0),
                                                         confidence=confidence)})
    return out


def summarize_seeds(sweep, results: Mapping[str, Any]) -> Dict[str, Any]:
    """One row per arm with, per comparison, the mean over seeds, the interval over training runs (Student-t
    over the seeds' values), the two-level bootstrap, ``per_seed`` and a verdict."""
    L, seeds, confidence = sweep.num_layers(), sweep.spec.seeds, results["confidence"]
    pair_scores = prompt_scores(sweep.out / "eval")
    answers = answer_scores(sweep.out / "eval", results)
    implicit = results.get("implicit_reward") or {}
    implicit_layers = implicit.get("layers", [])
    rows = []
    for arm, setting in sweep.arms.items():
        names = [eval_name(run_key(arm, seed)) for seed in seeds]
        dpo = [eval_name(run_key(DPO, seed)) for seed in seeds]
        layers = resolve_layers(setting.layers, L)
        fit = [sweep.manifest["settings"].get(run_key(arm, seed), {}).get("fit_seconds") for seed in seeds]
        row: Dict[str, Any] = {
            "name": arm, "layers": layers, "k": len(layers),
            "gamma": setting.gamma if setting.gamma is not None else float(sweep.base.model.gamma),
            "relative_position": [round(layer / L, 4) for layer in layers], "seeds": seeds, "runs": names,
            "fit_seconds": None if None in fit else round(sum(fit), 1)}
        for baseline, others in ((DPO, dpo), (SFT, [SFT] * len(seeds))):
            per_seed = [pair_scores.get((name, other)) for name, other in zip(names, others)]
            row[f"vs_{baseline}"] = None if arm == baseline or None in per_seed else compare_over_seeds(
                per_seed, null=0.5, versus=baseline.upper(), bounds=(0.0, 1.0), confidence=confidence)
        row["score"] = row["accuracy_vs_dpo"] = None
        if answers is not None:
            row["score"] = over_seeds([sum(answers[n]) / len(answers[n]) for n in names], confidence)
            if arm != DPO and DPO in sweep.arms:
                differences = [[a - b for a, b in zip(answers[n], answers[d])] for n, d in zip(names, dpo)]
                # Scores in [0, 1] (right/wrong answers) differ by at most 1; a reward model's are unbounded.
                bounded = all(0.0 <= v <= 1.0 for n in names + dpo for v in answers[n])
                row["accuracy_vs_dpo"] = compare_over_seeds(differences, null=0.0, versus="DPO",
                                                            bounds=(-1.0, 1.0) if bounded else None,
                                                            confidence=confidence)
        models = implicit.get("models", {})
        row["implicit"] = None if not implicit_layers or any(n not in models for n in names) else [
            {"layer": layer, **over_seeds([models[n]["accuracy"][i] for n in names], confidence, (0.0, 1.0))}
            for i, layer in enumerate(implicit_layers)]
        row["implicit_vs_dpo"] = None if arm == DPO else implicit_vs_dpo(implicit, names, dpo, confidence)
        at = {entry["layer"]: entry["mean"] for entry in row["implicit"] or []}
        row["implicit_final"] = at.get(L)
        row["implicit_trained_layers"] = [at.get(layer) for layer in layers]
        rows.append(row)
    scores = {m["name"]: m.get("score") for m in results["models"]}
    return {"num_layers": L, "base_model": sweep.base_model, "judge": results["judge"], "seeds": seeds,
            "prompts": results["prompts"], "generation": results["generation"], "confidence": confidence,
            "ci_method": f"Student-t over the {len(seeds)} seeds' values (each the mean over prompts); "
                         f"two-level bootstrap (seeds, then prompts; {BOOTSTRAP_RESAMPLES} resamples, seed 0) "
                         f"as a cross-check",
            "sft_score": scores.get(SFT), "rows": rows, "implicit_layers": implicit_layers or None,
            "evaluation": str(sweep.out / "eval" / "results.md")}
