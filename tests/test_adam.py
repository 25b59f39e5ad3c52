"""Adam / AdamW step: every backend vs torch.optim.Adam/AdamW(foreach=False) over 50+ steps for every
combination of amsgrad x weight_decay x maximize x lr-as-tensor, every param dtype, GradScaler,
state_dict round trips both ways, opcheck, torch.compile, bad inputs, and wrong implementations
the comparison must reject."""

import copy
import itertools

import pytest
import torch

import fastops
from fastops import reference
from fastops.ops import adam as adam_ops
from fastops.ops import namespace
from fastops.testing import (
    TOLERANCES,
    assert_close_to_reference,
    device_backend_params,
    noncontiguous,
    triton_device_params,
    without_l2_cancellation,
)

ALL = device_backend_params()
KERNELS = device_backend_params(("native", "triton"), ("native", "triton"))
STEPS = 50
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _make_params(device, dtype, small=False):
    """Mixed shapes: a scalar, empty tensors, odd sizes (vector tails), a multi-chunk tensor (more
    than the native kernel's 16k-element chunk), a transposed (dense, strided) param, a non-dense
    strided view, and one that never gets a grad. ``small`` (the torch composition, slow per tensor)
    drops the second empty tensor and the multi-chunk one. The Triton backend gets them all: its
    tensors under PACK_BELOW elements share one launch, the multi-chunk one has its own."""
    shapes = [(7, 13), (), (0,), (33,)] if small else [(7, 13), (), (0,), (0, 3), (33,), (16384 + 1001,)]
    ps = [torch.randn(s, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes]
    ps.append(torch.randn(9, 5, dtype=torch.float64).to(device=device, dtype=dtype).t())  # transposed
    ps.append(noncontiguous(torch.randn(6, 4, dtype=torch.float64).to(device=device, dtype=dtype)))
    ps.append(torch.randn(4, dtype=torch.float64).to(device=device, dtype=dtype))  # grad stays None
    return [p.detach().requires_grad_() for p in ps]


def _clone_params(ps, dtype=None):
    out = []
    for p in ps:
        q = p.detach().clone() if dtype is None else p.detach().to(dtype)
        if not p.is_contiguous() and q.is_contiguous() and p.dim() == 2 and p.stride(0) == 1:
            q = q.t().contiguous().t()  # keep the transposed layout
        out.append(q.requires_grad_())
    return out


def _set_grads(grad_lists, step, l2=0.0):
    """The same fresh gradient (scale varying by step, so bias correction and v matter) for every copy.
    ``l2``: Adam's L2 weight decay; the first step's gradient then avoids cancelling it (see
    fastops.testing.without_l2_cancellation: there the step amplifies rounding by up to 1/eps)."""
    template = grad_lists[0]
    gs = [
        None if i == len(template) - 1 else torch.randn_like(p, dtype=torch.float64) * (1 + step % 3)
        for i, p in enumerate(template)
    ]
    if step == 0 and l2:
        gs = [
            g if g is None else without_l2_cancellation(g, p, l2, lambda n: torch.randn(n, dtype=torch.float64))
            for g, p in zip(gs, template)
        ]
    for ps in grad_lists:
        for p, g in zip(ps, gs):
            p.grad = None if g is None else g.to(p.dtype)


def _optimizers(cls_name, kw, ps, backend, lr_tensor):
    fast_cls = getattr(fastops.optim, cls_name)
    torch_cls = getattr(torch.optim, cls_name)
    lr = 3e-2
    fast = fast_cls(ps[0], lr=torch.tensor(lr) if lr_tensor else lr, backend=backend, **kw)
    ref = torch_cls(ps[1], lr=torch.tensor(lr) if lr_tensor else lr, foreach=False, **kw)
    return fast, ref


def _flat(ts):
    return torch.cat([t.detach().reshape(-1) for t in ts])


def _compare(fast, ref, ps_fast, ps_ref, what, torch_same=None):
    if torch_same is not None:
        # Low precision: the 2x-torch rule over the whole parameter list (a max over one 1-element
        # tensor is too noisy a statistic to bound by another), and for each state tensor kind.
        assert_close_to_reference(_flat(ps_fast), _flat(ps_ref), torch_same_dtype=_flat(torch_same), what=what)
        return
    for i, (a, e) in enumerate(zip(ps_fast, ps_ref)):
        assert_close_to_reference(a, e, what=f"{what} param {i}")
        sa, se = fast.state.get(a, {}), ref.state.get(e, {})
        assert sa.keys() == se.keys(), f"{what}: state keys {sa.keys()} vs {se.keys()}"
        for k in sa:
            if k == "step":
                assert sa[k].dtype == se[k].dtype == torch.float32 and float(sa[k]) == float(se[k])
            else:
                assert_close_to_reference(sa[k], se[k], what=f"{what} {k} {i}")


def _run_against_torch(backend, device, dtype, cls_name, amsgrad, wd, maximize, lr_tensor, steps=STEPS):
    kw = dict(weight_decay=wd, amsgrad=amsgrad, maximize=maximize, betas=(0.8, 0.99), eps=1e-6)
    ps = _make_params(device, dtype, small=backend == "torch")
    if dtype in LOW_PRECISION:
        # Low precision: both ours and torch's same-dtype run are measured against torch in float64.
        lists = [ps, _clone_params(ps, torch.float64), _clone_params(ps)]
        fast, ref = _optimizers(cls_name, kw, lists[:2], backend, lr_tensor)
        same = getattr(torch.optim, cls_name)(lists[2], lr=3e-2, foreach=False, **kw)
    else:
        lists = [ps, _clone_params(ps)]
        fast, ref = _optimizers(cls_name, kw, lists, backend, lr_tensor)
        same = None
    l2 = wd if cls_name == "Adam" else 0.0
    for s in range(steps):
        _set_grads(lists, s, l2)
        fast.step()
        ref.step()
        if same is not None:
            same.step()
    what = f"{backend} {cls_name} {dtype} amsgrad={amsgrad} wd={wd} maximize={maximize} lr_tensor={lr_tensor}"
    _compare(fast, ref, lists[0], lists[1], what, torch_same=None if same is None else lists[2])
    assert lists[0][-1].grad is None and not fast.state.get(lists[0][-1]), "a param without grad was touched"


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("cls_name", ["Adam", "AdamW"])
def test_matches_torch_every_combination(device, backend, cls_name):
    for amsgrad, wd, maximize, lr_tensor in itertools.product([False, True], [0.0, 0.1], [False, True], [False, True]):
        _run_against_torch(backend, device, torch.float32, cls_name, amsgrad, wd, maximize, lr_tensor)


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_every_param_dtype(device, backend, dtype):
    for cls_name, amsgrad in (("Adam", True), ("AdamW", False)):
        _run_against_torch(backend, device, dtype, cls_name, amsgrad, 0.1, False, False)


@pytest.mark.parametrize("device,backend", KERNELS)
def test_maximize_on_the_negated_gradient_is_bit_identical(device, backend):
    """Stepping with maximize=True on -grad is the same arithmetic as maximize=False on grad (negation
    is exact). The native kernel takes the first through its runtime-switch sweep and the second through
    its compile-time fast path: equal bits in every dtype and weight-decay form, vector tails included,
    so the fast path computes exactly what the general one does."""
    dtypes = [torch.float32, torch.float64] + ([torch.bfloat16, torch.float16] if device == "cpu" else [])
    for dtype, (cls_name, wd) in itertools.product(dtypes, (("Adam", 0.0), ("Adam", 0.1), ("AdamW", 0.1))):
        cls = getattr(fastops.optim, cls_name)
        base = [torch.randn(s, device=device).to(dtype) for s in ((1000 + 7,), (5, 3))]
        runs = []
        for maximize in (False, True):
            ps = [p.clone().requires_grad_() for p in base]
            opt = cls(ps, lr=1e-2, weight_decay=wd, maximize=maximize, backend=backend)
            for k in range(3):
                for p, b in zip(ps, base):
                    g = torch.sin(b.float() * (k + 1)).to(dtype)
                    p.grad = -g if maximize else g
                opt.step()
            runs.append([p.detach() for p in ps])
        for a, b in zip(*runs):
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=f"{dtype} {cls_name} wd={wd}")


