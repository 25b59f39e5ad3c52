"""fastops.patch_causal_lm on tiny Hugging Face causal LMs built from configs (no downloads).

The patched model's loss and every parameter gradient are compared with the unpatched model's:
in float64 tightly, against the same model run with HF's ForCausalLMLoss semantics kept in float64
(HF's own loss upcasts to float32, which a float64 model would then lose to); in float32 by the
2x-torch rule (design.md), stock HF in float32 setting the bound. Also: HF's own float32 loss agrees,
AdamW steps track the stock run, inference is untouched, num_items_in_batch, tied embeddings,
Gemma-2's soft-capping, refusals, and fastops.swap's report.
"""

import copy
import inspect
import os

import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"  # tiny models from configs only: nothing may be downloaded
transformers = pytest.importorskip("transformers")
from transformers.loss.loss_utils import fixed_cross_entropy  # noqa: E402

import fastops  # noqa: E402
from fastops.testing import TOLERANCES, assert_close_to_reference  # noqa: E402

V, H, B, T = 101, 32, 3, 9
# llama_inline_slice: Llama with transformers <= 5.17's forward (InlineSliceLlamaForCausalLM below).
KINDS = ("gpt2", "llama", "qwen2", "llama_inline_slice")
BACKENDS = ("torch", "auto")


