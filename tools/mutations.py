"""Mutation check: break the package on purpose and expect its tests to notice.

    python tools/mutations.py                 # every mutation, a table at the end (a few minutes)
    python tools/mutations.py --only mask-swap grad-unit-accumulate
    python tools/mutations.py --list

Each mutation replaces one exact snippet of one file (the snippet must occur exactly once, so a
refactor that moves it makes the mutation fail loudly instead of silently testing nothing), checks
that the mutated file still compiles, runs the targeted tests (default tier) and expects them to
fail. Everything happens in a temporary copy of the checkout (its tracked and untracked, not ignored
files): the working tree is never touched, so the check can run while runs use the package.
Before the mutations the same tests run once unmutated and must pass. Exit codes: 0 every mutation
caught, 1 one survived (or errored), 2 bad input. Run on demand, not in CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the checkout
    before: str  # exact snippet, occurring once
    after: str
    tests: tuple[str, ...]  # pytest arguments (files, -k expressions)
    why: str  # what a test must check to catch it


MUTATIONS = (
    Mutation(
        "mask-swap",
        "lightning_mem/training/module.py",
        "self.train_acc_clean.update(correct, ~noisy)\n"
        "            self.train_acc_noisy.update(correct, noisy)",
        "self.train_acc_clean.update(correct, noisy)\n"
        "            self.train_acc_noisy.update(correct, ~noisy)",
        ("tests/training/test_module.py",),
        "train/acc_clean and train/acc_noisy recomputed independently, noise fraction far from 0.5",
    ),
    Mutation(
        "grad-unit-accumulate",
        "lightning_mem/alignment/monitor.py",
        "factor = float(batch_size * trainer.accumulate_grad_batches)",
        "factor = float(batch_size)",
        ("tests/alignment/test_monitor.py",),
        "a scale-dependent measure (gradient confusion) with accumulate_grad_batches > 1",
    ),
    Mutation(
        "gram-diagonal",
        "lightning_mem/alignment/measures.py",
        "off = K.masked_fill(eye, 0.0).sum((-2, -1))",
        "off = K.sum((-2, -1))",
        ("tests/alignment/test_measures.py",),
        "Ω against the O(n²) definition (i ≠ j pairs only)",
    ),
    Mutation(
        "class-gram-diagonal",
        "lightning_mem/alignment/measures.py",
        "off = (labels[:, None] == labels[None, :]) & ~eye",
        "off = labels[:, None] == labels[None, :]",
        ("tests/alignment/test_measures.py",),
        "per-class Ω from the Gram against the definition",
    ),
    Mutation(
        "linear-gram-sign",
        "lightning_mem/alignment/grams.py",
        "k_w = (a[:, 0] @ a[:, 0].T) * (g[:, 0] @ g[:, 0].T)",
        "k_w = (a[:, 0] @ a[:, 0].T) * (g[:, 0] @ g[:, 0].T).abs()",
        ("tests/alignment/test_grams.py",),
        "linear_grams on (B, in) inputs (T = 1) against per-example gradients",
    ),
    Mutation(
        "capture-gram-sign",
        "lightning_mem/alignment/grams.py",
        'out[prefix + "weight"] = cached_gram(a) * k_g',
        'out[prefix + "weight"] = cached_gram(a) * k_g.abs()',
        ("tests/alignment/test_grams.py",),
        "GramCapture's Grams against per-example autograd gradients",
    ),
    Mutation(
        "data-order-epoch",
        "lightning_mem/data/loader.py",
        "manual_seed(self.seed * 1_000_003 + epoch)",
        "manual_seed(self.seed * 1_000_003)",
        ("tests/data/test_datamodule.py",),
        "epochs see different orders; the order is a function of (seed, epoch)",
    ),
    Mutation(
        "standardize-ddof",
        "lightning_mem/data/transforms.py",
        "std, mean = torch.std_mean(flat, dim=1, keepdim=True, correction=0)",
        "std, mean = torch.std_mean(flat, dim=1, keepdim=True, correction=1)",
        ("tests/data/test_datamodule.py",),
        "per-image standardization against TF's formula (population std)",
    ),
    Mutation(
        "hinge-margin",
        "lightning_mem/training/losses.py",
        "return terms.sum(dim=1) - margin",
        "return terms.sum(dim=1)",
        ("tests/training/test_losses.py",),
        "hinge values against the Σ_{j≠y} definition",
    ),
    Mutation(
        "init-std",
        "lightning_mem/nets/paper.py",
        "nn.init.normal_(self.hidden.weight, mean=0.0, std=self.init_std)",
        "nn.init.normal_(self.hidden.weight, mean=0.0, std=self.init_std**0.5)",
        ("tests/nets/test_paper.py",),
        "the std of W1 equals σ",
    ),
    Mutation(
        "report-tail",
        "lightning_mem/results/grouping.py",
        "return float(v[-tail:].mean()) if v.size else math.nan",
        "return float(v[-tail - 1:].mean()) if v.size else math.nan",
        ("tests/results/test_grouping.py", "tests/results/test_report.py"),
        "final alignment = mean of exactly the last N",
    ),
    Mutation(
        "theorem1-sign",
        "lightning_mem/analysis/theorem1.py",
        "return 0.5 * (torch.exp(-s2 * minus / 2) - torch.exp(-s2 * plus / 2))",
        "return 0.5 * (torch.exp(-s2 * plus / 2) - torch.exp(-s2 * minus / 2))",
        ("tests/analysis/test_theorem1.py",),
        "the closed form against an independent formula and Monte Carlo",
    ),
    Mutation(
        "ntk-drop-w2-weighting",
        "lightning_mem/alignment/kernels.py",
        "weight = (w2 * w2).sum(0)  # (h,) Σ_c W2[c,h]²",
        "weight = torch.ones_like(w2[0])  # (h,) Σ_c W2[c,h]²",
        ("tests/alignment/test_kernels.py",),
        "the closed-form NTK against Θ from jacrev Jacobians",
    ),
    Mutation(
        "stiffness-keep-diagonal",
        "lightning_mem/alignment/kernels.py",
        "sums = y.T @ (cos * off) @ y  # (C, C)",
        "sums = y.T @ cos @ y  # (C, C)",
        ("tests/alignment/test_kernels.py",),
        "the class stiffness matrix against cosines of explicit per-example gradients, i ≠ j",
    ),
    Mutation(
        "kernel-theta0-for-theta",
        "lightning_mem/alignment/kernel_monitor.py",
        "theta = nk.ntk(params, x).detach()",
        "theta = nk.ntk(init, x).detach()",
        ("tests/alignment/test_kernel_monitor.py",),
        "logged kernel measures against Θ of the trained weights from jacrev",
    ),
    Mutation(
        "train-kernel-theta0-for-theta",
        "lightning_mem/alignment/kernel_monitor.py",
        "theta = kernels.mlp_ntk_from_products(pre, xx, w2, act)",
        "theta = kernels.mlp_ntk_from_products(pre0, xx, init['out.weight'], act)",
        ("tests/alignment/test_kernel_monitor.py",),
        "training-batch measures against Θ from jacrev at the weights before the step",
    ),
    Mutation(
        "train-kernel-w2-after-step",
        "lightning_mem/alignment/kernel_monitor.py",
        "theta, theta0, pattern = self._mlp_batch(flat, pre.double(), pending.w2,",
        "theta, theta0, pattern = self._mlp_batch(flat, pre.double(), self._params()['out.weight'],",
        ("tests/alignment/test_kernel_monitor.py",),
        "training-batch Θ_t from the step's forward with W2 of before the update, against jacrev",
    ),
)


def copy_checkout(dest: Path) -> None:
    """Tracked and untracked (not ignored) files of the checkout into ``dest``."""
    listing = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listing):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_tests(where: Path, tests: Sequence[str], timeout: float) -> tuple[int, str, float]:
    """pytest (default tier, stop at the first failure) in ``where``: (exit code, first failure, seconds)."""
    env = os.environ | {"PYTHONPATH": str(where), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    tail = done.stdout.strip().splitlines()
    first = failed[0] if failed else (tail[-1] if tail else "")
    return done.returncode, first, time.perf_counter() - start


def verdict(code: int) -> str:
    # pytest: 0 all passed, 1 some failed; 2-5 interrupted, internal error, usage, no tests.
    return {0: "SURVIVED", 1: "caught"}.get(code, f"error (pytest exit {code})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/mutations.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutations {sorted(unknown)}; known: {', '.join(m.name for m in MUTATIONS)}")
    if args.list:
        for m in chosen:
            sys.stdout.write(f"{m.name:22} {m.path:28} {' '.join(m.tests):45} {m.why}\n")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        work = Path(tmp)
        copy_checkout(work)
        for m in chosen:
            target = work / m.path
            original = target.read_text()
            if original.count(m.before) != 1:
                parser.error(
                    f"{m.name}: the snippet occurs {original.count(m.before)} times in {m.path} "
                    f"(expected once); update MUTATIONS: {m.before!r}"
                )
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            code, first, secs = run_tests(work, tests, args.timeout)
            sys.stdout.write(f"baseline: {' '.join(tests)}: pytest exit {code} in {secs:.0f} s\n")
            if code != 0:
                sys.stdout.write(f"the unmutated tests fail ({first}); fix them first\n")
                return 1
        for m in chosen:
            target = work / m.path
            original = target.read_text()
            mutated = original.replace(m.before, m.after)
            compile(mutated, str(target), "exec")  # a mutation must be valid Python, not a syntax error
            target.write_text(mutated)
            try:
                code, first, secs = run_tests(work, m.tests, args.timeout)
            finally:
                target.write_text(original)
            rows.append((m.name, m.path, " ".join(m.tests), verdict(code), first if code == 1 else "", secs))
            sys.stdout.write(f"{m.name}: {verdict(code)} in {secs:.0f} s {rows[-1][4]}\n")
            sys.stdout.flush()
    header = ("mutation", "file", "tests", "result", "first failing test", "s")
    sys.stdout.write("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    for name, path, tests, result, first, secs in rows:
        sys.stdout.write(
            f"| {name} | `{path}` | `{tests}` | {result} | {first and f'`{first}`'} | {secs:.0f} |\n"
        )
    return 0 if all(r[3] == "caught" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
