"""`geoseg run`: which stages run and why, with fake stage functions; one real tiny run."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml
from click.testing import CliRunner
from conftest import REPO
from rasterio.transform import from_origin

import geoseg.pipeline as pl
import geoseg.pipeline.scheduler as pl_scheduler
from geoseg.cli.main import cli
from geoseg.errors import ConfigError, OutputExistsError
from geoseg.evaluate import KEYS
from geoseg.pipeline.model import load_pipeline
from geoseg.pipeline.run import run_pipeline

TINY = REPO / "tests" / "conf" / "tiny.yaml"
ALL = ["tile", "train", "predict", "evaluate"]


def scene(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8",
                       crs="EPSG:32636", transform=from_origin(450000, 40000, 0.5, 0.5)) as dst:
        dst.write(np.full((3, 32, 32), 90, np.uint8))
    return path


def polygons(path: Path) -> Path:
    box = shapely.box(450004, 39990, 450008, 39994)  # inside every scene
    gpd.GeoDataFrame({"class": ["building"], "score": [0.9]}, geometry=[box],
                     crs="EPSG:32636").to_file(path)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """data/ (scenes a, b for tiling, c for predict; labels; truth) and pipe/p.yaml -> out/."""
    data = tmp_path / "data"
    for name in ("a", "b", "c"):
        scene(data / f"{name}.tif")
    polygons(data / "labels.geojson")
    polygons(data / "truth.geojson")
    spec = {
        "workdir": "../out",
        "tile": {"scenes": ["../data/a.tif", "../data/b.tif"], "labels": "../data/labels.geojson",
                 "params": {"size": 16, "overlap": 0}},
        "train": {"config": str(TINY), "epochs": 1},
        "predict": {"scenes": ["../data/c.tif"], "params": {"budget": 0.5}},
        "evaluate": {"truth": "../data/truth.geojson"},
    }
    (tmp_path / "pipe").mkdir()
    write_spec(tmp_path, spec)
    return tmp_path


def write_spec(root: Path, spec: dict[str, Any]) -> Path:
    path = root / "pipe" / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_spec(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "pipe" / "p.yaml").read_text())


class Fakes:
    """Tiny stand-ins for the stage functions: record each call, write the outputs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: set[str] = set()
        import geoseg.predict
        import geoseg.quicklook
        import geoseg.tile
        import geoseg.train

        monkeypatch.setattr(geoseg.tile, "tile", self.tile)
        monkeypatch.setattr(geoseg.train, "train", self.train)
        monkeypatch.setattr(geoseg.predict, "predict", self.predict)
        monkeypatch.setattr(geoseg.quicklook, "quicklook", self.quicklook)

    def _record(self, name: str, **kw: Any) -> None:
        self.calls.append((name, kw))
        if name in self.fail:
            raise ConfigError(f"{name} failed on purpose")

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def kwargs(self, name: str) -> dict[str, Any]:
        return [kw for n, kw in self.calls if n == name][-1]

    def tile(self, scenes, labels, out, cfg, *, scheduler, overwrite, skip_bad, progress):
        self._record("tile", overwrite=overwrite, scheduler=scheduler, cfg=cfg, scenes=scenes)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "annotations.json").write_text("{}")
        return SimpleNamespace(lines=lambda: ["chips: 4"])

    def train(self, cfg, patches, run_dir, *, resume, overwrite, progress):
        self._record("train", resume=resume, overwrite=overwrite, epochs=cfg.epochs)
        (Path(run_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "checkpoints" / "best.pt").write_bytes(b"weights")
        return SimpleNamespace(epochs=cfg.epochs, best={"metric": "ap", "value": 0.5, "epoch": 1})

    def predict(self, scenes, model, out, cfg, *, scheduler, overwrite, progress):
        self._record("predict", overwrite=overwrite, scheduler=scheduler, budget=cfg.budget)
        if Path(out).exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
        polygons(Path(out))
        return SimpleNamespace(prob_out=[], lines=lambda: ["polygons: 1"])

    def quicklook(self, scene, out_png, *, pred, truth, max_side, title):
        self._record("quicklook", title=title)
        Path(out_png).write_bytes(b"png")
        return Path(out_png)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(monkeypatch)


def age(root: Path, seconds: float = 10.0) -> None:
    """Move every mtime under root back, so that a later write is clearly newer."""
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(top, name)
            st = os.stat(p)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def run(root: Path, **kw: Any) -> dict[str, pl.StageResult]:
    return {r.stage: r for r in run_pipeline(root / "pipe" / "p.yaml", **kw)}


def ran(results: dict[str, pl.StageResult]) -> list[str]:
    return [name for name, r in results.items() if r.ran]


def test_first_run_runs_all_then_rerun_skips_all(project: Path, fakes: Fakes) -> None:
    res = run(project)
    assert ran(res) == ALL and fakes.names() == ["tile", "train", "predict", "quicklook"]
    assert res["tile"].why == "first run"
    assert fakes.kwargs("tile")["overwrite"] is False and fakes.kwargs("train")["epochs"] == 1
    report = json.loads((project / "out" / "evaluation.json").read_text())
    assert set(KEYS) <= set(report) and report["f1"] == 1.0
    assert "f1" in res["evaluate"].details[1]  # the table
    for name in ALL:
        assert json.loads((project / "out" / ".stamps" / f"{name}.json").read_text())["status"] == "done"
    age(project)
    fakes.calls.clear()
    again = run(project)
    assert ran(again) == [] and fakes.names() == []
    assert all(r.why == "up to date" for r in again.values())
    assert again["predict"].outputs == [project / "out" / "buildings.gpkg"]


@pytest.mark.parametrize(("touched", "expected"), [
    ("data/labels.geojson", ALL),
    ("data/c.tif", ["predict", "evaluate"]),
    ("data/truth.geojson", ["evaluate"]),
    ("out/run/checkpoints/best.pt", ["predict", "evaluate"]),  # an output edited by hand
])
def test_touched_input_reruns_its_stage_and_later(project: Path, fakes: Fakes, touched: str,
                                                  expected: list[str]) -> None:
    run(project)
    age(project)
    os.utime(project / touched)
    fakes.calls.clear()
    res = run(project)
    assert ran(res) == expected
    first = res[expected[0]]
    assert "newer than the outputs" in first.why
    if expected == ALL:
        assert fakes.kwargs("tile")["overwrite"] is True  # the chips' manifest records inputs
        assert res["train"].why == f"input {project / 'out' / 'patches'} rebuilt by tile"
    age(project)
    assert ran(run(project)) == []


def test_a_scenes_pattern_is_its_files_and_a_new_one_reruns(project: Path, fakes: Fakes) -> None:
    """A glob in the YAML (no shell expands it) was a path that does not exist."""
    spec = read_spec(project)
    spec["tile"]["scenes"] = ["../data/[ab].tif"]
    write_spec(project, spec)
    run(project)
    data = project / "data"
    assert [Path(str(s)).name for s in fakes.kwargs("tile")["scenes"]] == ["a.tif", "b.tif"]
    age(project)
    fakes.calls.clear()
    assert ran(run(project)) == []
    spec["tile"]["scenes"] = ["../data/*.tif"]  # now c.tif too
    write_spec(project, spec)
    res = run(project)
    assert res["tile"].why == "parameters changed"
    assert [Path(str(s)).name for s in fakes.kwargs("tile")["scenes"]] == ["a.tif", "b.tif", "c.tif"]
    age(project)
    scene(data / "d.tif")  # a file the pattern now matches: the stage's scenes changed
    fakes.calls.clear()
    res = run(project)
    assert res["tile"].ran and [Path(str(s)).name for s in fakes.kwargs("tile")["scenes"]][-1] == "d.tif"
    spec["tile"]["scenes"] = ["../data/none_*.tif"]
    write_spec(project, spec)
    cli_res = CliRunner().invoke(cli, ["run", str(project / "pipe" / "p.yaml")])
    assert cli_res.exit_code == 1 and "none_*.tif" in cli_res.output and "matches no file" in cli_res.output


def test_changed_parameter_reruns_its_stage_and_later(project: Path, fakes: Fakes) -> None:
    run(project)
    age(project)
    spec = read_spec(project)
    spec["predict"]["params"]["budget"] = 0.25
    write_spec(project, spec)
    fakes.calls.clear()
    res = run(project)
    assert ran(res) == ["predict", "evaluate"]
    assert res["predict"].why == "parameters changed" and fakes.kwargs("predict")["budget"] == 0.25
    assert res["evaluate"].why == f"input {project / 'out' / 'buildings.gpkg'} rebuilt by predict"
    spec["tile"]["params"]["size"] = 32
    write_spec(project, spec)
    res = run(project)
    assert ran(res) == ALL and fakes.kwargs("tile")["overwrite"] is True
    assert fakes.kwargs("train") == {"resume": False, "overwrite": True, "epochs": 1}


def test_changed_train_config_file_reruns_train(project: Path, fakes: Fakes) -> None:
    cfg = project / "tiny.yaml"
    cfg.write_text(TINY.read_text())
    spec = read_spec(project)
    spec["train"]["config"] = "../tiny.yaml"
    write_spec(project, spec)
    run(project)
    cfg.write_text(TINY.read_text().replace("lr: 0.003", "lr: 0.002"))
    assert ran(run(project)) == ["train", "predict", "evaluate"]
    cfg.write_text(cfg.read_text() + "\n# a comment changes nothing\n")
    assert ran(run(project)) == []


def test_from_and_force(project: Path, fakes: Fakes) -> None:
    run(project)
    res = run(project, from_stage="train")
    assert ran(res) == ["train", "predict", "evaluate"] and res["train"].why == "--from train"
    assert fakes.kwargs("train") == {"resume": False, "overwrite": True, "epochs": 1}
    res = run(project, force=True)
    assert ran(res) == ALL and res["tile"].why == "--force"
    with pytest.raises(ConfigError, match="declares no evaluate stage"):
        spec = read_spec(project)
        del spec["evaluate"]
        write_spec(project, spec)
        run(project, from_stage="evaluate")


def test_cli_lines_outputs_and_qgis_hint(project: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    runner = CliRunner()
    res = runner.invoke(cli, ["run", "pipe/p.yaml"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines if ln.split()[0] in ALL] == [[s, "ran"] for s in ALL]
    assert "outputs:" in lines and "  out/buildings.gpkg" in lines and "  out/quicklook.png" in lines
    assert lines[-1].startswith("open out/buildings.gpkg in QGIS") and "data/c.tif" in lines[-1]
    res = runner.invoke(cli, ["run", "pipe/p.yaml", "--from", "predict"])
    stage_lines = [ln for ln in res.stdout.splitlines() if ln.split()[0] in ALL]
    assert [ln.split()[1] for ln in stage_lines] == ["skipped", "skipped", "ran", "ran"]
    assert "up to date" in stage_lines[0] and "--from predict" in stage_lines[2]
    res = runner.invoke(cli, ["run", "pipe/p.yaml", "--force"])
    assert res.stdout.count(" ran ") == 4


@pytest.mark.parametrize(("edit", "key", "where"), [
    (lambda s: s["tile"].update(parms={}), "tile.parms", "p.yaml"),
    (lambda s: s.update(workdri="x"), "workdri", "p.yaml"),
    (lambda s: s["predict"]["params"].update(bugdet=0.5), "predict.params.bugdet", "p.yaml"),
    (lambda s: s["train"].update(params={"optim": {"lrr": 1}}), "train.params.optim.lrr", "p.yaml"),
])
def test_unknown_key_is_one_line_cli_error(project: Path, fakes: Fakes, edit: Any, key: str,
                                           where: str) -> None:
    spec = read_spec(project)
    edit(spec)
    path = write_spec(project, spec)
    res = CliRunner().invoke(cli, ["run", str(path)])
    assert res.exit_code == 1
    assert res.output.startswith("geoseg: error:") and res.output.count("\n") == 1
    assert f"unknown key '{key}'" in res.output and where in res.output
    assert fakes.calls == []


def test_unknown_key_in_stage_config_file_names_that_file(project: Path, fakes: Fakes) -> None:
    bad = project / "bad.yaml"
    bad.write_text(TINY.read_text().replace("epochs: 2", "epochs: 2\nepoch: 3"))
    spec = read_spec(project)
    spec["train"]["config"] = "../bad.yaml"
    res = CliRunner().invoke(cli, ["run", str(write_spec(project, spec))])
    assert res.exit_code == 1 and "unknown key 'epoch'" in res.output and "bad.yaml" in res.output


def test_missing_link_and_scheduler_conflict_are_config_errors(project: Path) -> None:
    spec = read_spec(project)
    del spec["train"]
    with pytest.raises(ConfigError, match=r"'predict.model' is missing in .*p.yaml"):
        load_pipeline(write_spec(project, spec))
    spec = read_spec(project)
    spec.update(scheduler="tcp://127.0.0.1:8786", cluster="local")
    with pytest.raises(ConfigError, match="not both"):
        load_pipeline(write_spec(project, spec))


def test_failing_stage_writes_no_done_stamp_and_is_retried(project: Path, fakes: Fakes) -> None:
    fakes.fail.add("train")
    with pytest.raises(ConfigError, match=r"^train stage of .*p.yaml: train failed on purpose"):
        run(project)
    assert fakes.names() == ["tile", "train"]
    stamps = project / "out" / ".stamps"
    assert json.loads((stamps / "train.json").read_text())["status"] == "running"
    assert not (stamps / "predict.json").exists()
    fakes.fail.clear()
    fakes.calls.clear()
    res = run(project)
    assert ran(res) == ["train", "predict", "evaluate"]
    assert res["train"].why == "last run did not finish"
    assert fakes.kwargs("train")["resume"] is True  # same config: continue from last.pt


def test_output_missing_and_foreign_output(project: Path, fakes: Fakes) -> None:
    run(project)
    (project / "out" / "evaluation.json").unlink()
    res = run(project)
    assert ran(res) == ["evaluate"] and res["evaluate"].why.endswith("evaluation.json missing")
    (project / "out" / ".stamps" / "predict.json").unlink()  # buildings.gpkg is now unrecorded
    for _ in range(2):  # the second time too: a failed check does not make the file ours
        res = CliRunner().invoke(cli, ["run", str(project / "pipe" / "p.yaml")])
        assert res.exit_code == 1 and "did not record" in res.output and "--from predict" in res.output
    assert ran(run(project, from_stage="predict")) == ["predict", "evaluate"]


def test_a_foreign_prob_out_file_is_named_not_the_polygons(project: Path, fakes: Fakes,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """predict's refusal of an existing --prob-out file was reported as the polygons' (--out) file."""
    prob = project / "out" / "probs.tif"

    def refuses(*a: Any, **kw: Any) -> None:
        raise OutputExistsError(f"--prob-out {prob} exists; pass --overwrite to replace it", path=str(prob))

    monkeypatch.setattr("geoseg.predict.predict", refuses)
    res = CliRunner().invoke(cli, ["run", str(project / "pipe" / "p.yaml")])
    assert res.exit_code == 1 and f"{prob} holds outputs that this pipeline did not record" in res.output, res.output
    assert "buildings.gpkg" not in res.output


def test_one_shared_client_for_tile_and_predict(project: Path, fakes: Fakes,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    class FakeClient:
        closed = 0

        def close(self) -> None:
            self.closed += 1

    def make_client(address: str, cluster: Any) -> tuple[Any, list[Any]]:
        client = FakeClient()
        made.append((address, cluster, client))
        return client, [client]

    monkeypatch.setattr(pl_scheduler, "make_client", make_client)
    spec = read_spec(project)
    spec["cluster"] = {"workers": 3}
    write_spec(project, spec)
    run(project)
    assert len(made) == 1 and made[0][1].workers == 3
    client = made[0][2]
    assert fakes.kwargs("tile")["scheduler"] is client and fakes.kwargs("predict")["scheduler"] is client
    assert client.closed == 1
    run(project, force=True, scheduler="sync")  # the option wins over the file's cluster
    assert len(made) == 1 and fakes.kwargs("predict")["scheduler"] == "sync"


@pytest.mark.slow
def test_real_tiny_pipeline_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("geoseg.predict")
    from conftest import bright_boxes_scene, grid_boxes, labels_for

    boxes = grid_boxes((64, 64))
    bright_boxes_scene(tmp_path / "train_scene.tif", (64, 64), boxes, seed=0)
    bright_boxes_scene(tmp_path / "val_scene.tif", (64, 64), boxes, seed=1)
    labels_for(tmp_path / "train_scene.tif", tmp_path / "labels.gpkg", boxes)
    spec = {
        "workdir": "out",
        "scheduler": "sync",
        "tile": {"scenes": ["train_scene.tif", "val_scene.tif"], "labels": "labels.gpkg",
                 "params": {"size": 32, "overlap": 0, "val_fraction": 0.0, "val_scenes": ["val*"]}},
        "train": {"config": str(TINY), "epochs": 1},
        "predict": {"scenes": ["val_scene.tif"], "params": {"block": 64, "device": "cpu"}},
        "evaluate": {"truth": "labels.gpkg", "max_side": 200},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(cli, ["run", str(path)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    for p in ("patches/annotations.json", "run/checkpoints/best.pt", "buildings.gpkg",
              "evaluation.json", "quicklook.png"):
        assert (out / p).exists(), p
    assert set(KEYS) <= set(json.loads((out / "evaluation.json").read_text()))
    assert "open " in res.stdout and "in QGIS" in res.stdout
    again = CliRunner().invoke(cli, ["run", str(path)])
    assert again.exit_code == 0, again.output
    assert again.stdout.count("skipped up to date") == 4, again.stdout


def test_stage_without_outputs_is_skipped_until_an_input_changes(project: Path, fakes: Fakes) -> None:
    spec = read_spec(project)
    spec["evaluate"].update(json=None, quicklook=None)
    write_spec(project, spec)
    assert ran(run(project)) == ALL
    assert ran(run(project)) == []
    age(project)
    os.utime(project / "data" / "truth.geojson")
    assert ran(run(project)) == ["evaluate"]


@pytest.mark.parametrize("stage", ALL)
def test_unknown_key_in_each_stage_section_names_key_and_stage(project: Path, stage: str) -> None:
    spec = read_spec(project)
    spec[stage]["bogus"] = 1
    with pytest.raises(ConfigError, match=rf"unknown key '{stage}\.bogus' in .*p\.yaml"):
        load_pipeline(write_spec(project, spec))


def test_stage_args_are_the_typed_model_of_their_kind(project: Path) -> None:
    from pydantic import ValidationError

    from geoseg.pipeline.model import ARGS, EvaluateArgs, PredictArgs, TileArgs, TrainArgs
    from geoseg.pipeline.stages import RUNNERS

    assert list(ARGS) == ALL and RUNNERS.keys() == ARGS.keys()
    pipe = load_pipeline(project / "pipe" / "p.yaml")
    kinds = {"tile": TileArgs, "train": TrainArgs, "predict": PredictArgs, "evaluate": EvaluateArgs}
    assert {n: type(s.args) for n, s in pipe.stages.items()} == kinds
    out = project / "out"
    t, r, p, e = (pipe.stages[n].args for n in ALL)
    assert t.out == out / "patches" and t.cfg.size == 16 and t.skip_bad is False
    assert r.patches == t.out and r.cfg.epochs == 1 and r.out == out / "run"
    assert p.model == r.out and p.scenes == [str(project / "data" / "c.tif")] and p.cfg.budget == 0.5
    assert e.pred == p.out and e.scenes == p.scenes and e.json_out == out / "evaluation.json"
    assert (e.iou, e.clip, e.max_side) == (0.5, True, 1500)  # the section model's defaults
    with pytest.raises(ValidationError, match="extra"):
        TrainArgs(**dict(r), bogus=1)


def test_run_from_choices_are_the_stage_kinds() -> None:
    # the CLI keeps its own list so that `geoseg --help` stays fast; this keeps them one list
    from geoseg.cli.run import run_cmd
    from geoseg.pipeline.model import STAGES

    (opt,) = [p for p in run_cmd.params if p.name == "from_stage"]
    assert tuple(opt.type.choices) == STAGES  # type: ignore[attr-defined]


def test_evaluate_aoi_restricts_like_the_cli_and_is_an_input(project: Path, fakes: Fakes) -> None:
    spec = read_spec(project)
    away = project / "data" / "aoi.gpkg"  # an area that misses the one true building
    gpd.GeoDataFrame(geometry=[shapely.box(450010, 39980, 450014, 39984)], crs="EPSG:32636").to_file(away)
    spec["evaluate"]["aoi"] = "../data/aoi.gpkg"
    write_spec(project, spec)
    res = run(project)
    report = json.loads((project / "out" / "evaluation.json").read_text())
    assert report["tp"] + report["fn"] == 0 and "inside the scenes, inside aoi.gpkg" in res["evaluate"].details[0]
    age(project)
    around = gpd.GeoDataFrame(geometry=[shapely.box(450000, 39985, 450012, 39998)], crs="EPSG:32636")
    around.to_crs("EPSG:4326").to_file(away)  # now around it, in another CRS
    assert ran(run(project)) == ["evaluate"]
    report = json.loads((project / "out" / "evaluation.json").read_text())
    assert report["tp"] == 1 and report["f1"] == 1.0


def test_a_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    # distributed's Nanny sets OMP_NUM_THREADS=1 (and more) in os.environ to spawn its workers,
    # and leaves it: a later train --devices N stage would start single-threaded ranks
    from geoseg.pipeline.schema import ClusterConfig

    for k in ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # a user's own value is kept
    before = dict(os.environ)
    shared = pl_scheduler.SharedScheduler("threads", ClusterConfig(workers=1, threads_per_worker=1))
    try:
        client = shared.get()
        assert client.submit(os.getenv, "OMP_NUM_THREADS").result(timeout=60) == "1"  # the worker's own
        assert dict(os.environ) == before
    finally:
        shared.close()
    assert dict(os.environ) == before


def read_otherwise(monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
    """Another geoseg revision: the same unchanged files of ``names`` opened with another validity."""
    import dataclasses

    import geoseg.io.rasters as rasters

    real = rasters.inspect_scene

    def inspect(scene: Any) -> Any:
        info = real(scene)
        return dataclasses.replace(info, has_mask=not info.has_mask) if info.name in names else info

    monkeypatch.setattr(rasters, "inspect_scene", inspect)


@pytest.mark.parametrize(("names", "expected"), [({"c"}, ["predict", "evaluate"]), ({"a"}, ALL)])
def test_scenes_read_otherwise_rerun_their_stage(project: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch,
                                                 names: set[str], expected: list[str]) -> None:
    """Unchanged files read otherwise after an upgrade: chips or polygons of the old reading are not kept."""
    run(project)
    age(project)
    fakes.calls.clear()
    with monkeypatch.context() as m:
        read_otherwise(m, names)
        res = run(project)
        assert ran(res) == expected
        assert "read otherwise than when it ran (another geoseg revision" in res[expected[0]].why
        if expected == ALL:
            assert fakes.kwargs("tile")["overwrite"] is True  # old chips replaced, not resumed
            assert res["train"].why == f"input {project / 'out' / 'patches'} rebuilt by tile"
        age(project)
        assert ran(run(project)) == []  # the new reading is recorded
    age(project)
    assert ran(run(project))[:1] == expected[:1]  # and the old one is a change again


def test_a_stamp_without_reads_adopts_the_reading_now(project: Path, fakes: Fakes,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stamps of a revision that did not record the reading: skipped, then held to it."""
    run(project)
    for name in ("tile", "predict"):
        path = project / "out" / ".stamps" / f"{name}.json"
        stamp = json.loads(path.read_text())
        assert stamp["reads"]
        path.write_text(json.dumps({k: v for k, v in stamp.items() if k != "reads"}))
    age(project)
    assert ran(run(project)) == []
    assert json.loads((project / "out" / ".stamps" / "predict.json").read_text())["reads"]
    assert "reads" not in json.loads((project / "out" / ".stamps" / "train.json").read_text())  # no scenes
    read_otherwise(monkeypatch, {"c"})
    assert ran(run(project)) == ["predict", "evaluate"]


def test_a_moved_project_stays_up_to_date(project: Path, fakes: Fakes, tmp_path: Path) -> None:
    """Digests and stamps hold paths relative to the pipeline file: moving the folder reruns nothing."""
    run(project)
    age(project)
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    project.rename(moved)
    fakes.calls.clear()
    res = run(moved)
    assert ran(res) == [] and fakes.names() == []
    assert res["predict"].outputs == [moved / "out" / "buildings.gpkg"]


def test_deciding_reads_the_scenes_without_their_warnings(project: Path, fakes: Fakes) -> None:
    """The stage warns about its scenes when it runs; the skip rules open them silently (pytest: warnings fail)."""
    with rasterio.open(project / "data" / "c.tif", "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(10.0, 58.0, 0.6, 0.6)) as dst:  # 4.8° of latitude
        dst.write(np.full((3, 8, 8), 90, np.uint8))
    assert ran(run(project)) == ALL
    age(project)
    assert ran(run(project)) == []
    assert json.loads((project / "out" / ".stamps" / "predict.json").read_text())["reads"]


def test_deciding_lists_a_scenes_folder_without_its_warnings(project: Path, fakes: Fakes, caplog) -> None:
    """A scenes folder that leaves a file out (a quick-look PNG) warned once more on every `geoseg run`,
    also with every stage up to date: the skip rules list the folder too."""
    folder = project / "data" / "predict"
    scene(folder / "c.tif")
    rasterio.open(folder / "look.png", "w", driver="PNG", width=8, height=8, count=3, dtype="uint8").close()
    spec = yaml.safe_load((project / "pipe" / "p.yaml").read_text())
    spec["predict"]["scenes"] = ["../data/predict"]
    (project / "pipe" / "p.yaml").write_text(yaml.safe_dump(spec))
    left_out = "image(s) without georeferencing left out (look.png)"
    with caplog.at_level(logging.WARNING):
        assert ran(run(project)) == ALL
    assert caplog.text.count(left_out) == 1  # by the stage, not by the skip rules before it
    caplog.clear()
    age(project)
    with caplog.at_level(logging.WARNING):
        assert ran(run(project)) == []
    assert left_out not in caplog.text


def test_an_evaluate_stage_ranks_another_tools_predictions_by_its_score_field(tmp_path: Path) -> None:
    # the two false predictions first in the file, with low confidence: AP in file order is < 1
    utm = "EPSG:32636"
    boxes = [shapely.box(450000 + 20 * i, 40000, 450010 + 20 * i, 40010) for i in range(4)]
    far = [shapely.box(451000 + 20 * i, 40000, 451010 + 20 * i, 40010) for i in range(2)]
    gpd.GeoDataFrame({"confidence": [0.2, 0.3, 0.9, 0.9, 0.9, 0.9]}, geometry=far + boxes,
                     crs=utm).to_file(tmp_path / "theirs.gpkg")
    gpd.GeoDataFrame(geometry=boxes, crs=utm).to_file(tmp_path / "truth.gpkg")
    spec = {"workdir": "out", "evaluate": {"pred": "theirs.gpkg", "truth": "truth.gpkg", "clip": False,
                                           "quicklook": None, "score_field": "confidence"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    pl.run_pipeline(tmp_path / "p.yaml", scheduler="sync")
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["f1"] == pytest.approx(0.8) and report["ap50"] == 1.0
