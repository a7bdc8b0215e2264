"""Tests of lightning_mem.cli.commands: the top-level help, unknown subcommands, and tools that start without
torch or Lightning (checked in a fresh interpreter, where nothing else imported them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lightning_mem.cli import commands


def test_help_lists_every_subcommand_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    commands.main(["--help"])
    out = capsys.readouterr().out
    names = [*commands.LIGHTNING, *commands.TOOLS, *commands.PASSTHROUGH]
    assert names[:6] == ["fit", "validate", "test", "sweep", "report", "theorem1"]
    assert out.splitlines()[0] == f"usage: lightning-mem {{{','.join(names)}}} ..."
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == names  # one line each, in order
    assert "predict" not in out


@pytest.mark.parametrize(("argv", "message"), [
    ([], "lightning-mem: error: a subcommand is required; choose from fit, validate, test, sweep"),
    (["predict"], "error: unknown subcommand 'predict'; choose from fit, validate, test, sweep"),
    (["fitt", "--config", "x.yaml"], "unknown subcommand 'fitt'"),
])
def test_missing_or_unknown_subcommand_exits_2(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        commands.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_mem import __version__

    commands.main(["--version"])
    assert capsys.readouterr().out == f"lightning-mem {__version__}\n"


@pytest.mark.parametrize("tool", ["sweep", "report"])
def test_tools_start_without_torch_or_lightning(tool: str) -> None:
    code = textwrap.dedent(f"""
        import sys
        from lightning_mem.cli.commands import main
        try:
            main([{tool!r}, "--help"])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        heavy = sorted(m for m in ("torch", "lightning", "lightning.pytorch", "wandb") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"lightning-mem {tool}" in proc.stdout  # the tool's own help was printed
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


def test_fit_help_all_goes_to_lightning(capsys: pytest.CaptureFixture[str]) -> None:
    # `fit --help` is the short table (tests/cli/test_fit_help.py); `--help-all` LightningCLI's full help.
    with pytest.raises(SystemExit) as exc:
        commands.main(["fit", "--help-all"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--ckpt_path" in out and "--run.id" in out and "--precision.tf32" in out
    assert "--run.alignment_monitor" in out and "--run.divergence_guard" in out


def test_wandb_runs_wandbs_own_command_line() -> None:
    # `docker run lightning-mem wandb agent ...` (the image's entrypoint is lightning-mem) runs W&B's CLI of
    # the same environment, in place of this process: its output and its exit code are wandb's.
    import wandb

    lm = [sys.executable, "-m", "lightning_mem"]
    proc = subprocess.run([*lm, "wandb", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"wandb, version {wandb.__version__}"
    proc = subprocess.run([*lm, "wandb", "agent"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Missing argument 'SWEEP_ID'" in proc.stderr, proc.stderr[-2000:]


def test_a_passthrough_program_that_is_missing_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(commands.PASSTHROUGH, "no-such-program-xyz", "a program that is not installed")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(SystemExit) as exc:
        commands.main(["no-such-program-xyz", "--version"])
    assert exc.value.code == 2
    assert "'no-such-program-xyz' is not installed in this environment" in capsys.readouterr().err


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly() -> None:
    # `lightning-mem configs list | head -0`: the pipe is closed before the command writes to it.
    proc = subprocess.Popen([sys.executable, "-m", "lightning_mem", "configs", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
