"""``dfm``: train, sample and demo Diffusion with Forward Models from the command line."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from dfm.config import RULES, ConfigError, builtin_configs
from dfm.data.multiview import SOURCES
from dfm.data.sprites import PATTERNS
from dfm.data.vimeo import DatasetError
from dfm.generators import GeneratorError
from dfm.model import SamplingError
from dfm.training import CheckpointError, RunInUseError, TrainingError, TrainingInterrupted

PRETRAINED = Path(__file__).parent / "pretrained"  # small checkpoints shipped with the package
PRETRAINED_RUNS = {"motion": "motion_sprites", "gan": "gan_faces", "scenes": "scenes_synth3d"}  # demo -> shipped checkpoint

EPILOG = """\
examples:
  dfm train toy_gmm                          train a built-in config (see below)
  dfm train my.yaml train.steps=500 model.width=128
  dfm train toy_gmm --resume                 continue from the run's last checkpoint
  torchrun --nproc_per_node 4 -m dfm train toy_gmm   the same, on 4 processes / GPUs
  dfm sample runs/toy_gmm sample.steps=10 sample.sampler=dpmpp_2m
  dfm demo                                   train a small model and write samples + videos
  dfm demo motion                            sample motions of unseen frames with the shipped model
  dfm demo gan                               sample faces that agree with a small patch (shipped model)
  dfm demo scenes                            sample 3-D scenes that agree with one image (shipped model)
  dfm sample runs/scenes_synth3d --image view.png --camera cameras.json   3-D scenes from your own image
  dfm invert gan_faces                       the optimisation baseline: fit one latent per patch
  dfm data motion --out data/motion_sprites  write the procedural motion dataset (Vimeo90K layout)
  dfm data synth3d --layout co3d --out data/co3d_synth   the procedural 3-D scenes in Co3D v2's layout
  dfm data check co3d data/co3d --category hydrant       read every frame and camera, report problems
  dfm export runs/motion_sprites my_model    keep only what sampling needs (EMA weights + config)