def tiny(kind: str, **config):
    """A 2-layer causal LM from a config (random weights), deterministic in train mode (no dropout)."""
    common = dict(vocab_size=V, bos_token_id=0, eos_token_id=1, pad_token_id=2, attn_implementation="eager")
    if kind == "gpt2":
        cfg = transformers.GPT2Config(
            n_embd=H, n_layer=2, n_head=4, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
        )
        cls = transformers.GPT2LMHeadModel  # ties lm_head.weight to transformer.wte.weight
    else:
        llama_like = dict(hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        llama_like.update(num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False)
        if kind == "llama":
            cfg, cls = transformers.LlamaConfig(**llama_like), transformers.LlamaForCausalLM
        elif kind == "qwen2":
            cfg, cls = transformers.Qwen2Config(**llama_like), transformers.Qwen2ForCausalLM
        elif kind == "llama_inline_slice":
            cfg, cls = transformers.LlamaConfig(**llama_like), InlineSliceLlamaForCausalLM
        elif kind == "bloom":  # an older forward: a return_dict parameter, its own tuple form
            cfg = transformers.BloomConfig(
                hidden_size=H, n_layer=2, n_head=4, hidden_dropout=0.0, attention_dropout=0.0
            )
            cls = transformers.BloomForCausalLM
        elif kind == "mixtral":
            cfg = transformers.MixtralConfig(**llama_like, num_local_experts=4, num_experts_per_tok=2)
            cfg._experts_implementation = "eager"  # the grouped-GEMM default has no float64
            cls = transformers.MixtralForCausalLM
        elif kind == "gemma2":
            cfg = transformers.Gemma2Config(**llama_like, head_dim=8, final_logit_softcapping=3.0)
            cls = transformers.Gemma2ForCausalLM
        else:
            raise ValueError(kind)
    for k, v in {**common, **config}.items():
        setattr(cfg, k, v)
    return cls(cfg).train()


CausalLMOutputWithPast = transformers.modeling_outputs.CausalLMOutputWithPast


class InlineSliceLlamaForCausalLM(transformers.LlamaForCausalLM):
    """Llama with the forward of transformers before ``slice_logits_to_keep`` (5.17 and earlier, the GPU
    image's): a ``slice_indices`` statement, then ``lm_head`` on the sliced hidden state."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def batch():
    """(input_ids, labels) with ignored positions: a padded tail, a prompt prefix."""
    ids = torch.randint(3, V, (B, T))
    labels = ids.clone()
    labels[0, :4] = -100  # prompt not trained on
    labels[1, -3:] = -100  # padding
    labels[2, 2] = -100
    return ids, labels


def hf_loss_in_own_dtype(
    logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None, **_
):
    """transformers' ForCausalLMLoss minus its float32 upcast: the float64 reference's loss."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    flat = shift_labels.reshape(-1).to(logits.device)
    return fixed_cross_entropy(logits.reshape(-1, vocab_size), flat, num_items_in_batch, ignore_index)


def reference64(model):
    """An unpatched float64 copy of ``model`` whose loss stays in float64."""
    ref = copy.deepcopy(model).double()
    fastops.unpatch_causal_lm(ref)
    ref.loss_function = hf_loss_in_own_dtype
    return ref


def loss_and_grads(model, ids, labels, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_float64_loss_and_every_gradient_match_unpatched(kind, backend):
    stock = tiny(kind).double()
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend)
    ids, labels = batch()

    head_calls = []
    model.lm_head.register_forward_hook(lambda *_: head_calls.append(1))
    out, grads = loss_and_grads(model, ids, labels)
    ref_out, ref_grads = loss_and_grads(ref, ids, labels)
    assert not head_calls, "the patched training forward ran lm_head: the logits were formed"
    assert out.logits is None and out.loss.dtype == torch.float64
    assert type(out) is type(ref_out)
    assert_close_to_reference(out.loss, ref_out.loss, what=f"{kind} loss")
    assert sorted(grads) == sorted(n for n, _ in stock.named_parameters())
    for name, g in grads.items():
        assert_close_to_reference(g, ref_grads[name], what=f"{kind} grad {name}")
    # HF's own loss (its float32 upcast of the float64 logits) agrees to float32 precision: same shift,
    # same ignore_index, same mean.
    hf = stock(input_ids=ids, labels=labels).loss
    rtol, atol = TOLERANCES[torch.float32]
    assert abs(hf.item() - out.loss.item()) <= atol + rtol * abs(out.loss.item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_float32_loss_and_gradients_within_2x_torch(kind, backend):
    stock = tiny(kind)
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend)
    ids, labels = batch()

    out, grads = loss_and_grads(model, ids, labels)
    stock_out, stock_grads = loss_and_grads(stock, ids, labels)
    ref_out, ref_grads = loss_and_grads(ref, ids, labels)
    assert out.logits is None and out.loss.dtype == torch.float32
    assert_close_to_reference(
        out.loss, ref_out.loss, torch_same_dtype=stock_out.loss, is_torch_composition=True, what=f"{kind} loss"
    )
    for name, g in grads.items():
        assert_close_to_reference(
            g, ref_grads[name], torch_same_dtype=stock_grads[name], is_torch_composition=True, what=f"grad {name}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_adamw_steps_track_stock(kind, backend):
    stock = tiny(kind)
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend)
    # eps=1e-3, not 1e-8: a key projection's bias has an exactly zero gradient (softmax ignores a
    # shift shared by every key), so its float32 gradient is pure rounding noise (~1e-9), which
    # Adam with eps=1e-8 would turn into steps of random size and sign, different in every run.
    # With eps=1e-3 noise moves nothing (lr * 1e-6), while the real gradients (median ~1e-3, 90th
    # percentile ~1e-2 in these models) still take Adam-normalised steps.
    hyper = dict(lr=1e-2, eps=1e-3, weight_decay=0.1)
    runs = [
        (model, fastops.optim.AdamW(model.parameters(), **hyper)),
        (stock, torch.optim.AdamW(stock.parameters(), **hyper)),
        (ref, torch.optim.AdamW(ref.parameters(), **hyper)),
    ]
    for _ in range(3):
        ids, labels = batch()
        for net, opt in runs:
            opt.zero_grad(set_to_none=True)
            net(input_ids=ids, labels=labels).loss.backward()
            opt.step()
    params = [dict(net.named_parameters()) for net, _ in runs]
    for name, p in params[0].items():
        assert_close_to_reference(
            p, params[2][name], torch_same_dtype=params[1][name], is_torch_composition=True, what=f"{kind} {name}"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_inference_unchanged(kind):
    stock = tiny(kind)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend="torch")
    ids, labels = batch()
    for net in (stock, model):
        net.eval()
    with torch.no_grad():  # evaluation with labels: the original forward, logits and HF's loss
        got, want = model(input_ids=ids, labels=labels), stock(input_ids=ids, labels=labels)
        assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)
    got, want = model(input_ids=ids), stock(input_ids=ids)  # no labels, grad on: still the original
    assert torch.equal(got.logits, want.logits)
    gen = dict(max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert torch.equal(model.generate(ids[:1], **gen), stock.generate(ids[:1], **gen))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_num_items_in_batch(kind, backend):
    stock = tiny(kind).double()
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend)
    ids, labels = batch()
    for items in (torch.tensor(17), 29):  # Trainer passes a tensor; an int is accepted too
        out, grads = loss_and_grads(model, ids, labels, num_items_in_batch=items)
        ref_out, ref_grads = loss_and_grads(ref, ids, labels, num_items_in_batch=items)
        assert_close_to_reference(out.loss, ref_out.loss, what="loss / num_items_in_batch")
        for name, g in grads.items():
            assert_close_to_reference(g, ref_grads[name], what=f"grad {name}")
    counted = int((F.pad(labels, (0, 1), value=-100)[:, 1:] != -100).sum())
    mean = model(input_ids=ids, labels=labels).loss
    summed = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(counted)).loss
    assert_close_to_reference(summed, mean, what="sum / count vs mean")


