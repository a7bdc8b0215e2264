"""Networks that accept and never answer, refuse, or do not resolve (issue 21): bounded waits, clear words.

A local socket server accepts every connection and never sends a byte (a dead proxy). Through it as the
proxy (``https_proxy``/``http_proxy``), ``--data.download true`` of torchvision datasets exits 2 within
the bounded timeout with a message naming the dataset's URLs, the proxy and "no answer"; a proxy port
that refuses and one that does not resolve are named too. The W&B logger with a key but a W&B server
that is stalled, refuses or does not resolve (``WANDB_BASE_URL``) logs offline within seconds instead of
failing after ``wandb.init``'s 90 s with a ``CommError``, and says what it tried.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_mem import network
from tests.helpers.exitcodes import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stalled() -> Iterator[str]:
    """``127.0.0.1:<port>`` of a server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _refused_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "svhn"])
@pytest.mark.parametrize("proxy", ["stalled", "refused", "unresolvable"])
def test_a_download_through_a_dead_network_is_bounded_and_named(
        dataset: str, proxy: str, stalled: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    address = {"stalled": stalled, "refused": f"127.0.0.1:{_refused_port()}",
               "unresolvable": "no-such-proxy.invalid:3128"}[proxy]
    for key in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(key, f"http://{address}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(network, "DOWNLOAD_TIMEOUT_S", 1.0)
    urllib.request.install_opener(None)  # urlopen keeps the proxies of its first call: read them again
    start = time.perf_counter()
    code = run_cli("fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.dataset", dataset,
                   "--data.download", "true", "--data.data_dir", str(tmp_path / "data"),
                   "--trainer.max_epochs", "1", "--run.root", str(tmp_path / "runs"))
    took = time.perf_counter() - start
    out = capsys.readouterr()
    err = out.err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert took < 30  # a few 1-s timeouts, not for ever
    error = next(line for line in err.splitlines() if line.startswith("error: "))
    assert f"dataset {dataset!r}: downloading into {tmp_path / 'data'}" in error
    assert f"http://{address}" in error  # the proxy tried
    url = {"mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
           "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
           "svhn": "http://ufldl.stanford.edu/housenumbers/train_32x32.mat"}[dataset]
    assert url in error
    assert ("no answer within 1 s" in error) == (proxy == "stalled")


def test_a_timeout_is_found_through_the_causes() -> None:
    assert network.timed_out(TimeoutError("x"))
    assert not network.timed_out(ConnectionRefusedError(111, "Connection refused"))
    assert network.timed_out(urllib.error.URLError(TimeoutError("timed out")))
    wrapped = RuntimeError("Error downloading")
    wrapped.__cause__ = urllib.error.URLError(OSError("timed out"))
    assert network.timed_out(wrapped)


@pytest.mark.parametrize("server", ["stalled", "refused", "unresolvable"])
def test_the_wandb_probe_is_bounded(server: str, stalled: str) -> None:
    url = {"stalled": f"http://{stalled}", "refused": f"http://127.0.0.1:{_refused_port()}",
           "unresolvable": "http://no-such-host.invalid"}[server]
    start = time.perf_counter()
    reachable, tried = network.wandb_reachable(url, timeout=1.0)
    assert not reachable and tried.startswith(f"{url}: ") and tried.endswith("within 1 s")
    assert ("no answer" in tried) == (server == "stalled")
    assert time.perf_counter() - start < 5


@pytest.mark.slow  # a real fit with W&B in a subprocess (~15 s)
@pytest.mark.parametrize("server", ["stalled", "unresolvable"])
def test_wandb_with_a_key_and_no_server_logs_offline_promptly(server: str, stalled: str,
                                                              tmp_path: Path) -> None:
    url = f"http://{stalled}" if server == "stalled" else "http://no-such-host.invalid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "LIGHTNING_MEM_RUN_ID"}
    env |= {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": url, "WANDB_SILENT": "true",
            "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
            "WANDB_CONFIG_DIR": str(tmp_path / "config"), "WANDB_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "lightning_mem", "fit",
           "--config", str(REPO / "configs" / "quickstart.yaml"),
           "--config", str(REPO / "configs" / "logger" / "wandb.yaml"), "--data.dataset", "digits",
           "--model.net.width", "16", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
           "--trainer.enable_progress_bar", "false", "--run.root", str(tmp_path / "runs"),
           "--run.name", "t", "--run.id", "r"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert took < 90  # wandb.init's own wait for the server is 90 s, then a CommError
    assert f"W&B: {url}: " in done.stderr and "logging offline into" in done.stderr
    assert list((tmp_path / "runs" / "t" / "r" / "wandb").glob("offline-run-*/run-*.wandb"))
