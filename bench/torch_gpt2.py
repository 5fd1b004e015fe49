"""The PyTorch reference that bench/bench_train.py races gpt2jax against: nanoGPT's GPT-2 and its training recipe.

Same model as gpt2jax (pre-LN GPT-2 with biases, tanh GELU, learned positions, tied LM head), same init (weights
N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 L)), zero biases, unit LayerNorm; or gpt2jax's own initial
parameters copied in with `load_gpt2jax_params`, so both sides start from identical weights), the same AdamW
hyper-parameters (betas, eps, weight decay on matrices and embeddings only, global-norm clipping, nanoGPT's
warmup + cosine `get_lr`).

Two recipes, as nanoGPT runs them:
  CPU: eager float32 (nanoGPT's `--device=cpu --compile=False`);
  GPU: `torch.compile`, bf16 autocast, `scaled_dot_product_attention` (flash), fused AdamW, TF32 matmuls.

torch is a bench/test-only dependency: nothing under gpt2jax/ imports this file.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

INIT_STD = 0.02


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.attn_proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):  # x (B, T, C)
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, N, T, H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash on GPU, fused kernel on CPU
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, n_positions: int, vocab_rows: int):
        super().__init__()
        self.n_positions = n_positions
        self.wte = nn.Embedding(vocab_rows, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, eps=1e-5)
        for name, p in self.named_parameters():  # GPT-2 init (nanoGPT _init_weights + c_proj scaling)
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln_" in name:
                nn.init.ones_(p)
            else:
                proj = name.endswith(("attn_proj.weight", "mlp_proj.weight"))
                nn.init.normal_(p, 0.0, INIT_STD / math.sqrt(2 * n_layer) if proj else INIT_STD)

    def forward(self, idx):  # idx (B, T) -> logits (B, T, V) float32
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight).float()  # tied LM head

    def loss(self, tokens):  # tokens (B, T+1)
        logits = self(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def from_gpt2jax_config(cfg) -> GPT:
    return GPT(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.embedding_rows)


def load_gpt2jax_params(model: GPT, params) -> GPT:
    """Copy gpt2jax parameters (stacked layers, (in, out) kernels) into the torch model: identical start."""
    p = {k: np.asarray(v) for k, v in _flatten(params).items()}
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731  (a writable copy)
    with torch.no_grad():
        model.wte.weight.copy_(t(p["wte/embedding"]))
        model.wpe.weight.copy_(t(p["wpe/embedding"]))
        model.ln_f.weight.copy_(t(p["ln_f/scale"]))
        model.ln_f.bias.copy_(t(p["ln_f/bias"]))
        names = dict(ln_1="ln_1", ln_2="ln_2", c_attn="attn/c_attn", attn_proj="attn/c_proj", c_fc="mlp/c_fc",
                     mlp_proj="mlp/c_proj")
        for i, block in enumerate(model.h):
            for ours, theirs in names.items():
                mod = getattr(block, ours)
                if ours.startswith("ln"):
                    mod.weight.copy_(t(p[f"h/{theirs}/scale"][i]))
                else:
                    mod.weight.copy_(t(p[f"h/{theirs}/kernel"][i].T))
                mod.bias.copy_(t(p[f"h/{theirs}/bias"][i]))
    return model


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def get_lr(it: int, lr: float, min_lr: float, warmup: int, decay: int) -> float:
    """nanoGPT's get_lr (the same function as gpt2jax.training.optim.lr_schedule)."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    ratio = min(max((it - warmup) / (decay - warmup), 0.0), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def make_optimizer(model: GPT, o, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters only (nanoGPT configure_optimizers); `o` is gpt2jax's optim
    config section (lr, b1, b2, eps, weight_decay)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=o.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, fused=fused or None)


