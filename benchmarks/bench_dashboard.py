"""How large and how fast is `lightning-mem dashboard html` for a big sweep?

Writes synthetic run folders in the real on-disk format through ``lightning_mem.rundir``
(``metrics.csv`` in the dialect of Lightning's CSV writer by ``rundir.write_metrics_rows``, with the rows
a fit writes: training-batch alignment and norms every few steps, the epoch's held-out alignment,
``val/*`` and ``train/*``; ``config.yaml``; ``hp.json`` and ``status.json``), a grid of σ × activation
× loss × seeds with a few diverged and running runs (a running run's folder is free, so it reads as
killed), then measures: the Python side (load + embed + write), the file size, and in headless
Chromium (Debian's ``chromium``, driven by Playwright) the time from navigation start to every panel
drawn, and the time to regroup (one group-by checkbox clicked).

    python benchmarks/bench_dashboard.py --runs 500 --epochs 2000      # docs/performance.md's numbers
    python benchmarks/bench_dashboard.py --runs 20 --epochs 100         # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from lightning_mem import rundir
from lightning_mem.results.dashboard import write_html

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def write_run(root: Path, run_id: str, sigma: float, activation: str, loss: str, seed: int, epochs: int,
              steps: int, align_every: int, status: str) -> None:
    """One synthetic run: accuracy curves whose gap grows with σ, alignment that falls with σ."""
    rng = np.random.default_rng(seed)
    run_dir = root / "bench" / run_id
    run_dir.mkdir(parents=True)
    rows: list[dict[str, float | int]] = []
    gap = 1 / (1 + math.exp(-2 * math.log10(sigma)))  # 0 at small σ, 1 at large σ
    stop = epochs if status == "finished" else int(epochs * rng.uniform(0.2, 0.8))
    for epoch in range(stop):
        progress = 1 - math.exp(-5 * (epoch + 1) / epochs)
        align = (0.7 - 0.65 * gap) * (0.8 + 0.2 * progress)
        for s in range(epoch * steps, (epoch + 1) * steps, align_every):
            rows.append({"align/grad/hidden.weight": align + 0.02 * rng.normal(),
                         "align/grad/out.weight": align + 0.02 * rng.normal(),
                         "align/grad/logits": 0.95 + 0.01 * rng.normal(),
                         "align/rep/act": align + 0.02 * rng.normal(),
                         "norm/grad_over_weight/hidden.weight": 1e-3 / sigma * (1 + rng.normal() / 10),
                         "norm/grad_over_weight/out.weight": 0.05, "epoch": epoch, "step": s})
        end = (epoch + 1) * steps - 1
        train = min(1.0, 0.1 + 0.9 * progress + 0.01 * rng.normal())
        val = 0.1 + (0.85 - 0.75 * gap) * progress + 0.01 * rng.normal()
        rows.append({"val/loss": 2 - val, "val/acc": val, "val/align/rep/act": align, "epoch": epoch,
                     "step": end})
        rows.append({"train/loss": 2 - train, "train/acc": train, "epoch": epoch, "step": end})
    rundir.write_metrics_rows(run_dir / rundir.METRICS, sorted({k for r in rows for k in r}), rows)
    config = {"seed_everything": seed, "run": {"name": "bench", "id": run_id},
              "trainer": {"max_epochs": epochs},
              "model": {"net": {"class_path": "lightning_mem.nets.ScaledMLP",
                                "init_args": {"width": 1024, "activation": activation, "init_std": sigma}},
                        "loss": loss, "loss_scale": 1.0, "loss_scale_with_init": False, "lr": 0.01},
              "data": {"dataset": "cifar10", "batch_size": 256, "label_noise": 0.0}}
    (run_dir / rundir.CONFIG).write_text(yaml.safe_dump(config))
    rundir.write_hp(run_dir, rundir.canonical_hp(config))
    diverged = {"step": stop * steps, "epoch": stop, "reason": "the training loss is nan"}
    fields = diverged if status == "diverged" else {}
    rundir.write_status(run_dir, status, **fields)


def make_runs(root: Path, n_runs: int, epochs: int, steps: int, align_every: int) -> None:
    grid = itertools.product([0.001, 0.01, 0.1, 1.0, 10.0], ["sin", "relu"], ["cross_entropy", "hinge"],
                             range(max(1, math.ceil(n_runs / 20))))
    for i, (sigma, act, loss, seed) in enumerate(itertools.islice(grid, n_runs)):
        status = "diverged" if i % 50 == 7 else "running" if i % 50 == 13 else "finished"
        write_run(root, f"r{i:03d}", sigma, act, loss, seed, epochs, steps, align_every, status)


def browser_times(html: Path) -> tuple[float, float, float, float, float]:
    """ms from navigation start to the panels in the window drawn and the main thread's CPU time until
    then (Chrome's ThreadTime, which other jobs' load does not inflate), the same two for the redraw after
    one group-by click, and the ms to draw every panel below the window."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def busy_ms() -> float:
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            return 1000 * metrics["ThreadTime"]  # CPU time of the page's main thread

        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        page.wait_for_function("window.dashboard && window.dashboard.ready", timeout=600_000)
        render, render_busy = page.evaluate("window.dashboard.renderMs"), busy_ms()
        t0 = time.perf_counter()
        page.evaluate("window.dashboard.drawAll()")  # every panel below the window too
        rest = (time.perf_counter() - t0) * 1000
        page.evaluate("window.scrollTo(0, 0)")  # back to the top, where a user regroups
        page.wait_for_timeout(500)
        drawn_busy = busy_ms()
        t0 = time.perf_counter()
        page.click("#groupby input[data-key='hp.seed']")
        page.wait_for_function("window.dashboard.renders >= 2", timeout=600_000)
        regroup, regroup_busy = (time.perf_counter() - t0) * 1000, busy_ms() - drawn_busy
        browser.close()
    if errors:
        raise RuntimeError(f"page errors: {errors}")
    return render, render_busy, regroup, regroup_busy, rest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2000)
    p.add_argument("--steps-per-epoch", type=int, default=8)
    p.add_argument("--align-every", type=int, default=4, help="training-batch alignment every N steps")
    p.add_argument("--keep", type=Path, default=None,
                   help="write the runs and the page here (kept; runs already there are reused)")
    args = p.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_dashboard_"))
    t0 = time.perf_counter()
    if (work / "runs").exists():
        print(f"reusing the runs in {work / 'runs'}")
    else:
        make_runs(work / "runs", args.runs, args.epochs, args.steps_per_epoch, args.align_every)
        rows = sum(1 for _ in (work / "runs" / "bench" / "r000" / "metrics.csv").open()) - 1
        print(f"wrote {args.runs} runs x {args.epochs} epochs ({rows} metrics.csv rows each) "
              f"in {time.perf_counter() - t0:.1f} s")
    out = work / "dashboard.html"
    t0, c0 = time.perf_counter(), time.process_time()
    data = write_html([work / "runs"], out)
    python_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    longest = max(len(r["x"]) for r in data["runs"])
    print(f"dashboard html: {python_s:.1f} s wall, {cpu_s:.1f} s CPU "
          f"(load {len(data['runs'])} runs, embed, write); "
          f"{out.stat().st_size / 1e6:.1f} MB; at most {longest} points per run and curve")
    render, render_busy, regroup, regroup_busy, rest = browser_times(out)
    print(f"headless Chromium (1400 x 900 window): the panels in view drawn {render / 1000:.2f} s after "
          f"navigation start (main-thread CPU {render_busy / 1000:.2f} s), every other panel "
          f"{rest / 1000:.2f} s more; regroup with the seed too (one group per run) {regroup / 1000:.2f} s "
          f"(main-thread CPU {regroup_busy / 1000:.2f} s)")


if __name__ == "__main__":
    main()
