"""A Ray cluster to run on: ``local`` (a Ray instance started on this machine) or the address of a running one.

Shared by ``caption-region --ray`` (:mod:`ccexpert_core.geo.ray_runner`) and ``serve --ray``
(:mod:`backend.ray_serve`). It turns what usually goes wrong into one line each, before any work is sent:

- nobody listens at the address (``ray.init`` would retry for minutes and end in a traceback);
- a node whose Python lacks the packages, or has another ccexpert than this machine;
- a node that cannot open the rasters or the model folder (they must be on a path every node reads the same way);
- more workers than the cluster has GPUs or CPUs for (Ray would wait for them forever).

Ray is imported when a cluster is connected, never by ``import ccexpert_core``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from ccexpert_core import __version__
from ccexpert_core.errors import CCExpertError

#: ``--ray local``: start a Ray instance on this machine for the run (stopped at its end).
LOCAL = "local"
#: What every node needs to caption (the serving command adds the web stack).
CAPTION_MODULES = ("ccexpert_core", "torch", "transformers", "rasterio")
INSTALL_HINT = "pip install 'ccexpert[ray]'"
#: How long a node may take to answer the check (a node starting a worker process for it takes seconds).
CHECK_TIMEOUT_S = 120.0
#: How long connecting to the head's port may take before the address is taken as nobody listening.
CONNECT_TIMEOUT_S = 5.0
#: Ray's own ports when an address leaves its port out: the GCS of ``ray start --head``, and Ray Client.
GCS_PORT, CLIENT_PORT = 6379, 10001
#: Ray's switch for token authentication, and where ``ray start`` keeps the token.
AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
TOKEN_FILE = Path.home() / ".ray" / "auth_token"
#: Environment of the job's workers: library chatter off (model loads would print progress bars into the logs).
WORKER_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}

Log = Callable[[str], None]


@dataclass(frozen=True)
class WorkerPlan:
    """How many model workers (actors or replicas) to start and what each reserves."""

    workers: int
    num_gpus: float
    num_cpus: float = 1.0

    def describe(self, noun: str = "workers") -> str:
        """``2 workers (1 GPU each)``, ``1 worker (CPU)``."""
        name = noun if self.workers != 1 else noun.removesuffix("s")
        kind = f"{self.num_gpus:g} GPU each" if self.num_gpus else "CPU"
        return f"{self.workers} {name} ({kind})"


def prepare_ray() -> bool:
    """Refuse ``--ray`` in one line where Ray is not installed, and send Ray's authentication token when this
    machine has one (see :func:`use_ray_token`, whose answer this is). Call before ``ray`` is first imported."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise CCExpertError(f"--ray needs Ray on this machine and on every node: {INSTALL_HINT}")
    return use_ray_token()


def head_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port ``ray.init(address)`` will connect to (None for ``local`` and ``auto``, which find it
    themselves). Raises CCExpertError for an address that is not ``[ray://]HOST[:PORT]``."""
    if address in (LOCAL, "auto"):
        return None
    rest, default_port = (address[len("ray://"):], CLIENT_PORT) if address.startswith("ray://") else (address, GCS_PORT)
    host, colon, port_text = rest.rpartition(":")
    if not colon or "]" in port_text:  # no port given (an IPv6 host alone ends in "]")
        host, port_text = rest, str(default_port)
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or "/" in host:
        raise CCExpertError(
            f"--ray {address!r} is not a Ray address: give 'local', or the head node's HOST:PORT "
            f"(e.g. 10.0.0.1:{GCS_PORT}, as `ray start --head` prints it) or ray://HOST:{CLIENT_PORT}"
        )
    return host, int(port_text)


def check_listening(address: str) -> None:
    """Refuse, in one line, an address where nobody accepts a connection."""
    endpoint = head_endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise CCExpertError(
            f"no Ray cluster answers at {address} ({reason}): start one with `ray start --head` on the head node "
            f"and give the address it prints, or use --ray {LOCAL} to start Ray on this machine"
        ) from None


def use_ray_token() -> bool:
    """Send Ray's authentication token when this machine has one: whether it has.

    ``ray.init`` sends it unasked only to a cluster it finds itself, never to an explicit address (Ray 2.5x starts
    clusters with token authentication by default), so a driver given the head's address would be refused with a
    minute of retries. A cluster without authentication ignores the token. ``RAY_AUTH_MODE``, if set, decides.
    """
    if os.environ.get(AUTH_MODE_VARIABLE):
        return os.environ[AUTH_MODE_VARIABLE].lower() == "token"
    found = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) or TOKEN_FILE.is_file()
    if found:
        # Read by Ray when it loads its configuration, as ray is imported.
        os.environ[AUTH_MODE_VARIABLE] = "token"
    return found


