"""The Triton candidate-attention kernel against the pure-torch reference (forward, weights, gradients).

Without a CUDA device the kernels run in Triton's interpreter on CPU tensors: ``TRITON_INTERPRET=1`` is
set here, before the kernel module first uses triton (it imports triton lazily, on first call).  Shapes
are tiny because the interpreter runs each program in numpy (some 30 ms per query row).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ast  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from conftest import TRITON_USABLE  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from structmt.attention import functional  # noqa: E402
from structmt.attention import triton_kernel as tk  # noqa: E402

if not TRITON_USABLE:  # a Triton older than the kernels need: they refuse it (tested below where Triton is newer)
    pytest.skip("triton is older than the kernels need", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_PATH = Path(tk.__file__)


def make_case(
    B: int,
    H: int,
    Tq: int,
    S: int,
    D: int,
    C: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str = DEVICE,
    p_kind: tuple[float, float, float] = (0.25, 0.55, 0.2),
) -> tuple[torch.Tensor, ...]:
    """Random q, k, v, index, kind: padding (kind 0), error keys (kind 2), an empty-support row,
    a repeated candidate inside a row, and keys shared by many queries (when Tq * C > S)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=gen) for n in (Tq, S, S))
    index = torch.randint(0, S, (B, Tq, C), generator=gen)
    kind = torch.multinomial(torch.tensor(p_kind), B * H * Tq * C, replacement=True, generator=gen)
    kind = kind.view(B, H, Tq, C).to(torch.int8)
    if Tq > 1:
        kind[0, 0, 1] = torch.where(kind[0, 0, 1] == 1, 0, kind[0, 0, 1])  # no support: an all-zero row
    if C > 1:
        index[:, 0, 1] = index[:, 0, 0]  # the same key twice in one row
    kind[..., 0] = torch.where(kind[..., 0] == 0, 1, kind[..., 0])  # most rows keep a support
    if Tq > 1:
        kind[0, 0, 1, 0] = 0
    q, k, v = (x.to(dtype).to(device) for x in (q, k, v))
    return q, k, v, index.to(device), kind.to(device)


def gather(k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) keys at (B, Tq, C) positions -> (B, Tq, C, H, D), as attend_candidates gathers."""
    batch = torch.arange(k.size(0), device=k.device).view(-1, 1, 1)
    return k.transpose(1, 2)[batch, index]


def reference(q, k, v, index, kind, eps, keep=None, dropout_p=0.0):
    """structmt's pure-torch candidate attention; with ``keep``, that dropout mask on the weights."""
    v_c = gather(v, index)
    out, weights = functional.candidate_attention(q, gather(k, index), v_c, kind, eps)
    if keep is not None:
        out = torch.einsum("bhtc,btchd->bhtd", weights * keep / (1.0 - dropout_p), v_c)
    return out, weights


