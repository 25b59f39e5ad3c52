"""fastops.patch_causal_lm: a Hugging Face causal LM's training loss without the (N, V) logits.

A transformers ``*ForCausalLM`` (or ``GPT2LMHeadModel``-style) model computes its training loss as
``self.loss_function(self.lm_head(hidden), labels)``: the logits of every token, ``(batch, seq,
vocab)`` and their float32 upcast, exist in full (for a 128k vocabulary at 8k tokens: 4 GiB each in
float32). That loss is not a module, so :func:`fastops.swap` cannot reach it. The patch replaces
``forward`` on the *instance* with one that runs the model's own decoder and hands the last hidden
state and ``lm_head``'s weight straight to :func:`fastops.functional.linear_cross_entropy`, which
forms the logits a chunk of rows at a time.

What the patched forward reproduces is read off the model's own ``forward`` source (its syntax
tree), never guessed: the decoder module it calls and with which arguments, how it takes the
hidden state, every statement between the decoder and the loss, and the output it builds. A model
whose ``forward`` does anything the fused loss does not reproduce (Cohere's ``logit_scale``,
Granite's ``logits_scaling``, a z-loss, an unknown decorator) is refused at patch time with the
statement named, rather than trained on a wrong loss. Gemma-2's ``final_logit_softcapping`` block
maps to ``softcap=``. A mixture of experts whose forward adds the load-balancing loss only under
``output_router_logits`` (Mixtral, Qwen-MoE, ...) is fused while that flag is off; with it on, the
original forward runs, with a warning.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Decorators a ForCausalLM.forward may carry that the patched forward reproduces: documentation only,
# the return_dict -> tuple conversion (can_return_tuple), the renaming of deprecated keyword
# arguments (deprecate_kwarg: a call using the old name runs the original forward).
_KNOWN_DECORATORS = {
    "auto_docstring",
    "can_return_tuple",
    "deprecate_kwarg",
    "add_start_docstrings_to_model_forward",
    "replace_return_docstrings",
    "add_code_sample_docstrings",
}
# The loss's keyword arguments that HF's ForCausalLMLoss reads from the forward's **kwargs.
_LOSS_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")
# transformers before slice_logits_to_keep (5.17 and earlier: 309 of its models) slices the hidden
# state inline: this statement, then `self.lm_head(hidden_states[:, slice_indices, :])`. The fused
# path runs only when logits_to_keep is the int 0, where slice(-0, None) keeps every position.
_SLICE_INDICES = "slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep"
_TO_HEAD_DTYPE = (".to(self.lm_head.weight.dtype)", ".to(dtype=self.lm_head.weight.dtype)")
_SOFTCAP_BLOCK = (
    "if self.config.final_logit_softcapping is not None:\n"
    "    logits = logits / self.config.final_logit_softcapping\n"
    "    logits = torch.tanh(logits)\n"
    "    logits = logits * self.config.final_logit_softcapping"
)


class UnsupportedModelError(TypeError):
    """The model's forward does something to the logits or the loss that the fused loss would not do."""


@dataclass
class _Plan:
    """What the model's forward does, as far as the fused path needs to reproduce it."""

    original: Callable[..., Any]  # the class's forward (decorated), run for everything not fused
    signature: inspect.Signature  # the undecorated forward's, without self
    varkw: str | None  # name of its **kwargs parameter
    decoder: str  # attribute name of the decoder module the forward calls
    decoder_args: list[str]  # forward parameters passed positionally, in order
    decoder_kwargs: dict[str, str]  # decoder keyword -> forward parameter
    decoder_splat: bool  # the forward passes **kwargs on to the decoder
    defaults: list[tuple[str, str]]  # `x = x if x is not None else self.config.<attr>` preamble lines
    hidden_index: bool  # hidden = outputs[0] (else outputs.last_hidden_state)
    hidden_to_head_dtype: bool  # lm_head(hidden.to(self.lm_head.weight.dtype))
    softcap: bool  # the Gemma-2 final_logit_softcapping block is present
    can_return_tuple: bool
    deprecated: list[str]  # keyword names deprecate_kwarg renames
    output_cls: type
    output_fields: dict[str, tuple[str, str | int]]  # field -> ("attr", name) | ("index", i) on the decoder output
    aux_flag: str | None = None  # MoE: `if output_router_logits:` adds an auxiliary loss (then: original forward)
    label_param: str = "labels"
    keep_param: str | None = "logits_to_keep"
    notes: list[str] = field(default_factory=list)


