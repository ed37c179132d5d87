"""What captions a run's tiles in this process: a model, or one or several CCExpert backends over HTTP.

A batch is a list of tiles of work (:class:`~ccexpert_core.series.TileWork`: its images, one per date, and the
intervals (i, j) to caption). Each engine splits a batch's work in two, so that the reader threads can keep it
busy: :meth:`~CaptionEngine.prepare` (CPU work on the reader threads: the Captioner's preparation in-process, each
image encoded once for a backend) and :meth:`~CaptionEngine.caption_prepared` (the model or the request), which up
to :attr:`~CaptionEngine.in_flight` threads call at once. Test doubles subclass :class:`Engine` and caption pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from ccexpert_core.captions import CaptionResult
from ccexpert_core.errors import CCExpertError
from ccexpert_core.inflight import Failover, NoEndpointLeft, default_in_flight
from ccexpert_core.series import Interval, TileWork, regroup

if TYPE_CHECKING:
    from ccexpert_core.client import BackendClient
    from ccexpert_core.inference.captioner import Captioner, PreparedWork

Tiles = Sequence[TileWork[np.ndarray]]
Log = Callable[[str], None]
Prepared = TypeVar("Prepared")

#: How long a run keeps trying when no backend answers (a restart takes about 20 s).
RETRY_BUDGET_S = 60.0


class CaptionEngine(Protocol[Prepared]):
    """Captions batches of tiles: each a series of H×W×3 uint8 images (two for a pair) and the intervals (i, j)
    to caption; one result per tile and interval, in order. Its values are read, never set, by the run (read-only
    here, so an engine may hold narrower ones: a backend always has a pair limit)."""

    @property
    def model_id(self) -> str:
        """The id outputs record."""
        ...

    @property
    def in_flight(self) -> int:
        """Batches this engine takes at once (calls of :meth:`caption_prepared` from different threads)."""
        ...

    @property
    def model_note(self) -> str | None:
        """What a user must know about the model's captions (the demo model's synthetic training), if anything."""
        ...

    @property
    def former_ids(self) -> tuple[str, ...]:
        """Other ids outputs of this same model were written under (older versions stored the model's path)."""
        ...

    @property
    def max_pairs(self) -> int | None:
        """Pairs one batch may hold at most (a backend's request limit), None where any number may."""
        ...

    def prepare(self, tiles: Tiles, tile_ids: Sequence[str]) -> Prepared:
        """CPU work for a batch, thread-safe, before any model or network is used."""
        ...

    def caption_prepared(self, prepared: Prepared) -> list[list[CaptionResult]]:
        """The results of a prepared batch: per tile, per interval."""
        ...

    def describe(self) -> str | None:
        """A line for the run's summary (which backend captioned how many tiles), if there is one to say."""
        ...


@dataclass(frozen=True)
class PairBatch:
    """A batch as :class:`Engine` keeps it: every tile's intervals as (before, after) pairs, with their tile ids."""

    pairs: list[tuple[np.ndarray, np.ndarray]]
    tile_ids: list[str]
    per_tile: list[int]


class Engine:
    """An engine that captions pairs (test doubles, simple engines): implement :meth:`caption`; a tile's intervals
    are given as its pairs, one batch at a time."""

    model_id: str = "engine"
    in_flight: int = 1
    model_note: str | None = None
    former_ids: tuple[str, ...] = ()
    max_pairs: int | None = None

    def prepare(self, tiles: Tiles, tile_ids: Sequence[str]) -> PairBatch:
        """The batch's pairs, tile by tile."""
        pairs = [(tile.images[i], tile.images[j]) for tile in tiles for i, j in tile.intervals]
        ids = [tile_id for tile, tile_id in zip(tiles, tile_ids) for _ in tile.intervals]
        return PairBatch(pairs, ids, [tile.pairs for tile in tiles])

    def caption_prepared(self, prepared: PairBatch) -> list[list[CaptionResult]]:
        """:meth:`caption` of the batch's pairs, back into per tile, per interval."""
        return regroup(self.caption(prepared.pairs, prepared.tile_ids), prepared.per_tile)

    def caption(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], tile_ids: Sequence[str]) -> list[CaptionResult]:
        """One result per (before, after) pair, in order."""
        raise NotImplementedError(f"{type(self).__name__} captions no pairs")

    def describe(self) -> str | None:
        """Nothing to add by default."""
        return None