def with_grads(fn, q, k, v, grad_seed: int = 1):
    """Output, weights and (dq, dk, dv) of ``fn(q, k, v)`` for a fixed random output gradient."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out, weights = fn(q, k, v)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    return out.detach(), weights.detach(), grads


def assert_matches(q, k, v, index, kind, eps, atol=1e-5, rtol=1e-5, dropout_p=0.0, keep=None, seed=None):
    """Kernel (in q's dtype) against the reference (in fp32 on the same values)."""
    scale = 1.0 / math.sqrt(q.size(-1))
    if seed is None:
        kernel = with_grads(lambda q, k, v: tk.candidate_attention(q, k, v, index, kind, scale, eps), q, k, v)
    else:
        op = torch.ops.structmt.candidate_attention
        kernel = with_grads(lambda q, k, v: op(q, k, v, index, kind, scale, eps, dropout_p, seed), q, k, v)
    q32, k32, v32 = (x.float() for x in (q, k, v))
    expected = with_grads(lambda q, k, v: reference(q, k, v, index, kind, eps, keep, dropout_p), q32, k32, v32)
    out, weights, grads = kernel
    assert out.dtype == q.dtype and weights.dtype == tk.weights_dtype(q.dtype)
    assert out.shape == expected[0].shape
    assert all(g.dtype == q.dtype for g in grads)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(out.float(), expected[0], atol=atol, rtol=rtol)
    torch.testing.assert_close(weights.float(), expected[1], atol=atol, rtol=rtol)
    for name, got, want in zip("qkv", grads, expected[2], strict=True):
        torch.testing.assert_close(got.float(), want, atol=atol, rtol=rtol, msg=lambda m, n=name: f"d{n}: {m}")


# (B, H, Tq, S, D, C, eps): self-attention, cross-attention (Tq != S), D not a power of two,
# many queries per key (atomics), a single candidate, eps = 0
SHAPES = [
    (2, 2, 3, 3, 8, 6, 0.1),
    (1, 2, 5, 9, 5, 4, 0.2),
    (2, 1, 4, 2, 3, 7, 0.05),
    (1, 3, 2, 6, 16, 1, 0.3),
    (1, 1, 6, 4, 6, 5, 0.0),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}Tq{}S{}D{}C{}eps{}".format(*s))
def test_matches_reference(shape):
    B, H, Tq, S, D, C, eps = shape
    q, k, v, index, kind = make_case(B, H, Tq, S, D, C, seed=sum(shape[:6]))
    assert_matches(q, k, v, index, kind, eps)


def test_value_dim_and_int32_index():
    """v may have its own head dimension; an int32 index gives the same result as int64."""
    q, k, _, index, kind = make_case(1, 2, 3, 4, 4, 5, seed=2)
    v = torch.randn(1, 2, 4, 7, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    assert_matches(q, k, v, index, kind, 0.1)
    wide = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1)
    torch.testing.assert_close(tk.candidate_attention(q, k, v, index.int(), kind, 0.5, 0.1), wide, atol=0, rtol=0)


def test_empty_support_rows_are_zero_not_nan():
    q, k, v, index, kind = make_case(1, 2, 3, 4, 4, 5, seed=3)
    kind[0, 1] = torch.tensor([0, 2, 2, 0, 2], dtype=torch.int8)  # error keys only: still an empty row
    kind[0, 0, 2] = 0
    out, weights = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.3)
    assert (out[0, 1] == 0).all() and (weights[0, 1] == 0).all()
    assert (out[0, 0, 2] == 0).all() and (weights[0, 0, 2] == 0).all()
    assert_matches(q, k, v, index, kind, 0.3)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on inf
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_a_row_whose_scores_are_not_finite_is_nan_as_in_the_reference(bad):
    """Every score of a row NaN (or -inf, +inf: an fp16 overflow upstream) makes that row NaN, as softmax
    attention's, never the quiet all-zero row of an empty support; that empty row stays zero."""
    q, k, v, index, kind = make_case(1, 2, 3, 4, 4, 5, seed=3)
    poison = torch.ones_like(q)
    poison[0, 1, 0] = float(bad)  # a row with a support
    poison[0, 0, 1] = float(bad)  # make_case's empty row
    q = q * poison
    assert (kind[0, 1, 0] == 1).any() and not (kind[0, 0, 1] == 1).any()
    out, weights = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.3)
    want_out, want_weights = reference(q, k, v, index, kind, 0.3)
    assert out[0, 1, 0].isnan().all() and (out[0, 0, 1] == 0).all() and (weights[0, 0, 1] == 0).all()
    allowed = kind != 0  # (a slot nobody may attend to holds weight 0 in the kernel, NaN * 0 in the reference)
    assert torch.equal(out.isnan(), want_out.isnan())
    assert torch.equal(weights.isnan() & allowed, want_weights.isnan() & allowed)
    finite = ~want_out.isnan()
    torch.testing.assert_close(out[finite], want_out[finite], atol=1e-5, rtol=1e-5)
    _, _, (dq, _, _) = with_grads(lambda q, k, v: tk.candidate_attention(q, k, v, index, kind, 0.5, 0.3), q, k, v)
    assert dq[0, 1, 0].isnan().all() and (dq[0, 0, 1] == 0).all()  # the overflow reaches the gradient


def test_weights_rows_sum_to_one():
    q, k, v, index, kind = make_case(1, 2, 3, 5, 4, 6, seed=4, p_kind=(0.0, 0.6, 0.4))
    _, weights = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1)
    has_support = (kind == 1).any(-1)
    assert has_support.sum() == 5  # make_case empties row (0, 0, 1)
    torch.testing.assert_close(weights.sum(-1), has_support.float())


