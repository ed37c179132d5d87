"""Regions on a Ray cluster (``caption-region --ray``): tiles read in Ray tasks, captioned by Ray Data actors that
each hold one Captioner, the finished batches streamed back to the region pipeline's one GeoPackage writer.

The pipeline, one Ray Data stream::

    pending batches ─▶ read (Ray tasks on any node: runner.read_batch, the pixels a local run reads)
                    ─▶ caption (a pool of actors, one Captioner each in the in-process engine: prepare +
                       caption_prepared, so a series encodes each image once, as in-process)
                    ─▶ the driver: region.py writes each batch in one transaction, in the order they finish

- A batch of the pipeline is one block and one call in both stages (blocks of one batch, ``batch_size=1``), so Ray
  retries a batch, never more: a read task whose process dies runs again, an actor that dies is restarted and the
  batches it held are sent to the pool again (Ray Data's defaults for both). The driver yields each batch once.
- Reading runs in tasks, apart from the actors: any node's CPUs read, and an actor receives the 8-bit pixels (a
  quarter of the processor's float32 tensors) and does the processor's work on a second thread while its model
  runs the batch before (two calls at once per actor; the Captioner runs one batch at a time).
- Only pending tiles are ever given to the cluster (region.py resumes); nothing but tile windows goes out and
  nothing but outcomes comes back, so the driver's memory stays bounded by the batches in flight.

The rasters and the model must be readable from every node at the same path (a shared file system) or URL (each
node's environment then holds the credentials GDAL reads, and reads with the run's GDAL settings);
:class:`~ccexpert_core.ray_cluster.RayCluster` checks each node before any tile is sent. Ray is imported
here and only here; ``import ccexpert_core`` never imports it.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ccexpert_core.errors import CCExpertError
from ccexpert_core.geo.grid import Tile
from ccexpert_core.geo.raster import SeriesSource, read_environment
from ccexpert_core.geo.runner import BatchOutcome, Needed, ReadBatch, Reading, finish_batch, read_batch
from ccexpert_core.geo.sources import RasterLocation
from ccexpert_core.model_card import describe_model
from ccexpert_core.ray_cluster import CAPTION_MODULES, RayCluster, WorkerPlan, last_line, worker_model

if TYPE_CHECKING:
    from ray.data import Dataset

Log = Callable[[str], None]

#: Read tasks at once per model worker: reading a batch takes a fraction of what a GPU takes to caption it. Never
#: equal to the workers, or Ray Data would fuse the two stages and read inside the actors.
READERS_PER_WORKER = 2
#: Calls an actor holds at once: one captioning, one being prepared, two queued behind them.
CALLS_IN_FLIGHT_PER_WORKER = 4
#: Tile fields as the read tasks receive them (a flat list of ints per batch).
_TILE_FIELDS = 6


@dataclass(frozen=True)
class _Item:
    """One batch on its way through the stream: read (``read``), then captioned (``outcome``); ``log`` carries the
    workers' warnings to the driver's log, ``error`` a problem that stops the run."""

    index: int
    read: ReadBatch | None = None
    outcome: BatchOutcome | None = None
    log: tuple[str, ...] = ()
    error: str | None = None


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (``np.array`` would make a 2-D array of equal-length sequences)."""
    column = np.empty(len(values), dtype=object)
    column[:] = list(values)
    return column


def _pack(tiles: Sequence[Tile]) -> list[int]:
    return [value for t in tiles for value in (t.row, t.col, t.x, t.y, t.width, t.height)]


def _unpack(values: Any) -> list[Tile]:
    return [Tile(*map(int, row)) for row in np.asarray(values, dtype=np.int64).reshape(-1, _TILE_FIELDS)]


def _trace(path: str | None, stage: str, tiles: Sequence[Tile]) -> None:
    """Append who handled which tiles to the trace file (one ``write`` per line: lines of processes never mix)."""
    if path is None:
        return
    line = json.dumps({"stage": stage, "pid": os.getpid(), "host": socket.gethostname(),
                       "tiles": [tile.tile_id for tile in tiles]})
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")


