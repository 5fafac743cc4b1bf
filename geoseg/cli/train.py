"""`geoseg train`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from geoseg.cli.options import overwrite_option, progress_option
from geoseg.config import MAX_SEED


@click.command("train")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--patches", type=click.Path(path_type=Path),
              help="Output directory of geoseg tile (default: 'patches' of the config).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--epochs", type=int, help="Train up to this epoch (overrides the config).")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), help="Seed of weights, sampling and augmentation.")
@click.option("--devices", type=click.IntRange(min=1),
              help="Training processes on this machine (one GPU each on CUDA; config key 'devices'). "
                   "data.batch_size is the global batch, split over all processes. See docs/distributed.md.")
@click.option("--nodes", type=click.IntRange(min=1), help="Machines of a multi-node run (default 1).")
@click.option("--node-rank", type=click.IntRange(min=0),
              help="This machine's index in 0..NODES-1 (default: $NODE_RANK, else 0).")
@click.option("--master-addr", help="Host of --node-rank 0 (default: $MASTER_ADDR; one node: 127.0.0.1).")
@click.option("--master-port", type=click.IntRange(1, 65535),
              help="Its port (default: $MASTER_PORT; one node: a free one).")
@click.option("--max-memory", help="Memory data.batch_size: auto may use on the CPU, e.g. 8GB "
                                   "(default: half of what is available).")
@click.option("--unlabelled", "unlabelled", multiple=True, type=click.Path(path_type=Path),
              help="Output folder of `geoseg tile` without --labels: mean-teacher training on its "
                   "chips (repeatable; adds to the config's semi.unlabelled).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override one config value: dotted key, YAML value, e.g. --set model.ff.encoder_depth=5 "
                   "(repeatable; validated like the file; the run's config.yaml records it).")
@overwrite_option
@progress_option
def train_cmd(config: Path, patches: Path | None, out: Path, epochs: int | None, resume: bool,
              device: str | None, seed: int | None, devices: int | None, nodes: int | None,
              node_rank: int | None, master_addr: str | None, master_port: int | None,
              max_memory: str | None, unlabelled: tuple[Path, ...], sets: tuple[str, ...], overwrite: bool,
              progress: bool | None) -> None:
    """Train the routed instance-segmentation model on chips from geoseg tile.

    Writes OUT/checkpoints/{last,best}.pt, OUT/metrics.csv (one row per epoch: losses,
    lr, AP, AP50, IoU, F1, seconds), OUT/curves.png and OUT/config.yaml (resolved).

    \b
    $ geoseg train configs/buildings-cpu.yaml --patches patches/ --out runs/b1
    $ geoseg train configs/buildings-cpu.yaml --patches patches/ --out runs/b1 --resume --epochs 30
    $ geoseg train configs/buildings-cpu.yaml --patches patches/ --out runs/h16 --set model.halo=16
    $ geoseg train configs/buildings-gpu.yaml --patches patches/ --out runs/b2 --devices 4
    $ torchrun --nproc-per-node 4 -m geoseg train configs/buildings-gpu.yaml --patches patches/ --out runs/b2
    $ geoseg tile more_scenes/ --out unlabelled/
    $ geoseg train configs/buildings-cpu.yaml --patches patches/ --unlabelled unlabelled/ --out runs/semi
    """
    from geoseg.config import load_config
    from geoseg.errors import ConfigError
    from geoseg.train import TrainConfig, train
    from geoseg.train.config import config_task

    if sets and resume:
        raise ConfigError(f"--set does not apply with --resume: the run in {out} continues with the "
                          "config it was started with; start a new --out to change it")
    if config_task(config) == "search":  # the reference detector of `geoseg search`
        from geoseg.cli.search import train_search_cmd

        if unlabelled:
            raise ConfigError(f"--unlabelled is not supported with 'task: search' ({config})")
        if devices or nodes or max_memory:
            raise ConfigError(f"--devices, --nodes and --max-memory are not supported with 'task: search' "
                              f"({config}); it trains in one process")
        train_search_cmd(config, patches, out, sets, epochs=epochs, resume=resume, overwrite=overwrite,
                         device=device, seed=seed, progress=progress)
        return
    cfg = load_config(TrainConfig, config, sets=sets)
    if unlabelled:
        semi = cfg.semi.model_copy(update={"unlabelled": [*cfg.semi.unlabelled, *map(str, unlabelled)]})
        cfg = cfg.model_copy(update={"semi": semi})
    patches = patches or (Path(cfg.patches) if cfg.patches else None)
    if patches is None:
        raise ConfigError(f"no patches directory: pass --patches or set 'patches' in {config}")
    budget = None
    if max_memory is not None:
        from geoseg.train.autobatch import parse_size

        budget = parse_size(max_memory)
        if cfg.data.batch_size != "auto" and not resume:
            raise ConfigError(f"--max-memory sizes data.batch_size: auto, but {config} sets "
                              f"data.batch_size {cfg.data.batch_size}; set it to auto or drop --max-memory")
    from geoseg.train.distributed import Nodes
    from geoseg.train.metrics import best_text

    machines = Nodes(nodes or 1, node_rank, master_addr, master_port)
    result = train(cfg, patches, out, epochs=epochs, resume=resume, overwrite=overwrite, device=device,
                   seed=seed, progress=progress, devices=devices, nodes=machines, max_memory=budget)
    if int(os.environ.get("RANK", "0")) > 0:  # a rank torchrun started: rank 0 reports
        return
    last = result.history[-1] if result.history else {}
    scores = ", ".join(f"{k} {last[k]:.3f}" for k in ("ap", "ap50", "iou", "f1") if k in last)
    click.echo(f"trained {result.epochs} epochs; last: {scores or 'no validation chips'}; "
               f"{best_text(result.best)}", err=True)
    click.echo(f"run: {out} (checkpoints/best.pt, metrics.csv, curves.png)", err=True)