class InProcessEngine:
    """A :class:`~ccexpert_core.inference.captioner.Captioner` in this process, through its one path: the
    processor's work runs on the reader threads, and two batches are open at once, so that one is finished (tokens
    to captions) while the model generates the other."""

    in_flight = 2
    max_pairs = None

    def __init__(self, captioner: Captioner) -> None:
        self.captioner = captioner
        self.model_id, self.model_note = captioner.model_id, captioner.card.note
        source = captioner.source
        self.former_ids = (source, str(Path(source).resolve())) if not source.startswith("preset:") else ()

    def prepare(self, tiles: Tiles, tile_ids: Sequence[str]) -> PreparedWork:
        """The Captioner's CPU work for the batch (no model): each image an interval uses, once."""
        return self.captioner.prepare(tiles)

    def caption_prepared(self, prepared: PreparedWork) -> list[list[CaptionResult]]:
        """The model's generation (one batch at a time), then the results on the calling thread."""
        return self.captioner.finish(self.captioner.generate(prepared))

    def describe(self) -> str | None:
        """Nothing to add: one model, here."""
        return None


def load_model_engine(model: str | Path, device: str = "auto") -> InProcessEngine:
    """Load a model folder, hub id or ``preset:tiny`` into this process."""
    from ccexpert_core.inference.captioner import Captioner

    return InProcessEngine(Captioner.load(model, device=device))


@dataclass(frozen=True)
class EncodedBatch:
    """A batch ready to send: each image encoded once, and the pairs to ask for as (tile, i, j) into them."""

    images: list[list[bytes]]
    intervals: list[tuple[Interval, ...]]
    tile_ids: list[str]
    #: Whether it goes in series requests (tiles of more than two dates, to backends that take them).
    is_series: bool = False

    def pairs(self) -> tuple[list[tuple[bytes, bytes]], list[str]]:
        """Every tile's intervals as encoded pairs, tile by tile, with their tile ids."""
        pairs, ids = [], []
        for images, wanted, tile_id in zip(self.images, self.intervals, self.tile_ids):
            for i, j in wanted:
                pairs.append((images[i], images[j]))
                ids.append(tile_id)
        return pairs, ids

    def send(self, client: "BackendClient", as_series: bool) -> list[list[CaptionResult]]:
        """The batch's results per tile, per interval, from ``client``: in series requests (each image sent once;
        tiles asking for the same intervals together), or as the intervals' pairs."""
        if not as_series:
            return regroup(client.caption_encoded(*self.pairs()), [len(wanted) for wanted in self.intervals])
        groups: dict[tuple[Interval, ...], list[int]] = {}
        for index, wanted in enumerate(self.intervals):
            groups.setdefault(tuple(wanted), []).append(index)
        results: dict[int, list[CaptionResult]] = {}
        for wanted, members in groups.items():
            answered = client.caption_series_encoded(
                [self.images[k] for k in members], list(wanted), [self.tile_ids[k] for k in members]
            )
            results.update(zip(members, answered))
        return [results[index] for index in range(len(self.images))]


class BackendEngine:
    """One or several CCExpert backends serving the same model: images are encoded on the reader threads, requests
    go to whichever backend has the fewest open, a backend that stops answering is set aside and its requests go to
    the others (and it is tried again later); the run waits up to ``retry_budget_s`` when none answers.
    """

    #: A backend says its model's id: outputs of the same model, written by any version, carry that id.
    former_ids: tuple[str, ...] = ()

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
        self.model_note = infos[0].get("model_note")
        self.max_pairs = min(client.limits.max_pairs_per_request for client in self.clients)
        per_backend = [in_flight or default_in_flight(info, batch_size) for info in infos]
        self.in_flight = sum(per_backend)
        self.compress = any(client.compress for client in self.clients)
        # A series goes as one (each image sent once) where every backend speaks the series route.
        self._series = all(info.get("series") for info in infos)
        self._failover: Failover[BackendClient, EncodedBatch, list[list[CaptionResult]]] = Failover(
            self.clients, lambda client, encoded: encoded.send(client, self._series and encoded.is_series),
            lambda error: isinstance(error, BackendUnavailable), budget_s=retry_budget_s,
            on_down=lambda client, error: log(
                f"warning: {error}; its batches go to the other backends, and it is tried again later"
                if len(self.clients) > 1 else f"warning: {error}; trying again for up to {retry_budget_s:g} s"
            ),
        )

    def prepare(self, tiles: Tiles, tile_ids: Sequence[str]) -> EncodedBatch:
        """Encode every image that an interval uses, once, losslessly (compressed only for a backend across a
        network)."""
        from ccexpert_core.client import encode_array

        is_series = self._series and any(len(tile.images) > 2 for tile in tiles)
        encoded = []
        for tile in tiles:
            # Sent as pairs, a date no interval uses need not be encoded; a series request carries every date.
            used = set(range(len(tile.images))) if is_series else set(tile.used_dates())
            encoded.append([encode_array(image, self.compress) if k in used else b""
                            for k, image in enumerate(tile.images)])
        return EncodedBatch(encoded, [tile.intervals for tile in tiles], list(tile_ids), is_series)

    def caption_prepared(self, prepared: EncodedBatch) -> list[list[CaptionResult]]:
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
