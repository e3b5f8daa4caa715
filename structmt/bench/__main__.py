"""``structmt-bench [-v] attention|decode|train|compile|report ...``"""

import sys

from ..console import setup


def main() -> None:
    commands = ("attention", "decode", "train", "compile", "report")
    args = sys.argv[1:]
    verbose = bool(args) and args[0] in ("-v", "--verbose")
    args = args[verbose:]
    if not args or args[0] not in commands:
        sys.exit("usage: structmt-bench [-v] attention|decode|train|compile|report [options]")
    setup(verbose)
    if args[0] == "attention":
        from .attention import main as run
    elif args[0] == "decode":
        from .decode import main as run
    elif args[0] == "train":
        from .train import main as run
    elif args[0] == "compile":
        from .kernel_compile import main as run
    else:
        from .report import main as run
    run(args[1:])


if __name__ == "__main__":
    main()