@pytest.mark.parametrize("device,backend", KERNELS)
def test_empty_params_with_stride_zero_state(device, backend):
    # Regression (property fuzz, seed of the 12-06 CI run): an empty parameter whose state came out
    # of an elementwise op has strides (0, 1, 0); it has no elements that could share memory, so
    # every backend steps it (the Triton path's Python contract refused it as overlapping).
    p = torch.empty((2, 0, 1), device=device)
    state = [torch.empty_like(p) * 2 for _ in range(3)]  # exp_avg, exp_avg_sq, max_exp_avg_sq
    assert all(t.stride() == (0, 1, 0) for t in state)
    steps = [torch.tensor(1.0, device=device)]
    namespace(backend, "adam").adam_step_([p], [p * 2], [state[0]], [state[1]], [state[2]], steps, **_kwargs())
    assert steps[0].item() == 2.0 and p.shape == (2, 0, 1)


@pytest.mark.triton
@pytest.mark.parametrize("device", triton_device_params())
def test_triton_packed_small_tensors_match_one_launch_each(device):
    """The Triton launcher steps tensors under PACK_BELOW elements together (one concatenated launch,
    each element's step-dependent scalars gathered by its tensor's row). Against each tensor stepped in
    a call of its own (one tensor: never packed), bit for bit: different step counts per tensor (a
    wrong row would take another tensor's bias correction), a transposed and a strided state, a 0-d
    parameter, amsgrad, a tensor at PACK_BELOW (not packed) in the same list, every dtype."""
    from fastops.triton import adam as TA  # noqa: PLC0415  (registers the op; the mark's tests have it)

    ns = namespace("triton", "adam")
    for dtype, amsgrad in itertools.product(
        [torch.float32, torch.float64, torch.bfloat16, torch.float16], [True, False]
    ):
        shapes = [(5, 3), (), (33,), (TA.PACK_BELOW,), (9, 4), (7,)]
        base = [torch.randn(sh, dtype=torch.float64).to(device=device, dtype=dtype) for sh in shapes]
        runs = []
        for together in (True, False):
            ps = [b.clone() for b in base]
            ps[4] = base[4].t().contiguous().t()  # transposed, dense
            ms = [torch.zeros_like(p) for p in ps]
            vs = [torch.zeros_like(p) for p in ps]
            vms = [torch.zeros_like(p) for p in ps] if amsgrad else []
            vs[5] = noncontiguous(vs[5])
            steps = [torch.tensor(float(3 * k), device=device) for k in range(len(ps))]
            for it in range(3):
                gs = [torch.sin(b.float() * (it + 1) + k).to(dtype) for k, b in enumerate(base)]
                if together:
                    ns.adam_step_(ps, gs, ms, vs, vms, steps, **_kwargs(amsgrad=amsgrad))
                else:
                    for k in range(len(ps)):
                        one = [[t[k]] for t in (ps, gs, ms, vs)] + [[vms[k]] if amsgrad else [], [steps[k]]]
                        ns.adam_step_(*one, **_kwargs(amsgrad=amsgrad))
            runs.append((ps, ms, vs, vms, steps))
        for name, a_list, b_list in zip(("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"), *runs):
            for k, (a, b) in enumerate(zip(a_list, b_list)):
                torch.testing.assert_close(a, b, atol=0, rtol=0, msg=f"{dtype} amsgrad={amsgrad} {name}[{k}]")


