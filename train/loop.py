"""The one training loop of every recipe: AdamW, warmup + cosine, resumable checkpoints, progress."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from talon_rt.export.errors import ExportError
from talon_rt.train.console import console
from talon_rt.train.threads import ThreadGovernor

CKPT = "ckpt.pt"
LOG_SECONDS = 60  # log files: a line at least this often, whatever the step count


@dataclass(frozen=True)
class TrainSpec:
    tokens: int                 # total training tokens (steps = tokens / (batch * seq_len))
    batch: int
    seq_len: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float = 0.1   # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_minutes: float = 3.0   # a killed run loses at most this much work
    eval_windows: int | None = None  # held-out windows scored at the end (None: all of them)

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch * self.seq_len))


def lr_at(spec: TrainSpec, step: int) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    frac = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * (spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save keeps the previous checkpoint


def train(
    name: str,
    module: torch.nn.Module,
    step_loss: Callable[[int], tuple[torch.Tensor, int]],
    spec: TrainSpec,
    work: Path,
    threads: int = 0,
    progress: Callable[[], str] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> dict:
    """Run `spec.steps` optimiser steps of `step_loss(step) -> (loss, tokens)` on module's trainable
    parameters, resuming from work/ckpt.pt; `threads` 0 follows the machine's load (threads.py).
    `progress()` adds text to each progress line; `on_checkpoint(state)` runs after each checkpoint.
    `deadline` (time.monotonic()): no step starts after it (the run ends early, checkpointed).
    Returns {"steps", "tokens", "seconds", "loss"}."""
    work.mkdir(parents=True, exist_ok=True)
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    state = {"step": 0, "tokens": 0, "seconds": 0.0, "loss": float("nan")}
    ckpt = work / CKPT
    if ckpt.exists():
        device = next(module.parameters()).device
        saved = torch.load(ckpt, weights_only=True, map_location=device)
        state = saved["state"]
        if state["step"] > spec.steps:
            raise ExportError(f"{ckpt}: a checkpoint at step {state['step']}, past this run's {spec.steps} steps "
                              f"(another training length or batch); use the same settings or another work folder")
        module.load_state_dict(saved["model"], strict=False)
        opt.load_state_dict(saved["optim"])
        console.log(f"{name}: resumed at step {state['step']}/{spec.steps} ({state['tokens']:,} tokens)")

    def checkpoint() -> None:
        trainable = {k: v for k, v in module.state_dict().items() if _is_trainable(module, k)}
        _save(ckpt, {"model": trainable, "optim": opt.state_dict(), "state": dict(state)})
        if on_checkpoint is not None:
            module.eval()
            on_checkpoint(dict(state))
            module.train()

    module.train()
    start_step, t0, last_save = state["step"], time.monotonic(), time.monotonic()
    last_log = t0
    base_seconds, base_tokens, ema = state["seconds"], state["tokens"], None
    columns = (TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    log_every = max(1, spec.steps // 100)
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(name, total=spec.steps, completed=start_step, info="")
        governor = ThreadGovernor(threads)
        try:
            for step in range(start_step, spec.steps):
                if deadline is not None and time.monotonic() > deadline:
                    console.log(f"{name}: time budget reached at step {step}/{spec.steps}")
                    break
                n_threads = governor.update()
                for group in opt.param_groups:
                    group["lr"] = lr_at(spec, step)
                loss, n_tokens = step_loss(step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
                opt.step()
                value = float(loss.detach())
                ema = value if ema is None else 0.95 * ema + 0.05 * value
                state.update(step=step + 1, tokens=state["tokens"] + n_tokens, loss=ema,
                             seconds=base_seconds + time.monotonic() - t0)
                tps = (state["tokens"] - base_tokens) / max(1e-9, time.monotonic() - t0)
                info = f"loss {ema:.3f}  {tps:,.0f} tok/s  lr {lr_at(spec, step):.2e}  {n_threads} thr"
                if progress is not None:
                    info += "  " + progress()
                bar.update(task, completed=step + 1, info=info)
                if not console.is_terminal and ((step + 1) % log_every == 0 or step + 1 == spec.steps
                                                or time.monotonic() - last_log > LOG_SECONDS):
                    console.log(f"{name} step {step + 1}/{spec.steps}  {state['tokens']:,} tokens  {info}")
                    last_log = time.monotonic()
                if time.monotonic() - last_save > spec.ckpt_minutes * 60:
                    checkpoint()
                    last_save = time.monotonic()
        except KeyboardInterrupt:  # SIGINT (Ctrl-C, `timeout -s INT`): keep the work done so far
            checkpoint()
            raise
    checkpoint()
    return dict(state)


def _is_trainable(module: torch.nn.Module, key: str) -> bool:
    try:
        return module.get_parameter(key).requires_grad
    except AttributeError:
        return False  # buffers (rotary tables, d2t/t2d) are rebuilt, not checkpointed
