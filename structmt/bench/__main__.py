"""``structmt-bench attention ...``"""

import sys


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("attention",):
        sys.exit("usage: structmt-bench attention [options]   (train and decode benchmarks: not yet)")
    from .attention import main as attention

    attention(sys.argv[2:])


if __name__ == "__main__":
    main()
