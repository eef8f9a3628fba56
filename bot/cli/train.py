"""Train a recipe: python train.py RECIPE [dotted.key=value ...] [--print-config]  (installed as `bot-train`)

    python train.py recipes/demo.yaml data.root=data/toy
    python train.py recipes/resnet50-all-tricks.yaml data.root=/data/imagenet loss.mixup_alpha=0
    accelerate launch --config_file configs/accelerate/8gpu.yaml train.py recipes/efficient.yaml data.root=...
    python train.py runs/demo/config.yaml run.out=runs/demo-again      # a run's config.yaml is a recipe
    bot-train demo data.root=data/toy      # installed: a recipe shipped with bot, from any folder
    python train.py recipes/demo.yaml --print-config

RECIPE is a YAML file; when no such file exists, a name such as `demo` or
`recipes/demo.yaml` means the recipe shipped inside the package. Overrides are
dotted.key=value; values parse as YAML. Running the same command again resumes from the
run folder's last.pt, written every 10 minutes of training (run.checkpoint_every=10min; a
wall time such as 30s or 1h, or a number of steps) and at each epoch end; a resume on other
data (another image count) stops with one line. Bad input (an unknown key, a wrong type, a missing data folder, a
corrupt image ...) exits with status 2 and one line naming the problem.
"""

import sys

from bot.cli import command_parser, run


def main(argv=None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("recipe", help="a YAML recipe, e.g. recipes/demo.yaml, or a shipped recipe's name (demo)")
    parser.add_argument("overrides", nargs="*", help="e.g. data.root=/data/imagenet optim.lr=0.2")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)

    def body():
        from bot import config

        cfg = config.load(args.recipe, args.overrides)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        from bot.train.trainer import train

        train(cfg)

    return run(body, interrupted="interrupted: run the same command again to resume from last.pt")


if __name__ == "__main__":
    sys.exit(main())
