"""What captions the tiles of a region: a model in this process, or one or several CCExpert backends over HTTP.

Each engine splits a batch's work in two, so that the region pipeline can keep it busy: :meth:`prepare` (CPU work
on the pipeline's reader threads: the processor's resize and normalisation in-process, lossless encoding for a
backend) and :meth:`caption_prepared` (the model or the request), which up to :attr:`in_flight` threads call at
once. Tests and simple engines subclass :class:`Engine` and implement :meth:`caption` only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ccexpert_core.captions import CaptionResult
from ccexpert_core.errors import CCExpertError
from ccexpert_core.inflight import Failover, NoEndpointLeft

if TYPE_CHECKING:
    from ccexpert_core.client import BackendClient
    from ccexpert_core.inference.captioner import Captioner

ImagePair = tuple[np.ndarray, np.ndarray]
Log = Callable[[str], None]

#: Requests kept open per backend by default: enough pairs to keep this many of its model batches queued, so its
#: GPU never waits for the next request to arrive.
QUEUED_MODEL_BATCHES = 3
#: How long a run keeps trying when no backend answers (a restart takes about 20 s).
RETRY_BUDGET_S = 60.0


class CaptionEngine(Protocol):
    """Captions batches of (before, after) H×W×3 uint8 pairs, one result per pair, in order."""

    model_id: str
    #: Batches this engine takes at once (calls of :meth:`caption_prepared` from different threads).
    in_flight: int

    def prepare(self, pairs: Sequence[ImagePair], tile_ids: Sequence[str]) -> Any:
        """CPU work for a batch, thread-safe, before any model or network is used."""
        ...

    def caption_prepared(self, prepared: Any) -> list[CaptionResult]:
        """The results of a prepared batch."""
        ...

    def caption(self, pairs: Sequence[ImagePair], tile_ids: Sequence[str]) -> list[CaptionResult]:
        """Prepare and caption a batch in one call."""
        ...

    def describe(self) -> str | None:
        """A line for the run's summary (which backend captioned how many tiles), if there is one to say."""
        ...


class Engine:
    """Defaults for an engine: nothing to prepare, one batch at a time. Subclasses implement :meth:`caption`, or
    :meth:`prepare` and :meth:`caption_prepared`."""

    model_id: str = "engine"
    in_flight: int = 1

    def prepare(self, pairs: Sequence[ImagePair], tile_ids: Sequence[str]) -> Any:
        """By default the batch as it is."""
        return list(pairs), list(tile_ids)

    def caption_prepared(self, prepared: Any) -> list[CaptionResult]:
        """By default :meth:`caption` of what :meth:`prepare` kept."""
        pairs, tile_ids = prepared
        return self.caption(pairs, tile_ids)

    def caption(self, pairs: Sequence[ImagePair], tile_ids: Sequence[str]) -> list[CaptionResult]:
        """By default :meth:`caption_prepared` of :meth:`prepare`."""
        return self.caption_prepared(self.prepare(pairs, tile_ids))

    def describe(self) -> str | None:
        """Nothing to add by default."""
        return None


class InProcessEngine(Engine):
    """A :class:`~ccexpert_core.inference.captioner.Captioner` in this process: the processor's work runs on the
    reader threads while the model captions the batch before, one batch at a time."""

    def __init__(self, captioner: "Captioner") -> None:
        self.captioner = captioner
        self.model_id = captioner.model_id
        self._model_lock = threading.Lock()

    def prepare(self, pairs: Sequence[ImagePair], tile_ids: Sequence[str]) -> Any:
        """Resize, normalise and tokenise (no model)."""
        return self.captioner.prepare(list(pairs))

    def caption_prepared(self, prepared: Any) -> list[CaptionResult]:
        """The whole batch in one forward pass (the pipeline already sized it)."""
        with self._model_lock:  # torch already uses every core for one batch
            return self.captioner.caption_prepared(prepared)


