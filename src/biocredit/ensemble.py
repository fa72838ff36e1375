"""Many seeds of one cell (experiment × method) trained at once, as one stacked ensemble.

For the small synthetic tasks (a 30-20-10 net, one example per update) a step costs a few microseconds of
arithmetic and tens of microseconds of Python and dispatch; S seeds stacked into weights of shape
(S, out, in) pay that overhead once per step instead of S times. The learning rules are the same code as for
one run: their algebra acts on the last two dimensions (``@``, ``.mT``), so a rule with ``ensemble = True``
runs unchanged on stacked tensors (:meth:`biocredit.rules.LearningRule.stack`), and its noise comes from each
seed's own generator. What differs from :func:`biocredit.train.train` is only the bookkeeping: one row list,
W&B run, divergence state and run folder per seed.

Image datasets (e.g. Lillicrap's MNIST net, 784-1000-10 with minibatches of 10): on a GPU one step of one
seed is a handful of small kernels whose launch costs more than their arithmetic, so S seeds stacked cost
about what one does. The data are loaded once; each step gathers every seed's own minibatch (each seed keeps
the order of its separate run), and each seed is evaluated alone by :func:`biocredit.train.evaluate`. On the
CPU the layers are computed seed by seed (:attr:`biocredit.nets.MLP.seedwise`), which keeps the bits of the
separate runs while the rules' algebra stays stacked; on CUDA they are batched products, and a seed's numbers
agree with its separate run to float rounding (cuBLAS may round a batched product differently from one
matrix; not measured here). Nets that draw (sampled units, input or hidden noise), tied nets, probes and rows
every k-th epoch stay with train().

Every seed ends with the same ``metrics.csv``, ``summary.json``, ``checkpoint.pt`` and W&B run as a separate
run of that seed (the numbers are bitwise equal on the CPU for every synthetic cell of config.yaml and for
Lillicrap's MNIST methods; tests/test_ensemble.py checks them), plus ``ensemble_size`` in its provenance.
Bitwise equality rests on :func:`biocredit.nets.mm` and on the BLAS computing each slice of a batched product
as it computes one matrix; for a few shapes MKL's batched product rounds differently (seen: a (1×20)·(20×30)
product, which these nets never form), and there the seeds would agree to float rounding only. While the
ensemble trains, its state is checkpointed after every epoch in one file next to the seed folders
(``checkpoint-seeds<a>-<b>.pt``); a killed job resumes from it.

A rule without a stacked form (e.g. DTP) or a task :func:`why_not_ensemble` names falls back to one run per seed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from biocredit.config import config_hash, seeds_label
from biocredit.metrics import target_spread, update_angle_tensors
from biocredit.nets import MLP, build_net, net_transmits
from biocredit.rules import RULES
from biocredit.rules.base import _stack, unstack
from biocredit.train import (
    DIVERGENCE_CHECK_EVERY,
    SYNTHETIC_TASKS,
    _atomic_write,
    _log,
    _write_csv,
    angle_due,
    apply_update,
    continues,
    diverged_row,
    earlier_segments,
    evaluate,
    evaluate_regression,
    extendable,
    finish_run,
    load_task,
    make_optimizer,
    metrics_row,
    new_segment,
    open_tracker,
    peak_memory_mb,
    resolve_device,
    row_due,
    run_provenance,
    train,
    train_eval_indices,
    window_angles,
)


def why_not_ensemble(run_cfg: Mapping[str, Any]) -> str | None:
    """None if the run's seeds can train as one stacked ensemble, else the reason (one line)."""
    if not RULES[run_cfg["rule"]].ensemble:
        return f"rule {run_cfg['rule']!r} has no stacked (batch-dimension agnostic) form"
    if run_cfg["dataset"] in SYNTHETIC_TASKS:
        if run_cfg["loss"] != "squared_error":
            return f"loss {run_cfg['loss']!r} on a synthetic task (its ensemble is for squared-error regression)"
        return None
    # An image dataset: every seed reads the same data (each in its own order) and is evaluated alone, as
    # train() evaluates it. What train() does beyond that has no stacked form here:
    net, tc = run_cfg["net"], run_cfg["train"]
    if net_transmits(net):
        return "a stochastic or non-identity transmission, or noise in the net (train()'s draws are per run)"
    if tc.get("input_noise"):
        return "train.input_noise (train()'s draws are per run)"
    if run_cfg.get("probe"):
        return "a post-training probe"
    if net.get("tied"):
        return "a tied net"
    if int(run_cfg.get("eval_every_epochs") or 1) > 1:
        return "eval_every_epochs > 1"
    return None