@pytest.mark.triton
@pytest.mark.parametrize("device", triton_device_params())
def test_triton_entries_sharing_memory_step_in_order(device):
    """A list naming one tensor twice (its states too), or two views of one storage: the Triton launcher
    does not pack those entries (packed, both would read the old values and one step would be lost) but
    steps them one launch at a time, in order, as the native op does: the same bits as separate calls."""
    ns = namespace("triton", "adam")
    base, q_base, r_base = (torch.randn(sh, device=device) for sh in ((4, 6), (7,), (3, 2)))
    for case in ("same tensor", "views of one storage"):
        runs = []
        for together in (True, False):
            p, m, v = base.clone(), torch.zeros_like(base), torch.zeros_like(base)
            q, r = q_base.clone(), r_base.clone()  # unshared entries: these two are packed
            qm, qv, rm, rv = (torch.zeros_like(t) for t in (q, q, r, r))
            if case == "same tensor":
                entries = [(p, m, v), (q, qm, qv), (p, m, v), (r, rm, rv)]
            else:
                entries = [(p[:2], m[:2], v[:2]), (q, qm, qv), (p[2:], m[2:], v[2:]), (r, rm, rv)]
            steps = [torch.tensor(float(k), device=device) for k in range(4)]
            grads = [torch.full_like(e[0], 0.5 + k) for k, e in enumerate(entries)]
            if together:
                ps, ms, vs = (list(t) for t in zip(*entries))
                ns.adam_step_(ps, grads, ms, vs, [], steps, **_kwargs(amsgrad=False))
            else:
                for k, (pk, mk, vk) in enumerate(entries):
                    ns.adam_step_([pk], [grads[k]], [mk], [vk], [], [steps[k]], **_kwargs(amsgrad=False))
            runs.append((p, m, v, q, qm, qv, r, rm, rv))
        for name, a, b in zip(("p", "m", "v", "q", "q_m", "q_v", "r", "r_m", "r_v"), *runs):
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=f"{case}: {name}")


