"""Who runs the cases: Ray actors (a local instance by default, or a cluster), or this process.

Both hand each case to :func:`MedXAILib.cohort.case.process_case` inside a :class:`CaseWorker` that loads
the model once. With Ray (:func:`run_on_ray`):

- each worker is an actor with one CPU (and a GPU, or an equal share of the cluster's GPUs, when it has
  some); its torch uses ``threads`` threads, so results do not depend on the number of workers;
- a worker whose process dies (killed, out of memory) is restarted by Ray, which retries its case on
  the new process (``max_restarts``/``max_task_retries``); a case whose first attempt had committed is
  found complete and not done twice;
- the driver keeps every worker busy with one case at a time, so it knows which process runs which case
  (the ``started`` events) and can stop all of them on Ctrl-C;
- without an address the driver starts a local instance bound to 127.0.0.1 (no dashboard, a bounded
  object store) and stops it at the end; ``auto`` or ``ray://HOST:PORT`` joins a running cluster, whose
  nodes must have MedXAILib installed and see the cohort folder (a shared file system).

Ray is imported here only, and only when :func:`run_on_ray` runs (``pip install 'slicer-medxai[cohort]'``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

from ..errors import InputError, first_line
from ..monitor import Monitor

__all__ = ["CaseWorker", "Job", "run_locally", "run_on_ray", "RAY_MISSING", "import_ray"]

#: A case to run: (case id, its run request, its output guard part).
Job = tuple[str, Any, Any]
Event = Callable[[dict[str, Any]], None]

RAY_MISSING = ("the cohort command runs its cases on Ray, which is not installed: pip install 'slicer-medxai[cohort]' "
               "(or pip install 'ray>=2.40,<3'); --ray off runs the cases one by one in this process instead")


def import_ray(local: bool = False) -> Any:
    """``import ray``, or an InputError that says how to install it.

    Args:
        local: a local instance will be started: it binds to the loopback address only (Ray's node address
            is fixed when ray is first imported, so this is set before).
    """
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


class CaseWorker:
    """Runs cases with one loaded model (a Ray actor, or used directly in this process).

    Args:
        model_path, device, trust_bundle, model_options: the model to load (once).
        threads: torch threads of this worker.
        default_score: passed to :func:`~MedXAILib.cohort.case.process_case`.
        allocator: the driver's ``MEDXAI_ALLOCATOR`` (:func:`MedXAILib.allocator.choice`); ``keep`` only for a
            worker in a process of its own (a Ray actor).
    """

    def __init__(self, model_path: str, device: str = "auto", trust_bundle: bool = False, threads: int = 1,
                 default_score: str = "", model_options: Optional[dict[str, Any]] = None,
                 allocator: str = "system") -> None:
        import torch

        from ..runs import load_model_cached

        if allocator == "keep":  # a Ray actor, a process of MedXAI's own: the driver's MEDXAI_ALLOCATOR
            from ..allocator import keep_freed_buffers

            keep_freed_buffers()
        torch.set_num_threads(max(1, int(threads)))
        self.default_score = default_score
        self.model = load_model_cached(model_path, device, trust_bundle, model_options)

    def pid(self) -> int:
        """This worker's process id (the driver reports which process runs which case)."""
        return os.getpid()

    def run(self, case_id: str, request: Any, part: Any) -> dict[str, Any]:
        """:func:`~MedXAILib.cohort.case.process_case` with this worker's model."""
        from .case import process_case

        return process_case(case_id, request, part, self.model, default_score=self.default_score)


def run_locally(jobs: Sequence[Job], worker_args: dict[str, Any], on_event: Event,
                monitor: Optional[Monitor] = None) -> list[dict[str, Any]]:
    """Run the cases one by one in this process (``--ray off``); Ctrl-C stops between layers of a case."""
    import torch

    monitor = monitor or Monitor()
    threads = torch.get_num_threads()
    try:
        worker = CaseWorker(**worker_args)
        outcomes = []
        from .case import process_case

        for index, (case_id, request, part) in enumerate(jobs):
            monitor.check()
            on_event({"event": "started", "case": case_id, "worker": os.getpid()})
            with monitor.stage(index / len(jobs), (index + 1) / len(jobs)):  # the case's own progress, scaled
                outcome = process_case(case_id, request, part, worker.model, monitor=monitor,
                                       default_score=worker.default_score)
            on_event({"event": outcome["status"], **{k: v for k, v in outcome.items() if k != "rows"}})
            outcomes.append(outcome)
        return outcomes
    finally:
        torch.set_num_threads(threads)


