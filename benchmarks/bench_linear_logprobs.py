"""Benchmark of the fused LM-head log-prob op (``linear_logprobs``) against the alternatives.

    python benchmarks/bench_linear_logprobs.py                  # CPU: SmolLM2-135M head, fp32 and bf16
    python benchmarks/bench_linear_logprobs.py --dtypes bfloat16 --rows 512,2048   # CPU, bf16 rows only
    python benchmarks/bench_linear_logprobs.py --quick          # small smoke test
    python benchmarks/bench_linear_logprobs.py --quick --rows 64 --vocab 1000 --repeats 1   # tiny smoke test
    python benchmarks/bench_linear_logprobs.py --device cuda    # Llama-3-8B head, bf16
    python benchmarks/bench_linear_logprobs.py --device cuda --quick --rows 8192 --hidden 4096 --vocab 151936

Methods, side by side on the same inputs, in each dtype of ``--dtypes`` (CPU: float32 and bfloat16; a CPU
with AVX512-BF16 or AMX runs bf16 matmuls several times faster, issue 20). The inputs are created in that
dtype: under bf16-mixed training the op also casts the fp32 master weight once per call, as autocast does
for eager's ``F.linear``.
  naive       eager PyTorch through linear_logprobs, backend "naive": materialises [N, V] logits
  ours        linear_logprobs, backend "torch" on CPU, "triton" on CUDA
  torch_chunked  CUDA only: linear_logprobs, backend "torch" (the chunked PyTorch path) on the GPU
  gemm        CUDA only: the bare LM-head GEMM of the same shape, the floor (forward h @ W^T; backward the
              two gradient GEMMs with the [N, V] logits reused as the upstream gradient; no softmax)
  torch_lce   PyTorch's own chunked torch.nn.functional.linear_cross_entropy(reduction="none",
              options=LinearCrossEntropyOptions()), negated (cross-entropy = -log-prob)
  liger, cce  Liger-Kernel's and Cut Cross-Entropy's fused linear cross-entropy, CUDA only and only
              where installed (reduction="sum": they are driven by a scalar loss, not a per-row grad)

Per case: median fwd+bwd time and median forward-only time over ``--repeats`` runs after one warm-up,
with the methods interleaved within each repeat (so load from other processes hits them alike; on a
shared machine ``--wait-idle S`` also waits up to S seconds for an idle CPU before each run, and the
CSV records the mean 1-minute load average seen by each method's runs); peak
extra memory; on CUDA, TFLOP/s next to the measured bf16 matmul peak. TFLOP/s counts the FLOP floor of
the case (column ``flops_counted``): 8NVd for fwd+bwd with the weight trained (4 matmuls, recompute),
4NVd with the weight frozen, 2NVd for the no-grad forward. The backward pass uses a
random per-row upstream gradient, as DPO gives. Forward-only is timed with the same inputs requiring
grad as in the case (a training forward); the "none" grad case is the reference model's no-grad pass.

Peak extra memory:
  CPU   each (method, case) runs once more in a fresh subprocess: inputs allocated, the method warmed
        up on 8 rows, the kernel's resident-set high-water mark reset (/proc/self/clear_refs = 5),
        then one forward+backward; peak extra = VmHWM - VmRSS before the run. It includes the
        gradients themselves ([N, d] and [V, d]) and everything the allocator kept resident.
  CUDA  torch.cuda.max_memory_allocated() during one forward+backward minus the allocation before.

Writes ``<out>/linear_logprobs_<device>.csv`` (and a plot when matplotlib is installed) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from bench_common import bare_gemm, device_name, rss_kb, wait_for_idle_cpu  # noqa: E402  (shared helpers)

from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs  # noqa: E402

GRADS = {"hidden+weight": (True, True), "hidden": (True, False), "none": (False, False)}


@dataclass
class Case:
    n: int  # total rows (all layers)
    d: int
    vocab: int
    layers: int  # rows are [layers, n // layers, d], stacked into one call
    dtype: str
    grads: str  # key of GRADS


def cases_for(device: str, quick: bool, dtypes=None, rows=None, vocab=None, hidden=None) -> list[Case]:
    """The cases per dtype; ``rows`` (values of N), ``vocab`` and ``hidden`` (d) replace the defaults."""
    if device == "cuda":  # Llama-3-8B head
        d, v, dtypes, sizes = 4096, 128256, dtypes or ["bfloat16"], [4096] if quick else [4096, 8192, 16384, 32768]
        grads, stacked, no_grad = ["hidden+weight"] if quick else ["hidden+weight", "hidden"], ["hidden+weight"], 8192
        stacked_n = 4 * 4096
    else:  # SmolLM2-135M head
        d, v, dtypes = 576, 16384 if quick else 49152, dtypes or ["float32", "bfloat16"]
        sizes = [512] if quick else [2048, 4096, 8192]
        grads = stacked = ["hidden+weight", "hidden"]
        no_grad, stacked_n = 4096, 4 * 1024
    if rows:
        sizes, no_grad, stacked_n = rows, max(rows), max(4, 4 * (max(rows) // 4))
    v, d = vocab or v, hidden or d
    out = []
    for dtype in dtypes:
        out += [Case(n, d, v, 1, dtype, g) for n in sizes for g in grads]
        if not quick:  # all layers' rows stacked into one call; the reference model's no-grad pass
            out += [Case(stacked_n, d, v, 4, dtype, g) for g in stacked] + [Case(no_grad, d, v, 1, dtype, "none")]
    return out


# ---------------------------------------------------------------------------------------------- methods
# Each returns either per-row log-probs (driven by a per-row upstream gradient) or a scalar loss.
def _ours(device: str) -> Callable:
    backend = "triton" if device == "cuda" else "torch"
    return lambda h, w, t: linear_logprobs(h, w, t, options=LinearLogprobsOptions(backend=backend))


def _naive(h, w, t):
    return linear_logprobs(h, w, t, options=LinearLogprobsOptions(backend="naive"))


def _torch_lce(h, w, t):
    import torch.nn.functional as F

    flat_h, flat_t = h.reshape(-1, h.shape[-1]), t.reshape(-1)  # [N, d], [N]
    ce = F.linear_cross_entropy(flat_h, w, flat_t, reduction="none", options=torch.nn.LinearCrossEntropyOptions())
    return (-ce).reshape(t.shape)


def _liger():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")
    return lambda h, w, t: loss(w, h.reshape(-1, h.shape[-1]), t.reshape(-1))


def _cce():
    from cut_cross_entropy import linear_cross_entropy

    return lambda h, w, t: linear_cross_entropy(h.reshape(-1, h.shape[-1]), w, t.reshape(-1), reduction="sum")


def _torch_chunked(h, w, t):
    return linear_logprobs(h, w, t, options=LinearLogprobsOptions(backend="torch"))


def methods_for(device: str) -> dict[str, Callable]:
    out = {"naive": _naive, "ours": _ours(device)}
    if hasattr(torch.nn.functional, "linear_cross_entropy"):  # PyTorch >= 2.13
        out["torch_lce"] = _torch_lce
    if device == "cuda":
        out = {"gemm": bare_gemm, **out, "torch_chunked": _torch_chunked}
        for name, make in (("liger", _liger), ("cce", _cce)):
            try:
                out[name] = make()
            except ImportError:
                print(f"[bench] {name}: not installed, skipped", flush=True)
    return out


# ------------------------------------------------------------------------------------------- measuring
def make_inputs(case: Case, device: str, seed: int = 0):
    """Inputs built in place in their final dtype, so no transient copy inflates the memory baseline."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    per_layer = case.n // case.layers
    hidden = torch.randn(case.layers, per_layer, case.d, generator=gen, device=device, dtype=dtype)  # [L, T, d]
    weight = torch.randn(case.vocab, case.d, generator=gen, device=device, dtype=dtype).mul_(case.d**-0.5)  # [V, d]
    targets = torch.randint(0, case.vocab, (case.layers, per_layer), generator=gen, device=device)  # [L, T]
    grad_out = torch.randn(case.layers, per_layer, generator=gen, device=device)  # [L, T] per-row dL/dlogp
    if case.layers == 1:
        hidden, targets, grad_out = hidden[0], targets[0], grad_out[0]
    need_h, need_w = GRADS[case.grads]
    return hidden.requires_grad_(need_h), weight.requires_grad_(need_w), targets, grad_out


