"""Sleep fine-tuning of a pretrained hybrid on GSM-Infinite (the paper's pretrained-model runs).

    python -m sleep_jax.main --config=configs/gsm_finetune.py:tiny --config.init.hf_dir=DIR \
        --workdir=runs/gsm_ft_tiny
    python -m sleep_jax.main --config=configs/gsm_finetune.py:paper \
        --config.init.hf_dir=Jet-Nemotron-2B --config.sleep.passes=6 --workdir=runs/jet_n6

``init.hf_dir`` is a Hugging Face directory (config.json, *.safetensors, tokenizer.json +
tokenizer_config.json) of a supported family, or a run directory written by
``python -m sleep_jax.convert``; the run takes that model's architecture and its tokenizer
(problem lengths are counted in its tokens). Every variant needs it.

Variants:
- ``tiny``: any supported checkpoint, one MLP-free GDN block inserted at layer 1 (the inserted
  block starts as the identity), L = 64 tokens, problems of 150-200 tokens with 1-2 ops (answers
  starting in window 2 or 3: batches of both kinds, "CCP" and "CCCP"), a
  fixed train set of 32 problems, batch 8, two stages: stage 1 trains only the inserted block
  for 1 epoch with hard eviction, stage 2 the whole model for 2 epochs with sliding eviction.
  Runs through both stages on the CPU in a few minutes.
- ``paper``: Jet-Nemotron 2B (28 blocks): the middle 14 blocks looped (``model.loop=(7, 21)``),
  hard eviction, L = 2000, problems of 2000-3300 tokens (T = 4000, kinds CP: the first 2000
  tokens of every problem consolidated and evicted before its answer), batch 256 and 1,600 eval
  problems (200 per op count), as the paper; Muon 1e-3 on hidden matrices + AdamW 5e-5 on the
  rest; sweep ``sleep.passes`` over 1, 2, 4, 6.
- ``paper_ouro``: Ouro 1.4B with 6 inserted MLP-free blocks (``init.insert_kind``; all blocks
  looped, ``model.loop`` None), the same task and optimiser; ``sleep.passes`` in 1, 2, 4.
- ``paper_sliding``: the sliding-window setting, L = 512 (T = 3584: a problem's answer starts in
  window 3 to 6 by its length, kinds CCCP to CCCCCCP, a batch holding one of them), with the
  paper's warm-up: stage 1 trains only the inserted blocks for one epoch with hard eviction,
  stage 2 the whole model for two epochs with sliding eviction (Ouro's 6 inserted blocks).

The batch of 256 sequences is accumulated over 32 micro-batches (``train.grad_accum_steps``:
8 sequences per step, one per chip of an 8-chip slice; set it to 256 / (sequences per step) for
another mesh: it must divide the batch into whole micro-batches over the data axes).
Chosen here where the paper is silent (say so when comparing): the train set is 20,000
generated problems (``task.train_examples``; one epoch = 20,000 / batch 256 = 79 steps), 5%
warm-up (8 steps) then cosine decay to 10% per stage, gradient clip 1.0, bfloat16 compute with float32
parameters, remat ``pass``, and the insert positions of Ouro's blocks (after every 4th of its 24
layers: 4, 9, 14, 19, 24, 29 in the new 30-layer list) and their shape (JetBlocks, "J", of 8
heads with K = V = 128: 67,867,488 parameters in all at Ouro's d = 2048, 4.7% of Ouro-1.4B's
1,434,652,673, counted with ``hf.insert.inserted_config``). The tiny variant inserts a GDN
block ("G"), the cheapest kind to compile on a CPU; ``--config.init.insert_kind=J`` inserts a
JetBlock there too. Ouro's own recurrent depth (``ut_steps`` = 4) comes with its checkpoint;
"all blocks looped" is ``model.loop`` None (the whole unrolled stack sleeps). The hard-eviction
recipes train one stage (all parameters) for 2 epochs. To train and evaluate on the published
problems instead, set ``task.data`` to the downloaded dataset directory (see the README).
"""
from sleep_jax.train.config import INSERTED, base_config, model_block, sleep_block

VARIANTS = ("tiny", "paper", "paper_ouro", "paper_sliding")

# Ouro 1.4B has 24 layers; one MLP-free block after every 4th (indices in the new list of 30).
OURO_INSERT = (4, 9, 14, 19, 24, 29)


def get_config(variant: str = "tiny"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/gsm_finetune.py:{variant}: unknown variant; one of {VARIANTS}")
    config = base_config("gsm_infinite", "tiny" if variant == "tiny" else "paper")
    if variant == "tiny":
        config.task.update(ops=(1, 2), eval_ops=(1, 2), window=64, target_tokens=(150, 200),
                           train_examples=32, eval_examples=16)
        config.init.update(insert_positions=(1,), insert_kind="G")
        config.model = model_block(delta_rule_impl="recurrent")
        config.train.update(batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2,
                            eval_batch_size=8, muon_lr=1e-3, adamw_lr=5e-4)
        config.sleep = sleep_block(window=64, eviction="sliding")
        config.stages.update(epochs=(1, 2), trainable=(INSERTED, "*"),
                             eviction=("hard", "sliding"), window=(64, 64),
                             muon_lr=(1e-3, 1e-3), adamw_lr=(5e-4, 5e-4))
        return config

    window = 512 if variant == "paper_sliding" else 2000
    config.task.update(window=window, target_tokens=(2000, 3300), train_examples=20000,
                       eval_examples=1600)
    loop = (7, 21) if variant == "paper" else None
    config.model = model_block(loop=loop, dtype="bfloat16", param_dtype="float32")
    config.train.update(batch_size=256, grad_accum_steps=32, warmup_steps=8, log_every=5, checkpoint_every=20,
                        eval_batch_size=64, muon_lr=1e-3, adamw_lr=5e-5, grad_clip=1.0)
    if variant != "paper":
        config.init.update(insert_positions=OURO_INSERT, insert_kind="J")
        config.model.update(jet_heads=8, jet_head_dim=128, jet_v_head_dim=128)
    if variant == "paper_sliding":
        config.sleep = sleep_block(window=window, eviction="sliding", remat="pass")
        config.stages.update(epochs=(1, 2), trainable=(INSERTED, "*"),
                             eviction=("hard", "sliding"), window=(window, window),
                             muon_lr=(1e-3, 1e-3), adamw_lr=(5e-5, 5e-5))
    else:
        config.sleep = sleep_block(window=window, eviction="hard", remat="pass")
        config.stages.update(epochs=(2,), trainable=("*",), eviction=("hard",), window=(window,),
                             muon_lr=(1e-3,), adamw_lr=(5e-5,))
    return config
