"""``structmt-bench [-v] COMMAND [options]``: structmt's benchmarks (``structmt-bench -h`` lists them)."""

import argparse
import importlib
import sys

from ..console import add_verbose_option

#: command → (the module of its ``main``, what it does, in one line)
COMMANDS = {
    "attention": ("attention", "time and peak memory of dense, Flex and structured attention"),
    "decode": ("decode", "beam-search sentences/s, a dense against a structured checkpoint"),
    "train": ("train", "training tokens/s of the structured model against the dense one"),
    "compile": ("kernel_compile", "compile the Triton kernels for a GPU, without one: registers, spills"),
    "report": ("report", "write results/BENCHMARKS.md from the bench_*.json files"),
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # the options before the command are structmt-bench's own; the command parses everything after it
    cut = next((i + 1 for i, arg in enumerate(args) if not arg.startswith("-")), len(args))
    p = argparse.ArgumentParser(
        prog="structmt-bench",
        usage="%(prog)s [-h] [-v] COMMAND [options]",
        description="structmt's benchmarks. `structmt-bench COMMAND -h` lists the options of COMMAND.",
        epilog="commands:\n" + "\n".join(f"  {name:10} {line}" for name, (_, line) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose_option(p)
    p.add_argument("command", metavar="COMMAND", help="the benchmark to run, one of the commands below")
    a = p.parse_args(args[:cut])
    if a.command not in COMMANDS:
        p.error(f"unknown command {a.command!r}; the commands: {', '.join(COMMANDS)}")
    command = importlib.import_module(f".{COMMANDS[a.command][0]}", __package__)
    command.main(["-v", *args[cut:]] if a.verbose else args[cut:])


if __name__ == "__main__":
    main()