def step(fn, hidden, weight, targets, grad_out, backward: bool):
    if not (hidden.requires_grad or weight.requires_grad):
        with torch.no_grad():
            fn(hidden, weight, targets)
        return
    out = fn(hidden, weight, targets)
    if backward:
        if out.dim() == 0:
            out.backward()
        else:
            out.backward(grad_out.to(out.dtype))
    del out
    hidden.grad = None
    weight.grad = None


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device, f) -> float:
    sync(device)
    start = time.perf_counter()
    f()
    sync(device)
    return time.perf_counter() - start


def memory_probe(method: str, case: Case, device: str) -> dict:
    """Runs in a fresh process: peak extra bytes of one forward(+backward)."""
    fn = methods_for(device)[method]
    hidden, weight, targets, grad_out = make_inputs(case, device)
    has_grad = hidden.requires_grad or weight.requires_grad
    tiny = make_inputs(Case(8 * case.layers, case.d, case.vocab, case.layers, case.dtype, case.grads), device, seed=1)
    step(fn, *tiny, backward=has_grad)  # load code paths, thread pools, library workspaces
    del tiny
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(fn, hidden, weight, targets, grad_out, backward=has_grad)
        sync(device)
        return {"peak_extra_bytes": torch.cuda.max_memory_allocated() - base}
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    base = rss_kb("VmRSS")
    step(fn, hidden, weight, targets, grad_out, backward=has_grad)
    return {"peak_extra_bytes": (rss_kb("VmHWM") - base) * 1024}