def test_strided_inputs_and_expanded_grad():
    """q, k, v as views of a (B, T, H, D) projection and ``out.sum()`` (a stride-0 gradient)."""
    B, H, T, D, C = 1, 2, 4, 4, 3
    gen = torch.Generator().manual_seed(5)
    qkv = torch.randn(B, T, 3, H, D, generator=gen).to(DEVICE)
    index = torch.randint(0, T, (B, T, C), generator=gen).to(DEVICE)
    kind = torch.randint(1, 3, (B, H, T, C), generator=gen, dtype=torch.int8).to(DEVICE)
    views = [qkv[:, :, i].transpose(1, 2) for i in range(3)]
    assert not views[0].is_contiguous()
    grads = []
    for fn in (tk.candidate_attention, lambda q, k, v, i, kd, s, e: reference(q, k, v, i, kd, e)):
        leaf = qkv.clone().requires_grad_(True)
        q, k, v = (leaf[:, :, i].transpose(1, 2) for i in range(3))
        out, _ = fn(q, k, v, index, kind, 1.0 / math.sqrt(D), 0.1)
        out.sum().backward()
        grads.append((out.detach(), leaf.grad))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_types(dtype):
    q, k, v, index, kind = make_case(1, 2, 4, 5, 8, 6, seed=6, dtype=dtype)
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    assert_matches(q, k, v, index, kind, 0.1, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_weights_are_the_float32_ones_computed(dtype):
    """The weights were stored in the inputs' dtype, then widened: rows summed to 1 only to 2e-4 in fp16, where
    the other paths return float32 weights. They are the float32 weights of the same (half-precision) values."""
    q, k, v, index, kind = make_case(1, 2, 4, 5, 8, 6, seed=6, dtype=dtype)
    kind[kind == 2] = 1  # no error keys: every row with a support sums to 1
    _, weights = tk.candidate_attention(q, k, v, index, kind, 1.0 / math.sqrt(8), 0.0)
    _, want = reference(*(x.float() for x in (q, k, v)), index, kind, 0.0)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, want, atol=1e-6, rtol=1e-6)
    rows = weights.sum(-1)[(kind == 1).any(-1)]
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-6, rtol=0)


def test_inference_saves_nothing():
    q, k, v, index, kind = make_case(1, 1, 2, 3, 4, 3, seed=7)
    out, weights = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1)
    assert out.grad_fn is None and not weights.requires_grad
    q.requires_grad_(True)
    with torch.no_grad():
        out, _ = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1)
    assert out.grad_fn is None
    out, weights = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1)
    assert out.grad_fn is not None and not weights.requires_grad  # the weights are not differentiable


# --- float64: the kernel's own gradients, checked by finite differences ----------------------------


@pytest.mark.parametrize("dropout_p", [0.0, 0.4])
def test_gradcheck_float64(dropout_p):
    q, k, v, index, kind = make_case(1, 1, 3, 4, 3, 5, seed=8, dtype=torch.float64)
    seed = torch.tensor(1234) if dropout_p else None
    op = torch.ops.structmt.candidate_attention

    def fn(q, k, v):
        return op(q, k, v, index, kind, 0.6, 0.2, dropout_p, seed)[0]

    inputs = tuple(x.requires_grad_(True) for x in (q, k, v))
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True, atol=1e-6, rtol=1e-4)


# --- dropout ---------------------------------------------------------------------------------------


def test_dropout_reproducible_under_manual_seed():
    q, k, v, index, kind = make_case(1, 2, 3, 4, 4, 6, seed=9)
    runs = []
    for s in (0, 0, 1):
        torch.manual_seed(s)
        runs.append(tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1, dropout_p=0.5))
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    assert not torch.equal(runs[0][0], runs[2][0])  # a new seed, a new mask
    torch.testing.assert_close(runs[0][1], runs[2][1], atol=0, rtol=0)  # the weights are pre-dropout
    plain = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1)
    torch.testing.assert_close(tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1, dropout_p=0.0), plain)
    assert torch.equal(runs[0][1], plain[1])