class Trainer:
    """One optimizer step per call, nanoGPT's train.py loop body: forward/backward over grad_accum micro-batches,
    clip, set the lr, step. GPU: torch.compile + bf16 autocast + fused AdamW."""

    def __init__(self, model: GPT, optim_cfg, max_steps: int, device: str = "cpu", compile: bool = False,
                 bf16: bool = False):
        self.device, self.o = device, optim_cfg
        self.model = model.to(device)
        self.opt = make_optimizer(self.model, optim_cfg, fused=device.startswith("cuda"))
        self.decay_steps = optim_cfg.decay_steps or max_steps
        self.forward_loss = torch.compile(self.model.loss) if compile else self.model.loss
        self.bf16 = bf16
        self.it = 0

    def autocast(self):
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16)

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        """batch (A, B, T+1) int64 on the device -> the mean loss (a device tensor; no host sync)."""
        o = self.o
        lr = get_lr(self.it, o.lr, o.min_lr, o.warmup_steps, self.decay_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        total = 0.0
        for micro in batch:
            with self.autocast():
                loss = self.forward_loss(micro) / batch.shape[0]
            loss.backward()
            total = total + loss.detach()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.it += 1
        return total

    @torch.no_grad()
    def eval_loss(self, batches) -> float:
        self.model.eval()
        losses = []
        for b in batches:
            with self.autocast():
                losses.append(self.forward_loss(b))
        self.model.train()
        return float(torch.stack(losses).mean())

    @torch.no_grad()
    def sample(self, idx: torch.Tensor, new_tokens: int, temperature: float, top_k: int) -> torch.Tensor:
        """nanoGPT's generate: no KV cache, the context cropped to n_positions."""
        self.model.eval()
        for _ in range(new_tokens):
            logits = self.model(idx[:, -self.model.n_positions:])[:, -1, :] / temperature
            if top_k:
                v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
                logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1)], dim=1)
        self.model.train()
        return idx


def full_reference_run(config, data_dir, out_dir) -> dict:
    """A gpt2jax training config (e.g. configs/shakespeare_char.py) run with nanoGPT's loop: random batches
    (get_batch), loss read every log_every steps, an eval of eval_batches val batches + a 100-token sample + a
    checkpoint (torch.save) every eval_every steps, then the whole val split scored with the same sliding windows as
    gpt2jax's final eval and a last sample. Returns wall time, losses, and time_s: seconds per phase, clocked
    as gpt2jax.train clocks its own (gpt2jax.training.metrics.RunClock, summary.json's time_s)."""
    import time
    from pathlib import Path

    from gpt2jax.data.shards import open_split
    from gpt2jax.eval.windows import sliding_window_nll
    from gpt2jax.training.metrics import RunClock

    clock = RunClock()
    t, T = config.train, config.data.seq_len
    train_tokens = np.asarray(open_split(data_dir, "train").tokens(), np.int64)
    val_split = open_split(data_dir, "val")
    val_tokens = np.asarray(val_split.tokens(), np.int64)
    m = config.model
    torch.manual_seed(config.seed)  # the init and the samples: each run of a config is the same run
    model = GPT(m.n_layer, m.n_head, m.n_embd, m.n_positions, val_split.tokenizer.n_vocab)
    trainer = Trainer(model, config.optim, t.max_steps)
    rng = np.random.default_rng(config.seed)
    eval_bs = t.eval_batch_size or t.batch_size

    def get_batch(tokens, n):  # nanoGPT get_batch: n random windows of T + 1 tokens
        ix = rng.integers(0, len(tokens) - T - 1, n)
        return torch.from_numpy(np.stack([tokens[i:i + T + 1] for i in ix]))

    val_batches = [get_batch(val_tokens, eval_bs) for _ in range(t.eval_batches)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompt = torch.zeros((1, 1), dtype=torch.long)
    val_loss = loss = None
    clock.seconds["startup"] = time.time() - clock.t0
    loop_t0 = time.time()
    for step in range(1, t.max_steps + 1):
        loss = trainer.step(get_batch(train_tokens, t.batch_size)[None])
        if step % t.log_every == 0:
            loss = float(loss)  # nanoGPT's loss.item() at log_interval
        if step % t.eval_every == 0 or step == t.max_steps:
            with clock.phase("evals"):
                val_loss = trainer.eval_loss(val_batches)
            if t.sample_tokens and not (step == t.max_steps and t.final_eval):
                with clock.phase("samples"):
                    trainer.sample(prompt, t.sample_tokens, t.sample_temperature, t.sample_top_k)
            with clock.phase("checkpoints"):
                torch.save(dict(model=model.state_dict(), optimizer=trainer.opt.state_dict(), step=step),
                           out_dir / "ckpt.pt")
    loop_s = time.time() - loop_t0
    final = None
    with clock.phase("final"):
        if t.final_eval:
            def nll_fn(inputs, targets):
                with torch.no_grad():
                    logits = model(torch.from_numpy(inputs.astype(np.int64)))
                    return F.cross_entropy(logits.transpose(1, 2), torch.from_numpy(targets.astype(np.int64)),
                                           reduction="none").numpy()
            model.eval()
            stride = t.final_eval_stride or max(1, T // 2)
            final = float(sliding_window_nll(nll_fn, val_tokens, T, stride, eval_bs).mean())
            if t.sample_tokens:
                trainer.sample(prompt, t.sample_tokens, t.sample_temperature, t.sample_top_k)
    time_s = clock.summary(loop_s)
    return dict(wall_s=time_s["wall"], loss=float(loss), val_loss=val_loss, final_val_loss=final, time_s=time_s)
