"""Train a recipe:  python train.py RECIPE [dotted.key=value ...] [--print-config]

    python train.py recipes/resnet50-all-tricks.yaml data.root=/data/imagenet
    accelerate launch --config_file configs/accelerate/8gpu.yaml train.py recipes/efficient.yaml data.root=...

Running the same command again resumes from the run folder's last.pt. Bad input (an
unknown key, a wrong type, a missing data folder, a corrupt image ...) exits with status
2 and one line naming the problem.
"""

import argparse
import sys

from bot.errors import UserError, one_line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train a Bag-of-Tricks recipe.",
                                     epilog="Overrides are dotted.key=value; values parse as YAML.")
    parser.add_argument("recipe", help="a YAML recipe, e.g. recipes/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="e.g. data.root=/data/imagenet optim.lr=0.2")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    try:
        from bot import config

        cfg = config.load(args.recipe, args.overrides)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        from bot.trainer import train

        train(cfg)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from last.pt", file=sys.stderr)
        return 130
    except RuntimeError as e:  # a UserError raised in a loader worker comes back as RuntimeError
        if "UserError" in str(e):
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