def _local_instance(ray: Any, workers: int, object_store_mb: int) -> None:
    ray.init(num_cpus=max(1, int(workers)), object_store_memory=int(object_store_mb) * 1024 * 1024,
             include_dashboard=False, log_to_driver=False, configure_logging=False,
             namespace="medxai-cohort")


def run_on_ray(jobs: Sequence[Job], worker_args: dict[str, Any], on_event: Event, workers: int = 2,
               address: Optional[str] = None, object_store_mb: int = 300, max_retries: int = 2,
               monitor: Optional[Monitor] = None, allocator: str = "system") -> list[dict[str, Any]]:
    """Run the cases on Ray actors; returns one outcome per case (in completion order).

    Args:
        jobs: the cases to run.
        worker_args: :class:`CaseWorker`'s arguments.
        on_event: called with ``started``/``done``/``skipped``/``failed``/``retried`` events (dicts).
        workers: actors (each one CPU; and a GPU share when the cluster has GPUs).
        address: None starts (and then stops) a local instance; ``auto``, ``HOST:PORT`` or
            ``ray://HOST:PORT`` joins a running cluster.
        object_store_mb: the local instance's object store (the cases move only small requests).
        max_retries: restarts of a dead worker process, and retries of the case it was running.
        monitor: cancel (checked while waiting).
        allocator: the driver's ``MEDXAI_ALLOCATOR`` (:func:`MedXAILib.allocator.choice`), for the actors.

    Raises:
        InputError: Ray is not installed, or the cluster cannot be reached.
        KeyboardInterrupt, Cancelled: the run was stopped; the workers are stopped too.
    """
    monitor = monitor or Monitor()
    ray = import_ray(local=address is None)
    started_here = False
    if not ray.is_initialized():
        try:
            if address is None:
                _local_instance(ray, workers, object_store_mb)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False, namespace="medxai-cohort")
            started_here = True  # shut down at the end: stops a local instance, leaves a cluster running
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise InputError(f"cannot start or reach Ray at {address or 'a local instance'}: "
                             f"{first_line(error)}") from None
    actors: list[Any] = []
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        share = min(1.0, gpus / workers) if gpus > 0 else 0.0
        args = {**worker_args, "allocator": allocator}  # the actors' processes are MedXAI's own
        if share > 0 and args.get("device", "auto") in ("auto", "cpu"):
            args["device"] = "cuda"
        remote = ray.remote(num_cpus=1, num_gpus=share, max_restarts=max_retries,
                            max_task_retries=max_retries)(CaseWorker)
        actors = [remote.remote(**args) for _ in range(max(1, int(workers)))]
        pids = dict(zip(range(len(actors)), ray.get([a.pid.remote() for a in actors])))
        pending = list(jobs)
        running: dict[Any, tuple[int, str]] = {}  # object ref -> (actor index, case id)
        outcomes: list[dict[str, Any]] = []

        def submit(index: int) -> None:
            case_id, request, part = pending.pop(0)
            running[actors[index].run.remote(case_id, request, part)] = (index, case_id)
            on_event({"event": "started", "case": case_id, "worker": pids[index]})

        for index in range(len(actors)):
            if pending:
                submit(index)
        while running:
            monitor.check()
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in done:
                index, case_id = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError,
                        ray.exceptions.WorkerCrashedError) as error:  # retries used up: the case fails
                    outcome = {"case": case_id, "status": "failed", "rows": [], "warnings": [],
                               "error": f"its worker process died {max_retries + 1} times "
                                        f"({type(error).__name__}); nothing of it was kept",
                               "worker": pids[index]}
                    actors[index] = remote.remote(**args)  # a fresh worker in its place
                    pids[index] = ray.get(actors[index].pid.remote())
                if outcome.get("worker") != pids[index]:
                    on_event({"event": "retried", "case": case_id, "worker": outcome.get("worker"),
                              "dead_worker": pids[index]})
                    pids[index] = outcome.get("worker", pids[index])
                on_event({"event": outcome["status"], **{k: v for k, v in outcome.items() if k != "rows"}})
                outcomes.append(outcome)
                if pending:
                    submit(index)
        return outcomes
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started_here:
            ray.shutdown()
