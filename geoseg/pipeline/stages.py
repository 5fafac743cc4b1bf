"""The stages a pipeline runs: one function per stage, over a :class:`~geoseg.pipeline.model.Stage`.

Each runner gets the stage (its ``args`` the kind's typed model: :class:`~geoseg.pipeline.model.TileArgs`
and so on) and a :class:`~geoseg.pipeline.model.StageRun`
(why it runs, the shared Dask scheduler) and returns ``(outputs, summary lines)``.
Library modules are imported when a stage runs, so that a pipeline without train or
predict never imports torch for them.
"""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.errors import OutputExistsError
from geoseg.io.atomic import write_json
from geoseg.pipeline.model import (
    ARGS,
    FIRST,
    FORCE,
    FROM,
    INPUT_NEWER,
    PARAMS,
    READ,
    UNFINISHED,
    UPSTREAM,
    EvaluateArgs,
    PredictArgs,
    Stage,
    TileArgs,
    TrainArgs,
    show,
)
from geoseg.pipeline.scheduler import SharedScheduler

Runner = Callable[[Stage[Any], "StageRun"], tuple[list[Path], list[str]]]


@dataclass
class StageRun:
    """What a stage function gets besides its :class:`Stage`: why it runs, and the scheduler."""

    code: str
    scheduler: SharedScheduler
    progress: bool | None

    @property
    def first(self) -> bool:
        """The stage never ran: an existing output is not this pipeline's."""
        return self.code == FIRST

    @property
    def changed(self) -> bool:
        """Parameters, inputs, their reading or upstream outputs changed, or a rerun was asked for."""
        return self.code in (FORCE, FROM, PARAMS, UPSTREAM, INPUT_NEWER, READ)

    @property
    def unfinished(self) -> bool:
        """The last run of the stage stopped before it finished, and nothing changed."""
        return self.code == UNFINISHED




# Each returns (outputs, summary lines). Library modules are imported when a stage runs,
# so that a pipeline without train or predict never imports torch for them.
def _foreign(stage: str, out: Path) -> OutputExistsError:
    return OutputExistsError(f"{out} holds outputs that this pipeline did not record; delete "
                             f"it, or rerun with --from {stage} to replace them")


def run_tile(stage: Stage[TileArgs], run: StageRun) -> tuple[list[Path], list[str]]:
    """Tile; replaces earlier chips when parameters or inputs changed, else resumes."""
    from geoseg.tile import tile

    a = stage.args
    overwrite = run.changed
    try:
        summary = tile(a.scenes, a.labels, a.out, a.cfg, scheduler=run.scheduler.get(),
                       overwrite=overwrite, skip_bad=a.skip_bad, progress=run.progress)
    except OutputExistsError:
        if overwrite:
            raise
        raise _foreign("tile", a.out) from None
    return [a.out], summary.lines()


def run_train(stage: Stage[TrainArgs], run: StageRun) -> tuple[list[Path], list[str]]:
    """Train afresh, or resume an unfinished run when nothing changed."""
    from geoseg.train import train
    from geoseg.train.metrics import best_text

    a = stage.args
    resume = run.unfinished
    try:
        res = train(a.cfg, a.patches, a.out, resume=resume,
                    overwrite=not resume and not run.first, progress=run.progress)
    except OutputExistsError:
        raise _foreign("train", a.out) from None
    return [a.out], [f"trained {res.epochs} epochs; {best_text(res.best)}"]


def run_predict(stage: Stage[PredictArgs], run: StageRun) -> tuple[list[Path], list[str]]:
    """Predict, replacing the output of an earlier run of the pipeline."""
    from geoseg.predict import predict

    a = stage.args
    try:
        summary = predict(a.scenes, a.model, a.out, a.cfg, scheduler=run.scheduler.get(),
                          overwrite=not run.first, progress=run.progress)
    except OutputExistsError as err:  # --out, or the --prob-out file it names
        raise _foreign("predict", Path(err.path) if err.path else a.out) from None
    return [a.out, *summary.prob_out], summary.lines()


def run_evaluate(stage: Stage[EvaluateArgs], run: StageRun) -> tuple[list[Path], list[str]]:
    """Evaluate (inside the scenes' footprint with ``clip``, an ``aoi``); write the JSON and quick-look."""
    from geoseg.aoi import areas_of, evaluate_within, read_within
    from geoseg.evaluate import format_report
    from geoseg.io.atomic import check_outputs
    from geoseg.io.sources import list_scenes, scene_name
    from geoseg.quicklook import png_path

    a = stage.args
    scenes = [s.source for s in list_scenes(a.scenes)] if a.scenes else []
    check_outputs({"evaluate.json": a.json_out, "evaluate.quicklook": a.quicklook and png_path(a.quicklook)},
                  {"the predictions": a.pred, "the truth": a.truth, "a scene": scenes, "the AOI": a.aoi})
    # the same restriction as `geoseg evaluate --clip --aoi`: the scenes' valid-data footprint
    areas = areas_of(scenes, a.clip, a.aoi)
    pred, truth = read_within(a.pred, a.truth, areas)
    report, pred, truth, notes = evaluate_within(pred, truth, scenes=scenes, clip=a.clip, aoi=a.aoi,
                                                 multipart=a.multipart, areas=areas, iou=a.iou,
                                                 class_field=a.class_field, score_field=a.score_field,
                                                 boundary_width=a.boundary_width)
    outputs: list[Path] = []
    if a.json_out is not None:
        write_json(a.json_out, report, indent=2)
        outputs.append(a.json_out)
    if a.quicklook is not None:
        from geoseg.quicklook import quicklook

        title = f"{scene_name(scenes[0])}: F1 {report['f1']:.3f} at IoU {a.iou:g}"
        outputs.append(quicklook(scenes[0], a.quicklook, pred=pred, truth=truth,
                                 max_side=a.max_side, title=title))
    head = f"IoU >= {a.iou:g}: {show(a.pred)} vs {show(a.truth)}" + (f" ({', '.join(notes)})" if notes else "")
    return outputs, [head, *format_report(report).splitlines()]


RUNNERS: dict[str, Runner] = {"tile": run_tile, "train": run_train, "predict": run_predict,
                              "evaluate": run_evaluate}
assert RUNNERS.keys() == ARGS.keys(), "each stage kind of geoseg.pipeline.model.ARGS needs a runner"


def run_stage(stage: Stage[Any], run: StageRun) -> tuple[list[Path], list[str]]:
    """Run ``stage`` with the runner of its kind (its ``args`` checked to be that kind's model)."""
    if not isinstance(stage.args, ARGS[stage.name]):
        raise TypeError(f"{stage.name} stage: args must be {ARGS[stage.name].__name__}, "
                        f"not {type(stage.args).__name__}")
    return RUNNERS[stage.name](stage, run)
