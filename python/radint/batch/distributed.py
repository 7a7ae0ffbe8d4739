"""Run the batch's per-file task on a Dask distributed cluster (``radint[dask]``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from radint.batch import FileOutcome, _init_worker, process_file
from radint.exceptions import BackendUnavailableError


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
    if address.startswith("local"):
        n = int(address.split(":", 1)[1]) if ":" in address else 2
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        )
        return Client(cluster)
    return Client(address)


def _task(config, cache, n_threads, backend, path, name, opts, rules) -> FileOutcome:
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
    return process_file(path, name=name, integrator=integ, **opts)


def run_on_dask(
    address, config, cache, n_threads, backend, files, names, opts, rules
) -> Iterator[tuple[int, FileOutcome]]:
    """Yield (index, outcome) as files finish on the cluster at ``address`` (or ``local:N``);
    ``rules``: the Integrator's ``compat`` and the ``midas_map`` directory (or None)."""
    client = _client(address)
    as_completed = require_distributed().as_completed
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
                pure=False,
            )
            for i, f in enumerate(files)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            yield index[fut.key], fut.result()
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None and address.startswith("local"):
            cluster.close()
