"""Regression tests for the Triton backend's defects found by probing (issues 10 and 14).

Each test failed before its fix (``fastops/triton/*.py``):

- linear_relu's backward zeroed the gradient where the output is NaN (torch's threshold_backward
  passes it: the mask is ``not (out <= 0)``);
- conv2d's input gradient formed 0 * inf = NaN from an infinite weight at taps that miss every output
  pixel (padding, stride); the forward and weight gradient follow torch's zero padding;
- conv2d's fused ReLU mapped NaN to 0 (``tl.maximum``);
- the raw ``fastops_triton`` ops took fp16/bf16 CPU tensors the support table excludes, a negative
  ``lr_tensor``, a zero-height conv2d kernel, and their conv2d messages differed from the native ones;
- the kernels' program ids were multiplied in int32 (checked on the kernels' source: a >2^31-element
  case cannot run in the interpreter);
- no launcher entered the tensors' CUDA device (checked with a spy on every op, on CPU).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

import fastops
import fastops.functional as FF
import fastops.triton
from fastops.ops import STEMS
from fastops.testing import HAS_CUDA, TOLERANCES, make_tensor, triton_device_params

pytestmark = [
    pytest.mark.triton,
    # The inputs hold inf/NaN on purpose; the interpreter's numpy says so for every tile.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

if not fastops.triton.AVAILABLE:
    pytest.skip(f"the Triton backend is unavailable: {fastops.triton.REASON}", allow_module_level=True)

MODULES = {stem: fastops.triton.load(stem) for stem in STEMS}
OPS = torch.ops.fastops_triton
INF, NAN = float("inf"), float("nan")


DEVICES = triton_device_params()
FLOAT_DTYPES = [torch.float32, torch.float64]


def _assert_same_values(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """NaN exactly where expected is NaN, the same infinities, finite values within the project's
    tolerance for got's dtype (fastops.testing.TOLERANCES; the inputs are of unit scale)."""
    rtol, atol = TOLERANCES[got.dtype]
    got64, exp64 = got.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.equal(got64.isnan(), exp64.isnan()), (
        f"{what}: NaN at {got64.isnan().nonzero().tolist()}, expected at {exp64.isnan().nonzero().tolist()}"
    )
    torch.testing.assert_close(got64, exp64, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


# ---- issue 10 (4): linear_relu backward passes the gradient where the output is NaN ---------------


@pytest.mark.parametrize("device", DEVICES)
def test_linear_relu_nan_output_passes_gradient_issue_case(device: str) -> None:
    x = torch.tensor([[NAN, 1.0]], device=device, requires_grad=True)
    w = torch.tensor([[1.0, 1.0]], device=device, requires_grad=True)
    b = torch.zeros(1, device=device, requires_grad=True)
    FF.linear_relu(x, w, b, backend="triton").sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0]]  # torch: relu's threshold_backward passes NaN outputs on
    assert b.grad.tolist() == [1.0]
    assert torch.isnan(w.grad[0, 0]) and w.grad[0, 1].item() == 1.0
    # The raw op: grad_out of ones, out = [[nan]].
    dx, dw, db = OPS.linear_relu_bwd(
        torch.ones(1, 1, device=device), x.detach(), w.detach(), torch.full((1, 1), NAN, device=device)
    )
    assert dx.tolist() == [[1.0, 1.0]] and db.tolist() == [1.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_linear_relu_nan_outputs_match_torch(device: str, dtype: torch.dtype) -> None:
    """Rows with NaN inputs, exact-zero outputs (masked) and positive ones, against torch's autograd."""
    m, k, n = 37, 19, 23
    x = make_tensor((m, k), dtype, device)
    w = make_tensor((n, k), dtype, device)
    bias = make_tensor((n,), dtype, device)
    x[3, 5] = NAN
    x[11, :] = NAN
    w[7, 2] = NAN  # a NaN output column
    bias[4] = -1e6  # an all-clipped column: its outputs are exact zeros, its gradient masked
    g = make_tensor((m, n), torch.float64, device) / m**0.5  # grad_weight, grad_bias: unit scale

    def run(fn: Callable[..., torch.Tensor], dt: torch.dtype) -> tuple[torch.Tensor, ...]:
        inputs = [t.detach().to(dt).requires_grad_() for t in (x, w, bias)]
        out = fn(*inputs)
        return (out, *torch.autograd.grad(out, inputs, g.to(dt)))

    ours = run(lambda a, wt, bb: FF.linear_relu(a, wt, bb, backend="triton"), dtype)
    ref = run(lambda a, wt, bb: F.relu(F.linear(a, wt, bb)), torch.float64)
    assert ref[0].isnan().any() and (ref[0] == 0).any() and (ref[0] > 0).any()
    for name, got, exp in zip(("out", "grad_x", "grad_weight", "grad_bias"), ours, ref):
        _assert_same_values(got, exp, f"linear_relu {name}")


# ---- issue 10 (6): conv2d input gradient with an infinite weight ---------------------------------


def _conv_out_and_grads(
    conv: Callable[..., torch.Tensor],
    x: torch.Tensor,
    w: torch.Tensor,
    g_fn: Callable[[torch.Tensor], torch.Tensor],
    **kw: object,
) -> tuple[torch.Tensor, ...]:
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = conv(x, w, **kw)
    gx, gw = torch.autograd.grad(y, (x, w), g_fn(y))
    return y.detach(), gx, gw


def _triton_conv(x: torch.Tensor, w: torch.Tensor, **kw: object) -> torch.Tensor:
    return FF.conv2d(x, w, backend="triton", **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_dgrad_inf_weight_issue_case(device: str) -> None:
    w = torch.ones(1, 1, 3, 3, device=device)
    w[0, 0, 0, 0] = INF
    x = torch.ones(1, 1, 4, 4, device=device, requires_grad=True)
    FF.conv2d(x, w, backend="triton").sum().backward()
    assert not x.grad.isnan().any(), x.grad  # was 12 NaN: 0 * inf at the taps that miss every output
    assert x.grad.isinf().sum().item() == 4  # torch: the four pixels the inf tap reads


CONV_CASES = [
    dict(),
    dict(padding=1),
    dict(stride=2),
    dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(padding=2, dilation=2, groups=2),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kw", CONV_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_conv2d_nonfinite_weight_matches_torch(device: str, dtype: torch.dtype, kw: dict) -> None:
    """An inf and a NaN weight: y, dx, dw with torch's NaN/inf pattern (dx: only taps that meet an output)."""
    groups = int(kw.get("groups", 1))
    x = make_tensor((2, 2 * groups, 7, 6), dtype, device)
    w = make_tensor((3 * groups, 2, 3, 3), dtype, device)
    w[0, 0, 0, 0] = INF
    w[-1, 1, 2, 1] = -INF
    w[1, 1, 1, 2] = NAN

    def ones(y: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(y)

    ours = _conv_out_and_grads(_triton_conv, x, w, ones, **kw)
    ref = _conv_out_and_grads(F.conv2d, x.double(), w.double(), ones, **kw)
    for name, got, exp in zip(("y", "grad_x", "grad_weight"), ours, ref):
        _assert_same_values(got, exp, f"conv2d {name} {kw}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", CONV_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_conv2d_nonfinite_input_and_grad_match_torch(device: str, kw: dict) -> None:
    """inf in x and in dy beside zero padding: the forward and weight gradient follow torch on the
    CPU, which multiplies its zero padding (0 * inf there is NaN), and dx stays as torch's. The
    reference runs on the CPU on every device: cuDNN skips padded taps, so on an H100 its dw held
    +-inf where an infinite dy meets the padding (the kernel, like the CPU, gives NaN there)."""
    groups = int(kw.get("groups", 1))
    x = make_tensor((2, 2 * groups, 7, 6), torch.float64, device)
    w = make_tensor((3 * groups, 2, 3, 3), torch.float64, device)
    x[0, 0, 0, 0] = INF
    x[1, -1, 3, 5] = -INF

    def g_fn(y: torch.Tensor) -> torch.Tensor:
        g = torch.ones_like(y)
        g[0, 0, 0, 0] = INF
        g[1, -1, -1, -1] = NAN
        return g

    ours = _conv_out_and_grads(_triton_conv, x, w, g_fn, **kw)
    ref = _conv_out_and_grads(F.conv2d, x.cpu(), w.cpu(), g_fn, **kw)
    for name, got, exp in zip(("y", "grad_x", "grad_weight"), ours, ref):
        _assert_same_values(got, exp, f"conv2d {name} {kw}")


# ---- issue 14: the fused ReLU keeps NaN ----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_conv2d_fused_relu_keeps_nan(device: str, dtype: torch.dtype) -> None:
    x = make_tensor((2, 3, 6, 5), dtype, device)
    w = make_tensor((4, 3, 3, 3), dtype, device)
    bias = make_tensor((4,), dtype, device)
    x[0, 1, 2, 2] = NAN
    y = OPS.conv2d_fwd(x, w, bias, [1, 1], [1, 1], [1, 1], 1, True)
    expected = torch.relu(F.conv2d(x.double(), w.double(), bias.double(), padding=1))
    assert expected.isnan().sum() == 9 * 4
    _assert_same_values(y, expected, "conv2d relu")  # was: NaN mapped to 0 (tl.maximum)
    # The same through the functional API and its backward (threshold_backward passes NaN outputs).
    xr = x.detach().requires_grad_()
    yf = FF.conv2d(xr, w, bias, padding=1, activation="relu", backend="triton")
    _assert_same_values(yf, expected, "FF.conv2d relu")


@pytest.mark.parametrize("device", DEVICES)
def test_linear_relu_forward_keeps_nan(device: str) -> None:
    x = torch.tensor([[NAN, 1.0], [-1.0, -2.0]], device=device)
    out = OPS.linear_relu_fwd(x, torch.ones(3, 2, device=device), None)
    assert out[0].isnan().all() and (out[1] == 0).all()


# ---- issue 10 (7): the raw ops validate as the native ones --------------------------------------


def _conv_args(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return make_tensor((2, 4, 6, 6), dtype, "cpu"), make_tensor((6, 4, 3, 3), dtype, "cpu")


def _cpu_only() -> None:
    if not fastops.triton.interpreting():
        pytest.skip("the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_raw_ops_refuse_low_precision_on_cpu(dtype: torch.dtype) -> None:
    """conv2d and linear_relu's CPU row of the support table is fp32/fp64: the interpreter's fp16/bf16
    results were garbage (~4e9)."""
    _cpu_only()
    x, w = _conv_args(dtype)
    dy = torch.ones(2, 6, 4, 4, dtype=dtype)
    a, wl = make_tensor((6, 5), dtype, "cpu"), make_tensor((4, 5), dtype, "cpu")
    out = torch.ones(6, 4, dtype=dtype)
    calls = {
        "conv2d_fwd": lambda: OPS.conv2d_fwd(x, w, None, [1, 1], [0, 0], [1, 1], 1, False),
        "conv2d_bwd": lambda: OPS.conv2d_bwd(dy, x, w, [1, 1], [0, 0], [1, 1], 1, [True, True, True]),
        "linear_relu_fwd": lambda: OPS.linear_relu_fwd(a, wl, None),
        "linear_relu_bwd": lambda: OPS.linear_relu_bwd(out, a, wl, out),
    }
    for op, call in calls.items():
        name = "input" if op.startswith("conv2d") else "x"
        with pytest.raises(
            TypeError,
            match=rf"^{op}: the Triton kernels on CPU \(the interpreter\) take float32 or float64 {name}, got {dtype}$",
        ):
            call()


def test_raw_ops_still_take_low_precision_where_the_table_does() -> None:
    """cross_entropy and adam list fp16/bf16 on CPU: the new check must not refuse them."""
    _cpu_only()
    logits = make_tensor((5, 7), torch.bfloat16, "cpu")
    loss, _ = OPS.cross_entropy_fwd(logits, torch.randint(0, 7, (5,)), None, -100, 0.0)
    assert loss.isfinite().all()
    p = make_tensor((9,), torch.float16, "cpu")
    before = p.clone()
    OPS.adam_step_([p], [torch.ones_like(p)], [torch.zeros_like(p)], [torch.zeros_like(p)], [], [torch.zeros(1)],
                   0.1, None, 0.9, 0.999, 0.0, 1e-8, False, False, False, None, None)  # fmt: skip
    assert not torch.equal(p, before)


def _adam_args(lr_tensor: torch.Tensor) -> dict[str, object]:
    p = make_tensor((9,), torch.float32, "cpu")
    return dict(
        params=[p], grads=[torch.ones_like(p)], exp_avgs=[torch.zeros_like(p)], exp_avg_sqs=[torch.zeros_like(p)],
        max_exp_avg_sqs=[], state_steps=[torch.zeros(1)], lr=0.0, lr_tensor=lr_tensor, beta1=0.9, beta2=0.999,
        weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False, decoupled_weight_decay=False, grad_scale=None,
        found_inf=None,
    )  # fmt: skip


@pytest.mark.parametrize("lr", [-0.1, NAN])
def test_adam_refuses_negative_lr_tensor(lr: float) -> None:
    _cpu_only()
    args = _adam_args(torch.tensor(lr))
    before = args["params"][0].clone()
    with pytest.raises(ValueError, match=r"^adam_step_: Invalid learning rate: "):
        OPS.adam_step_(**args)
    assert torch.equal(args["params"][0], before) and args["state_steps"][0].item() == 0
    if fastops._backend.NATIVE_LOADED:  # the native CPU op's message, word for word
        with pytest.raises(ValueError) as native:
            torch.ops.fastops.adam_step_(**_adam_args(torch.tensor(lr)))
        with pytest.raises(ValueError) as ours:
            OPS.adam_step_(**_adam_args(torch.tensor(lr)))
        assert str(ours.value) == str(native.value)


def test_adam_checks_scalar_tensors() -> None:
    _cpu_only()
    with pytest.raises(ValueError, match=r"^adam_step_: lr_tensor must have one element, got shape \(2,\)$"):
        OPS.adam_step_(**_adam_args(torch.tensor([0.1, 0.2])))
    # "Long": the C++ checks' text (c10's ScalarType name), which every backend gives (one contract).
    with pytest.raises(TypeError, match=r"^adam_step_: lr_tensor must be floating, got Long$"):
        OPS.adam_step_(**_adam_args(torch.tensor(1)))
    args = _adam_args(torch.tensor(0.0))  # lr = 0 is valid and moves nothing
    before = args["params"][0].clone()
    OPS.adam_step_(**args)
    assert torch.equal(args["params"][0], before)


@pytest.mark.parametrize("shape", [(6, 4, 0, 3), (6, 4, 3, 0)])
def test_conv2d_refuses_empty_kernel(shape: tuple[int, ...]) -> None:
    _cpu_only()
    x = make_tensor((2, 4, 5, 5), torch.float32, "cpu")
    w = make_tensor(shape, torch.float32, "cpu")
    msg = re.escape(f"weight must be non-empty, got {tuple(shape)}") + "$"
    with pytest.raises(ValueError, match=rf"^conv2d_fwd: {msg}"):  # the op's contract, the same on every backend
        FF.conv2d(x, w, backend="triton")  # was: zeros
    with pytest.raises(ValueError, match=rf"^conv2d_fwd: {msg}"):
        OPS.conv2d_fwd(x, w, None, [1, 1], [0, 0], [1, 1], 1, False)
    with pytest.raises(ValueError, match=rf"^conv2d_bwd: {msg}"):
        OPS.conv2d_bwd(torch.zeros(2, 6, 5, 3), x, w, [1, 1], [0, 0], [1, 1], 1, [True, True, True])
    with pytest.raises(ValueError, match=r"^conv2d_fwd: weight must be non-empty, got \(0, 4, 3, 3\)$"):
        OPS.conv2d_fwd(x, make_tensor((0, 4, 3, 3), torch.float32, "cpu"), None, [1, 1], [0, 0], [1, 1], 1, False)


def _bad_conv2d_calls() -> Iterator[tuple[str, Callable[[object], object]]]:
    """(id, call(ns)) for bad calls whose native message has no dtype name in it (c10 spells dtypes
    differently from torch), so the text must be the same word for word."""
    x, w = _conv_args(torch.float32)
    b = make_tensor((6,), torch.float32, "cpu")
    dy = torch.ones(2, 6, 4, 4)
    ok = ([1, 1], [0, 0], [1, 1], 1)

    def fwd(
        xx: torch.Tensor, ww: torch.Tensor, bb: torch.Tensor | None, st: list, pad: list, dil: list, grp: int
    ) -> Callable:
        return lambda ns: ns.conv2d_fwd(xx, ww, bb, st, pad, dil, grp, False)

    yield "input-3d", fwd(x[0], w, None, *ok)
    yield "weight-3d", fwd(x, w[0], None, *ok)
    yield "stride-0", fwd(x, w, None, [0, 1], [0, 0], [1, 1], 1)
    yield "dilation-0", fwd(x, w, None, [1, 1], [0, 0], [1, 0], 1)
    yield "padding-neg", fwd(x, w, None, [1, 1], [-1, 0], [1, 1], 1)
    yield "groups-0", fwd(x, w, None, [1, 1], [0, 0], [1, 1], 0)
    yield "groups-3", fwd(x, w, None, [1, 1], [0, 0], [1, 1], 3)
    yield "channels", fwd(x, make_tensor((6, 3, 3, 3), torch.float32, "cpu"), None, *ok)
    yield "empty-kernel", fwd(x, make_tensor((6, 4, 0, 3), torch.float32, "cpu"), None, *ok)
    yield "too-small", fwd(x, w, None, [1, 1], [0, 0], [3, 1], 1)
    yield "bias-shape", fwd(x, w, b[:5], *ok)
    yield "grad_out-shape", lambda ns: ns.conv2d_bwd(dy[:, :5], x, w, *ok, [True, True, True])


@pytest.mark.parametrize("case", [c for c, _ in _bad_conv2d_calls()])
def test_conv2d_messages_match_native(case: str) -> None:
    _cpu_only()
    if not fastops._backend.NATIVE_LOADED:
        pytest.skip("the native extension is not built")
    call = dict(_bad_conv2d_calls())[case]
    with pytest.raises((ValueError, TypeError)) as native:
        call(torch.ops.fastops)
    with pytest.raises((ValueError, TypeError)) as ours:
        call(OPS)
    assert type(ours.value) is type(native.value)
    assert str(ours.value) == str(native.value)


# ---- issue 14: int64 index math ------------------------------------------------------------------
# A >2^31-element case cannot run here: the interpreter runs every program of the grid in Python
# (2^25 programs for 2^31 output pixels) and the tensors would need 8 GB each. So the property is
# checked on the kernels' source, where the defect was: a program id multiplied while still int32.


def _jit_functions() -> Iterator[tuple[str, ast.FunctionDef]]:
    for stem, module in MODULES.items():
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
                yield f"{stem}.{node.name}", node


def _is_program_id(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func) == "tl.program_id"


def test_kernels_cast_program_ids_to_int64_first() -> None:
    """Every tl.program_id(...) is immediately .to(tl.int64): pid * BLOCK + arange then never wraps."""
    found, bad = 0, []
    for name, fn in _jit_functions():
        parents = {child: node for node in ast.walk(fn) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(fn):
            if not _is_program_id(node):
                continue
            found += 1
            attr, call = parents.get(node), parents.get(parents.get(node))
            ok = (
                isinstance(attr, ast.Attribute)
                and attr.attr == "to"
                and isinstance(call, ast.Call)
                and [ast.unparse(a) for a in call.args] == ["tl.int64"]
            )
            if not ok:
                bad.append(f"{name}: {ast.unparse(parents.get(node, node))}")
    assert found >= 6, "no program ids found: the source walk is broken"
    assert not bad, "program ids used before the int64 cast:\n" + "\n".join(bad)


def test_kernels_never_multiply_two_scalar_arguments() -> None:
    """P * Q, H * W, R * S of two int32 kernel arguments can wrap before meeting an int64 operand;
    the kernels multiply an int64 value by each in turn instead."""
    bad = []
    for name, fn in _jit_functions():
        scalars = {
            a.arg
            for a in fn.args.args
            if not a.arg.endswith("_ptr") and (a.annotation is None or "constexpr" not in ast.unparse(a.annotation))
        }
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Mult)
                and all(isinstance(v, ast.Name) and v.id in scalars for v in (node.left, node.right))
            ):
                bad.append(f"{name}: {ast.unparse(node)}")
    assert not bad, "products of two int32 kernel arguments:\n" + "\n".join(bad)


# ---- issue 14: every launch runs inside the tensors' device ----------------------------------------


class _GuardSpy:
    """Replaces _register.device_guard: records the devices entered; launches check one is active."""

    def __init__(self) -> None:
        self.active: list[torch.device | None] = []
        self.launches: list[tuple[str, torch.device | None]] = []

    @contextlib.contextmanager
    def guard(self, t: torch.Tensor | None) -> Iterator[None]:
        self.active.append(None if t is None else t.device)
        try:
            yield
        finally:
            self.active.pop()

    def wrap_triton(self, real: Callable[..., object]) -> Callable[[object], object]:
        spy = self

        def wrap(kernel: object) -> object:
            wrapped = real(kernel)

            class _Launch:
                def __getitem__(self, grid: object) -> Callable[..., object]:
                    def launch(*args: object, **kwargs: object) -> object:
                        name = getattr(kernel, "__name__", None) or getattr(
                            getattr(kernel, "fn", None), "__name__", "?"
                        )
                        spy.launches.append((str(name), spy.active[-1] if spy.active else None))
                        return wrapped[grid](*args, **kwargs)

                    return launch

            return _Launch()

        return wrap


def _every_op_call(device: str) -> dict[str, Callable[[], object]]:
    """One valid call per fastops_triton op, on ``device``."""
    x, w = make_tensor((2, 3, 5, 5), torch.float32, device), make_tensor((4, 3, 3, 3), torch.float32, device)
    conv = ([1, 1], [1, 1], [1, 1], 1)
    a, wl = make_tensor((6, 5), torch.float32, device), make_tensor((4, 5), torch.float32, device)
    logits, target = make_tensor((3, 7), torch.float32, device), torch.randint(0, 7, (3,), device=device)
    loss_grad, stats = torch.ones(3, device=device), torch.zeros(2, 3, device=device)
    p = make_tensor((9,), torch.float32, device)
    lce_target, lce_stats = torch.randint(0, 4, (6,), device=device), torch.zeros(2, 6, device=device)
    lce = (-100, 0.0, 0.0, 0.0, 1, 0)  # ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows
    return {
        "conv2d_fwd": lambda: OPS.conv2d_fwd(x, w, None, *conv, True),
        "conv2d_bwd": lambda: OPS.conv2d_bwd(torch.ones(2, 4, 5, 5, device=device), x, w, *conv, [True, True, True]),
        "linear_relu_fwd": lambda: OPS.linear_relu_fwd(a, wl, None),
        "linear_relu_bwd": lambda: OPS.linear_relu_bwd(
            torch.ones(6, 4, device=device), a, wl, torch.ones(6, 4, device=device)
        ),
        "cross_entropy_fwd": lambda: OPS.cross_entropy_fwd(logits, target, None, -100, 0.0),
        "cross_entropy_bwd": lambda: OPS.cross_entropy_bwd(loss_grad, logits, target, None, stats, -100, 0.0),
        "cross_entropy_bwd_": lambda: OPS.cross_entropy_bwd_(loss_grad, logits.clone(), target, None, stats, -100, 0.0),
        "linear_cross_entropy_fwd": lambda: OPS.linear_cross_entropy_fwd(a, wl, None, lce_target, None, *lce, True),
        "linear_cross_entropy_bwd": lambda: OPS.linear_cross_entropy_bwd(
            torch.ones((), device=device), a, wl, None, lce_target, None, lce_stats, *lce
        ),
        "adam_step_": lambda: OPS.adam_step_(
            [p],
            [torch.ones_like(p)],
            [torch.zeros_like(p)],
            [torch.zeros_like(p)],
            [],
            [torch.zeros(1, device=device)],
            0.1,
            None,
            0.9,
            0.999,
            0.0,
            1e-8,
            False,
            False,
            False,
            None,
            None,
        ),  # fmt: skip
    }


def _registered_ops() -> set[str]:
    return {
        name.split("::", 1)[1].split(".", 1)[0]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("fastops_triton::")
    }


@pytest.mark.parametrize("device", DEVICES)
def test_every_launch_runs_inside_the_tensors_device(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastops.triton import _register

    spy = _GuardSpy()
    monkeypatch.setattr(_register, "device_guard", spy.guard)
    for module in MODULES.values():
        monkeypatch.setattr(module, "wrap_triton", spy.wrap_triton(module.wrap_triton))
    calls = _every_op_call(device)
    assert set(calls) == _registered_ops(), "a fastops_triton op without a device-guard check"
    expected = torch.empty(0, device=device).device  # cuda -> cuda:<current>
    for op, call in calls.items():
        spy.launches.clear()
        call()
        assert spy.launches, f"{op}: no kernel launch seen"
        for kernel, dev in spy.launches:
            assert dev == expected, f"{op}: {kernel} launched inside device guard {dev}, expected {expected}"
        assert not spy.active


def test_device_guard_is_a_no_op_on_cpu_and_sets_the_cuda_device() -> None:
    from fastops.triton._register import device_guard

    assert isinstance(device_guard(torch.zeros(1)), contextlib.nullcontext)
    assert isinstance(device_guard(None), contextlib.nullcontext)
    if HAS_CUDA:
        last = torch.device("cuda", torch.cuda.device_count() - 1)
        with device_guard(torch.zeros(1, device=last)):
            assert torch.cuda.current_device() == last.index
