"""Synthetic bi-temporal aerial-like scenes with ground-truth changes, captioned in LEVIR-CC's style.

A scene is a 3×3 layout of zones (the places LEVIR-CC captions name: top left … bottom right) holding grass,
bare land, water, tree clusters or blocks of buildings with shadows, crossed by roads. About half of the pairs
change one thing — buildings built or demolished, a road built or widened, trees cleared, bare land developed —
and every pair gets differences that must NOT be described: illumination, a seasonal tint, a 1–2 px
misregistration and sensor noise. Each pair comes with five captions and a change mask (where the ground truth
differs), which the demo model's change-map head learns from.

Seeded and deterministic: the same seed gives the same pairs, bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ccexpert_core.captions import NO_CHANGE_SENTENCES

GRASS, BARE, WATER, ROAD, TREE, BUILDING, SHADOW = range(7)
ZONE_PLACES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
CHANGE_TYPES = ("buildings_built", "buildings_demolished", "road_built", "road_widened", "trees_cleared",
                "bare_land_developed")
_BASE_COLOURS = {
    GRASS: (96, 128, 70), BARE: (160, 138, 106), WATER: (52, 82, 110), ROAD: (128, 128, 124),
    TREE: (46, 82, 44), SHADOW: (40, 44, 40),
}
_ROOFS = ((190, 190, 186), (168, 84, 68), (92, 112, 150), (210, 200, 170), (140, 140, 150))


@dataclass
class Zone:
    """One cell of the 3×3 layout and what stands in it."""

    kind: int
    #: Building footprints (y0, x0, y1, x1) in zone-local pixels, with roof colour indices.
    buildings: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    #: Tree crowns (y, x, radius) in zone-local pixels.
    trees: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class Layout:
    """The ground truth of one date: zones and roads (orientation, index of the zone border, width)."""

    zones: list[list[Zone]]
    roads: list[tuple[str, int, int]]


@dataclass(frozen=True)
class SyntheticPair:
    """A generated pair: RGB images (H×W×3 uint8), the change mask (H×W bool), captions and labels."""

    before: np.ndarray
    after: np.ndarray
    mask: np.ndarray
    captions: tuple[str, ...]
    change_type: str | None
    place: str | None


class SceneGenerator:
    """Draws layouts and renders them; ``pair(index)`` is deterministic in (seed, index)."""

    def __init__(self, seed: int = 0, size: int = 384) -> None:
        if size % 3 or size < 192:
            raise ValueError(f"the scene size must be a multiple of 3 and at least 192 px, got {size}")
        self.seed = seed
        self.size = size
        self.zone = size // 3

    # ----- layouts -----
    def _random_zone(self, rng: np.random.Generator) -> Zone:
        kind = int(rng.choice([GRASS, BARE, WATER, TREE, BUILDING], p=[0.25, 0.15, 0.08, 0.2, 0.32]))
        zone = Zone(kind)
        if kind == BUILDING:
            zone.buildings = self._buildings(rng, int(rng.integers(1, 5)))
        elif kind == TREE:
            zone.trees = self._trees(rng)
        return zone

    def _buildings(self, rng: np.random.Generator, count: int) -> list[tuple[int, int, int, int, int]]:
        """``count`` non-overlapping footprints on a 2×3 lattice inside the zone (shadows need a margin)."""
        z = self.zone
        slots = rng.permutation(6)[:count]
        footprints = []
        for slot in slots:
            row, col = divmod(int(slot), 3)
            cell_h, cell_w = (z - 12) // 2, (z - 12) // 3
            h = int(rng.integers(cell_h // 2, cell_h - 6))
            w = int(rng.integers(cell_w // 2, cell_w - 6))
            y0 = 6 + row * cell_h + int(rng.integers(0, cell_h - h - 4))
            x0 = 6 + col * cell_w + int(rng.integers(0, cell_w - w - 4))
            footprints.append((y0, x0, y0 + h, x0 + w, int(rng.integers(len(_ROOFS)))))
        return footprints

    def _trees(self, rng: np.random.Generator) -> list[tuple[int, int, int]]:
        z = self.zone
        count = int(rng.integers(8, 20))
        return [
            (int(rng.integers(8, z - 8)), int(rng.integers(8, z - 8)), int(rng.integers(5, 11))) for _ in range(count)
        ]

    def random_layout(self, rng: np.random.Generator) -> Layout:
        """A before-date layout: nine random zones and zero to two roads along zone borders."""
        zones = [[self._random_zone(rng) for _ in range(3)] for _ in range(3)]
        roads: list[tuple[str, int, int]] = []
        for _ in range(int(rng.integers(0, 3))):
            road = (str(rng.choice(["h", "v"])), int(rng.integers(1, 3)), int(rng.integers(8, 13)))
            if all(r[:2] != road[:2] for r in roads):
                roads.append(road)
        return Layout(zones, roads)

    def _change(self, layout: Layout, rng: np.random.Generator) -> tuple[Layout, str, str, list[str]] | None:
        """Apply one random change; returns (after layout, change type, place, captions) or None if impossible."""
        after = Layout([[Zone(z.kind, list(z.buildings), list(z.trees)) for z in row] for row in layout.zones],
                       list(layout.roads))
        kind = str(rng.choice(CHANGE_TYPES))
        cells = [(r, c) for r in range(3) for c in range(3)]
        rng.shuffle(cells)
        if kind in ("road_built", "road_widened"):
            return self._road_change(after, kind, rng)
        wanted = {"buildings_built": GRASS, "buildings_demolished": BUILDING, "trees_cleared": TREE,
                  "bare_land_developed": BARE}[kind]
        for r, c in cells:
            zone = after.zones[r][c]
            if zone.kind != wanted:
                continue
            place = ZONE_PLACES[r][c]
            if kind in ("buildings_built", "bare_land_developed"):
                count = int(rng.integers(1, 5))
                after.zones[r][c] = Zone(BUILDING, buildings=self._buildings(rng, count))
                captions = built_captions(count, place, from_bare=kind == "bare_land_developed")
            elif kind == "buildings_demolished":
                count = len(zone.buildings)
                after.zones[r][c] = Zone(BARE)
                captions = demolished_captions(count, place)
            else:
                after.zones[r][c] = Zone(BARE)
                captions = trees_cleared_captions(place)
            return after, kind, place, captions
        return None

    def _road_change(self, after: Layout, kind: str, rng: np.random.Generator):
        if kind == "road_widened":
            if not after.roads:
                return None
            index = int(rng.integers(len(after.roads)))
            orientation, border, width = after.roads[index]
            after.roads[index] = (orientation, border, width + int(rng.integers(8, 13)))
        else:
            free = [(o, b) for o in "hv" for b in (1, 2) if all(r[:2] != (o, b) for r in after.roads)]
            if not free:
                return None
            orientation, border = free[int(rng.integers(len(free)))]
            after.roads.append((orientation, border, int(rng.integers(8, 13))))
        place = {("h", 1): "top", ("h", 2): "bottom", ("v", 1): "left", ("v", 2): "right"}[(orientation, border)]
        captions = road_widened_captions(place) if kind == "road_widened" else road_built_captions(place, orientation)
        return after, kind, place, captions

    # ----- rendering -----
    def labels(self, layout: Layout) -> np.ndarray:
        """The class of every pixel (GRASS … SHADOW), H×W uint8."""
        z, labels = self.zone, np.full((self.size, self.size), GRASS, np.uint8)
        yy, xx = np.mgrid[0:z, 0:z]
        for r, row in enumerate(layout.zones):
            for c, zone in enumerate(row):
                cell = labels[r * z : (r + 1) * z, c * z : (c + 1) * z]
                if zone.kind in (BARE, WATER):
                    inset = 10
                    if zone.kind == WATER:
                        inside = ((yy - z / 2) / (z / 2 - inset)) ** 2 + ((xx - z / 2) / (z / 2.6 - inset)) ** 2 <= 1
                        cell[inside] = WATER
                    else:
                        cell[inset:-inset, inset:-inset] = BARE
                for y, x, radius in zone.trees:
                    cell[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = TREE
                for y0, x0, y1, x1, _ in zone.buildings:
                    cell[y0 + 4 : y1 + 4, x0 + 4 : x1 + 4] = SHADOW  # sun from the top left
                    cell[y0:y1, x0:x1] = BUILDING
        for orientation, border, width in layout.roads:
            centre, half = border * z, width // 2
            if orientation == "h":
                labels[centre - half : centre + half + 1, :] = ROAD
            else:
                labels[:, centre - half : centre + half + 1] = ROAD
        return labels

    def render(self, layout: Layout, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """RGB image of a layout: class colours, roof colours, soft ground texture and crown shading."""
        size = self.size
        image = np.zeros((size, size, 3), np.float32)
        for kind, colour in _BASE_COLOURS.items():
            image[labels == kind] = colour
        z = self.zone
        for r, row in enumerate(layout.zones):
            for c, zone in enumerate(row):
                for y0, x0, y1, x1, roof in zone.buildings:
                    image[r * z + y0 : r * z + y1, c * z + x0 : c * z + x1] = _ROOFS[roof]
        # Low-frequency texture (fields, soil moisture), smoothly interpolated, plus fine grain.
        coarse = Image.fromarray(rng.standard_normal((size // 32 + 1,) * 2, dtype=np.float32) * 10)
        texture = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR))
        grain = rng.standard_normal((size, size), dtype=np.float32) * 5
        soft = np.isin(labels, (GRASS, BARE, TREE))
        image += ((texture + grain) * soft)[..., None]
        return image

    def nuisance(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Differences that are not changes: illumination, seasonal tint, misregistration, noise."""
        image = image * rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
        shift = rng.integers(-2, 3, 2)
        image = np.roll(image, (int(shift[0]), int(shift[1])), axis=(0, 1))
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * 3
        return np.clip(image, 0, 255).round().astype(np.uint8)

    def pair(self, index: int, change_share: float = 0.5) -> SyntheticPair:
        """The ``index``-th pair of this seed."""
        rng = np.random.default_rng([self.seed, index])
        before = self.random_layout(rng)
        changed = None
        if rng.random() < change_share:
            for _ in range(8):  # some layouts cannot take the drawn change (no trees to clear, …): draw again
                changed = self._change(before, rng)
                if changed:
                    break
        after, change_type, place, captions = changed or (before, None, None, list(NO_CHANGE_SENTENCES))
        labels_before, labels_after = self.labels(before), self.labels(after)
        before_image = self.render(before, labels_before, rng)
        # The same ground texture on both dates (same place), re-rendered where things changed.
        after_image = self.render(after, labels_after, np.random.default_rng([self.seed, index, 1]))
        after_image = np.where((labels_before == labels_after)[..., None], before_image, after_image)
        return SyntheticPair(
            before=self.nuisance(before_image, rng),
            after=self.nuisance(after_image, rng),
            mask=labels_before != labels_after,
            captions=tuple(captions),
            change_type=change_type,
            place=place,
        )

    def series(self, index: int, dates: int, change_share: float = 0.5) -> tuple[list[np.ndarray], list[str | None]]:
        """The ``index``-th series of ``dates`` images of one place, each date a new acquisition and, with
        probability ``change_share``, one change since the date before; returns the images and each consecutive
        interval's change type (None: nothing changed)."""
        rng = np.random.default_rng([self.seed, index, dates])
        layout = self.random_layout(rng)
        labels = self.labels(layout)
        image = self.render(layout, labels, rng)
        images = [self.nuisance(image, rng)]
        changes: list[str | None] = []
        for step in range(1, dates):
            changed = None
            if rng.random() < change_share:
                for _ in range(8):
                    changed = self._change(layout, rng)
                    if changed:
                        break
            if changed:
                layout, change_type = changed[0], changed[1]
                new_labels = self.labels(layout)
                fresh = self.render(layout, new_labels, np.random.default_rng([self.seed, index, dates, step]))
                image = np.where((labels == new_labels)[..., None], image, fresh)
                labels = new_labels
                changes.append(change_type)
            else:
                changes.append(None)
            images.append(self.nuisance(image, rng))
        return images, changes

    def pairs(self, count: int, start: int = 0) -> Iterator[SyntheticPair]:
        """``count`` consecutive pairs of this seed."""
        for index in range(start, start + count):
            yield self.pair(index)


