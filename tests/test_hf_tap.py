"""Where DFA takes its error on a Hugging Face model: ``falign.convert(hf_model, "dfa")`` needs
no ``output=``.  The tap found is the module whose output the head reads (checked here on a
forward of the plain model: the tap's output equals the head's input), E = D; ``output="logits"``
and the target-projecting rules take the head's output; a model without a head is a one-line
error naming candidates; the default tap trains exactly as the same tap named by hand, and e is
the true gradient at the last hidden state.  Models that are not Hugging Face's keep the model
output as the tap.
"""

from __future__ import annotations

import copy

import pytest
import torch

import falign
from falign.layers.hf import find_hf_tap, hf_head

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64


def bert_config():
    return transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16, num_labels=3,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def gpt2_config(**kw):
    return transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)


#: model -> (the tap expected, the head); the names as each model's documentation shows them
CASES = {
    "GPT2LMHeadModel": (gpt2_config, "transformer.ln_f", "lm_head"),
    "GPT2ForSequenceClassification": (lambda: gpt2_config(pad_token_id=0, num_labels=3), "transformer.ln_f",
                                      "score"),
    "BertForSequenceClassification": (bert_config, "dropout", "classifier"),
    "BertForMaskedLM": (bert_config, "cls.predictions.transform", "cls.predictions.decoder"),
    "ViTForImageClassification": (
        lambda: transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                       num_labels=3, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0),
        "vit.layernorm", "classifier"),
}


def build(kind: str):
    torch.manual_seed(0)
    config, _, _ = CASES[kind]
    return getattr(transformers, kind)(config()).to(DT)


def example(kind: str) -> dict[str, torch.Tensor]:
    if kind.startswith("ViT"):
        return {"pixel_values": torch.randn(2, 3, 8, 8, dtype=DT)}
    return {"input_ids": torch.randint(1, 40, (2, 6), generator=torch.Generator().manual_seed(1))}


@pytest.mark.parametrize("kind", list(CASES))
def test_the_tap_is_the_module_whose_output_the_head_reads(kind) -> None:
    model = build(kind)
    _, tap, head = CASES[kind]
    assert find_hf_tap(model) == tap
    assert find_hf_tap(model, logits=True) == hf_head(model) == head
    seen = {}
    hooks = [model.get_submodule(tap).register_forward_hook(lambda m, a, out: seen.__setitem__("tap", out)),
             model.get_submodule(head).register_forward_pre_hook(lambda m, a: seen.__setitem__("head", a[0]))]
    with torch.no_grad():
        model(**example(kind))
    for h in hooks:
        h.remove()
    tapped, read = seen["tap"], seen["head"]
    assert tapped.shape[-1] == read.shape[-1] == model.config.hidden_size  # E = D
    if tapped.shape != read.shape:  # the head reads one position (a class token, BERT's pooled [CLS])
        tapped = tapped[:, 0]
    torch.testing.assert_close(tapped, read, rtol=0, atol=0)
    converted = falign.convert(model, "dfa", example_input=example(kind), warn=False)
    assert falign.feedback_layers(converted)[0][1].rule.output == tap


def test_logits_on_request_and_for_the_rules_that_project_the_target() -> None:
    model = build("GPT2LMHeadModel")
    output = {rule: falign.feedback_layers(falign.convert(model, rule, warn=False, **opts))[0][1].rule.output
              for rule, opts in [("dfa", {"output": "logits"}), ("drtp", {}), ("sdfa", {}),
                                 ("dfa", {"output": "transformer.h.1"})]}
    assert output == {"dfa": "transformer.h.1", "drtp": "lm_head", "sdfa": "transformer.ln_f"}
    logits = falign.convert(model, "dfa", output="logits", warn=False)
    assert falign.feedback_layers(logits)[0][1].rule.output == "lm_head"


def test_a_model_without_a_head_is_a_one_line_error_naming_candidates() -> None:
    torch.manual_seed(0)
    base = transformers.GPT2Model(gpt2_config())
    with pytest.raises(ValueError, match=r"no language-model or classification head.*'ln_f'") as err:
        falign.convert(base, "dfa")
    assert "\n" not in str(err.value)
    falign.convert(base, "dfa", output="ln_f")  # named by hand: fine
    falign.convert(base, "fa")  # other rules need no tap


def test_the_default_tap_trains_as_the_tap_named_by_hand_and_e_is_the_true_gradient_there() -> None:
    model = build("GPT2LMHeadModel")
    ids = example("GPT2LMHeadModel")["input_ids"]
    grads = []
    for options in ({}, {"output": "transformer.ln_f"}):
        converted = falign.convert(copy.deepcopy(model), "dfa", seed=3, **options)
        converted(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in converted.named_parameters()})
        wiring = converted.lm_head.pathway_state.wiring
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=0, msg=name)
    # e: the gradient of the loss at ln_f's output, through the plain model
    kept = {}

    def keep(module, args, out):
        out.retain_grad()
        kept["h"] = out

    model.transformer.ln_f.register_forward_hook(keep)
    model(ids, labels=ids).loss.backward()
    torch.testing.assert_close(wiring.error, kept["h"].grad)


def test_a_model_that_is_not_hugging_faces_keeps_the_model_output_as_the_tap() -> None:
    class Logits(torch.nn.Module):  # a Hugging Face model inside a module of one's own
        def __init__(self) -> None:
            super().__init__()
            self.inner = build("GPT2LMHeadModel")

        def forward(self, ids):
            return self.inner(ids).logits

    converted = falign.convert(Logits(), "dfa", warn=False)
    assert falign.feedback_layers(converted)[0][1].rule.output == ""