def train_seeds(
    run_cfgs: Sequence[Mapping[str, Any]],
    out_dirs: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    device: str = "auto",
    wandb_cfg: Mapping[str, Any] | None = None,
    wandb_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    ensemble: bool = True,
) -> list[dict[str, Any]]:
    """Train the runs (one cell, several seeds): as one stacked ensemble where possible, else one by one."""
    kw = dict(device=device, wandb_cfg=wandb_cfg, wandb_dir=wandb_dir, threads=threads)
    reason = why_not_ensemble(run_cfgs[0]) if ensemble else "ensembles switched off"
    if reason is None and len(run_cfgs) > 1:
        return train_ensemble(run_cfgs, out_dirs, data_dir, **kw)
    if ensemble and len(run_cfgs) > 1:
        _log(f"[{run_cfgs[0]['experiment']}/{run_cfgs[0]['method']}] one run per seed: {reason}")
    return [train(rc, out, data_dir, **kw) for rc, out in zip(run_cfgs, out_dirs, strict=True)]


def seed_checkpoints(run_cfgs: Sequence[Mapping[str, Any]], chashes: Sequence[str], out_dirs: Sequence[Path],
                     dev: torch.device) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Every seed's own ``checkpoint.pt`` if each is one train() would continue (the same settings and still
    running, or :func:`biocredit.train.extendable` to this length) and all stand at the same epoch; else
    (None, why), why None when no seed has a checkpoint at all."""
    states, missing = [], []
    for rc, h, d in zip(run_cfgs, chashes, out_dirs, strict=True):
        path = d / "checkpoint.pt"
        st = torch.load(path, map_location=dev, weights_only=False) if path.exists() else None
        if st is None or not continues(st, rc, h):
            missing.append(rc["seed"])
            st = None
        states.append(st)
    if len(missing) == len(states):
        return None, None if not any((d / "checkpoint.pt").exists() for d in out_dirs) else \
            "no seed's own checkpoint is one to continue (other settings, or finished at this length)"
    if missing:
        return None, f"seed(s) {', '.join(map(str, missing))} have no checkpoint to continue (an ensemble continues all or none)"
    epochs = sorted({st["epoch"] for st in states})
    if len(epochs) > 1:
        return None, f"the seeds' own checkpoints stand at different epochs ({', '.join(map(str, epochs))})"
    return states, None


def train_ensemble(
    run_cfgs: Sequence[Mapping[str, Any]],
    out_dirs: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    device: str = "auto",
    wandb_cfg: Mapping[str, Any] | None = None,
    wandb_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    seedwise: bool | None = None,
) -> list[dict[str, Any]]:
    """Train the seeds of one cell together; returns their summaries (as :func:`biocredit.train.train` each).

    ``seedwise``: compute each seed's layers on its own slice (:attr:`biocredit.nets.MLP.seedwise`: the bits of
    its separate run); by default for image data on the CPU. Off, the layers run as batched products over all
    seeds, as on CUDA: the same numbers to float rounding."""
    run_cfgs = [dict(rc) for rc in run_cfgs]
    rc0, S = run_cfgs[0], len(run_cfgs)
    same = {k: v for k, v in rc0.items() if k != "seed"}
    if any({k: v for k, v in rc.items() if k != "seed"} != same for rc in run_cfgs):
        raise ValueError("an ensemble's runs must differ in their seed only")
    out_dirs = [Path(d) for d in out_dirs]
    for d in out_dirs:
        d.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    tc, seeds = rc0["train"], [rc["seed"] for rc in run_cfgs]
    chashes = [config_hash(rc) for rc in run_cfgs]
    label = seeds_label(seeds)
    tag = f"[{rc0['experiment']}/{rc0['method']}/seeds{label}]"

    # Each seed's net and rule exactly as a separate run builds them, from the seed's own generator; then stacked.
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    nets, rules = [], []
    for rc, g in zip(run_cfgs, generators, strict=True):
        nets.append(build_net(rc["net"], g).to(dev))
        rules.append(RULES[rc["rule"]](nets[-1], rc["params"], rc["loss"], tc["reduction"], g))
    net = MLP.stack(nets)
    net.seedwise = rc0["dataset"] not in SYNTHETIC_TASKS and dev.type == "cpu" if seedwise is None else seedwise
    rule = type(rules[0]).stack(rules)
    del nets, rules
    opt = make_optimizer(net, tc)
    # A synthetic task is generated from each seed: the seeds' data are stacked (S × n × in). An image dataset is
    # the same for every seed: one copy (n × in), from which each step gathers every seed's own minibatch.
    shared = rc0["dataset"] not in SYNTHETIC_TASKS
    if shared:
        task = load_task(rc0, Path(data_dir), dev)
        x_train, t_train, x_test = task.x_train, task.t_train, task.x_test
    else:
        tasks = [load_task(rc, Path(data_dir), dev) for rc in run_cfgs]
        x_train, t_train = torch.stack([t.x_train for t in tasks]), torch.stack([t.t_train for t in tasks])
        x_test, t_test = torch.stack([t.x_test for t in tasks]), torch.stack([t.t_test for t in tasks])
        del tasks
        spread_train, spread_test = target_spread(t_train), target_spread(t_test)

    rows: list[list[dict[str, Any]]] = [[] for _ in seeds]
    status: list[str] = ["completed"] * S
    diverged_at: list[int | None] = [None] * S
    final_state: dict[int, dict[str, Any]] = {}  # a diverged seed's state when it stopped, as train() keeps it
    start_epoch, old_wandb_dirs = 0, [None] * S
    wall_before = [0.0] * S  # per seed: its training seconds before this process
    segments: list[list[dict[str, Any]]] = [[] for _ in seeds]  # per seed: the processes that trained it
    ckpt_path = out_dirs[0].parent / f"checkpoint-seeds{label}.pt"
    resumed = False
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=dev, weights_only=False)
        old_cfgs = state.get("run_configs") or [None] * S
        extends = state["status"] == "running" and state.get("config_hashes") != chashes and all(
            extendable({"run_config": old, "status": "running", "epoch": state["epoch"]}, rc)
            for old, rc in zip(old_cfgs, run_cfgs, strict=True))
        if (state.get("config_hashes") == chashes and state["status"] == "running") or extends:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["optimizer"])
            rule.load_state_dict(state["rule"])
            for g, gs in zip(generators, state["generators"], strict=True):
                g.set_state(gs)
            rows, start_epoch = state["rows"], state["epoch"]
            status, diverged_at, final_state = state["run_status"], state["diverged_at"], state["final_state"]
            old_wandb_dirs = state["wandb_run_dirs"]
            walls = state["wall_seconds"]  # one number for all seeds in checkpoints written before 2026-12-02
            wall_before = list(walls) if isinstance(walls, list) else [walls] * S
            segs = state.get("segments") or []
            segments = ([earlier_segments({"segments": x}) for x in segs] if segs and isinstance(segs[0], list)
                        else [earlier_segments(state) for _ in seeds])
            resumed = True
            _log(f"{tag} resuming from the checkpoint of epoch {start_epoch}"
                 + (f" (the runs' length changed to {rc0['epochs']} epochs)" if extends else ""))
        else:
            _log(f"{tag} ignoring a checkpoint of another config or a finished run ({ckpt_path}); starting afresh")
    if not resumed:
        # No ensemble checkpoint: each seed's own checkpoint.pt (of a separate run, or of an earlier ensemble that
        # finished) continues where train() would continue it (resume, or extend to more epochs); all or none.
        states, why = seed_checkpoints(run_cfgs, chashes, out_dirs, dev)
        if states:
            net.load_state_dict(_stack([st["net"] for st in states]))
            opt.load_state_dict(_stack([st["optimizer"] for st in states]))
            rule.load_state_dict(_stack([st["rule"] for st in states]))
            for g, st in zip(generators, states, strict=True):
                g.set_state(st["generator"])
            rows, start_epoch = [list(st["rows"]) for st in states], states[0]["epoch"]
            wall_before = [st["wall_seconds"] for st in states]
            segments = [earlier_segments(st) for st in states]
            old_wandb_dirs = [st.get("wandb_run_dir") for st in states]
            _log(f"{tag} continuing every seed's own checkpoint of epoch {start_epoch} to {rc0['epochs']} epochs")
        elif why:
            _log(f"{tag} training every seed from epoch 0: {why}")

    # As in train(): from here each folder's metrics.csv is this job's; a summary.json of an earlier run (one now
    # extended, or of other settings) must not stand beside the new rows if the job dies before its end.
    for d in out_dirs:
        (d / "summary.json").unlink(missing_ok=True)
    started = time.time()
    provenance = [{**run_provenance(rc, h, dev, x_train.shape[-2], x_test.shape[-2]), "ensemble_size": S}
                  for rc, h in zip(run_cfgs, chashes, strict=True)]
    for seg, p in zip(segments, provenance, strict=True):
        seg.append(new_segment(start_epoch, p))
    trackers = [open_tracker(rc, p, wandb_cfg, Path(wandb_dir or d / "wandb"), old, r, d)
                for rc, p, d, old, r in zip(run_cfgs, provenance, out_dirs, old_wandb_dirs, rows, strict=True)]

    def record(s: int, row: dict[str, Any]) -> None:
        rows[s].append(row)
        trackers[s].log(row)

    def flush() -> None:
        """Write every seed's metrics.csv (after each epoch; train() rewrites it after each row, which for 20
        seeds x 100 rows an epoch would cost more than the training)."""
        for s in range(S):
            _write_csv(out_dirs[s] / "metrics.csv", rows[s])

    def alive() -> list[int]:
        return [s for s in range(S) if status[s] == "completed"]

    def seed_state(s: int, epoch: int, run_status: str) -> dict[str, Any]:
        """Seed s's checkpoint in the format of train()'s checkpoint.pt."""
        return {
            "config_hash": chashes[s], "status": run_status, "epoch": epoch, "rows": list(rows[s]),
            "net": unstack(dict(net.state_dict()), s), "optimizer": unstack(opt.state_dict(), s),
            "rule": unstack(rule.state_dict(), s), "generator": generators[s].get_state(),
            "wall_seconds": wall_before[s] + time.time() - started,
            "wandb_run_dir": str(trackers[s].run_dir) if trackers[s].run_dir else None, "run_config": run_cfgs[s],
            "segments": [dict(seg) for seg in segments[s]],
        }

    def checkpoint(epoch: int) -> None:
        for seg in segments:
            seg[-1].update(to_epoch=epoch, wall_seconds=time.time() - started)
        state = {
            "config_hashes": chashes, "run_configs": run_cfgs, "seeds": seeds, "status": "running", "epoch": epoch,
            "rows": rows, "run_status": status, "diverged_at": diverged_at, "final_state": final_state,
            "net": net.state_dict(), "optimizer": opt.state_dict(), "rule": rule.state_dict(),
            "generators": [g.get_state() for g in generators],
            "wall_seconds": [w + time.time() - started for w in wall_before],
            "wandb_run_dirs": [str(t.run_dir) if t.run_dir else None for t in trackers], "segments": segments,
        }
        _atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))
        flush()

    n, bs, epochs = x_train.shape[-2], tc["batch_size"], rc0["epochs"]

    if shared:
        # Each seed is evaluated alone, by train()'s own evaluate() on a net of one seed's weights: the same
        # arithmetic, train subset (train_eval_subset: drawn from the seed) and evaluation stream as its separate run.
        single = build_net(rc0["net"], torch.Generator().manual_seed(0)).to(dev)
        k_eval = rc0.get("train_eval_subset")
        tr_keep = [train_eval_indices(n, k_eval, s).to(dev) if k_eval and k_eval < n else None for s in seeds]

    def eval_seed(s: int, examples_seen: int) -> tuple[dict[str, float], dict[str, float], dict[str, float] | None]:
        with torch.no_grad():
            for mine, stacked in zip(single.parameters(), net.parameters(), strict=True):
                mine.copy_(stacked[s])
        eval_gen = torch.Generator().manual_seed((seeds[s] + 1) * 7_919_993 + examples_seen)  # as train()
        keep, loss = tr_keep[s], rc0["loss"]
        x_tr, t_tr, l_tr = task.x_train, task.t_train, task.labels_train
        if keep is not None:
            x_tr, t_tr, l_tr = x_tr[keep], t_tr[keep], l_tr[keep] if l_tr is not None else None
        tr = evaluate(single, x_tr, t_tr, l_tr, loss, eval_gen, passes=1)
        te = evaluate(single, task.x_test, task.t_test, task.labels_test, loss, eval_gen)
        va = None
        if task.x_valid is not None:
            va = evaluate(single, task.x_valid, task.t_valid, task.labels_valid, loss, eval_gen)
        return tr, te, va

    def eval_rows(examples_seen: int, extra: list[Mapping[str, float]]) -> None:
        if shared:
            for s in alive():
                t0 = time.time()
                tr, te, va = eval_seed(s, examples_seen)
                record(s, metrics_row(examples_seen, n, tr, te, va, extra[s], time.time() - t0))
            return
        t0 = time.time()
        tr = evaluate_regression(net, x_train, t_train, spread_train)
        te = evaluate_regression(net, x_test, t_test, spread_test)
        seconds = time.time() - t0
        for s in alive():
            record(s, metrics_row(examples_seen, n, tr[s], te[s], None, extra[s], seconds))

    def stop(s: int, epoch: int, train_seconds: float) -> None:
        """Seed s diverged: record it as train() does, keep its state, and zero its weights (NaN-free algebra)."""
        status[s], diverged_at[s] = "diverged", epoch
        _log(f"{tag} seed {seeds[s]} DIVERGED in epoch {epoch}: the training loss became non-finite; run stopped")
        record(s, diverged_row(epoch, n, train_seconds))
        final_state[s] = seed_state(s, epoch, "diverged")
        with torch.no_grad():
            for p in net.parameters():
                p[s].zero_()

    if start_epoch == 0 and not any(rows):
        eval_rows(0, [{}] * S)
    try:
        decay = (1.0 - tc["weight_decay"]) ** bs if tc["weight_decay_mode"] == "decoupled" else None
        for epoch in range(start_epoch + 1, epochs + 1):
            if not alive():
                break
            t0 = time.time()
            perms = [torch.randperm(n, generator=torch.Generator().manual_seed(s * 1_000_003 + epoch))
                     if tc["shuffle"] else torch.arange(n) for s in seeds]  # each seed's own order, as train()
            perm = torch.stack(perms).to(dev)
            if shared:
                def take(s0: int, perm: Tensor = perm) -> tuple[Tensor, Tensor]:
                    """Every seed's minibatch at position s0 of its order, gathered from the one copy (S × bs × in)."""
                    idx = perm[:, s0 : s0 + bs]
                    return x_train[idx], t_train[idx]
            else:
                rows_idx = torch.arange(S, device=dev)[:, None]
                xs, ts = x_train[rows_idx, perm], t_train[rows_idx, perm]  # this epoch's examples in training order

                def take(s0: int, xs: Tensor = xs, ts: Tensor = ts) -> tuple[Tensor, Tensor]:
                    return xs[:, s0 : s0 + bs], ts[:, s0 : s0 + bs]

            def batches(take=take):
                for s0 in range(0, n, bs):
                    yield take(s0)

            extra = dict(rule.on_epoch_start(net, epoch, batches))
            angle_sums: list[dict[str, list[float]]] = [{} for _ in seeds]
            loss_acc = torch.zeros(S, device=dev)
            seen = (epoch - 1) * n
            for k, s0 in enumerate(range(0, n, bs)):
                x, t = take(s0)
                net.zero_grad(set_to_none=True)
                step = rule.compute_grads(net, x, t)
                if rule.compare_to_backprop and angle_due(tc, k, seen):
                    angles = {key: v.tolist() for key, v in update_angle_tensors(
                        net, x, t, step, rc0["loss"], tc["reduction"], pbp=tc.get("pbp_angle", False)).items()}
                    for s in alive():
                        for key, v in angles.items():
                            angle_sums[s].setdefault(key, []).append(v[s])
                apply_update(net, opt, rule, decay)
                loss_acc += step.loss
                seen += x.shape[-2]
                if (k + 1) % DIVERGENCE_CHECK_EVERY == 0 and not bool(torch.isfinite(loss_acc).all()):
                    finite = torch.isfinite(loss_acc).tolist()
                    for s in alive():
                        if not finite[s]:
                            stop(s, epoch, time.time() - t0)
                    if not alive():
                        break
                if row_due(tc, seen, epoch * n):
                    eval_rows(seen, [window_angles(a) for a in angle_sums])
            train_seconds = time.time() - t0
            finite = torch.isfinite(loss_acc).tolist()
            for s in alive():
                if not finite[s]:
                    stop(s, epoch, train_seconds)
            if alive():
                eval_rows(epoch * n, [{**extra, **window_angles(a), "epoch_seconds": train_seconds} for a in angle_sums])
            checkpoint(epoch)
            last = [rows[s][-1] for s in alive()]
            if last:
                _log(f"{tag} epoch {epoch}/{epochs}  mean test_error {sum(r['test_error'] for r in last) / len(last):.4g}"
                     f" over {len(last)} seeds  ({train_seconds:.1f} s train + {last[0]['eval_seconds']:.1f} s eval)")
    except BaseException:
        for tr in trackers:
            tr.finish(exit_code=1)
        raise

    walls = [w + time.time() - started for w in wall_before]
    for s in range(S):  # every seed's folder gets the final checkpoint.pt of a separate run
        state = final_state.get(s) or seed_state(s, rows[s][-1]["epoch"], status[s])
        state = {**state, "status": status[s], "rows": rows[s], "wall_seconds": walls[s]}
        _atomic_write(out_dirs[s] / "checkpoint.pt", lambda tmp, state=state: torch.save(state, tmp))
    memory = peak_memory_mb(dev)  # one process for every seed of the ensemble
    for seg in segments:
        seg[-1].update(to_epoch=max(r[-1]["epoch"] for r in rows), wall_seconds=time.time() - started)
    summaries = [finish_run(rc, d, r, st, da, w, p, tr, memory, sg) for rc, d, r, st, da, w, p, tr, sg in
                 zip(run_cfgs, out_dirs, rows, status, diverged_at, walls, provenance, trackers, segments, strict=True)]
    ckpt_path.unlink(missing_ok=True)
    return summaries
