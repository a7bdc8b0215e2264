"""``lightning-mem dashboard wandb``: the dashboard's panels as a W&B workspace, built from code with
W&B's own ``wandb-workspaces`` library and saved on the server (or printed as JSON with ``--print``).

Runs are grouped on the canonical hyperparameters that every run carries in its W&B config as the
nested block ``hp`` (:data:`rundir.HP_KEYS`): ``Config("hp.init_std")`` is the backend path
``config.hp.value.init_std``, the same key however the run was launched (by hand, ``sweep local``,
``wandb agent``). The flat ``model.net.init_std`` of a sweep's args and the nested
``model.net.init_args.init_std`` of a run started by hand would split the groups.

Panels (one section each): accuracy curves (``train/acc``, ``val/acc`` vs ``epoch``, mean ± std
over each group), with label noise ``train/acc_noisy`` and ``train/acc_clean`` beside ``val/acc``, and
the losses; alignment vs ``epoch`` (``align/grad/<W1>``, ``align/grad/logits``,
``align/rep/<layer>``, ``val/align/rep/<layer>``); final train and best held-out accuracy vs σ,
held-out accuracy vs alignment and ‖∇W1‖/‖W1‖ vs σ (scatter plots of run summaries, one point per
run, log σ); kernel–target alignment and the kernel's distance from init vs ``epoch`` where the runs
logged them; the runs table with status, the group keys and the final numbers pinned. Summaries: a
metric declared with several summaries is a dict in W&B (``val/acc.max``), one declared "last" a plain
value; against a server the names are read from the runs' summaries, with ``--print`` the declared
forms are assumed
(:data:`SUMMARY`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning_mem import _compat, metric_keys
from lightning_mem.results.grouping import FACTOR_HP, REP_NAMES, W1_NAMES, Keys
from lightning_mem.rundir import HP_KEYS

log = logging.getLogger(__name__)

# The summary each scatter reads where the CLI declares several (loggers.SUMMARIES: val/acc max and
# last, a dict in W&B); every other metric is declared "last" only, which W&B keeps as a plain value.
SUMMARY = {metric_keys.VAL_ACC: "max"}
DEFAULT_GROUP = ("init_std",)


def summary_name(metric: str, summaries: Iterable[Mapping[str, Any]] | None) -> str:
    """The summary key of ``metric``'s final (or best) value: ``val/acc.max`` when W&B holds a dict
    of declared summaries, the plain name when it holds the last value; ``summaries`` None assumes
    declared summaries."""
    agg = SUMMARY.get(metric, "last")
    declared = f"{metric}.{agg}" if metric in SUMMARY else metric
    if summaries is None:
        return declared
    for summary in summaries:
        value = summary.get(metric)
        if isinstance(value, Mapping):
            return f"{metric}.{agg}" if agg in value else f"{metric}.{next(iter(value), agg)}"
        if value is not None:
            return metric
    return declared


def metric_names(keys: Iterable[str] | None) -> dict[str, list[str]]:
    """Panel -> history keys: chosen from a run's keys as ``report`` does, else every candidate."""
    keys = None if keys is None else set(keys)
    if keys is not None:
        k = Keys.of_keys(keys)
        pick = {"grad": k.grad, "rep": k.rep, "val_rep": k.val_rep, "norm": k.norm}
        names = {p: [v] if v else [] for p, v in pick.items()}
    else:
        names = {"grad": [f"align/grad/{n}" for n in W1_NAMES], "rep": [f"align/rep/{n}" for n in REP_NAMES],
                 "val_rep": [f"val/align/rep/{n}" for n in REP_NAMES],
                 "norm": [f"norm/grad_over_weight/{n}" for n in W1_NAMES]}
    logits = [metric_keys.GRAD_LOGITS] if keys is None or metric_keys.GRAD_LOGITS in keys else []

    def logged(*wanted: str, assumed: bool) -> list[str]:
        return [k for k in wanted if (assumed if keys is None else k in keys)]

    # Every fit logs its losses; the noisy-label accuracies (label noise) and the kernel measures
    # (KernelMonitor) only some runs: without runs to read they are not assumed.
    noisy = logged(metric_keys.TRAIN_ACC_NOISY, metric_keys.TRAIN_ACC_CLEAN, assumed=False)
    return {"acc": [metric_keys.TRAIN_ACC, metric_keys.VAL_ACC], "logits": logits, **names,
            "noisy": [*noisy, metric_keys.VAL_ACC] if noisy else [],
            "loss": logged(metric_keys.TRAIN_LOSS, metric_keys.VAL_LOSS, assumed=True),
            "kernel": logged(metric_keys.KERNEL_TARGET_ALIGNMENT, metric_keys.KERNEL_DISTANCE, assumed=False)}


