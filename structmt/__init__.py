"""structmt: structured-attention transformers for NMT, as a fairseq plugin.

Importing the package (``--user-dir structmt``) registers the
``structured_transformer`` model and its architectures, and allowlists the
few classes fairseq checkpoints contain, so they load with torch's
``weights_only=True`` default, lets ``--bf16`` train on GPUs, keeps
``checkpoint_last.pt`` whole when a run is killed, writes the interval checkpoints
fairseq skips at an epoch's end, and refuses to resume a
training under another structure and a misnamed ``--model-overrides`` key (see
:mod:`structmt.fairseq_fixes`, and :mod:`structmt.models.structured_transformer`'s
``refuse_changed_structure_on_resume`` and ``refuse_misnamed_overrides``).

Without fairseq installed, the package holds what needs no fairseq (``structmt.attention``'s functions);
the plugin, the pipeline and the analysis need it (``fairseq-fixed``, installed ``--no-deps``: docs/install.md).
"""

import importlib.util
import sys

__version__ = "0.1.0"

# the plugin, when fairseq is there to register with (imported already: find_spec would read its __spec__)
if "fairseq" in sys.modules or importlib.util.find_spec("fairseq") is not None:
    from .checkpoints import allow_fairseq_checkpoints
    from .fairseq_fixes import copy_checkpoints_whole, keep_bf16_off_tpu, save_interval_checkpoints_at_epoch_ends

    allow_fairseq_checkpoints()
    keep_bf16_off_tpu()
    copy_checkpoints_whole()
    save_interval_checkpoints_at_epoch_ends()

    from . import models  # noqa: F401  (registers the models)
    from .models.structured_transformer import refuse_changed_structure_on_resume, refuse_misnamed_overrides

    refuse_changed_structure_on_resume()
    refuse_misnamed_overrides()
