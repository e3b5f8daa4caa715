"""structmt: structured-attention transformers for NMT, as a fairseq plugin.

Importing the package (``--user-dir structmt``) registers the
``structured_transformer`` model and its architectures, and allowlists the
few classes fairseq checkpoints contain, so they load with torch's
``weights_only=True`` default.
"""

from .checkpoints import allow_fairseq_checkpoints

allow_fairseq_checkpoints()

from . import models  # noqa: E402,F401  (registers the models)

__version__ = "0.1.0"
