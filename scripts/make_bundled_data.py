"""Write the bundled arithmetic preference task, and optionally measure the untuned model on it.

    python scripts/make_bundled_data.py            # (re)write lit_idpo/data/arithmetic_{train,test}.jsonl
    python scripts/make_bundled_data.py --check    # exit 1 if the committed files differ from a fresh generation
    python scripts/make_bundled_data.py --measure  # also: greedy accuracy of SmolLM2-135M-Instruct on the test split

The rows come from :func:`~lit_idpo.data.tasks.arithmetic_data.make_rows` (seed 0: 2,000 train pairs, 200 test pairs).

Measured (``--measure``): SmolLM2-135M-Instruct (``embedded:smollm2-135m-instruct``, float32, CPU),
chat template with ``add_generation_prompt``, left-padded batches of 50, greedy, 16 new tokens,
judged by :func:`~lit_idpo.data.tasks.arithmetic_data.is_correct`: **59/200 = 29.5 %** on the 200 test prompts (seed 0;
transformers 5.24, torch 2.13). By category: mul_tens 7/8, add_tens 2/3, mul_by_ten 7/11, add_one
15/27, sub_1x1 3/6, mul_two 3/7, add_1x1 2/2, mul_1x1 1/2, add_2x2_no_carry 8/38, add_2x2_carry 2/11,
sub_2x2 1/6, add_2x1_no_carry 3/22, mul_2x1 5/47, add_3x1_no_carry 0/10. Typical failures: a wrong
sum in the right style ("24 + 3 = 5."), or a long-winded start ("To add 77 and 21, we need to ...")
that states no result within 16 tokens. An earlier mix with fewer easy facts measured 21.5 %.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from lit_idpo.data.tasks import arithmetic_data as bundled


def write(out_dir: Path, seed: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in bundled.make_rows(seed).items():
        path = out_dir / f"arithmetic_{split}.jsonl"
        path.write_text(bundled.dumps_jsonl(rows), encoding="utf-8", newline="\n")
        print(f"wrote {len(rows)} rows to {path}")


def check(out_dir: Path, seed: int) -> bool:
    ok = True
    for split, rows in bundled.make_rows(seed).items():
        path = out_dir / f"arithmetic_{split}.jsonl"
        same = path.is_file() and path.read_text(encoding="utf-8") == bundled.dumps_jsonl(rows)
        print(f"{path}: {'up to date' if same else 'DIFFERS from a fresh generation'}")
        ok &= same
    return ok


def measure(rows, model_source: str, batch_size: int, max_new_tokens: int) -> float:
    import torch

    from lit_idpo.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_source)
    model = load_model(model_source).eval()
    pad = tokenizer.pad_token_id
    correct, per_category = 0, defaultdict(lambda: [0, 0])
    start = time.time()
    for i in range(0, len(rows), batch_size):
        batch = rows[i: i + batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                               tokenize=False) for r in batch]
        # The template already starts with BOS text; left padding so every prompt ends at the same column.
        encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, encoded))
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        attention_mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
        for row, generated in zip(batch, out[:, width:]):
            response = tokenizer.decode(generated, skip_special_tokens=True)
            ok = bundled.is_correct(response, row["answer"])
            correct += ok
            per_category[row["category"]][0] += ok
            per_category[row["category"]][1] += 1
            if i == 0:
                print(f"  {'ok ' if ok else 'bad'} {row['prompt']!r} -> {response!r}")
        print(f"  {min(i + batch_size, len(rows))}/{len(rows)} prompts, {time.time() - start:.0f} s", flush=True)
    for name in sorted(per_category):
        c, n = per_category[name]
        print(f"  {name:18s} {c:3d}/{n:3d} = {c / n:.0%}")
    accuracy = correct / len(rows)
    print(f"greedy accuracy of {model_source} on {len(rows)} test prompts: {correct}/{len(rows)} = {accuracy:.1%}")
    return accuracy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=bundled.SEED, help="generation seed (the committed files use 0)")
    parser.add_argument("--out-dir", type=Path, default=bundled.DATA_DIR, help="where the .jsonl files go")
    parser.add_argument("--check", action="store_true", help="only compare the files with a fresh generation")
    parser.add_argument("--measure", action="store_true", help="measure greedy accuracy on the test split")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="model source for --measure")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    if args.check:
        return 0 if check(args.out_dir, args.seed) else 1
    write(args.out_dir, args.seed)
    if args.measure:
        measure(bundled.make_rows(args.seed)["test"], args.model, args.batch_size, args.max_new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