def measure_memory(method: str, case: Case, device: str) -> Optional[float]:
    cmd = [sys.executable, __file__, "--_probe", json.dumps({"method": method, "case": asdict(case), "device": device})]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[bench] memory probe failed for {method} {case}: {proc.stderr.strip()[-400:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def matmul_peak_tflops(device: str) -> Optional[float]:
    """Measured bf16 matmul throughput (the roofline the TFLOP/s column is read against)."""
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = [timed(device, lambda: a @ b) for _ in range(20)]
    return 2 * 8192**3 / statistics.median(times) / 1e12


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def run_case(case: Case, methods: dict, device: str, repeats: int, with_memory: bool,
             wait_idle: float = 0.0) -> list[dict]:
    hidden, weight, targets, grad_out = make_inputs(case, device)
    has_grad = case.grads != "none"
    fwd_bwd = {m: [] for m in methods}
    fwd = {m: [] for m in methods}
    loads = {m: [] for m in methods}
    failed = {}
    for rep in range(repeats + 1):  # repeat 0 is the warm-up
        for name, fn in methods.items():
            if name in failed:
                continue
            if wait_idle > 0 and device == "cpu":
                wait_for_idle_cpu(wait_idle)
            try:
                if has_grad:
                    t_fb = timed(device, functools.partial(step, fn, hidden, weight, targets, grad_out, backward=True))
                t_f = timed(device, functools.partial(step, fn, hidden, weight, targets, grad_out, backward=False))
            except (RuntimeError, NotImplementedError, ValueError) as err:  # e.g. CUDA OOM
                failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                print(f"[bench] {name} failed on {case}: {failed[name]}", flush=True)
                hidden.grad = None
                weight.grad = None
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            if rep > 0:
                if has_grad:
                    fwd_bwd[name].append(t_fb)
                fwd[name].append(t_f)
                loads[name].append(loadavg())
            print(
                f"[bench]   rep {rep}{' (warm-up)' if rep == 0 else ''} {name:10s} "
                f"fwd+bwd {t_fb if has_grad else float('nan'):7.3f} s  fwd {t_f:7.3f} s  load {loadavg():.2f}",
                flush=True,
            )
    del hidden, weight, targets, grad_out
    rows = []
    for name in methods:
        peak = measure_memory(name, case, device) if (with_memory and name not in failed) else None
        med_fb = statistics.median(fwd_bwd[name]) if fwd_bwd[name] else None
        matmuls = (8 if GRADS[case.grads][1] else 4) if has_grad else 2
        if name == "gemm":  # the bare GEMM does 3 (both grads), 2 (hidden only) or 1 matmul(s), no recompute
            matmuls = (3 if GRADS[case.grads][1] else 2) if has_grad else 1
        flops = matmuls * case.n * case.vocab * case.d
        rows.append(
            dict(
                method=name,
                n=case.n,
                d=case.d,
                vocab=case.vocab,
                layers=case.layers,
                dtype=case.dtype,
                requires_grad=case.grads,
                fwd_bwd_s=med_fb,
                fwd_s=statistics.median(fwd[name]) if fwd[name] else None,
                peak_extra_mb=None if peak is None else peak / 2**20,
                flops_counted=flops,
                load1_mean=statistics.mean(loads[name]) if loads[name] else None,
                note=failed.get(name, ""),
            )
        )
    return rows


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="a small subset, for smoke testing")
    parser.add_argument("--dtypes", default=None, help="comma-separated input dtypes (default: float32,bfloat16 "
                        "on CPU, bfloat16 on CUDA)")
    parser.add_argument("--rows", default=None, help="comma-separated row counts N replacing the default sizes")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size replacing the default")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size d replacing the default")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for the CSV and plot")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (default 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="CPU only: before each timed run, wait up to this long for other processes to leave the CPU "
        ">= 85%% idle (for shared machines; default 0: do not wait)",
    )
    parser.add_argument("--_probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._probe:
        spec = json.loads(args._probe)
        print(json.dumps(memory_probe(spec["method"], Case(**spec["case"]), spec["device"])))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    meta = dict(
        device=device_name(args.device),
        torch=torch.__version__,
        triton=triton_version,
        python=platform.python_version(),
    )
    peak = matmul_peak_tflops(args.device)
    methods = methods_for(args.device)
    print(f"[bench] {meta}  bf16 matmul peak: {fmt(peak, '.1f')} TFLOP/s  load {loadavg():.2f}", flush=True)

    rows = []
    load_start = loadavg()
    split = lambda text, kind=str: [kind(x) for x in text.split(",")] if text else None
    for case in cases_for(args.device, args.quick, split(args.dtypes), split(args.rows, int), args.vocab,
                           args.hidden):
        print(f"[bench] case {case}", flush=True)
        for row in run_case(case, methods, args.device, args.repeats, not args.no_memory, args.wait_idle):
            tflops = None
            if args.device == "cuda" and row["fwd_bwd_s"]:
                tflops = row["flops_counted"] / row["fwd_bwd_s"] / 1e12
            elif args.device == "cuda" and row["requires_grad"] == "none" and row["fwd_s"]:
                tflops = row["flops_counted"] / row["fwd_s"] / 1e12
            rows.append({**meta, **row, "tflops": tflops, "matmul_peak_tflops": peak, "repeats": args.repeats})
    load_end = loadavg()

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"linear_logprobs_{args.device}{'_quick' if args.quick else ''}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    naive = {(r["n"], r["layers"], r["requires_grad"], r["dtype"]): r for r in rows if r["method"] == "naive"}
    print(f"\n{meta['device']}; torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}; "
          f"load average {load_start:.2f} at start, {load_end:.2f} at end; median of {args.repeats}\n")
    head = ("| dtype | N | layers | grads | method | fwd+bwd s | fwd s | peak extra MiB | time / naive "
            "| memory / naive |")
    if args.device == "cuda":
        head += " TFLOP/s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        base = naive.get((r["n"], r["layers"], r["requires_grad"], r["dtype"]))  # naive in the same dtype
        t_key = "fwd_bwd_s" if r["fwd_bwd_s"] is not None else "fwd_s"
        t_ratio = r[t_key] / base[t_key] if (base and base[t_key] and r[t_key]) else None
        comparable = base and base["peak_extra_mb"] and r["peak_extra_mb"] is not None
        m_ratio = r["peak_extra_mb"] / base["peak_extra_mb"] if comparable else None
        line = (
            f"| {r['dtype']} | {r['n']} | {r['layers']} | {r['requires_grad']} | {r['method']} | "
            f"{fmt(r['fwd_bwd_s'], '.2f')} | "
            f"{fmt(r['fwd_s'], '.2f')} | {fmt(r['peak_extra_mb'], '.0f')} | "
            f"{fmt(t_ratio, '.2f')} | {fmt(m_ratio, '.3f')} |"
        )
        if args.device == "cuda":
            line += f" {fmt(r['tflops'], '.1f')} |"
        print(line + (f" {r['note']}" if r["note"] else ""))
    print(f"\nwrote {path}")
    plot(rows, out_dir / f"linear_logprobs_{args.device}{'_quick' if args.quick else ''}.png")


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for grads, style in (("hidden+weight", "-o"), ("hidden", "--s")):
        for method, dtype in dict.fromkeys((r["method"], r["dtype"]) for r in rows):
            pts = sorted((r["n"], r["fwd_bwd_s"], r["peak_extra_mb"]) for r in rows
                         if (r["method"], r["dtype"]) == (method, dtype) and r["requires_grad"] == grads
                         and r["layers"] == 1 and r["fwd_bwd_s"])
            if not pts:
                continue
            label = f"{method} {dtype} ({'weight frozen' if grads == 'hidden' else 'both grads'})"
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
            if all(p[2] is not None for p in pts):
                axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, label=label)
    axes[0].set(xlabel="rows N", ylabel="fwd+bwd seconds (median)", title="time")
    axes[1].set(xlabel="rows N", ylabel="peak extra MiB", title="memory", yscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"linear_logprobs, {rows[0]['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
