"""``dfm``: train, sample and demo Diffusion with Forward Models from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfm.config import ConfigError, builtin_configs
from dfm.training import CheckpointError, TrainingError, TrainingInterrupted

EPILOG = """\
examples:
  dfm train toy_gmm                          train a built-in config (see below)
  dfm train my.yaml train.steps=500 model.width=128
  dfm train toy_gmm --resume                 continue from the run's last checkpoint
  torchrun --nproc_per_node 4 -m dfm train toy_gmm   the same, on 4 processes / GPUs
  dfm sample runs/toy_gmm sample.steps=10 sample.sampler=dpmpp_2m
  dfm demo                                   train a small model and write samples + videos

built-in configs: {configs}
"""


def cmd_train(args: argparse.Namespace) -> int:
    from dfm.runs import task_from_config, train

    task = task_from_config(args.config, args.overrides)
    trainer, stats = train(task, resume=args.resume)
    if trainer.is_main:
        print(f"trained {stats['step']} steps in {stats['seconds']:.0f} s; checkpoints in {task.cfg.out_dir}/checkpoints")
        if not args.no_samples:
            out = Path(task.cfg.out_dir) / "samples"
            _report(task.write_samples(trainer.ema_model.eval(), out))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from dfm.runs import load_trained

    task, model = load_trained(args.checkpoint, args.overrides)
    out = Path(args.out) if args.out else Path(task.cfg.out_dir) / "samples"
    _report(task.write_samples(model, out))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dfm.runs import task_from_config, train

    overrides = [f"out_dir={args.out}", f"train.steps={args.steps}", *args.overrides]
    task = task_from_config(args.config, overrides)
    trainer, stats = train(task, resume=True)  # a second `make demo` reuses the first one's model
    print(f"trained {stats['step']} steps in {stats['seconds']:.0f} s")
    _report(task.write_samples(trainer.ema_model.eval(), Path(args.out) / "samples"))
    return 0


def _report(paths: list[Path]) -> None:
    for p in paths:
        print(f"wrote {p}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfm",
        description="Diffusion with Forward Models: learn to sample signals (3D scenes, motion, GAN latents, "
        "toy vectors) that are only ever observed through a known differentiable forward model.",
        epilog=EPILOG.format(configs=", ".join(builtin_configs())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a YAML config", description="Train a model from a YAML "
                       "config (a path or a built-in name) with key=value overrides. Unknown keys are an error "
                       "that lists the valid ones. Checkpoints, TensorBoard logs (tb/) and previews go to out_dir.")
    t.add_argument("config", help="YAML file or built-in config name")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=1000")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    t.add_argument("--no-samples", action="store_true", help="do not write samples after training")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample from a trained checkpoint", description="Load a checkpoint (a run "
                       "directory or one checkpoint directory) with its EMA weights and write samples: images, "
                       "videos and arrays. Overrides such as sample.steps=10 sample.sampler=dpmpp_2m "
                       "sample.guidance=2 sample.temperature=0.85 change how it samples.")
    s.add_argument("checkpoint", help="run directory or checkpoint directory")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sample.steps=10")
    s.add_argument("--out", help="output directory (default: OUT_DIR/samples of the run)")
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="train a small model quickly and write samples and videos",
                       description="Train the toy posterior problem briefly on this machine and write samples "
                       "beside the exact posterior, plus a video of the sampling trajectory.")
    d.add_argument("--config", default="toy_gmm", help="config to demo (default: toy_gmm)")
    d.add_argument("--out", default="outputs/demo", help="output directory (default: outputs/demo)")
    d.add_argument("--steps", type=int, default=3000, help="training steps (default: 3000, about a minute)")
    d.add_argument("overrides", nargs="*", help="key=value overrides")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"dfm {args.command}: {e}; continue with --resume", file=sys.stderr)
        return 130
    except FileExistsError as e:
        print(f"dfm {args.command}: error: {e}. Continue it with --resume, or choose another out_dir=...", file=sys.stderr)
        return 2
    except (ConfigError, CheckpointError, TrainingError, ValueError, FileNotFoundError) as e:
        print(f"dfm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