def _fresh_step_args(n=3, amsgrad=True, device="cpu", dtype=torch.float32):
    ps = [torch.randn(s, device=device, dtype=dtype) for s in [(5, 3), (17,), ()]][:n]
    gs = [torch.randn_like(p) for p in ps]
    ms = [torch.randn_like(p) for p in ps]
    vs = [torch.rand_like(p) for p in ps]
    vms = [v + torch.rand_like(v) for v in vs] if amsgrad else []
    steps = [torch.tensor(float(k + 1), device=device) for k in range(n)]
    return ps, gs, ms, vs, vms, steps


def _kwargs(**over):
    kw = dict(
        lr=1e-2,
        lr_tensor=None,
        beta1=0.9,
        beta2=0.999,
        weight_decay=0.1,
        eps=1e-8,
        amsgrad=True,
        maximize=False,
        decoupled_weight_decay=False,
        grad_scale=None,
        found_inf=None,
    )
    kw.update(over)
    return kw


@pytest.mark.parametrize("device,backend", KERNELS)
def test_raw_op_matches_reference_with_grad_scale_and_found_inf(device, backend):
    op = namespace(backend, "adam").adam_step_
    for decoupled, maximize in itertools.product([False, True], [False, True]):
        args = _fresh_step_args(device=device)
        expect = copy.deepcopy(args)
        scale = torch.tensor(1024.0, device=device)
        kw = _kwargs(
            decoupled_weight_decay=decoupled,
            maximize=maximize,
            grad_scale=scale,
            found_inf=torch.zeros((), device=device),
            lr_tensor=torch.tensor(3e-3, device=device),
        )
        scaled = list(args)
        scaled[1] = [g * 1024.0 for g in args[1]]
        op(*scaled, **kw)
        reference.adam_step_(*expect, **_kwargs(decoupled_weight_decay=decoupled, maximize=maximize, lr=3e-3))
        for name, got, want in zip(("params", "grads", "exp_avgs", "exp_avg_sqs", "max", "steps"), scaled, expect):
            if name == "grads":
                continue
            for a, e in zip(got, want):
                rtol, atol = TOLERANCES[torch.float32]
                torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=f"{name} decoupled={decoupled}")
        # An overflow step writes nothing at all, step counts included.
        before = copy.deepcopy(scaled)
        op(*scaled, **dict(kw, found_inf=torch.ones((), device=device)))
        for got, want in zip(scaled, before):
            for a, e in zip(got, want):
                assert torch.equal(a, e), "found_inf=1 must leave params and state untouched"


