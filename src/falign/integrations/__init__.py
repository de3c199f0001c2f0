"""falign inside the training stacks researchers already use.

* :class:`falign.integrations.lightning.FalignCallback` -- PyTorch Lightning;
* :class:`falign.integrations.hf.FalignCallback` -- the Hugging Face ``Trainer``.

Each gives a step what falign's own runner gives it (``falign.set_step``: the labels of rules
that project the target, a sample's weight in the loss under the stack's gradient
accumulation, the stack's loss scale under fp16) and runs the alignment probe every N optimizer
steps, logging through the stack's own logging.  Nothing here is imported until used: ``import
falign`` imports neither Lightning nor transformers.
"""