class RayCluster:
    """A connection to a Ray cluster for one command: :meth:`connect`, check the nodes, plan workers, :meth:`close`.

    A process already connected to Ray (a library caller's own ``ray.init``) is used as it is and left connected.
    """

    def __init__(self, address: str, log: Log = lambda message: None) -> None:
        self.address = address
        self.log = log
        self._owned = False

    def connect(self) -> None:
        """Connect (or start Ray on this machine for ``local``), with one-line errors."""
        token = prepare_ray()
        check_listening(self.address)
        import ray
        import ray.data

        if not ray.is_initialized():
            options: dict[str, Any] = {
                "logging_level": logging.WARNING,
                # Workers' output stays in the nodes' Ray logs: model loads and warnings would break the progress bar.
                "log_to_driver": False,
                "runtime_env": {"env_vars": dict(WORKER_ENV)},
            }
            if self.address == LOCAL:
                options["include_dashboard"] = False
            try:
                ray.init(address=self.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                hint = "" if token else (
                    f" (a cluster with Ray's token authentication wants its token here: copy it from the head "
                    f"(`ray get-auth-token`) to {TOKEN_FILE}, or set RAY_AUTH_TOKEN)"
                )
                raise CCExpertError(f"cannot connect to the Ray cluster at {self.address}: {first}{hint}") from None
            self._owned = True
        # Ray Data's own progress bars and notices would interleave with the command's progress bar.
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)

    def close(self) -> None:
        """Disconnect (which ends this job's actors and tasks on the cluster), or stop the ``local`` instance."""
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- what the cluster has -----
    def resources(self) -> tuple[float, float]:
        """The cluster's ``(CPUs, GPUs)``."""
        import ray

        total = ray.cluster_resources()
        return float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))

    def plan(
        self, workers: int | None, gpus_per_worker: float | None, noun: str = "workers", spare_cpus: float = 0.0,
        also: int = 0, option: str = "--ray-workers", gpu_option: str = "--ray-gpus-per-worker",
    ) -> WorkerPlan:
        """How many workers to start: by default one per GPU (``1 / gpus_per_worker`` per GPU), one on the CPU
        where the cluster has no GPU. Refuses a plan the cluster cannot hold with ``also`` more workers of the same
        kind (the UI's replica) and ``spare_cpus`` for others (the region's readers): Ray would wait for the
        missing resources forever."""
        cpus, gpus = self.resources()
        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if gpus >= 1 else 0.0
        elif gpus_per_worker > 0 and gpus == 0:
            raise CCExpertError(
                f"{gpu_option} {gpus_per_worker:g}: the Ray cluster at {self.address} has no GPU "
                f"(give {gpu_option} 0 for {noun} on the CPU)"
            )
        if workers is None:
            fit = int(gpus / gpus_per_worker + 1e-9) - also if gpus_per_worker else 1
            workers = max(1, fit)
        plan = WorkerPlan(workers, gpus_per_worker)
        wanted = WorkerPlan(workers + also, gpus_per_worker)
        shown = plan.describe(noun) + (f" and {also} more for the UI" if also else "")
        if wanted.workers * wanted.num_gpus > gpus + 1e-9:
            raise CCExpertError(
                f"{shown} need {wanted.workers * wanted.num_gpus:g} GPUs; the Ray cluster at {self.address} has "
                f"{gpus:g}: give fewer {option}, a smaller {gpu_option}, or add GPU nodes"
            )
        if wanted.workers * wanted.num_cpus + spare_cpus > cpus + 1e-9:
            spare = f" and {spare_cpus:g} to read tiles" if spare_cpus else ""
            raise CCExpertError(
                f"{shown} need {wanted.workers * wanted.num_cpus:g} CPUs{spare}; the Ray cluster at {self.address} "
                f"has {cpus:g}: give fewer {option}, or add nodes"
            )
        return plan

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Ray's records of the nodes that are up."""
        import ray

        return [node for node in ray.nodes() if node.get("Alive")]

    def check_nodes(
        self, modules: Sequence[str] = CAPTION_MODULES, rasters: Sequence[tuple[str, str]] = (),
        model: str | None = None,
    ) -> None:
        """Ask every node, once, whether it can do the work: ``modules`` importable with this ccexpert version,
        each ``(role, GDAL path)`` raster readable (a file, or a URL), the ``model`` folder present (None: the
        default model, which every node must have the same). Raises CCExpertError naming the node and what to do."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from ccexpert_core.defaults import default_model

        check = ray.remote(_node_check())
        nodes = self.alive_nodes()
        raster_paths = list(rasters)
        calls = [
            check.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote(list(modules), raster_paths, model)
            for node in nodes
        ]
        try:
            answers = ray.get(calls, timeout=CHECK_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise CCExpertError(
                f"the Ray cluster's nodes did not answer within {CHECK_TIMEOUT_S:g} s (is a node overloaded or "
                "cut off?)"
            ) from None
        except ray.exceptions.RayError as error:
            raise CCExpertError(f"the Ray cluster could not run a check on its nodes: {last_line(error)}") from None
        expected_default = _model_name(default_model())
        for node, answer in zip(nodes, answers):
            where = f"node {node.get('NodeManagerAddress')} ({answer['host']})"
            if answer["missing"]:
                raise CCExpertError(
                    f"the Ray cluster's Python on {where} cannot import {', '.join(answer['missing'])}: install "
                    f"ccexpert {__version__} on every node ({INSTALL_HINT}, the same version as here)"
                )
            if answer["version"] != __version__:
                raise CCExpertError(
                    f"{where} has ccexpert {answer['version']}, this machine {__version__}: install the same version "
                    "on every node, so that every node reads and captions tiles the same way"
                )
            if answer["unreadable"]:
                role, path, reason = answer["unreadable"][0]
                raise CCExpertError(
                    f"{where} cannot open {role} {path} ({reason}): on Ray the rasters must be readable from every "
                    "node at the same path (a shared file system)"
                )
            if answer["model_missing"]:
                raise CCExpertError(
                    f"{where} has no model folder {model}: put the model on a path every node reads (a shared file "
                    "system), or give a hub id"
                )
            if model is None and answer["default_model"] != expected_default:
                raise CCExpertError(
                    f"{where}'s default model is {answer['default_model']}, this machine's {expected_default}: "
                    "install the same ccexpert (with its demo model) on every node, or give --model"
                )

    def describe(self) -> str:
        """``3 nodes, 24 CPUs, 4 GPUs`` for the run's summary."""
        cpus, gpus = self.resources()
        nodes = len(self.alive_nodes())
        return f"{nodes} node{'s' if nodes != 1 else ''}, {cpus:g} CPUs, {gpus:g} GPUs"


