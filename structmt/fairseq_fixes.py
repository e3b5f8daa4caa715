"""A fix to fairseq 0.12 that the plugin applies when it is imported (``--user-dir structmt``).

fairseq 0.12's ``options.parse_args_and_arch`` makes ``--bf16`` imply ``--tpu``
(bfloat16 was a TPU feature when it was written; facebookresearch/fairseq#4696),
which sends ``fairseq-train --bf16`` on a GPU to torch_xla and fails.  With
structmt loaded, ``--bf16`` means bfloat16 on whatever device trains, and
``--tpu`` only when the command line asks for it.  fairseq imports the user
directory while it builds its parser, before it parses, so the fix is in place
for ``fairseq-train``, ``fairseq-generate`` and the rest.
"""

from __future__ import annotations

import functools
import sys
from typing import Any


def keep_bf16_off_tpu() -> None:
    """Wrap ``fairseq.options.parse_args_and_arch`` so that ``--bf16`` no longer sets ``tpu`` (idempotent)."""
    from fairseq import options

    original = options.parse_args_and_arch
    if getattr(original, "keeps_bf16_off_tpu", False):
        return

    @functools.wraps(original)
    def parse_args_and_arch(
        parser: Any,
        input_args: list[str] | None = None,
        parse_known: bool = False,
        suppress_defaults: bool = False,
        modify_parser: Any = None,
    ) -> Any:
        result = original(parser, input_args, parse_known, suppress_defaults, modify_parser)
        args = result[0] if parse_known else result
        given = sys.argv[1:] if input_args is None else input_args
        if getattr(args, "bf16", False) and "--tpu" not in given:
            args.tpu = False
        return result

    parse_args_and_arch.keeps_bf16_off_tpu = True  # type: ignore[attr-defined]
    options.parse_args_and_arch = parse_args_and_arch