def _read_batches(
    batch: dict[str, np.ndarray], *, source: SeriesSource, reading: Reading, trace: str | None,
) -> dict[str, np.ndarray]:
    """The read stage (a Ray task): each batch's tiles read and judged as a local run does (``read_batch``)."""
    items = []
    for index, packed, needed in zip(batch["index"], batch["tiles"], batch["needed"]):
        tiles = _unpack(packed)
        _trace(trace, "read", tiles)
        messages: list[str] = []
        with read_environment():
            try:
                dates = source.open()
            except CCExpertError as error:
                items.append(_Item(int(index), error=(
                    f"a Ray worker on {socket.gethostname()} cannot open the rasters ({error}): on Ray they must be "
                    "readable from every node at the same path (a shared file system) or URL"
                )))
                continue
            try:
                read = read_batch(dates, tiles, replace(reading, log=messages.append), json.loads(needed) or None)
            finally:
                dates.close()
        items.append(_Item(int(index), read=read, log=tuple(messages)))
    return {"item": _objects(items)}


class _CaptionActor:
    """The caption stage: a Ray Data actor holding one Captioner (on the GPU Ray gave it, else the CPU), behind
    the in-process engine, so that a batch is prepared and captioned exactly as in a local run."""

    def __init__(self, model: str | None, trace: str | None) -> None:
        from ccexpert_core.defaults import default_model
        from ccexpert_core.geo.engine import load_model_engine

        self.engine = load_model_engine(model or default_model())
        self.trace = trace

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Caption each read batch of the block (one, by the pipeline's block sizing)."""
        return {"item": _objects([self._caption(item) for item in batch["item"]])}

    def _caption(self, item: _Item) -> _Item:
        if item.read is None:
            return item
        read = item.read
        tiles = [t.tile for t in read.to_caption]
        _trace(self.trace, "caption", tiles)
        try:
            # prepare is thread-safe and the engine captions one batch at a time: the actor's second call
            # prepares the next batch while this one is in the model.
            work = [t.work for t in read.to_caption]
            results = self.engine.caption_prepared(self.engine.prepare(work, [t.tile_id for t in tiles])) if (
                work) else []
        except Exception as error:  # noqa: BLE001 — an engine error fails its batch only, as in-process
            # Sent as the message alone: any exception type must unpickle on the driver.
            return replace(item, read=None, outcome=finish_batch(read, None, CCExpertError(str(error))))
        return replace(item, read=None, outcome=finish_batch(read, results, None))


def _absolute(source: SeriesSource) -> SeriesSource:
    """The source with absolute paths: workers would resolve relative ones against their own folders."""
    return replace(source, locations=tuple(location.absolute() for location in source.locations))


@dataclass(frozen=True)
class RayCaptioning:
    """Captioning on a Ray cluster (see the module's description): the model's id is exactly what a local run of
    the same ``--model`` writes (either run resumes the other's output), known without loading the model here.

    ``trace``: a file that readers and actors append one JSON line to per batch (stage, process id, host, tile ids),
    on a path the workers can write; for audits of where the work went, and for tests.
    """

    model_id: str
    #: What the actors load (None: each node's own default model).
    model: str | None
    plan: WorkerPlan
    cluster: str
    #: What a user must know about the model's captions (the demo model's synthetic training), if anything.
    model_note: str | None = None
    #: Ids older versions wrote for this model (its path as given): outputs under them resume.
    former_ids: tuple[str, ...] = ()
    log: Log = field(default=lambda message: None, compare=False)
    trace: Path | None = None
    #: The actors' models take batches of any size.
    max_pairs: int | None = None

    def describe(self) -> str:
        """``Ray: 2 workers (1 GPU each) on 2 nodes, 16 CPUs, 2 GPUs``."""
        return f"Ray: {self.plan.describe()} on {self.cluster}"

    def run(
        self, source: SeriesSource, reading: Reading, batches: Iterable[Sequence[Tile]], needed: Needed | None = None,
    ) -> Generator[BatchOutcome, None, None]:
        """Yield each batch's outcome as it comes back from the cluster (see
        :class:`~ccexpert_core.geo.runner.Captioning`)."""
        work = [list(batch) for batch in batches]
        if not work:
            return
        dataset = self._dataset(_absolute(source), replace(reading, log=lambda message: None), work, needed or {})
        # Ray types iter_batches as an Iterable; iterating it gives a generator, whose close() is used below.
        batches_out = iter(dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1))
        stream = cast(Generator[dict[str, np.ndarray], None, None], batches_out)
        seen: set[int] = set()
        try:
            while True:
                try:
                    block = next(stream)
                except StopIteration:
                    break
                except Exception as error:  # noqa: BLE001 — whatever the cluster raises ends the run in one line
                    raise CCExpertError(
                        f"the Ray cluster failed the run: {last_line(error)}; the work written so far is kept: rerun "
                        "the same command to resume"
                    ) from None
                for item in block["item"]:
                    for message in item.log:
                        reading.log(message)
                    if item.error is not None:
                        raise CCExpertError(item.error)
                    if item.index not in seen:  # a block Ray rebuilt from lineage after it was delivered
                        seen.add(item.index)
                        yield item.outcome
            if len(seen) != len(work):
                raise CCExpertError(
                    f"{len(work) - len(seen)} batches never came back from the Ray cluster; the work written so far "
                    "is kept: rerun the same command to caption them"
                )
        finally:
            stream.close()  # an error or Ctrl-C: the stream's executor stops sending work

    def _dataset(self, source: SeriesSource, reading: Reading, work: list[list[Tile]], needed: Needed) -> Dataset:
        import ray.data
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        # Ray Data warns when a region has fewer batches than readers: true, and nothing to act on.
        warnings.filterwarnings("ignore", message=r"The maximum number of concurrent tasks for 'MapBatches\(_read")

        items = [
            {"index": index, "tiles": _pack(tiles),
             "needed": json.dumps({t.tile_id: list(needed[t.tile_id]) for t in tiles if t.tile_id in needed})}
            for index, tiles in enumerate(work)
        ]
        trace = None if self.trace is None else str(Path(self.trace).absolute())
        # One block per batch: the unit of reading, captioning and retrying.
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        read = dataset.map_batches(
            # Ray types fn for every batch format; with the default one it is handed dicts of numpy arrays.
            _read_batches, batch_size=1, num_cpus=1,  # type: ignore[arg-type]
            compute=TaskPoolStrategy(size=READERS_PER_WORKER * self.plan.workers),
            fn_kwargs={"source": source, "reading": reading, "trace": trace},
        )
        return read.map_batches(
            _CaptionActor, batch_size=1, num_cpus=self.plan.num_cpus, num_gpus=self.plan.num_gpus or None,
            compute=ActorPoolStrategy(
                size=self.plan.workers, max_tasks_in_flight_per_actor=CALLS_IN_FLIGHT_PER_WORKER,
                max_concurrent_calls_per_actor=2, enable_true_multi_threading=True,
            ),
            fn_constructor_kwargs={"model": self.model, "trace": trace},
        )