def test_shift_labels_and_return_dict_false():
    stock = tiny("llama").double()
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend="torch")
    ids, labels = batch()
    shifted = torch.randint(0, V, (B, T))
    shifted[1, 3] = -100
    got = model(input_ids=ids, labels=labels, shift_labels=shifted)
    want = ref(input_ids=ids, labels=labels, shift_labels=shifted)
    assert_close_to_reference(got.loss, want.loss, what="loss with shift_labels")
    as_tuple = model(input_ids=ids, labels=labels, return_dict=False, use_cache=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1  # to_tuple() drops the None fields
    assert_close_to_reference(as_tuple[0], ref(input_ids=ids, labels=labels).loss, what="tuple loss")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_embedding_gets_both_gradients(backend):
    model = fastops.patch_causal_lm(tiny("gpt2").double(), backend=backend)
    wte = model.transformer.wte.weight
    assert model.lm_head.weight is wte
    untied = reference64(model)
    untied.lm_head.weight = torch.nn.Parameter(wte.detach().clone())  # same values, separate tensors
    ids, labels = batch()
    _, grads = loss_and_grads(model, ids, labels)
    _, parts = loss_and_grads(untied, ids, labels)
    embedding_part, head_part = parts["transformer.wte.weight"], parts["lm_head.weight"]
    assert head_part.abs().max() > 0 and embedding_part.abs().max() > 0
    assert_close_to_reference(grads["transformer.wte.weight"], embedding_part + head_part, what="tied grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_untied_head_with_bias(backend):
    stock = tiny("llama").double()
    stock.lm_head = torch.nn.Linear(H, V, bias=True, dtype=torch.float64)
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend, chunk_rows=5)  # 27 rows: 6 chunks
    ids, labels = batch()
    out, grads = loss_and_grads(model, ids, labels)
    ref_out, ref_grads = loss_and_grads(ref, ids, labels)
    assert_close_to_reference(out.loss, ref_out.loss, what="loss")
    assert "lm_head.bias" in grads
    for name, g in grads.items():
        assert_close_to_reference(g, ref_grads[name], what=f"grad {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gemma2_final_logit_softcapping_maps_to_softcap(backend):
    stock = tiny("gemma2").double()
    assert stock.config.final_logit_softcapping == 3.0
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend)
    assert model.forward.plan.softcap
    ids, labels = batch()
    out, grads = loss_and_grads(model, ids, labels)
    ref_out, ref_grads = loss_and_grads(ref, ids, labels)
    assert_close_to_reference(out.loss, ref_out.loss, what="softcapped loss")
    for name, g in grads.items():
        assert_close_to_reference(g, ref_grads[name], what=f"grad {name}")


def _low_precision_loss_check(got, hf, want, dtype):
    # the decoder runs in low precision in both; the loss may be at most 2x as far as HF's (which
    # rounds the logits to the low dtype before its float32 upcast) from float64, plus one ulp of it
    assert got.dtype == hf.dtype == torch.float32
    floor = torch.finfo(dtype).eps * max(1.0, abs(want.item()))
    assert abs(got.item() - want.item()) <= 2 * abs(hf.item() - want.item()) + floor


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_model_loss_is_float32_like_hf(backend):
    stock = tiny("llama").to(torch.bfloat16)
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend)
    ids, labels = batch()
    got, hf = model(input_ids=ids, labels=labels).loss, stock(input_ids=ids, labels=labels).loss
    _low_precision_loss_check(got, hf, ref(input_ids=ids, labels=labels).loss, torch.bfloat16)
    got.backward()
    assert all(p.grad.dtype == torch.bfloat16 and p.grad.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_model_under_autocast(backend):
    stock = tiny("qwen2")
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend)
    ids, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, hf = model(input_ids=ids, labels=labels).loss, stock(input_ids=ids, labels=labels).loss
    _low_precision_loss_check(got, hf, ref(input_ids=ids, labels=labels).loss, torch.bfloat16)
    got.backward()
    assert all(p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in model.parameters())


