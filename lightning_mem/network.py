"""Bounded waits on the network: a dataset download and the W&B server.

A network that accepts a connection and never answers (a dead proxy, a captive portal, a firewall that
drops replies) blocks a socket read for ever: Python's sockets have no timeout unless one is set, and
neither torchvision's downloader nor a probe of the W&B server sets one.

- :func:`socket_timeout` bounds every blocking socket operation of a download (``--data.download true``)
  by :data:`DOWNLOAD_TIMEOUT_S`; :func:`download_failure` then says what was tried (the URLs, the proxy)
  and that nothing answered.
- :func:`wandb_reachable` asks the W&B server for any HTTP answer within :data:`WANDB_PROBE_TIMEOUT_S`;
  without one the CLI logs to W&B offline (``wandb sync`` uploads the run later), as it does without a key.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

DOWNLOAD_TIMEOUT_S = 30.0  # per blocking socket operation (connect, each read) of a download
WANDB_PROBE_TIMEOUT_S = 5.0  # for any answer of the W&B server before a run goes online
WANDB_DEFAULT_URL = "https://api.wandb.ai"


@contextlib.contextmanager
def socket_timeout(seconds: float | None) -> Iterator[None]:
    """Python's default socket timeout set to ``seconds`` for the block (then put back)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def timed_out(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it was raised from or during is a timeout (``socket.timeout``,
    ``TimeoutError``, a ``URLError`` whose reason is one, or a message that says "timed out")."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, TimeoutError) or "timed out" in str(err):
            return True
        reason = getattr(err, "reason", None)
        if isinstance(reason, BaseException) and timed_out(reason):
            return True
        err = err.__cause__ or err.__context__
    return False


def proxies() -> str:
    """The proxies urllib takes from the environment, for a message ("" when none)."""
    found = {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https")}
    return ", ".join(f"{k} proxy {v}" for k, v in sorted(found.items()))


def download_failure(dataset: str, folder: str, sources: Sequence[str], err: BaseException) -> str:
    """The message of a download that failed: what was tried, whether nothing answered, what to do."""
    tried = ", ".join(sources) or "torchvision's sources"
    via = f" through the {proxies()}" if proxies() else ""
    if timed_out(err):
        return (f"dataset {dataset!r}: downloading into {folder} failed: no answer within "
                f"{DOWNLOAD_TIMEOUT_S:g} s from {tried}{via}; check the network (or the proxy), or copy the "
                f"files into {folder} and leave --data.download false")
    text = " ".join(str(err).split())[:300]  # torchvision's message spans lines: one line here
    return (f"dataset {dataset!r}: downloading into {folder} failed ({type(err).__name__}: {text}); tried "
            f"{tried}{via}")


def wandb_reachable(base_url: str | None = None, timeout: float | None = None) -> tuple[bool, str]:
    """(whether the W&B server at ``base_url`` gives any HTTP answer within ``timeout`` seconds, what was
    tried and what happened). An HTTP error status is an answer: the server is there."""
    url = (base_url or WANDB_DEFAULT_URL).rstrip("/")
    seconds = WANDB_PROBE_TIMEOUT_S if timeout is None else timeout
    try:
        opener = urllib.request.build_opener()  # the proxies of the environment now (urlopen's are cached)
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=seconds):
            return True, f"{url} answered"
    except urllib.error.HTTPError as err:
        return True, f"{url} answered {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        why = "no answer" if timed_out(err) else str(getattr(err, "reason", err))
        return False, f"{url}: {why} within {seconds:g} s"
