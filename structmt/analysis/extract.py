"""Teacher-forced extraction of every attention head's weights from a fairseq checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class SentenceAttention:
    """Attention of one sentence, padding removed: ``block → [layer] → (heads, Tq, Tk)``, its source
    tokens and the decoder's input tokens (teacher-forced: ``</s>`` and the reference; padding removed)."""

    sample_id: int
    src_len: int
    tgt_len: int
    weights: dict[str, list[Tensor]] = field(default_factory=dict)
    src_tokens: Tensor | None = None
    tgt_tokens: Tensor | None = None


def _attention_modules(model: Any) -> dict[str, list[Any]]:
    return {
        "encoder": [layer.self_attn for layer in model.encoder.layers],
        "decoder": [layer.self_attn for layer in model.decoder.layers],
        "cross": [layer.encoder_attn for layer in model.decoder.layers],
    }


class _Recorder:
    """Wraps a fairseq attention module's forward to keep its per-head weights."""

    def __init__(self, module: Any) -> None:
        self.module, self.original = module, module.forward
        self.own = "forward" in vars(module)  # an instance's own forward (else the class's: removed again)
        self.weights: Tensor | None = None
        module.forward = self
        # fairseq's fast path (F.multi_head_attention_forward) only returns head-averaged weights;
        # this flag makes it take the explicit path, which computes the same thing per head.
        self.skip = module.skip_embed_dim_check
        module.skip_embed_dim_check = True

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        wanted_heads, wanted = kwargs.get("need_head_weights", False), kwargs.get("need_weights", True)
        kwargs.update(need_weights=True, need_head_weights=True)
        out, weights = self.original(*args, **kwargs)
        self.weights = weights  # (heads, batch, Tq, Tk)
        if wanted_heads:
            return out, weights
        return out, (weights.mean(0) if wanted and weights is not None else None)

    def remove(self) -> None:
        if self.own:
            self.module.forward = self.original
        else:
            del self.module.forward
        self.module.skip_embed_dim_check = self.skip


@contextmanager
def _recording(model: Any) -> Iterator[dict[str, list[_Recorder]]]:
    """The model's attention modules recording their per-head weights, for one forward: restored on exit."""
    modules = _attention_modules(model)
    recorders: dict[str, list[_Recorder]] = {block: [] for block in modules}
    try:
        for block, mods in modules.items():  # one at a time: a failure restores those patched before it
            recorders[block] += [_Recorder(m) for m in mods]
        yield recorders
    finally:
        for recs in recorders.values():
            for rec in recs:
                rec.remove()


def iterate(model: Any, task: Any, subset: str = "test", batch_size: int = 32) -> Iterator[SentenceAttention]:
    """Yield the attention of every sentence of ``subset``, teacher-forced. The model is patched only while a
    batch runs (never between the sentences yielded)."""
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    pad = task.source_dictionary.pad()
    itr = task.get_batch_iterator(
        dataset=dataset, max_sentences=batch_size, required_batch_size_multiple=1, max_positions=None
    ).next_epoch_itr(shuffle=False)
    for sample in itr:
        with torch.no_grad(), _recording(model) as recorders:
            model(**sample["net_input"])
        src, tgt = sample["net_input"]["src_tokens"], sample["net_input"]["prev_output_tokens"]
        for i in range(src.size(0)):
            # padding on either side (fairseq's --left-pad-source and --left-pad-target)
            src_pos = (src[i] != pad).nonzero().flatten()
            tgt_pos = (tgt[i] != pad).nonzero().flatten()
            item = SentenceAttention(
                int(sample["id"][i]),
                len(src_pos),
                len(tgt_pos),
                src_tokens=src[i, src_pos].clone(),
                tgt_tokens=tgt[i, tgt_pos].clone(),
            )
            for block, recs in recorders.items():
                layers = []
                for rec in recs:
                    w = rec.weights[:, i]
                    if block == "encoder":
                        w = w[:, src_pos][:, :, src_pos]
                    elif block == "decoder":
                        w = w[:, tgt_pos][:, :, tgt_pos]
                    else:
                        w = w[:, tgt_pos][:, :, src_pos]
                    layers.append(w.float().clone())
                item.weights[block] = layers
            yield item
