"""``structmt-bench attention|decode|train|report ...``"""

import sys


def main() -> None:
    commands = ("attention", "decode", "train", "report")
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: structmt-bench attention|decode|train|report [options]")
    if sys.argv[1] == "attention":
        from .attention import main as run
    elif sys.argv[1] == "decode":
        from .decode import main as run
    elif sys.argv[1] == "train":
        from .train import main as run
    else:
        from .report import main as run
    run(sys.argv[2:])


if __name__ == "__main__":
    main()