def test_gradient_checkpointing():
    stock = tiny("llama").double()
    (
        getattr(stock, "activation_checkpointing_enable", None) or stock.gradient_checkpointing_enable
    )()  # 5.x name, else 4.x
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend="auto")
    ids, labels = batch()
    out, grads = loss_and_grads(model, ids, labels, use_cache=False)
    ref_out, ref_grads = loss_and_grads(ref, ids, labels, use_cache=False)
    assert_close_to_reference(out.loss, ref_out.loss, what="loss")
    for name, g in grads.items():
        assert_close_to_reference(g, ref_grads[name], what=f"grad {name}")


def test_patch_is_idempotent_undoable_and_keeps_the_signature():
    model = tiny("qwen2")
    stock_sig = inspect.signature(model.forward)
    assert fastops.patch_causal_lm(model, backend="torch") is model
    patched = model.forward
    assert fastops.patch_causal_lm(model, backend="auto", chunk_rows=8) is model
    assert model.forward is patched and patched.backend == "auto" and patched.chunk_rows == 8
    # transformers.Trainer reads forward's parameters to keep dataset columns and to pass num_items_in_batch
    assert inspect.signature(model.forward) == stock_sig
    assert type(model).forward is not patched and "forward" not in vars(tiny("qwen2"))  # instance only
    twin = copy.deepcopy(model)
    assert twin.forward.model is twin
    fastops.unpatch_causal_lm(model)
    assert "forward" not in vars(model) and model(input_ids=batch()[0], labels=batch()[1]).logits is not None
    fastops.unpatch_causal_lm(model)  # no-op