def _buildings_phrase(count: int) -> str:
    return "a building" if count == 1 else f"{COUNT_WORDS.get(count, 'many')} buildings"


def built_captions(count: int, place: str, from_bare: bool) -> list[str]:
    """Five LEVIR-CC-style captions for buildings that appeared at ``place``."""
    noun = _buildings_phrase(count)
    verb = "has" if count == 1 else "have"
    houses = "a house" if count == 1 else "some houses"
    first = (f"the bare land at the {place} has been replaced by {noun}" if from_bare
             else f"{noun} {verb} been built at the {place}")
    return [
        first,
        f"{noun} {verb} been constructed at the {place}",
        f"{houses} {'appears' if count == 1 else 'appear'} at the {place}",
        f"{'a new building is' if count == 1 else 'new buildings are'} built at the {place}",
        f"{noun} {'is' if count == 1 else 'are'} built at the {place} of the scene",
    ]


def demolished_captions(count: int, place: str) -> list[str]:
    """Five captions for buildings removed at ``place``."""
    noun = _buildings_phrase(count)
    verb = "has" if count == 1 else "have"
    return [
        f"{noun} {verb} been demolished at the {place}",
        f"{noun} at the {place} {verb} been removed",
        f"the {'building' if count == 1 else 'buildings'} at the {place} {'has' if count == 1 else 'have'} disappeared",
        f"{noun} {'is' if count == 1 else 'are'} removed and bare land appears at the {place}",
        f"{noun} at the {place} {verb} been demolished",
    ]