def check_group_by(keys: Sequence[str]) -> list[str]:
    bad = [k for k in keys if k.removeprefix("hp.") not in HP_KEYS]
    if bad:
        raise ValueError(f"--group-by {' '.join(bad)}: not a canonical key; allowed: {', '.join(HP_KEYS)}")
    return [k.removeprefix("hp.") for k in keys]


def build(entity: str, project: str, name: str, group_by: Sequence[str], sweep: str | None = None,
          group: str | None = None, keys: Iterable[str] | None = None,
          summaries: Sequence[Mapping[str, Any]] | None = None) -> Any:
    """The workspace (a ``wandb_workspaces.workspaces.Workspace``); nothing is sent anywhere."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    m = metric_names(keys)
    s = {k: summary_name(k, summaries) for k in (metric_keys.TRAIN_ACC, metric_keys.VAL_ACC)}
    first = {p: (v[0] if v else None) for p, v in m.items()}
    align = {p: summary_name(f, summaries) for p in ("grad", "rep", "val_rep", "norm") if (f := first[p])}
    sigma = wr.Config("hp.init_std")

    def curve(title: str, y: list[Any], ytitle: str) -> Any:
        return wr.LinePlot(title=title, x="epoch", y=y, title_x="epoch", title_y=ytitle,
                           groupby_aggfunc="mean", groupby_rangefunc="stddev")

    align_titles = {"grad": "gradient alignment of W1", "logits": "alignment of logit gradients",
                    "rep": "representation alignment (training batches)",
                    "val_rep": "representation alignment (held-out)"}
    sections = [
        ws.Section(name="Memorization curves", is_open=True, panels=[
            curve("train and held-out accuracy (mean ± std over the group)", m["acc"], "accuracy"),
            *([curve("memorization of noisy labels: accuracy on corrupted and kept training labels, held-out",
                     m["noisy"], "accuracy")] if m["noisy"] else []),
            *([curve("loss", m["loss"], "loss")] if m["loss"] else [])]),
        ws.Section(name="Alignment vs epoch", is_open=True, panels=[
            curve(f"{align_titles[p]}: {', '.join(m[p])}", m[p], "in-class alignment Ω")
            for p in align_titles if m[p]]),
        ws.Section(name="Accuracy and alignment vs σ", is_open=True, panels=[
            wr.ScatterPlot(title=f"final train accuracy ({s['train/acc']}) vs σ", x=sigma,
                           y=wr.SummaryMetric(s[metric_keys.TRAIN_ACC]), log_x=True),
            wr.ScatterPlot(title=f"best held-out accuracy ({s['val/acc']}) vs σ", x=sigma,
                           y=wr.SummaryMetric(s[metric_keys.VAL_ACC]), log_x=True),
            *[wr.ScatterPlot(title=f"best held-out accuracy vs {align[p]}", x=wr.SummaryMetric(align[p]),
                             y=wr.SummaryMetric(s[metric_keys.VAL_ACC]))
              for p in ("grad", "rep", "val_rep") if p in align],
        ]),
    ]
    if "norm" in align:
        sections[-1].panels.append(wr.ScatterPlot(title=f"{align['norm']} vs σ", x=sigma,
                                                  y=wr.SummaryMetric(align["norm"]), log_x=True, log_y=True))
    if m["kernel"]:
        sections.append(ws.Section(name="Kernels and laziness", is_open=True, panels=[
            curve(f"{k} (KernelMonitor)", [k], "cosine") for k in m["kernel"]]))
    filters = [expr.Metric("Sweep") == sweep] if sweep else [expr.Metric("Group") == group] if group else []
    columns = ["run:state", *[f"config:hp.value.{k}" for k in (*group_by, "seed")],
               *[f"summary:{v}" for v in s.values()]]
    return ws.Workspace(
        entity=entity, project=project, name=name, sections=sections,
        settings=ws.WorkspaceSettings(x_axis="epoch", max_runs=100),
        runset_settings=ws.RunsetSettings(groupby=[expr.Config(f"hp.{k}") for k in group_by],
                                          filters=filters, pinned_columns=columns),
    )


def spec(workspace: Any) -> dict[str, Any]:
    """The view spec that ``Workspace.save`` sends, as JSON-ready data."""
    return json.loads(json.dumps(_compat.workspace_spec(workspace), default=str))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entity", required=True, help="W&B entity (user or team).")
    p.add_argument("--project", required=True, help="W&B project of the runs.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sweep", help="Only the runs of this W&B sweep id.")
    which.add_argument("--group", help="Only the runs of this W&B group (the CLI's --run.name).")
    p.add_argument("--name", help="Workspace name (default: 'lightning-mem <sweep|group|project>').")
    p.add_argument("--group-by", nargs="+", metavar="KEY", default=None,
                   help=f"Canonical keys to group on (default: those that differ across the runs, except "
                   f"the seed; with --print: {' '.join(DEFAULT_GROUP)}). Allowed: {', '.join(HP_KEYS)}.")
    p.add_argument("--print", action="store_true", dest="print_spec",
                   help="Write the workspace spec as JSON to stdout; no server is contacted.")
    p.add_argument("runs", nargs="*", default=[], metavar="RUNS",
                   help="With --print: local run folders, folders of runs or manifest.json files (their "
                   "offline W&B runs log the same keys); panels and groups come from the keys they hold.")


def _server_runs(entity: str, project: str, sweep: str | None, group: str | None) -> list[Any]:
    import wandb

    api = wandb.Api()
    filters = {"sweep": sweep} if sweep else {"group": group} if group else {}
    return list(api.runs(f"{entity}/{project}", filters=filters))


def _varied(hps: Sequence[Mapping[str, Any]]) -> list[str]:
    """The factors (:data:`runsets.FACTOR_HP`) that differ across runs' ``hp`` blocks: the one
    grouping rule of report and dashboard html, never the run name, max_epochs or the seed."""
    return [k for k in FACTOR_HP if len({json.dumps(h.get(k), sort_keys=True, default=str) for h in hps}) > 1]


def _local(paths: Sequence[str]) -> tuple[list[dict[str, Any]], set[str]]:
    """The ``hp`` blocks and the logged metric keys of the local runs under ``paths``."""
    from lightning_mem.results.runs import load_runs

    runs = load_runs(paths, statuses=None)
    if not runs:
        raise ValueError(f"no runs (folders with a metrics.csv) under {', '.join(map(str, paths))}")
    return [dict(r.hp) for r in runs], {k for r in runs for k in r.metrics}


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``dashboard wandb``: print the spec, or read the runs, build and save the workspace."""
    name = args.name or f"lightning-mem {args.sweep or args.group or args.project}"
    try:
        group_by = check_group_by([k for item in args.group_by or [] for k in item.split(",") if k])
    except ValueError as err:
        parser.error(str(err))
    if args.runs and not args.print_spec:
        parser.error(f"RUNS ({' '.join(args.runs)}): local runs are read with --print only")
    if args.print_spec:
        keys: set[str] | None = None
        if args.runs:
            try:
                hps, keys = _local(args.runs)
            except (OSError, ValueError) as err:
                parser.error(str(err))
            group_by = group_by or _varied(hps) or list(DEFAULT_GROUP)
        else:
            log.warning("dashboard wandb --print: no local runs given; assumed the keys %s and grouping %s "
                        "(give run folders to choose from the keys they logged)",
                        ", ".join(k for v in metric_names(None).values() for k in v),
                        " ".join(group_by or DEFAULT_GROUP))
        ws = build(args.entity, args.project, name, group_by or list(DEFAULT_GROUP), args.sweep, args.group,
                   keys)
        sys.stdout.write(json.dumps(spec(ws), indent=1) + "\n")
        return
    import requests
    import wandb

    server_errors = (wandb.errors.Error, requests.exceptions.RequestException, ValueError)
    try:
        runs = _server_runs(args.entity, args.project, args.sweep, args.group)
    except server_errors as err:
        parser.error(f"W&B: {err} (log in with `wandb login` or set WANDB_API_KEY; --print needs no server)")
    if not runs:
        which = f" for sweep {args.sweep}" if args.sweep else f" in group {args.group}" if args.group else ""
        parser.error(f"no W&B runs in {args.entity}/{args.project}{which}")
    keys = {k for r in runs for k in r.summary.keys()}  # noqa: SIM118 (a W&B summary object)
    summaries = [dict(r.summary) for r in runs]
    hps = [dict(r.config.get("hp") or {}) for r in runs]
    ws = build(args.entity, args.project, name, group_by or _varied(hps) or list(DEFAULT_GROUP),
               args.sweep, args.group, keys, summaries)
    try:
        ws.save()
    except server_errors as err:
        parser.error(f"W&B: saving the workspace failed: {err}")
    sys.stdout.write(f"{ws.url}\n")
