"""What the on-policy data builders share (``scripts/make_onpolicy_data.py``, ``scripts/make_instructions_data.py``).

:func:`sample_responses` samples a model's responses to task rows in fixed, seeded batches, cached per batch
(resumable); :func:`pick_pair` is the pairing rule; :func:`describe_outcomes` puts a split's pair counts in
words; :func:`write_or_check` writes the shipped files or compares them with a fresh build. Importing this module
loads no torch.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

from lit_idpo.storage import JsonlCache, atomic_write_text

#: ``labeller(row, response, complete)``: the task's label fields for one sampled response.
Labeller = Callable[[Mapping[str, Any], str, bool], Dict[str, Any]]


def sample_responses(rows_by_split: Mapping[str, Sequence[Mapping[str, Any]]], *, model_source: str,
                     settings: Mapping[str, Any], samples: int, batch_prompts: int, seed: int, threads: int,
                     cache_path: Path, labeller: Labeller, first: Sequence[str] = ()) -> List[dict]:
    """Every row's ``samples`` sampled responses, in split, row and sample order; cached per batch in ``cache_path``.

    A batch is ``batch_prompts`` rows (in order) times ``samples`` responses, rendered with the chat template as
    training renders a prompt, left-padded, and sampled with ``model.generate(do_sample=True, **settings)`` under
    one seed per batch (``seed``, the split's position and the batch's first row): a resumed or partial run
    samples the same text. A response ends at the end-of-turn token (``complete``) or at the limit. Each record:
    ``split``, ``prompt_id`` (the row's id), ``sample``, ``response``, ``complete``, ``tokens`` (new tokens kept,
    the end-of-turn included) and ``labeller``'s fields. ``threads`` torch threads (fixed for determinism). A cache
    whose batch holds other rows than asked is refused (SystemExit naming the file). The splits named in
    ``first`` are sampled before the others (an interrupted run then has them whole); the records and every
    batch's seed are the same whatever the order.
    """
    import torch

    from lit_idpo.data.tokenize import render_prompt_ids
    from lit_idpo.models import load_model, load_tokenizer

    torch.set_num_threads(threads)
    cache = JsonlCache(cache_path)
    done = cache.load()
    tokenizer, model = None, None
    out: List[dict] = []
    start = time.time()
    positions = {split: index for index, split in enumerate(rows_by_split)}
    for split in sorted(rows_by_split, key=lambda name: (name not in first, positions[name])):
        rows, split_index = rows_by_split[split], positions[split]
        for b in range(0, len(rows), batch_prompts):
            key = f"{split}:{b}"
            batch = rows[b: b + batch_prompts]
            cached = [r["prompt_id"] for r in done[key]["records"][::samples]] if key in done else None
            if cached is not None and cached != [r["id"] for r in batch]:
                raise SystemExit(f"{cache.path}: batch {key} holds other prompts than asked now; use another "
                                 f"work directory (or delete the file) to sample afresh")
            if key not in done:
                if model is None:
                    tokenizer, model = load_tokenizer(model_source), load_model(model_source).eval()
                prompts = [render_prompt_ids(tokenizer, row["prompt"]) for row in batch for _ in range(samples)]
                width = max(map(len, prompts))
                pad = tokenizer.pad_token_id
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
                # One seed per batch (split and batch index): a resumed or partial run samples the same text.
                torch.manual_seed(seed * 1_000_003 + split_index * 10_007 + b)
                t0 = time.time()
                with torch.inference_mode():
                    generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                               pad_token_id=pad, **settings)[:, width:]
                records = []
                eos = tokenizer.eos_token_id
                for i, tokens in enumerate(generated.tolist()):
                    row = batch[i // samples]
                    complete = eos in tokens
                    kept = tokens[: tokens.index(eos) + 1] if complete else tokens
                    response = tokenizer.decode(kept, skip_special_tokens=True).strip()
                    records.append({"split": split, "prompt_id": row["id"], "sample": i % samples,
                                    "response": response, "complete": complete, "tokens": len(kept),
                                    **labeller(row, response, complete)})
                entry = {"records": records, "seconds": round(time.time() - t0, 1)}
                cache.append([(key, entry)])
                done[key] = entry
                print(f"{split}: {min(b + batch_prompts, len(rows))}/{len(rows)} prompts sampled, "
                      f"{time.time() - start:.0f} s", flush=True)
    for split, rows in rows_by_split.items():
        for b in range(0, len(rows), batch_prompts):
            out.extend(done[f"{split}:{b}"]["records"])
    return out


def sampling_seconds(cache_path: Path, rows_by_split: Mapping[str, Sequence[Any]], batch_prompts: int) -> float:
    """The sampling time the cache recorded for these rows' batches (0 for batches cached without a time)."""
    done = JsonlCache(cache_path).load()
    keys = [f"{split}:{b}" for split, rows in rows_by_split.items() for b in range(0, len(rows), batch_prompts)]
    return round(sum(done.get(key, {}).get("seconds", 0.0) for key in keys), 1)