def worker_model(model: str) -> str | None:
    """What the workers load for ``--model`` (or the default): None for the default model (each node loads the one
    installed with its ccexpert, at its own path), a folder's absolute path, else the hub id or preset as given."""
    from ccexpert_core.defaults import default_model

    if model == default_model():
        return None
    folder = Path(model)
    return str(folder.absolute()) if folder.is_dir() else model


def last_line(error: BaseException) -> str:
    """The line that says what went wrong in a Ray error (its text ends with the remote exception's own line)."""
    text = str(getattr(error, "cause", None) or error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _model_name(model: str) -> str:
    """A default model by what it is (``demo_model`` or ``preset:tiny``), whatever folder it was installed in."""
    return model if model.startswith("preset:") else Path(model).name


def _node_check() -> Callable[..., dict[str, Any]]:
    """The function a node runs for :meth:`RayCluster.check_nodes`.

    Built here, so that Ray ships it by value: a node without ccexpert can still run it and say so (a function of
    this module would be shipped by reference, and fail to load there with a traceback).
    """

    def check(modules: list[str], rasters: list[tuple[str, str]], model: str | None) -> dict[str, Any]:
        import importlib
        import importlib.util
        import os
        import socket
        from pathlib import Path

        def importable(name: str) -> bool:
            try:
                return importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                return False

        answer: dict[str, Any] = {
            "host": socket.gethostname(), "missing": [name for name in modules if not importable(name)],
            "version": None, "unreadable": [], "model_missing": False, "default_model": None,
        }
        if answer["missing"]:
            return answer
        package = importlib.import_module("ccexpert_core")
        answer["version"] = package.__version__
        from ccexpert_core.defaults import default_model

        default = default_model()
        answer["default_model"] = default if default.startswith("preset:") else Path(default).name
        if rasters:
            import rasterio
            from rasterio.errors import RasterioError

            for role, path in rasters:
                try:
                    with rasterio.open(path):
                        pass
                except (RasterioError, OSError) as error:
                    reason = str(error).splitlines()[0] if str(error) else "unreadable"
                    answer["unreadable"].append((role, path, reason))
        if model is not None and model.startswith("/") and not os.path.isdir(model):
            answer["model_missing"] = True
        return answer

    return check