@pytest.mark.parametrize("device,backend", ALL)
def test_grad_scaler(device, backend):
    def model_and_opt(opt_cls, **kw):
        torch.manual_seed(1234)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(device)
        return model, opt_cls(model.parameters(), lr=1e-2, **kw)

    ours, opt = model_and_opt(fastops.optim.AdamW, backend=backend)
    theirs, topt = model_and_opt(torch.optim.AdamW, foreach=False)
    assert opt._step_supports_amp_scaling
    scalers = [torch.amp.GradScaler(device, init_scale=2.0**10), torch.amp.GradScaler(device, init_scale=2.0**10)]
    x, y = torch.randn(16, 6, device=device), torch.randn(16, 3, device=device)
    for step in range(12):
        snapshot = copy.deepcopy((list(ours.parameters()), opt.state_dict()))
        for model, o, scaler in ((ours, opt, scalers[0]), (theirs, topt, scalers[1])):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            if step in (3, 7):
                next(model.parameters()).grad[0, 0] = float("inf")
            scaler.step(o)
            scaler.update()
        if step in (3, 7):
            for p, q in zip(ours.parameters(), snapshot[0]):
                assert torch.equal(p, q), "an overflow step changed a parameter"
            for k, st in opt.state_dict()["state"].items():
                for name, t in st.items():
                    assert torch.equal(t, snapshot[1]["state"][k][name]), f"an overflow step changed {name}"
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert_close_to_reference(p, q.detach(), what=f"GradScaler step {step}")
    assert scalers[0].get_scale() == scalers[1].get_scale() < 2.0**10


@pytest.mark.parametrize("device,backend", device_backend_params(("native", "torch"), ("native", "triton")))
def test_state_dict_round_trips_both_ways(device, backend):
    for ours_first in (True, False):
        for cls_name in ("Adam", "AdamW"):
            kw = dict(lr=1e-2, amsgrad=True, weight_decay=0.05)
            ps = _make_params(device, torch.float32)
            lists = [ps, _clone_params(ps)]
            fast = getattr(fastops.optim, cls_name)(lists[0], backend=backend, **kw)
            ref = getattr(torch.optim, cls_name)(lists[1], foreach=False, **kw)
            first, second = (fast, ref) if ours_first else (ref, fast)
            first_ps = lists[0] if ours_first else lists[1]
            for s in range(5):
                _set_grads(lists, s, kw["weight_decay"] if cls_name == "Adam" else 0.0)
                first.step()
            # Continue from first's checkpoint in both optimizers: second loads it.
            for p, q in zip(lists[1] if ours_first else lists[0], first_ps):
                p.data.copy_(q.detach())
            second.load_state_dict(copy.deepcopy(first.state_dict()))
            assert second.state_dict()["param_groups"][0]["lr"] == 1e-2
            for s in range(5, 12):
                _set_grads(lists, s)
                fast.step()
                ref.step()
            _compare(fast, ref, lists[0], lists[1], f"{cls_name} checkpoint from {'ours' if ours_first else 'torch'}")


@pytest.mark.parametrize("device,backend", ALL)
def test_param_groups_closure_zero_grad(device, backend):
    w = torch.randn(4, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    fast = fastops.optim.Adam([{"params": [w]}], lr=1e-2, backend=backend)
    fast.add_param_group({"params": [b], "lr": 1e-1, "weight_decay": 0.2})
    ref = torch.optim.Adam([{"params": [w2]}], lr=1e-2, foreach=False)
    ref.add_param_group({"params": [b2], "lr": 1e-1, "weight_decay": 0.2})
    x = torch.randn(5, 3, device=device)
    for _ in range(5):
        for o, (ww, bb) in ((fast, (w, b)), (ref, (w2, b2))):

            def closure(ww=ww, bb=bb, o=o):
                o.zero_grad()
                loss = (x @ ww.t() + bb).square().sum()
                loss.backward()
                return loss

            loss = o.step(closure)
            assert loss is not None
    assert w.grad is not None
    fast.zero_grad()
    assert w.grad is None
    assert_close_to_reference(w, w2.detach(), what="group 0")
    assert_close_to_reference(b, b2.detach(), what="group 1")


@pytest.mark.parametrize("device,backend", KERNELS)
def test_torch_compile_fullgraph(device, backend):
    op = namespace(backend, "adam").adam_step_

    def step(ps, gs, ms, vs, vms, steps, lr):
        op(ps, gs, ms, vs, vms, steps, **_kwargs(lr_tensor=lr))

    args = _fresh_step_args(device=device)
    expect = copy.deepcopy(args)
    lr = torch.tensor(1e-2, device=device)
    torch.compile(step, fullgraph=True, backend="aot_eager")(*args, lr)
    reference.adam_step_(*expect, **_kwargs())
    for got, want in zip(args, expect):
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-6)