def _refuse(model: nn.Module, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"fastops.patch_causal_lm: {type(model).__name__} is not supported: {why}")


def _name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def _self_attr_call(node: ast.expr | None) -> str | None:
    """'model' for `self.model(...)`, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if isinstance(node.func.value, ast.Name) and node.func.value.id == "self":
            return node.func.attr
    return None


def _decorator_name(node: ast.expr) -> str:
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", ast.unparse(node))


def _plain_loss_call(stmt: ast.stmt, varkw: str | None) -> bool:
    """`loss = self.loss_function(logits, labels[, vocab size][, **kwargs])`, keywords allowed for
    the same, plus pad_token_id (which ForCausalLMLoss ignores): nothing the fused loss would miss."""
    call = stmt.value if isinstance(stmt, ast.Assign) else None
    if not isinstance(call, ast.Call) or len(call.args) > 3:
        return False
    given = dict(zip(("logits", "labels", "vocab_size"), call.args))
    for kw in call.keywords:
        if kw.arg is None:
            if varkw is None or _name(kw.value) != varkw:
                return False
        elif kw.arg in given or kw.arg not in ("logits", "labels", "vocab_size", "pad_token_id"):
            return False
        else:
            given[kw.arg] = kw.value
    return _name(given.get("logits")) in ("logits", "lm_logits") and _name(given.get("labels")) == "labels"


def _plan(model: nn.Module) -> _Plan:
    """Read ``type(model).forward`` and check that the fused path computes what it computes."""
    cls = type(model)
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        raise _refuse(model, f"its lm_head is {type(head).__name__}, not an nn.Linear")
    try:
        from transformers.loss.loss_utils import ForCausalLMLoss
    except ImportError as e:  # pragma: no cover - patching a transformers model implies transformers
        raise _refuse(model, "transformers.loss.loss_utils.ForCausalLMLoss is not importable") from e
    if getattr(model, "loss_function", None) is not ForCausalLMLoss:
        raise _refuse(model, f"its loss_function is {model.loss_function!r}, not transformers' ForCausalLMLoss")
    if "forward" in vars(model):
        raise _refuse(model, "model.forward is already replaced on this instance; patch the model before wrapping it")

    original = cls.forward
    inner = inspect.unwrap(original)
    try:
        source = textwrap.dedent(inspect.getsource(inner))
    except (OSError, TypeError) as e:
        raise _refuse(model, "the source of its forward is not available to check") from e
    fn = ast.parse(source).body[0]
    if not isinstance(fn, ast.FunctionDef):
        raise _refuse(model, "its forward is not a plain function")
    decorators = [_decorator_name(d) for d in fn.decorator_list]
    unknown = [d for d in decorators if d not in _KNOWN_DECORATORS]
    if unknown:
        raise _refuse(model, f"its forward has decorator(s) {unknown} whose effect the patch does not reproduce")
    deprecated = [
        d.args[0].value
        for d in fn.decorator_list
        if _decorator_name(d) == "deprecate_kwarg" and isinstance(d, ast.Call) and d.args
        if isinstance(d.args[0], ast.Constant) and isinstance(d.args[0].value, str)
    ]

    full_sig = inspect.signature(inner)
    params = list(full_sig.parameters.values())[1:]
    signature = full_sig.replace(parameters=params)
    names = {p.name for p in params}
    varkw = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
    if "labels" not in names:
        raise _refuse(model, "its forward has no `labels` parameter")

    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # docstring

    def bad(stmt: ast.stmt, what: str) -> UnsupportedModelError:
        line = ast.unparse(stmt).splitlines()[0]
        return _refuse(model, f"its forward {what}: `{line}`")

    # 1. Preamble: only `x = x if x is not None else self.config.<attr>` defaults.
    defaults: list[tuple[str, str]] = []
    while body and _self_attr_call(getattr(body[0], "value", None)) is None:
        stmt = body.pop(0)
        m = stmt.value if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        var = _name(stmt.targets[0]) if m is not None else None
        pattern = f"{var} if {var} is not None else self.config."
        text = ast.unparse(m) if m is not None else ""
        if var is None or var not in names or not text.startswith(pattern) or not text[len(pattern) :].isidentifier():
            raise bad(stmt, "runs a statement before its decoder that the patch does not reproduce")
        defaults.append((var, text[len(pattern) :]))

    # 2. The decoder call: `out = self.<decoder>(<forward parameters>...)`.
    if not body or not isinstance(body[0], (ast.Assign, ast.AnnAssign)):
        raise _refuse(model, "its forward does not start by calling a decoder module")
    stmt = body.pop(0)
    target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
    out_name, call = _name(target), stmt.value
    decoder = _self_attr_call(call)
    if out_name is None or decoder is None or not isinstance(getattr(model, decoder, None), nn.Module):
        raise bad(stmt, "does not start by calling a decoder module")
    assert isinstance(call, ast.Call)
    decoder_args = [_name(a) for a in call.args]
    decoder_kwargs: dict[str, str] = {}
    splat = False
    for kw in call.keywords:
        if kw.arg is None:
            if _name(kw.value) != varkw or varkw is None:
                raise bad(stmt, "passes its decoder an argument the patch cannot evaluate")
            splat = True
        elif _name(kw.value) in names:
            decoder_kwargs[kw.arg] = _name(kw.value)
        else:
            raise bad(stmt, f"passes its decoder `{kw.arg}={ast.unparse(kw.value)}`, which the patch cannot evaluate")
    if any(a is None or a not in names for a in decoder_args):
        raise bad(stmt, "passes its decoder a positional argument the patch cannot evaluate")

    # 3. Decoder output -> lm_head, with the loss and nothing else between.
    hidden_index = hidden_to_head = softcap = False
    saw_head = saw_loss = saw_aux = False
    aux_flag: str | None = None
    output_cls: type | None = None
    output_fields: dict[str, tuple[str, str | int]] = {}
    hidden_sources = {f"{out_name}.last_hidden_state": False, f"{out_name}[0]": True}
    head_inputs = ["hidden_states"]
    for stmt in body:
        text = ast.unparse(stmt)
        if not saw_head and text == _SLICE_INDICES and "logits_to_keep" in names:
            head_inputs.append("hidden_states[:, slice_indices, :]")
            continue
        if not saw_head and isinstance(stmt, ast.Assign) and text.startswith("hidden_states = "):
            rhs = text[len("hidden_states = ") :]
            keep = rhs.startswith("slice_logits_to_keep(") and rhs.endswith(", logits_to_keep)")
            src = rhs[len("slice_logits_to_keep(") : -len(", logits_to_keep)")] if keep else rhs
            if src in hidden_sources:
                hidden_index = hidden_sources[src]
                continue
            if keep and src == "hidden_states":
                continue
            raise bad(stmt, "transforms the hidden state before lm_head")
        if not saw_head and isinstance(stmt, ast.Assign) and "self.lm_head(" in text:
            allowed = {
                f"{lhs} = self.lm_head({arg}{cast}){suffix}"
                for lhs in ("logits", "lm_logits")
                for arg in head_inputs
                for cast in ("", *_TO_HEAD_DTYPE)
                for suffix in ("", ".float()", ".contiguous()")
            }
            if text not in allowed:
                raise bad(stmt, "computes the logits in a way the patch does not reproduce")
            hidden_to_head = any(cast in text for cast in _TO_HEAD_DTYPE)
            saw_head = True
            continue
        if saw_head and not saw_loss and text == _SOFTCAP_BLOCK:
            softcap = True
            continue
        if saw_head and text == "loss = None":
            continue
        if saw_head and isinstance(stmt, ast.If) and ast.unparse(stmt.test) == "labels is not None":
            inner_text = ast.unparse(stmt.body[0]) if len(stmt.body) == 1 and not stmt.orelse else ""
            if not inner_text.startswith("loss = self.loss_function(") or not _plain_loss_call(stmt.body[0], varkw):
                raise bad(stmt, "computes its loss in a way the patch does not reproduce")
            saw_loss = True
            continue
        if saw_loss and isinstance(stmt, ast.If) and ast.unparse(stmt.test) == "not return_dict":
            continue  # the tuple form: the patched forward converts with to_tuple()
        if saw_loss and text == "aux_loss = None":
            saw_aux = True
            continue
        if saw_aux and aux_flag is None and isinstance(stmt, ast.If) and _name(stmt.test) in names:
            # A mixture of experts' load-balancing loss, added only when this flag is on: the fused
            # path runs when it is off, and the original forward (logits and all) when it is on.
            aux_flag = _name(stmt.test)
            continue
        if saw_loss and isinstance(stmt, ast.Return) and isinstance(stmt.value, ast.Call):
            ret = stmt.value
            output_cls = inner.__globals__.get(_name(ret.func) or "")
            for kw in ret.keywords:
                value = ast.unparse(kw.value)
                if kw.arg in ("loss", "logits") and value in ("loss", "logits", "lm_logits"):
                    continue
                if kw.arg == "aux_loss" and value == "aux_loss" and aux_flag is not None:
                    continue  # None on the fused path, where the flag is off
                if kw.arg and value.startswith(f"{out_name}.") and value[len(out_name) + 1 :].isidentifier():
                    output_fields[kw.arg] = ("attr", value[len(out_name) + 1 :])
                elif kw.arg and value.startswith(f"{out_name}[") and value.endswith("]"):
                    output_fields[kw.arg] = ("index", int(value[len(out_name) + 1 : -1]))
                else:
                    raise bad(stmt, f"returns `{kw.arg}={value}`, which the patch does not reproduce")
            break
        raise bad(stmt, "runs a statement between its decoder and its output that the patch does not reproduce")
    if not (saw_head and saw_loss) or not isinstance(output_cls, type):
        raise _refuse(model, "its forward does not end in `self.loss_function(lm_head logits)` and a ModelOutput")
    return _Plan(
        original=original,
        signature=signature,
        varkw=varkw,
        decoder=decoder,
        decoder_args=decoder_args,
        decoder_kwargs=decoder_kwargs,
        decoder_splat=splat,
        defaults=defaults,
        hidden_index=hidden_index,
        hidden_to_head_dtype=hidden_to_head,
        softcap=softcap,
        can_return_tuple="can_return_tuple" in decorators,
        deprecated=deprecated,
        output_cls=output_cls,
        output_fields=output_fields,
        aux_flag=aux_flag,
        keep_param="logits_to_keep" if "logits_to_keep" in names else None,
    )


def _is_all(logits_to_keep: object) -> bool:
    """True when ``slice_logits_to_keep`` keeps every position (the int 0)."""
    return isinstance(logits_to_keep, int) and not isinstance(logits_to_keep, bool) and logits_to_keep == 0


class _CausalLMForward:
    """The instance's ``forward`` after :func:`patch_causal_lm` (a callable object, so that
    ``copy.deepcopy(model)`` rebinds it to the copy and ``inspect.signature`` shows the original's)."""

    def __init__(self, model: nn.Module, plan: _Plan, backend: str, chunk_rows: int | None) -> None:
        self.model, self.plan, self.backend, self.chunk_rows = model, plan, backend, chunk_rows
        self.__signature__ = plan.signature
        self.__doc__ = plan.original.__doc__
        self.__name__ = "forward"

    def __repr__(self) -> str:
        return f"<fastops.patch_causal_lm forward of {type(self.model).__name__} (backend={self.backend!r})>"

    def original(self, *args: Any, **kwargs: Any) -> Any:
        """The model class's own forward on this instance."""
        return self.plan.original(self.model, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        plan, model = self.plan, self.model
        if not torch.is_grad_enabled() or any(k in kwargs for k in plan.deprecated):
            return self.original(*args, **kwargs)
        call_kwargs = dict(kwargs)
        return_dict = call_kwargs.pop("return_dict", None) if plan.can_return_tuple else None
        try:
            bound = plan.signature.bind(*args, **call_kwargs)
        except TypeError:
            return self.original(*args, **kwargs)  # let the model's own forward report the mistake
        bound.apply_defaults()
        env = dict(bound.arguments)
        extra: dict[str, Any] = dict(env.pop(plan.varkw, {})) if plan.varkw else {}
        labels = env.get(plan.label_param)
        keep = env.get(plan.keep_param, 0) if plan.keep_param else 0
        from transformers.loss.loss_utils import ForCausalLMLoss

        if labels is None or not _is_all(keep) or model.loss_function is not ForCausalLMLoss:
            return self.original(*args, **kwargs)
        for var, attr in plan.defaults:
            if env.get(var) is None:
                env[var] = getattr(model.config, attr)
        if plan.aux_flag is not None and env.get(plan.aux_flag):
            warnings.warn(
                f"fastops.patch_causal_lm: {plan.aux_flag} is on, so {type(model).__name__} adds its auxiliary "
                "loss: the original forward runs (the full logits are formed)",
                stacklevel=2,
            )
            return self.original(*args, **kwargs)
        if plan.can_return_tuple:
            if return_dict is None:
                return_dict = getattr(model.config, "return_dict", True)
        elif "return_dict" in env:
            return_dict = env["return_dict"] if env["return_dict"] is not None else True
            env["return_dict"] = True  # the decoder's fields are read by name below
        else:
            return_dict = True

        decoder_kwargs = {k: env[v] for k, v in plan.decoder_kwargs.items()}
        if plan.decoder_splat:
            decoder_kwargs.update(extra)
        outputs = getattr(model, plan.decoder)(*(env[a] for a in plan.decoder_args), **decoder_kwargs)
        hidden = outputs[0] if plan.hidden_index else outputs.last_hidden_state
        head = model.lm_head
        if plan.hidden_to_head_dtype:
            hidden = hidden.to(head.weight.dtype)
        loss = causal_lm_loss(
            hidden,
            head.weight,
            labels,
            head.bias,
            num_items_in_batch=extra.get("num_items_in_batch"),
            ignore_index=extra.get("ignore_index", -100),
            shift_labels=extra.get("shift_labels"),
            softcap=getattr(model.config, "final_logit_softcapping", None) if plan.softcap else None,
            chunk_rows=self.chunk_rows,
            backend=self.backend,
        )
        fields = {}
        for name, (kind, key) in plan.output_fields.items():
            if kind == "attr":
                fields[name] = getattr(outputs, key, None)
            else:
                fields[name] = outputs[key] if len(outputs) > key else None
        output = plan.output_cls(loss=loss, logits=None, **fields)
        return output if return_dict else output.to_tuple()


def causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_rows: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss(lm_head(hidden), labels)`` without forming the logits.

    Args:
        hidden: ``(B, T, H)`` the decoder's last hidden state.
        weight: ``(V, H)`` lm_head's weight; ``bias``: ``(V,)`` or None.
        labels: ``(B, T)`` int64 token ids, ``ignore_index`` where no loss is wanted. Position t
            predicts ``labels[:, t + 1]`` (HF's shift: pad with ``ignore_index``, drop the first).
        num_items_in_batch: when given, the loss is the sum over tokens divided by it (HF's
            gradient-accumulation-exact normalisation); else the mean over non-ignored tokens.
        shift_labels: ``(B, T)`` already-shifted targets, used instead of shifting ``labels``.
        softcap: Gemma-2's ``final_logit_softcapping`` (logits -> softcap * tanh(logits / softcap)).

    Returns:
        The scalar loss: float32 for float16 / bfloat16 hidden states (HF upcasts the logits to
        float32; here the logit GEMMs run in the half dtype and the softmax in float32, as under
        autocast), else ``hidden``'s dtype (float64 stays float64, where HF would compute in float32).
    """
    from fastops.functional import linear_cross_entropy

    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    target = shift_labels.to(hidden.device)
    if target.shape != hidden.shape[:-1]:
        raise ValueError(
            f"fastops.patch_causal_lm: labels {tuple(target.shape)} do not match the hidden states' "
            f"{tuple(hidden.shape[:-1])} (batch, sequence)"
        )
    reduction = "sum" if num_items_in_batch is not None else "mean"
    low = hidden.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(hidden.device.type)
    with torch.autocast(hidden.device.type, dtype=hidden.dtype, enabled=low):
        loss = linear_cross_entropy(
            hidden,
            weight,
            target,
            bias,
            ignore_index=ignore_index,
            reduction=reduction,
            softcap=softcap,
            chunk_rows=chunk_rows,
            backend=backend,
        )
    if reduction == "sum":
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def patch_causal_lm(model: nn.Module, *, backend: str = "auto", chunk_rows: int | None = None) -> nn.Module:
    """Make a Hugging Face causal LM compute its training loss with
    :func:`fastops.functional.linear_cross_entropy`, never forming the ``(batch, seq, vocab)`` logits.

    The model is patched in place (its instance ``forward``; the class and every other instance are
    untouched) and returned. A call with ``labels`` while gradients are enabled (a training step,
    e.g. under ``transformers.Trainer``) runs the model's own decoder, then the fused loss on the
    last hidden state and ``lm_head.weight`` / ``lm_head.bias`` (tied to the input embedding or not:
    the gradient reaches every use of the tensor). It returns the model's usual output class
    (``CausalLMOutputWithPast`` etc., or its tuple form under ``return_dict=False``) with ``loss``
    set, the decoder's cache / hidden states / attentions as usual, and ``logits=None``: the point
    is that they never exist. Everything else runs the original forward unchanged: no ``labels``,
    ``torch.no_grad()`` / ``torch.inference_mode()`` (evaluation and ``generate``, which need the
    logits; HF's own loss then), a nonzero ``logits_to_keep``, a deprecated keyword argument, a
    mixture of experts' ``output_router_logits`` on (its auxiliary loss is not fused; a warning says so).

    The loss is HF's ``ForCausalLMLoss``: labels shifted left by one (padded with ``ignore_index``,
    default -100, or ``shift_labels`` when passed), the mean over non-ignored tokens, or the sum
    divided by ``num_items_in_batch`` when passed. Its dtype: float32 for float16 / bfloat16 models
    (HF upcasts the logits), the model's otherwise (a float64 model keeps float64, where HF's upcast
    would compute in float32). Gemma-2's ``final_logit_softcapping`` becomes ``softcap=``.

    Args:
        model: a transformers causal LM with an ``nn.Linear`` ``lm_head`` whose ``loss_function`` is
            transformers' ``ForCausalLMLoss``.
        backend: ``linear_cross_entropy``'s backend (see :func:`fastops.backends`).
        chunk_rows: rows per logits chunk; None chooses from the shapes.

    Returns:
        ``model``. Patching an already patched model only updates ``backend`` and ``chunk_rows``.

    Raises:
        UnsupportedModelError: the model's forward does something the fused loss would not
            reproduce (the message quotes the statement: a logit scale, a MoE auxiliary loss, ...).
    """
    if backend not in ("auto", "native", "triton", "torch"):
        raise ValueError(f"fastops.patch_causal_lm: backend must be auto, native, triton or torch, got {backend!r}")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows <= 0):
        raise ValueError(f"fastops.patch_causal_lm: chunk_rows must be a positive int or None, got {chunk_rows!r}")
    current = vars(model).get("forward")
    if isinstance(current, _CausalLMForward):
        current.backend, current.chunk_rows = backend, chunk_rows
        return model
    plan = _plan(model)
    model.forward = _CausalLMForward(model, plan, backend, chunk_rows)
    return model


def unpatch_causal_lm(model: nn.Module) -> nn.Module:
    """Undo :func:`patch_causal_lm` (the class's forward runs again); a no-op on an unpatched model."""
    if isinstance(vars(model).get("forward"), _CausalLMForward):
        del model.forward
    return model


def is_patched(model: nn.Module) -> bool:
    """Whether :func:`patch_causal_lm` patched ``model``."""
    return isinstance(vars(model).get("forward"), _CausalLMForward)
