"""`geoseg predict`: routed sliding-window inference from scenes to georeferenced polygons.

- :mod:`geoseg.predict.plan`: the block plan of a scene and windowed reads;
- :mod:`geoseg.predict.phases`: the per-block phases (PV, FF, instances);
- :mod:`geoseg.predict.instances`: watershed instances from the dense maps;
- :mod:`geoseg.predict.vectorize`: instance labels to polygons, written atomically;
- :mod:`geoseg.predict.stage`: :func:`predict`, the stage on Dask.
"""

from geoseg.predict.config import PredictConfig
from geoseg.predict.stage import PredictSummary, predict

__all__ = ["PredictConfig", "PredictSummary", "predict"]