BAD_CONSTRUCTOR = [
    (dict(lr=-1e-3), ValueError, "Invalid learning rate"),
    (dict(eps=-1.0), ValueError, "Invalid epsilon"),
    (dict(betas=(1.0, 0.9)), ValueError, "beta parameter at index 0"),
    (dict(betas=(0.9, -0.1)), ValueError, "beta parameter at index 1"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(lr=torch.tensor([1e-3, 2e-3])), ValueError, "1-element"),
]


@pytest.mark.parametrize("cls_name", ["Adam", "AdamW"])
@pytest.mark.parametrize("kw,exc,match", BAD_CONSTRUCTOR, ids=[str(i) for i in range(len(BAD_CONSTRUCTOR))])
def test_bad_hyperparameters_raise_torch_errors(cls_name, kw, exc, match):
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(exc, match=match):
        getattr(fastops.optim, cls_name)([p], **kw)
    with pytest.raises(exc, match=match):
        getattr(torch.optim, cls_name)([p], **kw)


@pytest.mark.parametrize("device,backend", ALL)
def test_sparse_gradients_rejected(device, backend):
    p = torch.randn(5, 3, device=device, requires_grad=True)
    p.grad = torch.randn(5, 3, device=device).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        fastops.optim.Adam([p], backend=backend).step()


RAW_BAD = [
    ("lengths", lambda a, kw: ((a[0], a[1][:2], *a[2:]), kw), "same length"),
    ("amsgrad list", lambda a, kw: ((*a[:4], a[4][:1], a[5]), kw), "max_exp_avg_sqs must have 3"),
    ("shape", lambda a, kw: ((a[0], [a[1][0].t().contiguous(), *a[1][1:]], *a[2:]), kw), "shape"),
    ("dtype", lambda a, kw: ((a[0], a[1], [a[2][0].double(), *a[2][1:]], *a[3:]), kw), "dtype"),
    ("step dtype", lambda a, kw: ((*a[:5], [a[5][0].double(), *a[5][1:]]), kw), "float32"),
    ("negative lr", lambda a, kw: (a, dict(kw, lr=-1.0)), "learning rate"),
    ("beta2", lambda a, kw: (a, dict(kw, beta2=1.0)), "index 1"),
    ("negative eps", lambda a, kw: (a, dict(kw, eps=-1e-8)), "epsilon"),
]


@pytest.mark.parametrize("name,mutate,match", RAW_BAD, ids=[c[0] for c in RAW_BAD])
@pytest.mark.parametrize("backend", ["native", "torch", "triton"])
def test_bad_input_raises_clear_error(name, mutate, match, backend):
    args, kw = mutate(_fresh_step_args(), _kwargs())
    kw.pop("lr_tensor")
    if backend != "torch":
        with pytest.raises((ValueError, TypeError), match=match):
            namespace(backend, "adam").adam_step_(*args, lr_tensor=None, **kw)
    # The dispatcher behind the optimizers checks the same things for every backend.
    with pytest.raises((ValueError, TypeError), match=match):
        adam_ops.adam_step_(*args, backend=backend, **kw)