def pick(rng: random.Random, samples: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """One of ``samples`` (in their order), drawn by ``rng``: how a pairing rule picks its chosen and rejected."""
    return samples[rng.randrange(len(samples))]


def pick_pair(prompt_id: str, samples: Sequence[Mapping[str, Any]], seed: int, good: str) -> Tuple[Any, str]:
    """The pairing rule of the on-policy tasks: ``((chosen, rejected, goods, bads), "pair")`` or ``(None, reason)``.

    Only complete responses count (``complete``: not cut at the token limit); ``good`` names the label that
    makes one a candidate for chosen (``correct``, ``passed``), the others are candidates for rejected. Reasons:
    ``too_few_complete`` (fewer than two complete), ``no_good``, ``no_bad``. The chosen one is drawn at random
    from the good ones and the rejected one from the others (in sample order), with a generator seeded by
    ``seed`` and the prompt's id: the pick depends neither on the order of ``samples`` nor on other prompts.
    """
    complete = sorted((s for s in samples if s["complete"]), key=lambda s: s["sample"])
    if len(complete) < 2:
        return None, "too_few_complete"
    goods = [s for s in complete if s[good]]
    bads = [s for s in complete if not s[good]]
    if not goods:
        return None, "no_good"
    if not bads:
        return None, "no_bad"
    rng = random.Random(f"{seed}:{prompt_id}")
    return (pick(rng, goods), pick(rng, bads), goods, bads), "pair"


def samples_by_prompt(split: str, rows: Sequence[Mapping[str, Any]], samples: Iterable[Mapping[str, Any]],
                      script: str) -> Dict[str, List[Mapping[str, Any]]]:
    """The samples grouped by ``prompt_id``; a row without samples is a ValueError naming ``script`` (never a
    silent drop)."""
    by_prompt: Dict[str, List[Mapping[str, Any]]] = {}
    for record in samples:
        by_prompt.setdefault(record["prompt_id"], []).append(record)
    missing = [row["id"] for row in rows if row["id"] not in by_prompt]
    if missing:
        raise ValueError(f"{len(missing)} {split} prompts have no samples (first: {missing[0]}); rerun "
                         f"{script} to finish sampling")
    return by_prompt


def describe_outcomes(stats: Mapping[str, Any], reasons: Mapping[str, str]) -> str:
    """How many of a split's prompts gave a pair and why the others did not, in words (no final full stop)."""
    n = stats["prompts"]
    parts = [f"{stats['pairs']} of {n} prompts ({stats['pairs'] / n:.0%}) gave a pair"]
    for reason, text in reasons.items():
        count = stats["no_pair"][reason]
        if count:
            parts.append(f"{count} gave none because {text}")
    return "; ".join(parts)


def write_or_check(files: Mapping[str, Path], texts: Mapping[str, str], check: bool) -> int:
    """Write each file's text (atomically), or with ``check`` compare them and say which differ; the exit code."""
    if check:
        ok = True
        for name, path in files.items():
            same = path.is_file() and path.read_text(encoding="utf-8") == texts[name]
            print(f"{path}: {'up to date' if same else 'DIFFERS from a fresh build'}")
            ok &= same
        return 0 if ok else 1
    for name, path in files.items():
        atomic_write_text(path, texts[name])
        print(f"wrote {path}")
    return 0
