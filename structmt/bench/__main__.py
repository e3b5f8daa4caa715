"""``structmt-bench attention|decode ...``"""

import sys


def main() -> None:
    commands = ("attention", "decode")
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: structmt-bench attention|decode [options]   (the train benchmark: not yet)")
    if sys.argv[1] == "attention":
        from .attention import main as run
    else:
        from .decode import main as run
    run(sys.argv[2:])


if __name__ == "__main__":
    main()