built-in configs: {configs}
"""


def cmd_train(args: argparse.Namespace) -> int:
    from dfm.runs import task_from_config, train

    task = task_from_config(args.config, args.overrides)
    trainer, stats = train(task, resume=args.resume_from or args.resume)
    if trainer.is_main:
        if stats["step"] == 0:
            print(f"train.steps={task.cfg.train.steps}: nothing trained, no checkpoint written")
            return 0
        print(f"trained {stats['step']} steps in {stats['seconds']:.0f} s; checkpoints in {task.cfg.out_dir}/checkpoints")
        if not args.no_samples:
            out = Path(task.cfg.out_dir) / "samples"
            _report(task.write_samples(trainer.ema_model.eval(), out))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from dfm.runs import load_trained

    task, model = load_trained(args.checkpoint, args.overrides)
    out = Path(args.out) if args.out else Path(task.cfg.out_dir) / "samples"
    if (args.image is None) != (args.camera is None):
        raise ValueError("--image and --camera go together: an input image and the cameras.json of its camera")
    if args.image is None:
        _report(task.write_samples(model, out))
    elif not hasattr(task, "sample_image"):
        raise ValueError(f"task {task.cfg.task!r} does not sample from an input image (the scenes task does)")
    else:
        _report(task.sample_image(model, Path(args.image), Path(args.camera), out))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from dfm.runs import load_trained
    from dfm.tasks.scenes import ScenesTask
    from dfm.tasks.scenes.evaluation import evaluate, write_report

    flags = {"steps": args.steps, "sampler": args.sampler, "guidance": args.guidance, "temperature": args.temperature, "eta": args.eta}
    overrides = [*args.overrides, *(f"sample.{k}={v}" for k, v in flags.items() if v is not None)]
    task, model = load_trained(args.run, overrides)
    if not isinstance(task, ScenesTask):
        raise ValueError(f"dfm eval scores 3-D scene runs; {args.run} is a {task.cfg.task!r} run")
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out) if args.out else Path(args.run) / f"eval-{args.protocol}"
    report = evaluate(
        model, task, args.protocol, out, scenes=args.scenes, samples=args.samples, seed=args.seed,
        sampler=task.cfg.sample.sampler_kwargs(), inception=args.inception,
    )
    given = {"--" + k: v for k, v in vars(args).items() if k in (*flags, "inception", "device") and v is not None}
    command = ["eval", args.run, "--protocol", args.protocol, "--scenes", str(report["scenes"]), "--samples", str(args.samples),
               "--seed", str(args.seed), *(x for pair in given.items() for x in map(str, pair)), *args.overrides]
    _report(write_report(report, args.protocol, args.run, out, command))
    print((out / "metrics.md").read_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.application in PRETRAINED_RUNS:
        return demo_pretrained(args)
    from dfm.runs import task_from_config, train

    overrides = [f"out_dir={args.out}", f"train.steps={args.steps}", *args.overrides]
    task = task_from_config(args.config, overrides)
    trainer, stats = train(task, resume=True)  # a second `make demo` reuses the first one's model
    print(f"trained {stats['step']} steps in {stats['seconds']:.0f} s")
    _report(task.write_samples(trainer.ema_model.eval(), Path(args.out) / "samples"))
    return 0


def demo_pretrained(args: argparse.Namespace) -> int:
    """Sample unseen inputs with a checkpoint shipped in the package (motion: freshly generated sprite
    frames; gan: held-out patches of generated faces; scenes: freshly generated Synth3D scenes)."""
    from dfm.runs import load_trained

    out = Path(args.out)
    overrides = [f"out_dir={out}", f"sample.seed={args.seed}"]
    if args.application == "motion":
        from dfm.data.sprites import SpriteMotion, write_dataset

        data = write_dataset(out / "data", SpriteMotion(), sequences=8, test_fraction=0.5, seed=args.seed, progress=False)
        overrides.append(f"data.root={data}")
    elif args.application == "scenes":
        from dfm.data.synth3d import Synth3D, write_dataset

        data = write_dataset(out / "data", Synth3D(), scenes=6, test_fraction=0.5, seed=args.seed, progress=False)
        overrides.append(f"data.root={data}")
    else:
        overrides.append(f"held_out_seed={args.seed}")
    task, model = load_trained(PRETRAINED / PRETRAINED_RUNS[args.application], [*overrides, *args.overrides])
    _report(task.write_samples(model, out / "samples"))
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    from dfm.runs import task_from_config

    task = task_from_config(args.config, args.overrides)
    if not hasattr(task, "invert"):
        raise ValueError(f"task {task.cfg.task!r} has no optimisation baseline (only gan has)")
    _report(task.invert(Path(args.out) if args.out else Path(task.cfg.out_dir) / "inversions"))
    return 0


def checked(kind: type, rule: str):
    """An argparse type: a finite ``kind`` (int, float) that satisfies ``rule`` of ``dfm.config.RULES``,
    so that a bad count or size is a usage error before anything is generated."""
    text, holds = RULES[rule]

    def parse(arg: str):
        value = kind(arg)  # a ValueError here is argparse's "invalid ... value"
        if (isinstance(value, float) and not math.isfinite(value)) or not holds(value):
            raise argparse.ArgumentTypeError(f"must be {'finite and ' if kind is float else ''}{text}, got {arg}")
        return value

    parse.__name__ = f"{rule.replace('_', '-')} {kind.__name__}"
    return parse


def cmd_data_motion(args: argparse.Namespace) -> int:
    from dfm.data.sprites import SpriteMotion, write_dataset

    generator = SpriteMotion(
        resolution=args.res, frames=args.frames, sprites=args.sprites, directions=args.directions, speed=args.speed,
        min_radius=args.min_radius, max_radius=args.max_radius, sprite_pattern=args.sprite_pattern,
    )
    out = write_dataset(args.out, generator, args.sequences, args.test_fraction, args.seed)
    print(f"wrote {args.sequences} sequences to {out}")
    return 0


def cmd_data_synth3d(args: argparse.Namespace) -> int:
    from dfm.data.synth3d import PALETTE, Synth3D, write_dataset

    if not 2 <= args.colours <= len(PALETTE):
        raise ValueError(f"--colours must be between 2 and {len(PALETTE)}, got {args.colours}")
    generator = Synth3D(resolution=args.res, views=args.views, palette=PALETTE[: args.colours], shapes=tuple(args.shapes.split(",")))
    options = dict(seed=args.seed, test_fraction=args.test_fraction)
    if args.layout == "native":
        write_dataset(args.out, generator, args.scenes, **options)
    elif args.layout == "co3d":
        from dfm.data.co3d import write_co3d

        write_co3d(args.out, generator, args.scenes, category=args.category, intrinsics_format=args.intrinsics_format, **options)
    else:
        from dfm.data.re10k import write_re10k_torch, write_re10k_txt

        (write_re10k_txt if args.layout == "re10k-txt" else write_re10k_torch)(args.out, generator, args.scenes, **options)
    print(f"wrote {args.scenes} scenes to {args.out} ({args.layout} layout)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    import json

    from dfm.data.check import check_source, find_scene, plot_scene, scene_summary
    from dfm.data.multiview import open_source

    source = open_source(
        args.source, args.root, args.split, args.resolution, args.near, args.far, category=args.category, subset=args.subset,
    )
    if args.json:
        if args.scene is None:
            raise ValueError("--json prints one scene: name it with --scene ID")
        print(json.dumps(scene_summary(source.load(find_scene(source, args.scene)))))
        return 0
    report = check_source(source)
    print(f"{args.source} {args.root} ({args.split}): {len(source)} scenes listed, {report.scenes} read with "
          f"{report.views} views, {len(report.problems)} with problems")
    for scene_id, problem in report.problems:
        print(f"  scene {scene_id}: {problem}")
    good = [i for i in range(len(source)) if source.scene_id(i) not in dict(report.problems)]
    if args.scene is not None or good:
        index = find_scene(source, args.scene) if args.scene is not None else good[0]
        scene = source.load(index)
        print(f"wrote {plot_scene(scene, Path(args.out) / f'{args.source}_{scene.scene_id}.png')}")
    return 1 if report.problems else 0


def cmd_export(args: argparse.Namespace) -> int:
    from dfm.training import export_checkpoint

    print(f"wrote {export_checkpoint(args.checkpoint, args.out, force=args.force)}")
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
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir that loads "
                   "(a damaged newer one is set aside); overrides such as train.lr=... take effect")
    t.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint: an older one of this "
                   "run (the newer ones are set aside as step-N.abandoned), or another run's into a new out_dir")
    t.add_argument("--no-samples", action="store_true", help="do not write samples after training")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample from a trained checkpoint", description="Load a checkpoint (a run "
                       "directory or one checkpoint directory) with its EMA weights and write samples: images, "
                       "videos and arrays. Overrides such as sample.steps=10 sample.sampler=dpmpp_2m "
                       "sample.guidance=2 sample.temperature=0.85 change how it samples.")
    s.add_argument("checkpoint", help="run directory or checkpoint directory")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sample.steps=10")
    s.add_argument("--out", help="output directory (default: OUT_DIR/samples of the run)")
    s.add_argument("--image", help="scenes: sample scenes from this image (PNG/JPEG at the model's resolution) ...")
    s.add_argument("--camera", help="... seen by view 0 of this cameras.json (OpenCV c2w, normalised K; the format "
                   "of `dfm data synth3d`); the scene is centred at the world origin, +z up")
    s.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help="score a 3-D run as the paper does, plus diversity: metrics.md / .json",
                        description="Sample novel views of test scenes one-shot (view 0 as context), as the paper does, "
                        "and score them: PSNR, SSIM, LPIPS (with lpips.* weight files), best-of-k PSNR, context PSNR, "
                        "FID and KID (with --inception), diversity between a scene's samples on the whole view and on "
                        "what the context does not see, and on Synth3D the known posterior of the hidden colour. Writes "
                        "metrics.md and metrics.json (with the command, the machine and the paper's numbers, quoted) and "
                        "samples.png; samples are kept on disk, so an interrupted evaluation resumes.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("run", help="run or checkpoint directory of a scenes task")
    ev.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lpips.backbone_path=... model.render.chunk=4096")
    ev.add_argument("--protocol", required=True, choices=["synth3d", "co3d", "co3d-masked", "re10k"], help="data and views")
    ev.add_argument("--scenes", type=checked(int, "positive"), help="test scenes (default: the paper's, 50 or 100)")
    ev.add_argument("--samples", type=checked(int, "positive"), default=8, help="samples per scene")
    ev.add_argument("--steps", type=checked(int, "positive"), help="sampler steps (default: the run's sample.steps)")
    ev.add_argument("--sampler", choices=["ddim", "dpmpp_2m"], help="default: the run's sample.sampler")
    ev.add_argument("--guidance", type=float, help="classifier-free guidance weight (default: the run's)")
    ev.add_argument("--temperature", type=float, help="initial noise scale (default: the run's)")
    ev.add_argument("--eta", type=float, help="0 deterministic, 1 stochastic (default: the run's)")
    ev.add_argument("--seed", type=int, default=0, help="scene i is sampled with seed + i")
    ev.add_argument("--inception", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for FID and KID")
    ev.add_argument("--device", help="cpu | cuda (default: cuda if there is one)")
    ev.add_argument("--out", help="output directory (default: RUN/eval-PROTOCOL)")
    ev.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="show an application: samples, images and videos in a few minutes",
                       description="toy: train the toy posterior problem briefly on this machine and write samples "
                       "beside the exact posterior, plus a video of the sampling trajectory. motion: generate unseen "
                       "sprite frames and sample their motions with the shipped checkpoint (next frames, flows as "
                       "colour wheels, a GIF/MP4 per sample). gan: sample faces that agree with small patches of "
                       "held-out generated faces with the shipped checkpoint (grids at 32x32 and at 64x64). scenes: "
                       "generate unseen Synth3D scenes and sample 3-D scenes from each one's context view with the "
                       "shipped checkpoint (views grid, RGB + depth orbit GIF/MP4 and a .ply point cloud per sample).")
    d.add_argument("application", nargs="?", default="toy", choices=["toy", *PRETRAINED_RUNS], help="what to demo (default: toy)")
    d.add_argument("--config", default="toy_gmm", help="toy: config to train (default: toy_gmm)")
    d.add_argument("--out", default="outputs/demo", help="output directory (default: outputs/demo)")
    d.add_argument("--steps", type=int, default=3000, help="toy: training steps (default: 3000, about a minute)")
    d.add_argument("--seed", type=int, default=2024, help="motion/gan/scenes: seed of the inputs and samples (default: 2024)")
    d.add_argument("overrides", nargs="*", help="key=value overrides")
    d.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="write a procedural dataset to disk", description="Write a procedural dataset.")
    kinds = data.add_subparsers(dest="kind", required=True, metavar="KIND")
    written = argparse.ArgumentParser(add_help=False)  # what every generator takes
    written.add_argument("--out", required=True, help="output directory")
    written.add_argument("--test-fraction", type=checked(float, "probability"), default=0.1,
                         help="share of the data in the test list (at least one item in each list)")
    written.add_argument("--seed", type=int, default=0, help="random seed")
    m = kinds.add_parser("motion", parents=[written], help="sprites with ambiguous motion, in the Vimeo90K layout",
                         description="Sprites sliding over a static textured background, each in one of DIRECTIONS "
                         "directions drawn uniformly, so one frame cannot tell which way it goes. Writes "
                         "OUT/sequences/XXXXX/YYYY/im1.png... (+ meta.json), the train/test list files and "
                         "generator.json, exactly like Vimeo90K triplets (--frames 3) or septuplets (--frames 7).",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--sequences", type=checked(int, "positive"), default=20000, help="number of sequences")
    m.add_argument("--res", type=checked(int, "positive"), default=32, help="frame size in pixels (square)")
    m.add_argument("--frames", type=int, default=3, choices=[3, 7], help="frames per sequence")
    m.add_argument("--sprites", type=checked(int, "positive"), default=2, help="sprites per scene")
    m.add_argument("--directions", type=checked(int, "positive"), default=4, help="number of equally spaced directions")
    m.add_argument("--speed", type=checked(float, "positive"), default=3.0, help="pixels per frame")
    m.add_argument("--min-radius", type=checked(float, "positive"), default=4.0, help="smallest sprite radius in pixels")
    m.add_argument("--max-radius", type=checked(float, "positive"), default=7.0,
                   help="largest sprite radius in pixels (at least --min-radius, less than --res / 2)")
    m.add_argument("--sprite-pattern", default="blobs", choices=PATTERNS,
                   help="sprite texture: smooth random colours, or two crossed sine gratings, or one (see dfm.data.sprites)")
    m.set_defaults(func=cmd_data_motion)

    s3 = kinds.add_parser("synth3d", parents=[written], help="primitives with a hidden side of random palette colour, multi-view",
                          description="Scenes of one primitive rendered analytically (exact depth and mask) from an "
                          "orbit of cameras. The side hidden from the context camera (view 0) has a colour drawn "
                          "uniformly from a palette, so given view 0 the posterior of that colour is uniform. Writes "
                          "OUT/scenes/NNNNNN/{images,masks}/VVV.png, depth.npy, cameras.json (OpenCV c2w, normalised "
                          "K), meta.json, plus train.txt, test.txt and generator.json.",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s3.add_argument("--scenes", type=checked(int, "positive"), default=2000, help="number of scenes")
    s3.add_argument("--res", type=checked(int, "positive"), default=32, help="image size in pixels (square)")
    s3.add_argument("--views", type=checked(int, "positive"), default=8,
                    help="cameras per scene, on an orbit starting at the context view")
    s3.add_argument("--colours", type=int, default=4, help="palette size K (the first K of red, green, blue, yellow)")
    s3.add_argument("--shapes", default="sphere,box,cylinder", help="comma-separated primitives")
    s3.add_argument("--layout", default="native", choices=["native", "co3d", "re10k-txt", "re10k-torch"],
                    help="write the same scenes (the same --seed gives the same scenes in every layout) as Co3D v2 "
                    "(PyTorch3D cameras in gzipped annotations, wider images whose centred square is the native one, "
                    "masks, depths) or RealEstate10k (camera files + PNG frames, or .torch chunks of JPEGs; 16:9 frames)")
    s3.add_argument("--category", default="synth3d", help="co3d layout: the category folder's name")
    s3.add_argument("--intrinsics-format", default="ndc_isotropic", choices=["ndc_isotropic", "ndc_norm_image_bounds"],
                    help="co3d layout: how the annotations store focal length and principal point")
    s3.set_defaults(func=cmd_data_synth3d)

    c = kinds.add_parser("check", help="read a whole dataset as training will and report every problem",
                         description="Read every frame and camera of a split the way training will, report the counts "
                         "and every problem (the file and what is wrong; exit 1 if any), and draw one scene's camera "
                         "frusta and depth point cloud. With --scene ID --json, print that scene as the loader returns "
                         "it: OpenCV c2w, normalised K after crop and resize, near, far, image size.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("source", choices=SOURCES, help="the dataset's kind (RealEstate10k's layout is detected)")
    c.add_argument("root", help="the dataset's root (co3d: the folder holding the category folders)")
    c.add_argument("--split", default="train", help="train | test (co3d: also val)")
    c.add_argument("--resolution", type=checked(int, "positive"), default=64, help="square size the loader crops and resizes to")
    c.add_argument("--category", help="co3d: the category, e.g. hydrant")
    c.add_argument("--subset", help="co3d: the set list, e.g. fewview_train (default: the loader's)")
    c.add_argument("--near", type=checked(float, "non_negative"), help="scene bounds to report (default: the loader's)")
    c.add_argument("--far", type=checked(float, "positive"))
    c.add_argument("--scene", help="the scene to draw (default: the first that loads) or to print with --json")
    c.add_argument("--json", action="store_true", help="print --scene as JSON instead of checking everything")
    c.add_argument("--out", default="outputs/data_check", help="folder for the picture")
    c.set_defaults(func=cmd_data_check)

    i = sub.add_parser("invert", help="GAN inversion by optimisation (the baseline), written like samples",
                       description="Fit one latent per held-out patch with Adam (config keys inversion.steps, "
                       "inversion.lr, inversion.restarts) and write the same grids as `dfm sample`.")
    i.add_argument("config", help="YAML file or built-in config name (a gan task)")
    i.add_argument("overrides", nargs="*", help="key=value overrides, e.g. inversion.steps=200")
    i.add_argument("--out", help="output directory (default: OUT_DIR/inversions)")
    i.set_defaults(func=cmd_invert)

    e = sub.add_parser("export", help="copy a checkpoint's EMA weights and config (what sampling needs)",
                       description="Write a small sampling checkpoint (ema.safetensors + config.json) from a run "
                       "or checkpoint directory; `dfm sample` loads it like any checkpoint.")
    e.add_argument("checkpoint", help="run directory or checkpoint directory")
    e.add_argument("out", help="output directory: new or empty (or an earlier export, with --force)")
    e.add_argument("--force", action="store_true", help="replace an earlier export in OUT (nothing else is ever replaced)")
    e.set_defaults(func=cmd_export)
    return p


def parse_with_overrides(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``p.parse_args(argv)``, where key=value overrides may also follow options: argparse alone cannot
    take positional ``overrides`` after an option (``demo gan --out X k=v``)."""
    args, extra = p.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_with_overrides(parser(), argv)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"dfm {args.command}: {e}; continue with --resume", file=sys.stderr)
        return 130
    except FileExistsError as e:
        print(f"dfm {args.command}: error: {e}. Continue it with --resume, or choose another out_dir=...", file=sys.stderr)
        return 2
    except (ConfigError, CheckpointError, DatasetError, GeneratorError, TrainingError, RunInUseError, SamplingError, ValueError,
            OSError) as e:  # OSError: a file that cannot be read or written (missing, no permission, disk full)
        print(f"dfm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
