"""``ccexpert serve --ray``: the same backend, as replicas of a Ray Serve deployment behind one URL.

Each replica is the app of :func:`backend.app.create_app` over a Captioner of its own (on the GPU Ray gave it,
else the CPU): API v1, token auth, limits, OpenAPI docs and the dynamic batcher work in each replica exactly as in
``ccexpert serve``, and the wire format is unchanged. Ray Serve's proxy (one, on the head node) takes the
connections and spreads requests over the replicas; each replica batches the requests it holds.

The web UI is one more replica, of its own, at ``/ui``: Gradio keeps a session's uploads and its queue in the
process that received them, so the UI's requests must all reach one process (Serve does not route a browser's
requests by session). Its replica is the same app with the UI on, and holds a model like the others.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import Any

from ray import serve
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.state import ServerSettings
from ccexpert_core import protocol
from ccexpert_core.errors import CCExpertError
from ccexpert_core.ray_cluster import CAPTION_MODULES, RayCluster, WorkerPlan, last_line, worker_model

#: Serve applications: the API's replicas at ``/``, the UI's one at ``/ui`` (Serve routes the longest prefix).
API_APP, UI_APP = "ccexpert", "ccexpert-ui"
#: What a node needs beyond captioning: the web stack (and Gradio for the UI's replica).
SERVE_MODULES = (*CAPTION_MODULES, "backend", "fastapi")
UI_MODULES = ("gradio",)
#: Requests a replica holds at once. Its own limits (queued pairs, request timeout) turn away what it cannot do in
#: time with a 503; Serve's default (5) would starve its batcher of the concurrent requests it batches.
MAX_ONGOING_REQUESTS = 256

Log = Callable[[str], None]


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@serve.ingress()
class BackendReplica:
    """One replica: a Captioner and the backend's app over it (``ui``: the UI's replica)."""

    def __init__(self, model: str | None, dtype: str | None, settings: ServerSettings) -> None:
        from backend.app import create_app
        from backend.limits import guard_pillow
        from ccexpert_core.defaults import default_model
        from ccexpert_core.inference import Captioner

        guard_pillow(settings.limits)  # process-wide, as ``ccexpert serve`` sets it
        captioner = Captioner.load(model or default_model(), device="auto", dtype=dtype)
        self.backend_app = create_app(captioner, settings)  # ("app" is Serve's name for what the next method gives)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        """The app Serve sends this replica's requests to."""
        if self.backend_app.state.backend.settings.ui:
            return _UnprefixedApp(self.backend_app)
        return self.backend_app


class _UnprefixedApp:
    """The UI's app as ``ccexpert serve`` serves it: Serve marks ``/ui`` as its route prefix (``root_path``), but the
    app mounts the UI at ``/ui`` itself and must see the whole path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "root_path": ""}
        await self.app(scope, receive, send)


def serve_on_ray(
    address: str, model: str, dtype: str | None, settings: ServerSettings, host: str, port: int,
    replicas: int | None, gpus_per_replica: float | None, auth: str, log: Log = _log_to_stderr,
) -> int:
    """Deploy the backend on the cluster at ``address`` and serve until interrupted (Ctrl-C or SIGTERM), then take
    the deployments down (or stop the ``local`` instance). Returns the exit code."""
    cluster = RayCluster(address, log)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        cluster.connect()
        # SIGTERM (a service manager, ``kill``) ends the wait like Ctrl-C, so that the deployments are taken down
        # (a cluster keeps them after their driver is gone). Set after connecting: Ray's own handler aborts.
        signal.signal(signal.SIGTERM, _interrupt)
        ui = settings.ui
        plan = cluster.plan(replicas, gpus_per_replica, noun="replicas", also=int(ui), option="--replicas",
                            gpu_option="--ray-gpus-per-replica")
        loaded = worker_model(model)
        cluster.check_nodes((*SERVE_MODULES, *(UI_MODULES if ui else ())), model=loaded)
        _deploy(plan, loaded, dtype, settings, host, port)
        shown = f"[{host}]" if ":" in host else host
        where = f"{plan.describe('replicas')}{' + 1 for the UI' if ui else ''} on {cluster.describe()}"
        log(f"CCExpert backend on Ray: http://{shown}:{port}  (API {protocol.API_PREFIX}, docs /docs"
            f"{'' if not ui else ', UI ' + protocol.UI_PATH + '/'}; auth: {auth}; model {model}; {where})")
        threading.Event().wait()  # until Ctrl-C or SIGTERM
    except KeyboardInterrupt:
        log("stopping: taking the deployments down")
    finally:
        signal.signal(signal.SIGTERM, previous)
        _take_down(cluster)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _deploy(plan: WorkerPlan, model: str | None, dtype: str | None, settings: ServerSettings, host: str,
            port: int) -> None:
    """Start Serve's proxy on the head node at ``host:port`` and the applications; returns once they run."""
    options: dict[str, Any] = {"num_cpus": plan.num_cpus}
    if plan.num_gpus:
        options["num_gpus"] = plan.num_gpus
    api = serve.deployment(name="backend", num_replicas=plan.workers, ray_actor_options=options,
                           max_ongoing_requests=MAX_ONGOING_REQUESTS)(BackendReplica)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
        # The UI first: once /v1/health answers, everything does.
        if settings.ui:
            ui = api.options(name="ui", num_replicas=1)
            serve.run(ui.bind(model, dtype, replace(settings, replicas=plan.workers)), name=UI_APP,
                      route_prefix=protocol.UI_PATH)
        serve.run(api.bind(model, dtype, replace(settings, ui=False, replicas=plan.workers)), name=API_APP,
                  route_prefix="/")
    except RuntimeError as error:
        raise CCExpertError(f"Ray Serve could not start the backend: {_failure(error)}") from None


def _failure(error: RuntimeError) -> str:
    """Why a deployment failed: its replicas' own error, as Serve's status keeps it, else Serve's message."""
    for application in serve.status().applications.values():
        for deployment in application.deployments.values():
            if deployment.status == "UNHEALTHY" and deployment.message:
                return last_line(RuntimeError(deployment.message))
    return last_line(error)


def _take_down(cluster: RayCluster) -> None:
    """Delete this command's applications (a cluster's Serve outlives its drivers), then disconnect."""
    import ray

    try:
        if ray.is_initialized():
            for name in (UI_APP, API_APP):
                if name in serve.status().applications:
                    serve.delete(name)
    finally:
        cluster.close()