def test_raw_op_rejects_mixed_param_dtypes():
    # The dispatcher groups parameters by dtype; one raw call takes one dtype.
    args = list(_fresh_step_args())
    args[0] = [args[0][0], args[0][1].double(), args[0][2]]
    with pytest.raises(TypeError, match="one dtype"):
        torch.ops.fastops.adam_step_(*args, **_kwargs())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_state_on_another_device_than_its_param(backend):
    # (On the CPU-only machine "meta" stands in for a second device.)
    args = list(_fresh_step_args())
    args[2] = [args[2][0].to("meta"), *args[2][1:]]
    kw = _kwargs()
    kw.pop("lr_tensor")
    with pytest.raises(ValueError, match="exp_avgs\\[0\\] is on meta but params are on cpu"):
        adam_ops.adam_step_(*args, backend=backend, **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_params_on_different_devices_in_one_call(backend):
    args = list(_fresh_step_args(device="cuda"))
    args[0] = [args[0][0], args[0][1].cpu(), args[0][2]]
    with pytest.raises((ValueError, RuntimeError), match="device|is on"):
        namespace(backend, "adam").adam_step_(*args, **_kwargs())


def test_backend_resolution_and_fallback(monkeypatch):
    p = torch.randn(3, requires_grad=True)
    p.grad = torch.randn(3)
    with pytest.raises(ValueError, match="backend must be one of"):
        fastops.optim.Adam([p], backend="cuda-magic").step()
    monkeypatch.setenv("FASTOPS_BACKEND", "torch")
    q = p.detach().clone().requires_grad_()
    q.grad = p.grad.clone()
    fastops.optim.Adam([p]).step()
    torch.optim.Adam([q], foreach=False).step()
    assert_close_to_reference(p, q.detach(), what="FASTOPS_BACKEND=torch")


# ---- the comparison must reject wrong implementations ---------------------------------------------


_REAL_STEP = reference.adam_step_


def _wrong_step_off_by_one(*args, **kw):
    for s in args[5]:
        s += 1  # bias correction from the next step's count
    _REAL_STEP(*args, **kw)
    for s in args[5]:
        s -= 1


def _wrong_coupled_decay(*args, **kw):
    _REAL_STEP(*args, **dict(kw, decoupled_weight_decay=not kw["decoupled_weight_decay"]))


def _wrong_ignores_maximize(*args, **kw):
    _REAL_STEP(*args, **dict(kw, maximize=False))


def _wrong_ignores_amsgrad_max(*args, **kw):
    for vm, v in zip(args[4], args[3]):
        vm.copy_(v)  # forgets the running maximum
    _REAL_STEP(*args, **kw)


def _wrong_eps_scaled(*args, **kw):
    _REAL_STEP(*args, **dict(kw, eps=kw["eps"] * 100))


def _wrong_one_ulp_per_step(*args, **kw):
    _REAL_STEP(*args, **kw)
    for p in args[0]:
        p.mul_(1 + 4e-6)  # a small systematic error that grows over the steps


@pytest.mark.parametrize(
    "wrong",
    [
        _wrong_step_off_by_one,
        _wrong_coupled_decay,
        _wrong_ignores_maximize,
        _wrong_ignores_amsgrad_max,
        _wrong_eps_scaled,
        _wrong_one_ulp_per_step,
    ],
)
def test_checker_rejects_wrong_implementations(wrong, monkeypatch):
    # The torch backend runs fastops.reference.adam_step_: swap in the wrong step and expect the
    # comparison with torch.optim to fail.
    monkeypatch.setattr(reference, "adam_step_", wrong)
    with pytest.raises(AssertionError):
        for cls_name in ("Adam", "AdamW"):
            _run_against_torch("torch", "cpu", torch.float32, cls_name, True, 0.1, True, False, steps=20)


def test_checker_accepts_the_reference():
    _run_against_torch("torch", "cpu", torch.float32, "Adam", True, 0.1, True, False, steps=20)


@pytest.mark.parametrize("device,backend", device_backend_params(("native",), ("native", "triton")))
def test_grad_scaler_with_unscale_and_clipping(device, backend):
    # scaler.unscale_(opt) before step (gradient clipping): the scaler then passes found_inf only.
    torch.manual_seed(7)
    models = [torch.nn.Linear(5, 4).to(device) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [
        fastops.optim.Adam(models[0].parameters(), lr=1e-2, backend=backend),
        torch.optim.Adam(models[1].parameters(), lr=1e-2, foreach=False),
    ]
    scalers = [torch.amp.GradScaler(device, init_scale=256.0) for _ in range(2)]
    x = torch.randn(8, 5, device=device)
    for step in range(6):
        for model, opt, scaler in zip(models, opts, scalers):
            opt.zero_grad()
            scaler.scale(model(x).square().mean()).backward()
            if step == 2:
                model.weight.grad[0, 0] = float("nan")
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            assert_close_to_reference(p, q.detach(), what=f"unscale_+clip step {step}")