def trees_cleared_captions(place: str) -> list[str]:
    """Five captions for trees cleared at ``place``."""
    return [
        f"the trees at the {place} have been cleared",
        f"some trees at the {place} have been removed",
        f"the trees at the {place} are replaced by bare land",
        f"trees at the {place} have disappeared",
        f"the trees at the {place} have been cut down",
    ]


def road_built_captions(place: str, orientation: str) -> list[str]:
    """Five captions for a new road at ``place``."""
    direction = "horizontal" if orientation == "h" else "vertical"
    return [
        f"a road has been built at the {place}",
        f"a new road appears at the {place}",
        f"a {direction} road has been built at the {place}",
        f"a road is constructed at the {place} of the scene",
        f"a road has been paved at the {place}",
    ]


def road_widened_captions(place: str) -> list[str]:
    """Five captions for a road widened at ``place``."""
    return [
        f"the road at the {place} has been widened",
        f"the road at the {place} becomes wider",
        f"the road at the {place} is widened",
        f"the road at the {place} has been broadened",
        f"the road at the {place} has been widened and paved",
    ]


#: Kinds a caption can name: bare land developed reads as buildings built (four of its five captions say so).
_CAPTION_KINDS = {"bare_land_developed": "buildings_built"}


def caption_kind(caption: str) -> str | None:
    """The kind of change (one of :data:`CHANGE_TYPES`, bare land developed read as buildings built) that a
    caption in this generator's phrasing names; None for a no-change sentence or anything else."""
    words = caption.lower()
    if "road" in words:
        return "road_widened" if any(w in words for w in ("widen", "wider", "broaden")) else "road_built"
    if "tree" in words:
        return "trees_cleared"
    if not any(w in words for w in ("building", "house")):
        return None
    if any(w in words for w in ("demolish", "removed", "disappeared")):
        return "buildings_demolished"
    return "buildings_built" if any(w in words for w in ("built", "constructed", "appear", "replaced")) else None