def load_model_engine(model: str | Path, device: str = "auto") -> InProcessEngine:
    """Load a model folder, hub id or ``preset:tiny`` into this process."""
    from ccexpert_core.inference.captioner import Captioner

    return InProcessEngine(Captioner.load(model, device=device))


@dataclass(frozen=True)
class _Encoded:
    pairs: list[tuple[bytes, bytes]]
    tile_ids: list[str]


class BackendEngine(Engine):
    """One or several CCExpert backends serving the same model: images are encoded on the reader threads, requests
    go to whichever backend has the fewest open, a backend that stops answering is set aside and its requests go to
    the others (and it is tried again later); the run waits up to ``retry_budget_s`` when none answers.
    """

    def __init__(
        self, clients: Sequence["BackendClient"], in_flight: int | None = None, batch_size: int = 8,
        retry_budget_s: float = RETRY_BUDGET_S, log: Log = lambda message: None,
    ) -> None:
        from ccexpert_core.client import BackendUnavailable

        self.clients = list(clients)
        infos = [client.info() for client in self.clients]  # a wrong URL or token fails here, with its message
        models = {info["model_id"] for info in infos}
        if len(models) > 1:
            shown = ", ".join(f"{c.url} serves {i['model_id']}" for c, i in zip(self.clients, infos))
            raise CCExpertError(f"the backends serve different models ({shown}): give backends of one model")
        self.model_id = infos[0]["model_id"]
        per_backend = [in_flight or _default_in_flight(info, batch_size) for info in infos]
        self.in_flight = sum(per_backend)
        self.compress = any(client.compress for client in self.clients)
        self._failover = Failover(
            self.clients, lambda client, encoded: client.caption_encoded(encoded.pairs, encoded.tile_ids),
            lambda error: isinstance(error, BackendUnavailable), budget_s=retry_budget_s,
            on_down=lambda client, error: log(
                f"warning: {error}; its batches go to the other backends, and it is tried again later"
                if len(self.clients) > 1 else f"warning: {error}; trying again for up to {retry_budget_s:g} s"
            ),
        )

    def prepare(self, pairs: Sequence[ImagePair], tile_ids: Sequence[str]) -> Any:
        """Encode every image losslessly (compressed only for a backend across a network)."""
        from ccexpert_core.client import encode_array

        encoded = [(encode_array(b, self.compress), encode_array(a, self.compress)) for b, a in pairs]
        return _Encoded(encoded, list(tile_ids))

    def caption_prepared(self, prepared: Any) -> list[CaptionResult]:
        """Send the batch to the least busy backend that answers."""
        try:
            return self._failover(prepared)
        except NoEndpointLeft as error:
            raise CCExpertError(f"no backend answered for {self._failover.budget_s:g} s (last: {error})") from None

    def describe(self) -> str | None:
        """How many batches each backend answered, when there are several."""
        if len(self.clients) < 2:
            return None
        counts = ", ".join(
            f"{client.url}: {count} batches" for client, count in zip(self.clients, self._failover.answered)
        )
        return f"backends: {counts}"


def _default_in_flight(info: dict, batch_size: int) -> int:
    """Requests to keep open at one backend: enough for :data:`QUEUED_MODEL_BATCHES` of its model batches."""
    model_batch = int(info.get("batching", {}).get("max_batch") or 16)
    return max(2, math.ceil(QUEUED_MODEL_BATCHES * model_batch / max(1, batch_size)))


def load_backend_engine(
    urls: Sequence[str], token_file: Path | None, in_flight: int | None = None, batch_size: int = 8,
    log: Log = lambda message: None,
) -> BackendEngine:
    """CCExpert backends at ``urls`` (one model), authenticated with the token in ``token_file``; each is asked for
    its model at once, so that a wrong URL or token fails before any tile is read."""
    from ccexpert_core.client import BackendClient, read_token_file

    token = None if token_file is None else read_token_file(token_file)
    # The client retries little on its own: a backend that does not answer is the failover's to handle.
    clients = [BackendClient(url, token, retries=1) for url in urls]
    return BackendEngine(clients, in_flight, batch_size, log=log)