class RayRegion:
    """``caption-region --ray``: :meth:`open` connects and checks the cluster (after the inputs are checked, as a
    local model loads) and gives the run its :class:`RayCaptioning`; :meth:`close` ends the job on the cluster (or
    stops the ``local`` instance)."""

    def __init__(
        self, address: str, workers: int | None = None, gpus_per_worker: float | None = None,
        log: Log = lambda message: None, trace: Path | None = None,
    ) -> None:
        self.cluster = RayCluster(address, log)
        self.workers, self.gpus_per_worker = workers, gpus_per_worker
        self.log, self.trace = log, trace

    def open(self, model: str, rasters: Sequence[tuple[str, RasterLocation]]) -> RayCaptioning:
        """Connect, plan the workers (one CPU left to read), check that every node can open the ``(role, raster)``
        rasters and load ``model`` (what ``--model`` gave, or the default model)."""
        self.cluster.connect()
        plan = self.cluster.plan(self.workers, self.gpus_per_worker, spare_cpus=1)
        loaded = worker_model(model)
        located = [(role, RasterLocation.of(raster).absolute()) for role, raster in rasters]
        try:
            self.cluster.check_nodes(CAPTION_MODULES, [(role, where.gdal_path) for role, where in located], loaded)
        except CCExpertError as error:  # a node names a raster as it was opened: said without its credentials
            said = str(error)
            for _, where in located:
                said = where.redact(said)
            raise CCExpertError(said) from None
        card = describe_model(model)  # the id a local run of this model writes, without loading it here
        former = () if model.startswith("preset:") else (model, str(Path(model).resolve()))
        captioning = RayCaptioning(card.model_id, loaded, plan, self.cluster.describe(), card.note, former, self.log,
                                   self.trace)
        self.log(f"captioning on {captioning.describe().removeprefix('Ray: ')} (Ray at {self.cluster.address})")
        return captioning

    def close(self) -> None:
        """Disconnect from the cluster (its work for this run stops), or stop the ``local`` instance."""
        self.cluster.close()
