"""``falign.export``: a trained converted model as the plain architecture.  For every rule and
every kind of layer ``convert`` reaches, the exported model is the unconverted one -- the same
module types and attributes, no hooks, a ``state_dict`` that loads strictly into a freshly built
plain model which then computes the converted model's outputs (to rounding: the converted
layers compute the same products through other kernels, an LSTM unrolled) -- and the converted
model is
left as it was.  A Hugging Face model's ``save_pretrained`` after export writes a checkpoint its
own class loads with the same outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64


class Zoo(nn.Module):
    """A convolution ('same' padding), a linear layer, attention, an LSTM, a GRU cell, a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding="same", dtype=DT)
        self.proj = nn.Linear(100, 6, dtype=DT)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True, dtype=DT)
        self.lstm = nn.LSTM(6, 6, batch_first=True, dtype=DT)
        self.cell = nn.GRUCell(6, 5, dtype=DT)
        self.head = nn.Linear(5, 3, dtype=DT)

    def forward(self, x):  # (N, 3, 5, 5)
        h = torch.tanh(self.proj(self.conv(x).flatten(1))).unsqueeze(1)  # (N, 1, 6)
        h, _ = self.attn(h, h, h)
        h, _ = self.lstm(h)
        return self.head(self.cell(h[:, -1]))


def x_zoo() -> torch.Tensor:
    return torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=DT)


def trained(model: nn.Module, x, y, steps: int = 2) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        falign.set_step(model, targets=y)
        out = model(x)
        F.cross_entropy(getattr(out, "logits", out).flatten(0, -2), y.flatten()).backward()
        opt.step()
    return model


def assert_plain_twin(exported: nn.Module, plain: nn.Module) -> None:
    """The same tree of module types, the same attributes, no hooks."""
    mine, theirs = dict(exported.named_modules()), dict(plain.named_modules())
    assert mine.keys() == theirs.keys()
    for name, m in mine.items():
        assert type(m) is type(theirs[name]), name
        assert set(vars(m)) == set(vars(theirs[name])), (name, set(vars(m)) ^ set(vars(theirs[name])))
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), name


@pytest.mark.parametrize("rule", list(falign.rules()))
def test_every_rule_exports_the_plain_architecture_with_the_trained_weights(rule) -> None:
    x, y = x_zoo(), torch.tensor([0, 1, 2, 1])
    model = trained(falign.convert(Zoo(), rule, seed=2, example_input=x, warn=False), x, y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exported = falign.export(model)
    plain = Zoo()
    plain.load_state_dict(exported.state_dict(), strict=True)
    assert_plain_twin(exported, plain)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(exported(x), model(x), rtol=1e-10, atol=1e-12)
    assert not torch.equal(plain.proj.weight, Zoo().proj.weight)  # the trained weights
    # the converted model is untouched and still trains with its rule
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    trained(model, x, y, steps=1)


def test_feedback_points_and_their_hooks_are_removed() -> None:
    x, y = x_zoo(), torch.tensor([0, 1, 2, 1])
    model = trained(falign.convert(Zoo(), "dfa", points=["proj", "lstm"], example_input=x, warn=False), x, y)
    assert "proj.falign_point.feedback" in model.state_dict()
    exported = falign.export(model)
    plain = Zoo()
    plain.load_state_dict(exported.state_dict(), strict=True)
    assert_plain_twin(exported, plain)


def test_a_model_built_from_falign_layers_exports_to_the_registered_plain_model() -> None:
    torch.manual_seed(4)
    model = falign.create_model("mlp", "brsf", sizes=[6, 5, 3], activation="tanh")
    torch.manual_seed(4)
    plain = falign.create_model("mlp", sizes=[6, 5, 3], activation="tanh")
    del plain.falign_spec  # create_model's record of how it was built (an export has none: no rule)
    x = torch.randn(4, 6)
    trained(model, x, torch.tensor([0, 1, 2, 0]))
    exported = falign.export(model)
    plain.load_state_dict(exported.state_dict(), strict=True)
    assert_plain_twin(exported, plain)
    torch.testing.assert_close(plain(x), model(x))
    layer = falign.FeedbackLinear(4, 2, rule="fa")
    assert type(falign.export(nn.Sequential(layer))[0]) is nn.Linear
    assert type(falign.export(layer)) is nn.Linear


transformers_cases = {
    "gpt2-dfa": ("GPT2LMHeadModel", "dfa"),
    "gpt2-kp": ("GPT2LMHeadModel", "kp"),
    "bert-drtp": ("BertForSequenceClassification", "drtp"),
}


def hf_model(kind: str):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if kind == "GPT2LMHeadModel":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                      bos_token_id=0, eos_token_id=0)
    else:
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                                      num_labels=3)
    return getattr(transformers, kind)(cfg).to(DT), type(cfg)


@pytest.mark.parametrize("case", list(transformers_cases))
def test_a_hugging_face_model_exports_and_saves_as_its_own_class(case, tmp_path) -> None:
    kind, rule = transformers_cases[case]
    transformers = pytest.importorskip("transformers")
    plain, _ = hf_model(kind)
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(2))
    y = ids if kind == "GPT2LMHeadModel" else torch.tensor([0, 1, 2])
    model = falign.convert(copy.deepcopy(plain), rule, example_input=ids, warn=False)
    model.train()
    trained(model, ids, y)
    model.eval()
    exported = falign.export(model)
    assert_plain_twin(exported, plain)
    plain.load_state_dict(exported.state_dict(), strict=True)
    plain.eval()
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(plain(ids).logits, expected, rtol=1e-10, atol=1e-12)
    exported.save_pretrained(tmp_path)
    major = int(transformers.__version__.split(".")[0])
    loaded = type(plain).from_pretrained(tmp_path, **{"dtype" if major >= 5 else "torch_dtype": DT}).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-10, atol=1e-12)
    assert not any("feedback" in k for k in loaded.state_dict())
