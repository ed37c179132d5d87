"""The plugin's run in a process of its own, killed (SIGKILL) right after its Nth new feature of a layer of the run
(``ogr.Layer.CreateFeature`` on ``captions``, ``changes`` or ``history``: a batch's captions, then its change
areas, then its tiles' histories), with a small SQLite page cache so that the batch's pages reach the file before
its commit (a kill there leaves a hot journal, as one during a commit does).

    python tests/qgis/killed_run.py KILL_AT OUTPUT BACKEND_URL RASTER...

Where it is killed is chosen, never timed. Exits 0 if it got to the end without being killed, 1 on a run error.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("captions", "changes", "history")


def main() -> int:
    kill_at, output, url, *rasters = sys.argv[1:]
    sys.path.insert(0, str(REPO))
    from osgeo import ogr
    from qgis.core import QgsApplication

    from qgis_plugin.captions_gpkg import CaptionsGeoPackage
    from qgis_plugin.job import Job, RasterInput, run_job

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import Feedback

    app = QgsApplication([], False)
    app.initQgis()
    create, calls = ogr.Layer.CreateFeature, [0]

    def create_then_die(layer: ogr.Layer, feature: ogr.Feature) -> int:
        done = create(layer, feature)
        calls[0] += layer.GetName() in LAYERS
        if calls[0] == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    ogr.Layer.CreateFeature = create_then_die
    open_dataset = CaptionsGeoPackage._open

    def small_cache(package: CaptionsGeoPackage):  # noqa: ANN202 (a GDAL dataset)
        dataset = open_dataset(package)
        dataset.ExecuteSQL("PRAGMA cache_size = 2")
        return dataset

    CaptionsGeoPackage._open = small_cache  # type: ignore[method-assign]
    job = Job(rasters=tuple(RasterInput.from_source(path) for path in rasters), output=output, backend_urls=(url,),
              tile_size=64, batch_size=2, retry_budget_s=0.0)
    summary = run_job(job, Feedback())
    print(summary.error or summary.message(), file=sys.stderr)
    return 1 if summary.error else 0


if __name__ == "__main__":
    sys.exit(main())
