"""A synthetic preference data set whose lengths are spread like real preference data, small enough for a CPU step.

Real DPO data is long-tailed: most prompts are short, a few are very long, and a batch's padded width is set by
its longest sequence. The bundled arithmetic pairs (about 55 tokens each, nearly equal lengths) hide that; this
set shows it. Lengths are drawn from log-normal distributions shaped like UltraFeedback's
(``HuggingFaceH4/ultrafeedback_binarized``, ``train_prefs``), then cut the way common DPO recipes cut them and
scaled down so that a step of SmolLM2-135M on a 2-core CPU stays around 10-30 s:

- prompts: median about 130 tokens, log-normal sigma 1.0 (95 % under ~680, a tail past 1000);
- completions: median about 280 tokens for the chosen and 260 for the rejected one, sigma 0.75;
- recipe cuts (TRL's and the alignment-handbook's usual ``max_prompt_length=512``, ``max_length=1024``):
  prompts longer than 512 tokens keep 512, completions are cut to ``1024 - prompt``;
- then every length is divided by ``scale`` (default 10) and rounded (at least 1 token).

The UltraFeedback medians and spreads are APPROXIMATE, ASSUMED values (commonly reported for that set with
Llama-family tokenizers), not measured here: the benchmark machines cannot download it. The chat template that
lit-idpo applies adds about 30 tokens to every prompt on top of these lengths.

Text is random common English words (about one token each with SmolLM2's tokenizer), so the token counts
follow the drawn lengths closely; content does not change the cost of a step. Everything is deterministic in
``seed``.

    python benchmarks/longtail_pairs.py --out /tmp/longtail.jsonl --pairs 32   # writes rows, prints length stats
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path
from typing import Dict, List

# Approximate UltraFeedback length distribution (tokens), see the module docstring.
PROMPT_MEDIAN, PROMPT_SIGMA = 130, 1.0
CHOSEN_MEDIAN, REJECTED_MEDIAN, COMPLETION_SIGMA = 280, 260, 0.75
MAX_PROMPT_LENGTH, MAX_LENGTH = 512, 1024
DEFAULT_SCALE = 10

WORDS = """the of and to in is that for it as was with be by on not he this are or his from at which but have an
they you were her she there one all we their been has when who will more no if out so said what up its about into
than them can only other new some time could these two may then do first any my now such like our over man me even
most made after also did many before must through back years where much your way well down should because each
just those people how too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against go came right
used take three house water small found thought went say part once general high upon school every group number
country open point form end order fact place seem given hand hold light keep feel change city name play far set
answer number river garden window table music story paper family friend morning evening simple careful quiet
""".split()


def _lognormal_length(rng: random.Random, median: float, sigma: float) -> int:
    return max(1, round(rng.lognormvariate(math.log(median), sigma)))


def pair_lengths(num_pairs: int, *, seed: int = 0, scale: float = DEFAULT_SCALE) -> List[Dict[str, int]]:
    """Token lengths ``{"prompt", "chosen", "rejected"}`` of ``num_pairs`` pairs: drawn, cut as a recipe would,
    then divided by ``scale`` (see the module docstring). Deterministic in ``seed``."""
    rng = random.Random(seed)
    lengths = []
    for _ in range(num_pairs):
        prompt = min(_lognormal_length(rng, PROMPT_MEDIAN, PROMPT_SIGMA), MAX_PROMPT_LENGTH)
        room = MAX_LENGTH - prompt
        chosen = min(_lognormal_length(rng, CHOSEN_MEDIAN, COMPLETION_SIGMA), room)
        rejected = min(_lognormal_length(rng, REJECTED_MEDIAN, COMPLETION_SIGMA), room)
        lengths.append({name: max(1, round(value / scale))
                        for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected))})
    return lengths


def _text(rng: random.Random, words: int, end: str) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + end


def longtail_rows(num_pairs: int, *, seed: int = 0, scale: float = DEFAULT_SCALE) -> List[Dict[str, str]]:
    """``num_pairs`` rows in lit-idpo's (and TRL's) ``standard`` format: string ``prompt``, ``chosen``,
    ``rejected``, with about :func:`pair_lengths` tokens each. Deterministic in ``seed``."""
    rng = random.Random(seed + 1)  # text stream apart from the length stream
    return [{"prompt": _text(rng, n["prompt"], "?"), "chosen": _text(rng, n["chosen"], "."),
             "rejected": _text(rng, n["rejected"], ".")}
            for n in pair_lengths(num_pairs, seed=seed, scale=scale)]


def write_jsonl(path: Path, num_pairs: int, *, seed: int = 0, scale: float = DEFAULT_SCALE) -> Path:
    """Write :func:`longtail_rows` to ``path`` as JSON lines (a benchmark input, rewritten on every call)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in longtail_rows(num_pairs, seed=seed, scale=scale)))
    return path


def _quantiles(values: List[int]) -> str:
    ordered = sorted(values)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.1, 0.5, 0.9)]
    return f"p10 {pick[0]}, median {statistics.median(ordered):g}, p90 {pick[2]}, max {ordered[-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE)
    args = parser.parse_args()
    write_jsonl(args.out, args.pairs, seed=args.seed, scale=args.scale)
    lengths = pair_lengths(args.pairs, seed=args.seed, scale=args.scale)
    print(f"wrote {args.pairs} pairs to {args.out} (drawn lengths, before the chat template)")
    for name in ("prompt", "chosen", "rejected"):
        print(f"  {name:8s} {_quantiles([n[name] for n in lengths])}")


if __name__ == "__main__":
    main()
