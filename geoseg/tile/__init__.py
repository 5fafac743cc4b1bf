"""`geoseg tile`: scenes + vector labels to chips, COCO instances and band stats.

- :mod:`geoseg.tile.grid`: the window grid and the train/val split by spatial blocks;
- :mod:`geoseg.tile.labels`: vector labels to instance masks (COCO RLE) per chip;
- :mod:`geoseg.tile.stage`: :func:`tile`, the stage on Dask.
"""

from geoseg.tile.config import TileConfig
from geoseg.tile.outputs import TileSummary
from geoseg.tile.stage import tile

__all__ = ["TileConfig", "TileSummary", "tile"]