def test_dropout_keep_fraction():
    p = 0.3
    keep = tk.dropout_keep_mask(42, (1, 2, 5, 64), p, DEVICE)
    assert keep.dtype == torch.bool and keep.shape == (1, 2, 5, 64)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.06  # 640 draws: sd 0.018
    assert not torch.equal(keep, tk.dropout_keep_mask(43, (1, 2, 5, 64), p, DEVICE))
    assert tk.dropout_keep_mask(42, (1, 1, 2, 5), 0.0, DEVICE).all()
    assert not tk.dropout_keep_mask(42, (1, 1, 2, 5), 1.0, DEVICE).any()


@pytest.mark.parametrize("dropout_p", [0.25, 0.6])
def test_dropout_matches_reference_with_the_same_mask(dropout_p):
    """Forward and gradients against the reference with the mask recovered from the kernels' Philox stream."""
    B, H, Tq, S, D, C = 1, 2, 4, 5, 6, 7
    q, k, v, index, kind = make_case(B, H, Tq, S, D, C, seed=10)
    seed = torch.tensor(987)
    keep = tk.dropout_keep_mask(seed, (B, H, Tq, C), dropout_p, DEVICE)
    assert 0 < keep.sum() < keep.numel()
    assert_matches(q, k, v, index, kind, 0.1, dropout_p=dropout_p, keep=keep.float(), seed=seed)


def test_dropout_public_api_uses_drawn_seed():
    """The wrapper's seed is one draw of torch's generator: replaying it recovers the mask."""
    B, H, Tq, S, D, C = 1, 1, 3, 4, 4, 5
    q, k, v, index, kind = make_case(B, H, Tq, S, D, C, seed=11)
    torch.manual_seed(123)
    out, weights = tk.candidate_attention(q, k, v, index, kind, 0.5, 0.1, dropout_p=0.5)
    torch.manual_seed(123)
    seed = torch.randint(2**31 - 1, (), dtype=torch.int64)
    keep = tk.dropout_keep_mask(seed, (B, H, Tq, C), 0.5, DEVICE)
    expected = torch.einsum("bhtc,btchd->bhtd", weights * keep / 0.5, gather(v, index))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --- property test ---------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 2),
    Tq=st.integers(1, 3),
    S=st.integers(1, 6),
    D=st.integers(1, 9),
    C=st.integers(1, 9),
    eps=st.sampled_from([0.0, 0.01, 0.25]),
    p_kind=st.sampled_from([(0.3, 0.5, 0.2), (0.0, 1.0, 0.0), (0.5, 0.0, 0.5), (0.1, 0.3, 0.6)]),
    seed=st.integers(0, 2**16),
)
def test_property_kernel_equals_reference(B, H, Tq, S, D, C, eps, p_kind, seed):
    q, k, v, index, kind = make_case(B, H, Tq, S, D, C, seed=seed, p_kind=p_kind)
    most = int((kind == 2).sum(-1).max())
    eps = min(eps, 0.9 / most) if most else eps  # within the error term's bound, (error keys of a row) * eps < 1
    assert_matches(q, k, v, index, kind, eps, atol=2e-5, rtol=2e-5)


# --- the custom op: opcheck, torch.compile, input checks, lazy import ------------------------------


def test_opcheck():
    q, k, v, index, kind = make_case(1, 1, 2, 3, 4, 3, seed=12)
    for x in (q, k, v):
        x.requires_grad_(True)
    torch.library.opcheck(torch.ops.structmt.candidate_attention, (q, k, v, index, kind, 0.5, 0.1, 0.0, None))
    grad = torch.randn(1, 1, 2, 4, device=DEVICE)
    backward = torch.ops.structmt.candidate_attention_backward
    args = (grad, q.detach(), k.detach(), v.detach(), index, kind, 0.5, 0.1, 0.0, None)
    torch.library.opcheck(backward, args, test_utils=("test_schema", "test_faketensor"))


def test_opcheck_dropout():
    """With dropout the seed is an input, so the op is deterministic and opcheck applies."""
    q, k, v, index, kind = make_case(1, 1, 2, 3, 4, 3, seed=13)
    for x in (q, k, v):
        x.requires_grad_(True)
    args = (q, k, v, index, kind, 0.5, 0.1, 0.5, torch.tensor(7))
    torch.library.opcheck(torch.ops.structmt.candidate_attention, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_torch_compile_fullgraph(dropout_p):
    q, k, v, index, kind = make_case(1, 2, 2, 3, 4, 3, seed=14)

    seed = torch.tensor(7) if dropout_p else None  # one dropout mask for both: the op's own seed argument

    def step(q, k, v):
        out, weights = torch.ops.structmt.candidate_attention(q, k, v, index, kind, 0.5, 0.1, dropout_p, seed)
        return (out * out).sum() + weights.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (step, compiled):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        fn(*leaves).backward()
        grads.append([x.grad for x in leaves])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)
    assert all(g.abs().sum() > 0 for g in grads[1])


