"""The one Dask scheduler (or client) that all stages of a pipeline run share."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from geoseg.parallel import LOCAL_SCHEDULERS, check_scheduler
from geoseg.pipeline.schema import ClusterConfig

log = logging.getLogger(__name__)


class SharedScheduler:
    """The Dask scheduler of a run: a local name, or ONE client shared by all stages.

    The client (of a ``tcp://`` address, or of a LocalCluster for ``cluster: local``) is
    started when a stage first asks for it and closed by :meth:`close`.
    """

    def __init__(self, scheduler: Any, cluster: ClusterConfig | None) -> None:
        self.spec, self.cluster = scheduler, cluster
        self._client: Any = None
        self._owned: list[Any] = []

    def get(self) -> Any:
        """The value to pass as ``scheduler=`` to :func:`geoseg.parallel.compute`."""
        if not isinstance(self.spec, str) or (self.cluster is None and self.spec in LOCAL_SCHEDULERS):
            return self.spec  # a local scheduler name, or the caller's own Client
        if self._client is None:
            self._client, self._owned = make_client(self.spec, self.cluster)
        return self._client

    def close(self) -> None:
        """Close the client and cluster started here (never the caller's)."""
        for obj in self._owned:
            with contextlib.suppress(Exception):
                obj.close()
        self._client, self._owned = None, []


def make_client(address: str, cluster: ClusterConfig | None) -> tuple[Any, list[Any]]:
    """A ``distributed.Client`` of ``address`` or of a new LocalCluster, and what to close."""
    from distributed import Client, LocalCluster

    if cluster is None:
        check_scheduler(address)  # nothing listening: one line now, not Dask's 30 s timeout
        client = Client(address, set_as_default=False)
        return client, [client]
    env = KeptEnviron()
    lc = LocalCluster(n_workers=cluster.workers, threads_per_worker=cluster.threads_per_worker,
                      dashboard_address=None)
    env.close()
    log.info("started a LocalCluster of %d workers at %s", cluster.workers, lc.scheduler_address)
    client = Client(lc, set_as_default=False)
    return client, [client, lc, env]


class KeptEnviron:
    """``os.environ`` as it was at creation, put back by :meth:`close`.

    distributed's Nanny sets its ``pre-spawn-environ`` (``OMP_NUM_THREADS=1``,
    ``MALLOC_TRIM_THRESHOLD_``...) and ``__DASK_PARENT_PID`` in *this* process's
    ``os.environ`` before spawning each worker, and leaves them there: every process
    started afterwards (the ranks of a ``train --devices N`` stage, say) would inherit one
    thread per rank. Only what changed between creation and :meth:`close` is put back.
    """

    def __init__(self) -> None:
        import os

        self._before = dict(os.environ)

    def close(self) -> None:
        """Restore the variables (workers restarted later set them again; the last close wins)."""
        import os

        now = dict(os.environ)
        for k in now.keys() - self._before.keys():
            os.environ.pop(k, None)
        for k, v in self._before.items():
            if now.get(k) != v:
                os.environ[k] = v
