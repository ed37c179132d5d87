"""``make demo``: caption a small synthetic region with the default model, into ``out/demo/``.

Writes (or reuses) a georeferenced GeoTIFF pair, runs ``ccexpert caption-region`` on it, and prints where the
GeoPackage and the report are with a few captions. It also writes the same town at three dates
(``town_2016.tif``, ``town_2018.tif``, ``town_2021.tif``, dated in their metadata), the series the README's examples
and the plugin's screenshots use, and prints the command that captions it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ccexpert_cli as cli
from ccexpert_core.defaults import default_model, model_note
from ccexpert_core.geo.captions_layer import read_tiles
from ccexpert_core.geo.synthetic import write_demo_rasters, write_demo_series

DEMO_FOLDER = Path("out/demo")
SHOWN_CAPTIONS = 4
#: The README's series: the demo town at these dates.
SERIES_DATES = ("2016", "2018", "2021")


def main(folder: Path = DEMO_FOLDER) -> int:
    """Run the demo; returns the exit code."""
    before, after = write_demo_rasters(folder)
    out, report = folder / "captions.gpkg", folder / "report.html"
    # A fresh output each time: the demo shows what the current default model says, not an older run's captions.
    out.unlink(missing_ok=True)
    code = cli.main([
        "caption-region", "--before", str(before), "--after", str(after), "--out", str(out), "--report", str(report),
    ])
    if code != 0:
        return code
    print(f"\nRasters: {before}, {after}\nGeoPackage (layer 'captions'): {out}\nReport: {report}\n")
    series = write_demo_series(folder, SERIES_DATES)
    dated = " ".join(f"--date {date}={path.name}" for date, path in zip(SERIES_DATES, series))
    print(f"The town at {', '.join(SERIES_DATES)} (the README's series): {', '.join(map(str, series))}\n"
          f"  cd {folder} && ccexpert caption-region {dated} --out town.gpkg --report town.html\n")
    for tile in list(read_tiles(out))[:SHOWN_CAPTIONS]:
        print(f"  {tile.tile_id}: {tile.caption if tile.caption is not None else tile.status}")
    note = model_note(default_model())
    if note:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
