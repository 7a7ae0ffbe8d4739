"""Run the batch's per-file task on a Dask distributed cluster (``radint[dask]``)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from radint.batch import FileOutcome, _init_worker, process_file
from radint.config import IntegrationConfig
from radint.exceptions import BackendUnavailableError, InvalidInputError

#: A scheduler address: an optional protocol, a host (a bracketed IPv6 address too) and a port.
_ADDRESS = re.compile(
    r"(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d+)"
)
_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")


def parse_address(address: str) -> int | None:
    """Check a ``--dask`` value before anything else runs: ``local`` (2 workers) or
    ``local:N`` gives the number of local workers; a scheduler's ``[PROTOCOL://]HOST:PORT``
    gives None.

    Raises
    ------
    InvalidInputError
        Naming what is wrong (``local:abc``, ``local:0``, ``tcp://`` without a port, an empty
        host, a port out of range): a malformed value raised a traceback or, ``local:0``, waited
        for workers forever.
    """
    if address == "local":
        return 2
    if address.startswith("local:"):
        n = address.split(":", 1)[1]
        if not re.fullmatch(r"\+?\d+", n.strip()) or int(n) < 1:
            raise InvalidInputError(f"--dask local:N needs a whole number N >= 1, got {n!r}")
        return int(n)
    m = _ADDRESS.fullmatch(address.strip())
    problem = ""
    if m is None:
        problem = "expected local:N or a scheduler's address HOST:PORT"
    elif m["scheme"] and m["scheme"] not in _SCHEMES:
        problem = f"unknown protocol {m['scheme']!r} (one of {', '.join(_SCHEMES)})"
    elif not 1 <= int(m["port"]) <= 65535:
        problem = f"port {m['port']} is not in 1..65535"
    if problem:
        raise InvalidInputError(
            f"--dask {address!r}: {problem} (e.g. local:4, tcp://10.0.0.5:8786, node12:8786)"
        )
    return None


def require_distributed() -> Any:
    """The ``dask.distributed`` module, or a BackendUnavailableError naming the extra."""
    try:
        import dask.distributed
    except ImportError as e:
        raise BackendUnavailableError(
            f"--dask needs dask.distributed ({e}); install the extra: pip install 'radint[dask]'"
        ) from e
    return dask.distributed


def _client(address: str) -> Any:
    distributed = require_distributed()
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    n = parse_address(address)
    if n is not None:
        # The scheduler serves HTTP whatever the dashboard setting (None meant :8787 on every
        # interface, and a warning where that port was taken): a free port on loopback.
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        )
        return Client(cluster)
    return Client(address)


#: Seconds a worker gathers frame counts before it sends them on (events go through the
#: scheduler: one per stack of a few frames would be thousands a second on a large cluster).
_FRAMES_EVERY_S = 0.25

#: The one event topic of every run's frame counts, each event ``[run, n]``: the scheduler
#: keeps a topic's recent events for as long as it runs, so a topic per run would pile up on a
#: long-lived cluster.
_FRAMES_TOPIC = "radint-frames"


class _FramesEvents:
    """Frame counts of one task of run ``run``, sent to the client as events, at most every
    :data:`_FRAMES_EVERY_S` and once more as the task ends."""

    def __init__(self, run: str) -> None:
        self.run, self.pending, self.sent_at = run, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        """Count ``n`` more frames integrated; send the count when it is due."""
        self.pending += n
        if time.monotonic() - self.sent_at >= _FRAMES_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Send the frames counted since the last event, if any."""
        if self.pending:
            worker = require_distributed().get_worker()
            worker.log_event(_FRAMES_TOPIC, [self.run, self.pending])
            self.pending, self.sent_at = 0, time.monotonic()


def _task(
    config: IntegrationConfig,
    cache: str,
    n_threads: int | None,
    backend: str,
    path: str,
    name: str | None,
    opts: dict[str, Any],
    rules: dict[str, Any],
    frames_run: str | None = None,
) -> FileOutcome:
    from radint import batch

    dark = opts.get("dark")
    integ = batch._WORKER.get("integrator")
    # Config equality ignores where keys were set, which decides zip_parameters().
    key = (config, tuple(sorted(config.zip_parameters().items())), cache, n_threads, backend,
           tuple(sorted(rules.items())))  # fmt: skip
    # A worker of a long-lived cluster keeps its integrator between runs: not when this run has
    # other settings or another dark (or none). The integrator is handed on explicitly, so a
    # task of another run swapping the worker's integrator meanwhile cannot reach this one.
    if (
        integ is None
        or batch._WORKER.get("key") != key
        or ((dark is None) != (integ.dark is None) or integ.same_dark(dark) is not integ.dark)
    ):
        _init_worker(config, cache, n_threads, backend, dark=dark, **rules)
        integ = batch._WORKER["integrator"]
        batch._WORKER["key"] = key
    if frames_run is None:
        return process_file(path, name=name, integrator=integ, **opts)
    events = _FramesEvents(frames_run)
    try:
        return process_file(path, name=name, integrator=integ, on_frames=events, **opts)
    finally:
        events.flush()


def run_on_dask(
    address: str,
    config: IntegrationConfig,
    cache: str,
    n_threads: int | None,
    backend: str,
    files: Sequence[str],
    names: Sequence[str | None],
    opts: dict[str, Any],
    rules: dict[str, Any],
    on_frames: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, FileOutcome]]:
    """Yield (index, outcome) as files finish on the cluster at ``address`` (or ``local:N``);
    ``rules``: the Integrator's ``compat`` and the ``midas_map`` directory (or None).
    ``on_frames(n)`` is called (on the client's event thread) as the workers integrate frames:
    they send their counts as Dask events; a file retried after its worker died counts its
    frames again."""
    client = _client(address)
    as_completed = require_distributed().as_completed
    run = None
    received = [0]  # frames this run's events told of
    if on_frames is not None:
        run = uuid.uuid4().hex

        def on_event(event: tuple[float, Any]) -> None:
            message = event[1]
            if isinstance(message, (list, tuple)) and len(message) == 2 and message[0] == run:
                received[0] += int(message[1])
                on_frames(int(message[1]))

        client.subscribe_topic(_FRAMES_TOPIC, on_event)
    try:
        futures = [
            client.submit(
                _task,
                config,
                cache,
                n_threads,
                backend,
                f,
                names[i],
                opts,
                rules,
                run,
                pure=False,
            )
            for i, f in enumerate(files)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        integrated = 0
        for fut in as_completed(futures):
            outcome = fut.result()
            if outcome.ok and not outcome.skipped:  # a skipped file integrated nothing
                integrated += outcome.n_frames
            yield index[fut.key], outcome
        # Events come by way of the scheduler, after their task's result: the last ones
        # are waited for (briefly), so the count is whole when the run returns.
        until = time.monotonic() + 2.0
        while run is not None and received[0] < integrated and time.monotonic() < until:
            time.sleep(0.01)
    finally:
        if run is not None:
            client.unsubscribe_topic(_FRAMES_TOPIC)
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None and parse_address(address) is not None:
            cluster.close()
