"""Run in the project's .venv (rasterio): the polygons ``ccexpert caption-region`` writes for change maps.

Usage: python core_changes.py CASES_JSON — a list of {"change_map", "transform", "tile": [row, col, x, y, w, h]};
prints a JSON list with each case's polygons (lists of rings of [x, y]).
"""

import json
import sys

from ccexpert_core.geo.changes import tile_changes
from ccexpert_core.geo.grid import Tile


def main(cases_json: str) -> None:
    answers = []
    for case in json.loads(cases_json):
        polygons = tile_changes(case["change_map"], tuple(case["transform"]), Tile(*case["tile"]))
        answers.append([[[list(point) for point in ring] for ring in polygon] for polygon in polygons])
    print(json.dumps(answers))


if __name__ == "__main__":
    main(sys.argv[1])