def test_input_checks():
    q, k, v, index, kind = make_case(1, 1, 2, 3, 4, 3, seed=15)
    with pytest.raises(ValueError, match="kind"):
        tk.candidate_attention(q, k, v, index, kind[..., :2], 0.5)
    with pytest.raises(ValueError, match="index"):
        tk.candidate_attention(q, k, v, index[:, :1], kind, 0.5)
    with pytest.raises(TypeError, match="share"):
        tk.candidate_attention(q, k.double(), v, index, kind, 0.5)
    with pytest.raises(ValueError, match="dropout_p"):
        tk.candidate_attention(q, k, v, index, kind, 0.5, dropout_p=1.5)
    out, weights = tk.candidate_attention(q[:, :, :0], k, v, index[:, :0], kind[:, :, :0], 0.5)
    assert out.shape == (1, 1, 0, 4) and weights.shape == (1, 1, 0, 3)
    # a key position outside [0, S): the kernel read key 0 or S-1 instead (a key counted twice), silently
    for bad in (-1, 3):
        wrong = index.clone()
        wrong[0, 1, 2] = bad
        with pytest.raises(ValueError, match=rf"index holds key positions outside \[0, 3\) \(min {min(bad, 0)}"):
            tk.candidate_attention(q, k, v, wrong, kind, 0.5)
    # read by pointer: a tensor of another device (meta here) was read as garbage, in silence
    tensors = dict(q=q, k=k, v=v, index=index, kind=kind)
    for name in ("k", "v", "index", "kind"):
        args = tensors | {name: tensors[name].to("meta")}
        with pytest.raises(ValueError, match=rf"must be on one device; q is on cpu, \[\('{name}', device"):
            tk.candidate_attention(**args, scale=0.5)
    # the error term's bound (structured_softmax's rule): other weights went negative
    errors = torch.where(kind == 0, torch.full_like(kind, 2), kind)  # every empty slot an error key
    most = int((errors == 2).sum(-1).max())
    assert most >= 1
    with pytest.raises(ValueError, match=rf"\(error keys of a row\) \* sink_eps < 1, got {most} \* "):
        tk.candidate_attention(q, k, v, index, errors, 0.5, eps=1.0 / most)
    with pytest.raises(ValueError, match=r"sink_eps bounds each error key's weight: it must be >= 0 .*got 0 \* -0.1"):
        tk.candidate_attention(q, k, v, index, errors, 0.5, eps=-0.1, check_index=False)
    with pytest.raises(ValueError, match=r"kind holds codes outside 0, 1, 2 \(min 0, max 3\)"):
        tk.candidate_attention(q, k, v, index, torch.where(kind == 1, torch.full_like(kind, 3), kind), 0.5)


def test_available():
    assert tk.available()
    assert tk.available(DEVICE)


def test_triton_is_imported_lazily():
    """No module-level ``import triton``: ``import structmt`` must not need (or wait for) triton."""
    tree = ast.parse(KERNEL_PATH.read_text())
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not any(name.split(".")[0] == "triton" for name in names), ast.dump(node)