def test_refuses_what_it_would_compute_wrong():
    small = dict(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    small.update(num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    cases = [
        (transformers.CohereForCausalLM(transformers.CohereConfig(**small)), "logit_scale"),
        (transformers.GraniteForCausalLM(transformers.GraniteConfig(**small)), "logits_scaling"),
        (transformers.HyperCLOVAXForCausalLM(transformers.HyperCLOVAXConfig(**small)), "logits_scaling"),
        (transformers.MiniCPM3ForCausalLM(transformers.MiniCPM3Config(**small)), "logits_scaling"),
    ]
    for model, quoted in cases:
        with pytest.raises(fastops.UnsupportedModelError, match=quoted):
            fastops.patch_causal_lm(model)
        assert "forward" not in vars(model)
    model = tiny("llama")
    model.lm_head = torch.nn.Identity()
    with pytest.raises(fastops.UnsupportedModelError, match="lm_head is Identity"):
        fastops.patch_causal_lm(model)
    model = tiny("llama")
    model.loss_function = hf_loss_in_own_dtype
    with pytest.raises(fastops.UnsupportedModelError, match="loss_function"):
        fastops.patch_causal_lm(model)
    with pytest.raises(ValueError, match="backend"):
        fastops.patch_causal_lm(tiny("llama"), backend="cuda")
    with pytest.raises(ValueError, match="chunk_rows"):
        fastops.patch_causal_lm(tiny("llama"), chunk_rows=0)


def test_swap_report_names_the_functional_loss():
    model = tiny("llama")
    report = fastops.swap(model)
    (entry,) = [s for s in report.skipped if s[1] == "LlamaForCausalLM"]
    assert entry[0] == "" and "computed functionally" in entry[2] and "fastops.patch_causal_lm" in entry[2]
    assert "patch_causal_lm" in str(report)
    fastops.patch_causal_lm(model, backend="torch")
    (entry,) = [s for s in fastops.swap(model).skipped if s[1] == "LlamaForCausalLM"]
    assert "already patched" in entry[2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_older_forward_with_return_dict_parameter(backend):
    stock = tiny("bloom").double()
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend=backend)
    ids, labels = batch()
    out, grads = loss_and_grads(model, ids, labels)
    ref_out, ref_grads = loss_and_grads(ref, ids, labels)
    assert out.logits is None and type(out) is type(ref_out)
    assert_close_to_reference(out.loss, ref_out.loss, what="bloom loss")
    for name, g in grads.items():
        assert_close_to_reference(g, ref_grads[name], what=f"bloom grad {name}")
    as_tuple = model(input_ids=ids, labels=labels, return_dict=False, use_cache=False)
    assert isinstance(as_tuple, tuple)
    assert_close_to_reference(as_tuple[0], ref_out.loss, what="bloom tuple loss")


def test_forward_slicing_the_hidden_state_inline_keeps_logits_to_keep():
    """transformers <= 5.17's forwards (309 of its models) slice inline; they were refused, every one.
    The fused path is checked through KINDS; here a logits_to_keep that keeps two positions (labels
    for those) runs the original forward, logits and all."""
    stock = tiny("llama_inline_slice")
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend="auto")
    ids, labels = batch()
    got = model(input_ids=ids, labels=labels[:, -2:], logits_to_keep=2)
    want = stock(input_ids=ids, labels=labels[:, -2:], logits_to_keep=2)
    assert got.logits.shape == (B, 2, V) and torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)


def test_mixture_of_experts_fused_unless_router_logits_are_on():
    stock = tiny("mixtral").double()
    assert not stock.config.output_router_logits
    ref = reference64(stock)
    model = fastops.patch_causal_lm(copy.deepcopy(stock), backend="auto")
    ids, labels = batch()
    out, grads = loss_and_grads(model, ids, labels)
    ref_out, ref_grads = loss_and_grads(ref, ids, labels)
    assert out.logits is None and out.aux_loss is None and type(out) is type(ref_out)
    assert_close_to_reference(out.loss, ref_out.loss, what="mixtral loss")
    for name, g in grads.items():
        assert_close_to_reference(g, ref_grads[name], what=f"mixtral grad {name}")
    # the load-balancing loss joins the loss: not fused, the original forward runs, and says so
    with pytest.warns(UserWarning, match="output_router_logits is on"):
        got = model(input_ids=ids, labels=labels, output_router_logits=True)
    want = stock(input_ids=ids, labels=labels, output_router_logits=True)
    assert got.logits is not None and got.aux_loss is not None
    assert torch.equal(got.loss, want.loss) and torch.equal(got.aux_loss, want.aux_loss)