def named_kind(change_type: str | None) -> str | None:
    """The kind a caption of a pair of ``change_type`` should name (see :func:`caption_kind`)."""
    return _CAPTION_KINDS.get(change_type, change_type) if change_type else None


def write_dataset(folder: str | Path, count: int, seed: int = 0, size: int = 384, start: int = 0) -> Path:
    """Write ``count`` pairs as PNGs (A/, B/, mask/) and a CC JSON ``pairs.json`` in ``folder``; returns the JSON.

    Each record also has ``change_mask_path`` and ``change_type`` (extra keys CC JSON readers may ignore).
    """
    folder = Path(folder)
    for sub in ("A", "B", "mask"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    generator = SceneGenerator(seed, size)
    records = []
    for index, pair in enumerate(generator.pairs(count, start), start=start):
        name = f"s{seed}_{index:06d}.png"
        # Fast compression: these sets are written once and read many times; size matters less than time here.
        Image.fromarray(pair.before).save(folder / "A" / name, compress_level=1)
        Image.fromarray(pair.after).save(folder / "B" / name, compress_level=1)
        Image.fromarray(pair.mask.astype(np.uint8) * 255).save(folder / "mask" / name, compress_level=1)
        records.append({
            "uid": f"synthetic_s{seed}_{index:06d}",
            "change_flag": int(pair.change_type is not None),
            "img1_path": f"A/{name}",
            "img2_path": f"B/{name}",
            "change_caption": list(pair.captions),
            "change_mask_path": f"mask/{name}",
            "change_type": pair.change_type,
        })
    path = folder / "pairs.json"
    path.write_text(json.dumps(records, indent=1))
    return path


@dataclass(frozen=True)
class SyntheticTown:
    """A town of rows × cols scenes side by side: two dates (H×W×3 uint8) and each scene's ground truth."""

    before: np.ndarray
    after: np.ndarray
    #: Per scene, row-major: (change type or None, place or None, first caption).
    truth: tuple[tuple[str | None, str | None, str], ...]


def synthetic_town(rows: int, cols: int, seed: int = 0, scene_size: int = 384) -> SyntheticTown:
    """Compose ``rows`` × ``cols`` scenes of ``scene_size`` px into one large pair (a tile grid of that size
    cuts it back into its scenes, each with its known change)."""
    generator = SceneGenerator(seed, scene_size)
    pairs = [generator.pair(index) for index in range(rows * cols)]

    def mosaic(images: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.concatenate(images[r * cols : (r + 1) * cols], axis=1) for r in range(rows)])

    return SyntheticTown(
        before=mosaic([pair.before for pair in pairs]),
        after=mosaic([pair.after for pair in pairs]),
        truth=tuple((pair.change_type, pair.place, pair.captions[0]) for pair in pairs),
    )


@dataclass(frozen=True)
class SyntheticTownSeries:
    """A synthetic town at several dates: one mosaic per date, and per scene (row-major) each consecutive
    interval's change type (None: nothing changed)."""

    images: list[np.ndarray]
    truth: tuple[tuple[str | None, ...], ...]


def synthetic_town_series(
    rows: int, cols: int, dates: int, seed: int = 0, scene_size: int = 384
) -> SyntheticTownSeries:
    """``rows`` × ``cols`` scenes at ``dates`` dates (a tile grid of ``scene_size`` cuts it into its scenes)."""
    generator = SceneGenerator(seed, scene_size)
    scenes = [generator.series(index, dates) for index in range(rows * cols)]
    mosaics = []
    for date in range(dates):
        tiles = [images[date] for images, _ in scenes]
        mosaics.append(np.concatenate([np.concatenate(tiles[r * cols : (r + 1) * cols], axis=1) for r in range(rows)]))
    return SyntheticTownSeries(mosaics, tuple(tuple(changes) for _, changes in scenes))
