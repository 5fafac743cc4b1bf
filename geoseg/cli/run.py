"""`geoseg run`."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import click

from geoseg.cli.options import progress_option


@click.command("run")
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--from", "from_stage", type=click.Choice(["tile", "train", "predict", "evaluate"]),
              help="Rerun this stage and every later one, even if up to date.")
@click.option("--force", is_flag=True, help="Rerun every stage.")
@click.option("--scheduler", metavar="threads|processes|sync|tcp://HOST:PORT",
              help="Dask scheduler of tile and predict; overrides the file's "
                   "'scheduler' and 'cluster'.  [default: the file's, else threads]")
@progress_option
def run_cmd(pipeline: Path, from_stage: str | None, force: bool, scheduler: str | None,
            progress: bool | None) -> None:
    """Run the stages of PIPELINE (tile, train, predict, evaluate) in order.

    A stage is skipped when its stamp records the same parameters and its outputs
    exist and are newer than its inputs; an earlier stage that reruns makes the
    stages using its outputs rerun. One line per stage says ran/skipped, why, and
    how long; then come the outputs and how to open them. Format: docs/pipelines.md.

    \b
    $ geoseg run pipelines/kampala.yaml
    $ geoseg run pipelines/kampala.yaml --from train
    $ geoseg run pipelines/kampala.yaml --force --scheduler tcp://10.0.0.5:8786
    """
    from geoseg.pipeline.model import StageResult, load_pipeline, show
    from geoseg.pipeline.run import qgis_hint, run_pipeline

    # dask.distributed sets its loggers to INFO when imported: import it first, then make
    # them follow -v/-q like geoseg's own (the cluster's chatter is not for the user)
    with contextlib.suppress(ImportError):
        import distributed  # noqa: F401
    logging.getLogger("distributed").setLevel(logging.getLogger().getEffectiveLevel())
    pipe = load_pipeline(pipeline)

    def started(stage: str, why: str) -> None:
        click.echo(f"{stage}: running ({why})...", err=True)

    def finished(res: StageResult) -> None:
        click.echo(f"{res.stage:<9}{res.status:<8}{res.why} ({res.seconds:.1f} s)")
        for line in res.details:
            click.echo(f"    {line}")

    results = run_pipeline(pipe, from_stage=from_stage, force=force, scheduler=scheduler,
                           progress=progress, on_start=started, on_result=finished)
    click.echo("outputs:")
    for res in results:
        for out in res.outputs:
            click.echo(f"  {show(out)}")
    hint = qgis_hint(pipe)
    if hint:
        click.echo(hint)
