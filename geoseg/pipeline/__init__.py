"""`geoseg run`: pipelines of stages, skipped when up to date (see docs/pipelines.md).

- :mod:`geoseg.pipeline.schema`: the sections of a pipeline file;
- :mod:`geoseg.pipeline.model`: resolved stages and :func:`load_pipeline`;
- :mod:`geoseg.pipeline.stamps`: stamps, and whether a stage must run;
- :mod:`geoseg.pipeline.stages`: one runner per stage;
- :mod:`geoseg.pipeline.run`: :func:`run_pipeline`.
"""

from geoseg.pipeline.model import Pipeline, Stage, StageResult, load_pipeline, show
from geoseg.pipeline.run import qgis_hint, run_pipeline
from geoseg.pipeline.schema import PipelineFile

__all__ = ["Pipeline", "PipelineFile", "Stage", "StageResult", "load_pipeline", "qgis_hint", "run_pipeline", "show"]
