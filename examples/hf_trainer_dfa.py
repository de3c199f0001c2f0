"""A small GPT-2 learns Shakespeare's characters with direct feedback alignment, trained by the
Hugging Face ``Trainer``.

    FALIGN_DATA=../shared/data python examples/hf_trainer_dfa.py [--steps 150]

A two-layer ``GPT2LMHeadModel`` is built from its config (nothing downloaded) and converted to
DFA without naming a tap: falign finds GPT-2's last hidden state, ``transformer.ln_f``, and
sends every hidden layer ``B_i e`` with e the error there (E = 64, not the vocabulary: Launay et
al. 2020); ``ln_f`` and the head learn by backprop.  The Trainer's own loop trains it (labels =
inputs: the model shifts them; two micro-batches accumulated a step);
:class:`falign.integrations.hf.FalignCallback` gives each step the shifted labels and their
weight in the Trainer's loss and logs the alignment of DFA's updates with backprop's every 25
steps through ``Trainer.log``.  At the end ``falign.export`` makes it a plain GPT2LMHeadModel:
``save_pretrained`` and ``from_pretrained`` give back the same logits.  Needs
``pip install 'falign[transformers]'``.  Exits non-zero unless the loss fell and the saved model
is the same network.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile

import torch
import transformers

import falign
from falign.data import load_dataset
from falign.integrations.hf import FalignCallback

SEQ_LEN, BATCH = 64, 32


class Windows(torch.utils.data.Dataset):
    """Windows of character ids; the labels are the ids themselves (GPT-2's loss shifts them)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@torch.no_grad()
def loss_on(model, ids: torch.Tensor) -> float:
    model.eval()
    return float(model(ids, labels=ids).loss)


def main(steps: int = 150) -> int:
    transformers.logging.set_verbosity_error()
    text = load_dataset("text", seq_len=SEQ_LEN, limit=400_000)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=text.num_classes, n_positions=SEQ_LEN, n_embd=64, n_layer=2,
                                     n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    model = falign.convert(transformers.GPT2LMHeadModel(config), "dfa", seed=0)
    print(f"DFA taps {falign.feedback_layers(model)[0][1].rule.output} "
          f"(E = {config.n_embd}; the vocabulary is {config.vocab_size})")
    val = text.val.x[:128]
    before = loss_on(model, val)
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=2,
            learning_rate=2e-3, lr_scheduler_type="constant", use_cpu=True, report_to=[], save_strategy="no",
            logging_strategy="no", disable_tqdm=True, seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Windows(text.train.x))
        trainer.add_callback(FalignCallback(trainer, alignment_every=25))
        trainer.remove_callback(transformers.PrinterCallback)  # (it prints every log; read back below)
        trainer.train()
        after = loss_on(model, val)
        print(f"DFA, {steps} optimizer steps: validation loss {before:.3f} -> {after:.3f} nats "
              f"({after / math.log(2):.2f} bits per character)")
        for entry in trainer.state.log_history:  # what the callback logged through Trainer.log
            angles = {k.split("/")[1]: v for k, v in entry.items() if k.endswith("/update_angle")}
            if angles:
                hidden = [a for name, a in angles.items() if name != "lm_head"]
                print(f"  step {entry['step']}: update_angle, degrees from backprop's update: mean "
                      f"{sum(hidden) / len(hidden):.1f} over {len(hidden)} hidden layers")

        plain = falign.export(model)  # a plain GPT2LMHeadModel: trained weights, no feedback
        plain.save_pretrained(out + "/gpt2-dfa")
        loaded = transformers.GPT2LMHeadModel.from_pretrained(out + "/gpt2-dfa").eval()
    with torch.no_grad():
        same = torch.allclose(loaded(val[:8]).logits, model(val[:8]).logits, atol=1e-5)
    print(f"export: save_pretrained, then GPT2LMHeadModel.from_pretrained: same logits: {same}")
    return 0 if (after < before - 0.2 and same) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    sys.exit(main(parser.parse_args().steps))