def test_every_launch_runs_on_the_device_of_its_tensors(monkeypatch):
    """Triton launches on the current CUDA device (and its stream): each launch (forward, backward, the dropout
    mask) is made inside ``_on(the tensors' device)``, which makes that device current on a GPU."""
    import contextlib

    assert isinstance(tk._on(torch.device("cuda", 1)), torch.cuda.device) and tk._on(torch.device("cuda", 1)).idx == 1
    assert isinstance(tk._on(torch.device("cpu")), contextlib.nullcontext)
    real, active, launched = tk._kernels(), [], []

    @contextlib.contextmanager
    def on(device):
        active.append(device)
        yield
        active.pop()

    class Recorded:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append((self.name, list(active)))
                return getattr(real, self.name)[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(tk, "_kernels", lambda: types.SimpleNamespace(**{
        **vars(real), **{name: Recorded(name) for name in ("fwd", "bwd", "keep")}}))  # fmt: skip
    monkeypatch.setattr(tk, "_on", on)
    q, k, v, index, kind = make_case(1, 2, 3, 4, 8, 2, seed=5)
    q.requires_grad_(True)
    out, _ = tk.candidate_attention(q, k, v, index, kind, 0.5, dropout_p=0.1)
    out.sum().backward()
    tk.dropout_keep_mask(3, (1, 2, 3, 2), 0.1, q.device)
    device = torch.device(DEVICE)
    assert launched == [("fwd", [device]), ("bwd", [device]), ("keep", [device])]


def test_cpu_without_interpreter_names_triton_interpret(monkeypatch):
    compiled_mode = types.SimpleNamespace(**{**vars(tk._kernels()), "interpreted": False})
    monkeypatch.setattr(tk, "_kernels", lambda: compiled_mode)
    q, k, v, index, kind = make_case(1, 1, 1, 2, 2, 1, seed=16, device="cpu")
    with pytest.raises(RuntimeError, match=r"TRITON_INTERPRET=1 .* another kernel \(--struct-impl auto or efficient "
                       r"when training; a trained model: --model-overrides \"{'struct_impl': 'auto'}\" for "
                       r"fairseq-generate"):  # fmt: skip
        tk.candidate_attention(q, k, v, index, kind, 1.0)
    assert not tk.available("cpu")


def test_a_triton_older_than_the_kernels_need_is_refused_and_auto_takes_another_path(monkeypatch):
    for version in ("3.2.0", "3.6.0+git1a2b3c", "4.0.0"):
        tk.check_triton_version(version)
    for version in ("3.1.0", "3.0.0", "2.3.1"):
        with pytest.raises(tk.TritonTooOld, match=rf"needs Triton >= 3\.2 .* has Triton {re.escape(version)}; "):
            tk.check_triton_version(version)

    def too_old():
        tk.check_triton_version("3.0.0")

    monkeypatch.setattr(tk, "_kernels", too_old)
    assert not tk.available() and not tk.available("cuda")
    q, k, v, index, kind = make_case(1, 1, 1, 2, 2, 1, seed=17)
    with pytest.raises(RuntimeError, match=r"structmt triton kernel: it needs Triton >= 3\.2 .*Triton 3\.0\.0; "):
        tk.candidate_attention(q, k, v, index, kind, 1.0)
    assert functional.candidate_kernel("auto", q, v, 0.0) != "triton"


def test_a_gpu_older_than_volta_is_refused_and_auto_takes_another_path_saying_so(monkeypatch, caplog):
    """Triton compiles the backward's atomic adds only from compute capability 7.0 on: on a P100 (6.0) the
    forward ran and the first backward failed in ptxas. ``auto`` takes the other path there, and says so once
    (a GPU run on the slower path); ``triton`` is an error naming the GPU and what to do."""
    compiled = types.SimpleNamespace(interpreted=False)  # as on a GPU machine: the kernels compile for the device
    monkeypatch.setattr(tk, "_kernels", lambda: compiled)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")
    capability = {"now": (6, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["now"])
    monkeypatch.setattr(functional, "_SAID", set())
    why = "Tesla P100-PCIE-16GB is of compute capability 6.0; the backward's atomic adds need 7.0 or newer (Volta on)"
    assert tk.unusable("cuda") == why and not tk.available("cuda") and tk.available()
    with pytest.raises(RuntimeError, match=re.escape(f"structmt triton kernel: {why}; attend with another kernel")):
        tk._ready(torch.device("cuda"))
    q = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=torch.bfloat16)
    assert functional.candidate_kernel("triton", q, q, 0.0) == "triton"  # asked for: the error above, when it runs
    for _ in range(2):
        assert functional.candidate_kernel("auto", q, q, 0.0) == "gather"
    said = [r.getMessage() for r in caplog.records if r.name.startswith("structmt")]
    assert said == [
        f"structured attention on cuda:0: the Triton kernel cannot run ({why}); --struct-impl auto takes the "
        "pure-PyTorch paths instead (the same attention: the dense masked one for short sequences, gathered keys "
        "for long ones)"
    ]
    for capability["now"] in ((7, 0), (9, 0)):
        assert tk.unusable("cuda") == "" and functional.candidate_kernel("auto", q, q, 0.0) == "triton"
    assert tk._ready(torch.device("cuda")) is compiled


def test_without_triton(monkeypatch):
    def missing():
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(tk, "_kernels", missing)
    assert not tk.available()
    q, k, v, index, kind = make_case(1, 1, 1, 2, 2, 1, seed=17)
    # not a bare `pip install triton`: the newest Triton may not be the one a CUDA torch pins
    with pytest.raises(RuntimeError, match="triton is not installed .*the version your torch release pins"):
        tk.candidate_attention(q, k, v, index, kind, 1.0)


def test_a_triton_that_does_not_import_is_tried_once(monkeypatch):
    """available() is asked at every structured layer of every forward; Python does not remember a failed import,
    so without Triton (or with a broken one) each call imported it again."""
    tries = []

    def define():
        tries.append(1)
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(tk, "_define_kernels", define)
    tk._loaded.cache_clear()
    try:
        assert not any(tk.available(device) for device in ("cuda", "cpu", None))
        depths = []
        for _ in range(3):  # the one exception raised again: its traceback must not grow with every call
            with pytest.raises(ImportError) as err:
                tk._kernels()
            depths.append(len(traceback.extract_tb(err.value.__traceback__)))
        assert len(tries) == 1 and depths[0] == depths[-1]
    finally:
        tk._loaded.cache_clear()  # the real kernels again for the tests after this one


# --- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 4e-3)], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("shape", [(2, 4, 64, 64, 64, 24), (2, 3, 37, 50, 40, 13), (1, 8, 128, 96, 64, 40)])
def test_cuda_matches_reference(dtype, tol, shape):
    B, H, Tq, S, D, C = shape
    q, k, v, index, kind = make_case(B, H, Tq, S, D, C, seed=sum(shape), dtype=dtype, device="cuda")
    assert_matches(q, k, v, index, kind, 0.1, atol=tol, rtol=tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_cuda_dropout_matches_reference(dtype, tol):
    B, H, Tq, S, D, C = 2, 4, 64, 64, 64, 24
    q, k, v, index, kind = make_case(B, H, Tq, S, D, C, seed=1, dtype=dtype, device="cuda")
    seed = torch.tensor(2024)
    keep = tk.dropout_keep_mask(seed, (B, H, Tq, C), 0.2, "cuda")
    assert abs(keep.float().mean().item() - 0.8) < 0.01
    assert_matches(q, k, v, index, kind, 0.1, atol=tol, rtol=tol, dropout_p=0.2, keep=keep.float(), seed=seed)


# --------------------------------------------------------------------------------------------------
# impl="triton" end to end: structured_attention, aligned_cross_attention and the fairseq model
# --------------------------------------------------------------------------------------------------


def _structured_case(seed: int, causal: bool, sinks: int):
    from structmt.attention import Structure, rare_sets, rarity_keys

    gen = torch.Generator().manual_seed(seed)
    B, H, T, D = 2, 2, 9, 8
    structure = Structure.from_roles(
        ["rare", "syntactic"], window=2, rare=2, causal=causal, sinks=sinks, sink_eps=0.1 if sinks else 0.0
    )
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    pad = torch.zeros(B, T, dtype=torch.bool)
    if causal:
        pad[1, -3:] = True  # right padding of targets
    else:
        pad[1, :3] = True  # left padding of sources
    tokens = torch.randint(4, 30, (B, T), generator=gen).masked_fill(pad, 1)
    never = torch.zeros(30, dtype=torch.bool)
    never[:4] = True
    sets = rare_sets(rarity_keys(tokens, torch.randint(1, 9, (30,), generator=gen), never), 2, causal)
    return structure, q, k, v, pad, sets


@pytest.mark.parametrize("causal, sinks", [(False, 0), (True, 0), (False, 2), (True, 1)])
def test_structured_attention_triton_equals_reference(causal, sinks):
    from conftest import assert_close_all, attention_with_grads

    structure, q, k, v, pad, sets = _structured_case(3, causal, sinks)
    want = attention_with_grads(structure, q, k, v, pad, sets, "reference", loss=torch.sum)
    got = attention_with_grads(structure, q, k, v, pad, sets, "triton", loss=torch.sum)
    assert_close_all(want, got)


def test_aligned_cross_attention_triton_equals_reference():
    from structmt.attention import aligned_cross_attention

    gen = torch.Generator().manual_seed(5)
    B, H, Tq, S, D = 2, 2, 7, 10, 8
    q, k, v = (torch.randn(B, H, n, D, generator=gen) for n in (Tq, S, S))
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, :4] = True  # fairseq left-pads the source
    results = []
    for impl in ("reference", "triton"):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out, w = aligned_cross_attention(
            qq, kk, vv, window=1, slope=1.3, key_padding_mask=pad, impl=impl, need_weights=True
        )
        out.pow(2).sum().backward()
        results.append((out, w, qq.grad, kk.grad, vv.grad))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_bands_past_the_sequence_and_an_empty_source_on_triton(causal):
    """The band cut to the sequence gives the Triton kernel 2T - 1 (or T) band slots, however wide the window:
    outputs and gradients equal the reference's; a source with no key gives zero rows on the triton impl."""
    from conftest import assert_close_all

    from structmt.attention import aligned_cross_attention, structured_attention

    gen = torch.Generator().manual_seed(6)
    for T in (1, 2, 5):
        q, k, v = (torch.randn(2, 2, T, 8, generator=gen, device=DEVICE) for _ in range(3))
        results = []
        for impl in ("reference", "triton"):
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            out = structured_attention(qq, kk, vv, window=10**9, causal=causal, impl=impl)
            out.pow(2).sum().backward()
            results.append((out, qq.grad, kk.grad, vv.grad))
        assert_close_all(*results)
    empty = torch.zeros(2, 2, 0, 8, device=DEVICE)
    out, _ = aligned_cross_attention(q, empty, empty, window=3, impl="triton")
    assert torch.equal(out, torch.zeros_like(q))


#: a one-layer structured model small enough for Triton's interpreter (band, rare columns, cross band)
_TINY_MODEL = (
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "16",
    "--decoder-ffn-embed-dim", "16", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--struct-heads", "syn:1,rare:1",
    "--struct-rare", "2", "--struct-cross-window", "1",
)  # fmt: skip


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source tokens (one left-padded sentence), their lengths, and target tokens starting with EOS."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(4, 44, (2, 6), generator=gen)
    src[1, :2], src[:, -1] = 1, 2
    tgt = torch.randint(4, 44, (2, 5), generator=gen)
    tgt[:, 0] = 2
    return src, (src != 1).sum(1), tgt


def test_model_with_triton_decodes_like_teacher_forcing(dict_dir):
    """The fairseq model on --struct-impl triton: incremental decoding (one query against the bounded
    cache, cross band) equals teacher forcing, and both equal the reference kernel's model."""
    from conftest import build

    args = (*_TINY_MODEL, "--struct-error", "sink:1")
    _, model = build(dict_dir, "structured_transformer_tiny", *args, "--struct-impl", "triton", seed=4)
    _, reference = build(dict_dir, "structured_transformer_tiny", *args, "--struct-impl", "reference", seed=4)
    src, lengths, tgt = _tiny_batch()
    full, _ = model(src, lengths, tgt)
    assert torch.allclose(full, reference(src, lengths, tgt)[0], atol=1e-5)
    enc = model.encoder(src, src_lengths=lengths)
    state: dict = {}
    steps = [model.decoder(tgt[:, : t + 1], encoder_out=enc, incremental_state=state)[0] for t in range(tgt.size(1))]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("dtype, impl", [(torch.float16, "triton"), (torch.bfloat16, "efficient")])
def test_half_precision_model_follows_float32(dict_dir, dtype, impl):
    """What fairseq's --bf16/--fp16 do to the model (weights and activations in the half type):
    the structured model's output stays close to its float32 output, on either candidate path."""
    from conftest import build

    _, model = build(dict_dir, "structured_transformer_tiny", *_TINY_MODEL, "--struct-impl", impl, seed=4)
    src, lengths, tgt = _tiny_batch()
    want = model(src, lengths, tgt)[0].log_softmax(-1)
    got = model.to(dtype)(src, lengths, tgt)[0]
    assert got.dtype == dtype
    assert (got.float().log_softmax(-1) - want).abs().max() < 0.1
