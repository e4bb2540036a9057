"""``pretrain(config)``: one or several pre-training runs with their outputs on disk.

Writes into ``config.out``: ``config.yaml``, ``metrics.json`` (per-epoch loss, kNN accuracy and
``best_knn_acc``; epochs counted from 1), ``metrics.csv``, ``curves.png`` and ``last.ckpt`` (with ``--save-every N``
also ``epoch-N.ckpt``), and what ``--logger`` adds; with ``runs > 1`` one ``seed-<seed>/`` folder per seed (as
``amcl compare`` names them) and a ``summary.json`` with the mean and std of each final metric.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from amcl.callbacks import EpochCheckpoints, EpochLog, MetricsRecorder, PaceNote, TrainingProgressBar, shows_bar
from amcl.checkpointing import (
    NonFiniteGuard,
    RandomStates,
    StopOnSignal,
    remove_partial_checkpoints,
)
from amcl.config import PretrainConfig
from amcl.data.datasets import load_configured_dataset
from amcl.data.folders import machine_memory
from amcl.data.module import ContrastiveDataModule
from amcl.data.splits import ImageSplits
from amcl.errors import AmclError, RunInterrupted, WriteError, warn
from amcl.files import write_json
from amcl.knn import default_k
from amcl.loggers import chosen_loggers, experiment_loggers
from amcl.methods import METHOD_CLASSES
from amcl.monitoring import write_csv
from amcl.runs import (
    MARKER,
    RESUMABLE_CHANGES,
    claim_folder,
    config_differences,
    finished_metrics,
    locked_folder,
    read_checkpoint,
    read_resumed_config,
    refuse_unsafe_out,
    run_record,
    summarize_runs,
    upgrade_config,
    write_config,
    write_marker,
)
from amcl.trainer import EVAL_BATCH, build_trainer, quiet_lightning

#: With ``--on-nonfinite skip``, a run that skipped more than this share of its steps says so at the end.
SKIPPED_SHARE_WARNING = 0.05


def model_seed(seed: int) -> int:
    """The seed of a run's initial weights, derived from ``--seed`` and apart from the data's random stream."""
    return (seed * 0x9E3779B97F4A7C15 + 0x5851F42D4C957F2D) % 2**63


def build_model(config: PretrainConfig, num_classes: int, normalization: dict[str, list[float]] | None,
                device: str | None = None) -> L.LightningModule:
    """The method's model, its initial weights drawn from a generator of their own (:func:`model_seed`).

    Exact pairing (common random numbers): the global random stream, seeded with ``--seed``, is left as it
    was, so the batch order and every augmentation a run draws from it are the same whatever the model
    draws: a baseline, AMCL with any form and any number of heads see the same views in the same order."""
    import torch

    with torch.random.fork_rng(devices=[]), (torch.device(device) if device else contextlib.nullcontext()):
        torch.manual_seed(model_seed(config.seed))
        return METHOD_CLASSES[config.method](config, num_classes, normalization)


def pretrain_once(config: PretrainConfig, resume: bool = False, splits: ImageSplits | None = None,
                  overwrite: bool = False, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """One run of a resolved config; returns the metrics summary (plus ``time_s``, the wall-clock time).
    ``splits`` trains on images already in memory instead of ``config.dataset`` (e.g. benchmarks/epoch_speed.py).

    With ``resume``, a run already in ``config.out`` continues from its ``last.ckpt`` (model,
    optimiser, schedule, MoCo queue, random states, recorded epochs), a finished one is returned as
    it is, and a folder without a checkpoint starts from scratch. ``callbacks`` are more Lightning callbacks
    (e.g. to observe a run). What is resumed is checked first
    (:func:`_resume_state`): ``config.yaml`` whole, and equal to ``config`` and to the checkpoint's own
    config, and the checkpoint's tensors the model's. Without ``resume`` the folder must be new or empty,
    or with ``overwrite`` an amcl run, which is cleared once the folder's lock is held (:func:`claim_folder`).

    SIGINT or SIGTERM stop the run at the next step boundary with :class:`RunInterrupted`; its
    ``last.ckpt`` then holds the finished epochs (written at each epoch's end, so never older than the
    interrupted epoch's start) and ``metrics.json`` is not marked complete. A file that cannot be
    written (full disk) stops it with a :class:`WriteError`; the previous checkpoint is kept.
    """
    out = Path(config.out)
    saved: dict[str, Any] | None = None  # the checkpoint resumed from
    if resume:
        finished, saved = _resume_state(config, out)
        if finished is not None:
            if rank_zero_only.rank == 0:
                print(f"{out}: the run finished earlier ({len(finished.get('epochs') or [])} epochs); nothing to "
                      "resume, its results are as they were", flush=True)
            return finished
    resuming = saved is not None
    splits = load_configured_dataset(config) if splits is None else splits
    n_train = len(splits.train_labels)
    if config.batch_size > n_train:
        raise AmclError(
            f"--batch-size {config.batch_size} is larger than the {n_train} training images of "
            f"{config.dataset}; use --batch-size <= {n_train}"
        )
    _check_batch_memory(config)
    labelled = int((splits.train_labels >= 0).sum())
    if config.knn_k is not None and labelled and config.knn_k > labelled:
        raise AmclError(f"--knn-k {config.knn_k} is larger than the kNN monitor's bank, the {labelled} labelled "
                        f"training images of {config.dataset}; use --knn-k <= {labelled}, or leave it out to get "
                        f"{default_k(labelled)}")
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = ContrastiveDataModule(splits, config.batch_size, config.augs, config.image_size, config.color_strength,
                                 eval_batch_size=EVAL_BATCH, workers=config.workers, seed=config.seed,
                                 channels_last=config.channels_last)
    monitor = data.can_monitor  # no kNN without labelled train and held-out images (e.g. unlabeled folders)
    recorder = MetricsRecorder(out / "metrics.json")
    stop = StopOnSignal()
    # order matters: the epoch is recorded and checked before the checkpoint that includes it is written
    run_callbacks = [recorder, NonFiniteGuard(), RandomStates(), stop,
                     *([EpochCheckpoints(out, config.save_every)] if config.save_every else []),
                     # one checkpoint, last.ckpt, rewritten at the end of every epoch
                     ModelCheckpoint(dirpath=out, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                                     save_on_train_epoch_end=True, enable_version_counter=False)]
    trainer = build_trainer(config, out, monitor, [*callbacks, *run_callbacks, PaceNote(recorder),
                                                   TrainingProgressBar() if shows_bar(config) else EpochLog(recorder)])
    ran = config.with_global_batch(trainer.world_size)  # what runs, in config.yaml and the checkpoint
    if resuming and config.global_batch != ran.global_batch:
        raise AmclError(f"cannot resume {out} on {trainer.world_size} process(es): the run trained with a global "
                        f"batch of {config.global_batch} (--batch-size {config.batch_size} x "
                        f"{config.global_batch // config.batch_size} processes); resume it with as many --devices")
    config = ran
    _check_model_memory(config, splits.num_classes)
    model = build_model(config, splits.num_classes, data.normalization)
    if saved is not None:
        _check_checkpoint_fits(model, saved)
        saved = None  # Lightning reads the file again; the tensors are not kept twice
    if trainer.is_global_zero:
        print(run_header(config, n_train, trainer.world_size, resuming), flush=True)
    started = time.time()
    # one run per folder at a time (rank 0 holds the lock; the other processes write nothing there)
    with locked_folder(out) if trainer.is_global_zero else contextlib.nullcontext():
        if trainer.is_global_zero:
            if not resume:  # under the lock: a run writing there now is never cleared or mixed with
                claim_folder(out, overwrite, clear=True)
            write_config(out, config)
            write_marker(out, "run", config)
            remove_partial_checkpoints(out)
            trainer.loggers = experiment_loggers(config, out)
        try:
            with stop:
                return _train(config, trainer, model, data, recorder, resuming, started)
        except SIGTERMException:  # Lightning's stop at a step boundary, raised by StopOnSignal's flag
            if trainer.is_global_zero:
                recorder.draw_curves(config)  # the finished epochs' curves, whenever they were last drawn
            raise _interruption(stop, trainer, out) from None
        except RuntimeError as exc:
            if trainer.world_size > 1 and _lost_peer(exc):  # one line on the surviving process, not gloo's trace
                raise _peer_lost(exc, trainer, out) from None
            raise
        except WriteError as exc:  # a full disk: the previous checkpoint is kept and the run can continue
            raise WriteError(f"{exc}; the run stopped in epoch {trainer.current_epoch + 1}: once the file can be "
                             f"written, continue it with `amcl pretrain --resume {out}`") from None


def _train(config: PretrainConfig, trainer: L.Trainer, model: L.LightningModule, data: ContrastiveDataModule,
           recorder: MetricsRecorder, resuming: bool, started: float) -> dict[str, Any]:
    """:func:`pretrain_once`'s training and final outputs, in a locked folder."""
    out = Path(config.out)
    trainer.fit(model, datamodule=data, ckpt_path=str(out / "last.ckpt") if resuming else None)
    skipped = model.nonfinite.skipped_steps  # Lightning counts a skipped step in global_step too
    if trainer.global_step - skipped <= 0:
        raise AmclError(f"the run made no optimisation step: all {skipped} steps had non-finite values and were "
                        f"skipped (--on-nonfinite skip), so {out} holds an untrained model and is not marked "
                        "complete; start again with a larger --tau-min or a smaller --lr")
    if data.can_monitor and recorder.epochs and "knn_acc" not in recorder.epochs[-1]:
        # the run stopped (max_steps, knn_every) without monitoring its final state: do it now
        trainer.validate(model, datamodule=data, verbose=False)  # its values reach callback_metrics, not loggers
        recorder.epochs[-1].update({k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("knn_acc")})
        recorder.knn_k = model.knn_k
    summary = recorder.summary()
    summary["complete"] = True  # the run ended normally (amcl compare and --resume skip such runs)
    if config.on_nonfinite == "skip":
        share = skipped / max(1, model.nonfinite.steps)
        summary.update(skipped_steps=skipped, skipped_share=round(share, 6))
        if share > SKIPPED_SHARE_WARNING:
            warn(f"{skipped} of the run's steps ({share:.1%}) had non-finite values and were skipped; its results "
                 "describe a partly trained model (see skipped_steps in metrics.json)")
    if trainer.is_global_zero:  # metrics.json marked complete last: a run cut off before it is resumed to here
        write_csv(out / "metrics.csv", recorder.epochs)
        recorder.draw_curves(config)
        write_json(out / "run.json", run_record(config, started, recorder.epoch_seconds, resumed=resuming))
        write_json(out / "metrics.json", summary)
    return {**summary, "time_s": round(sum(recorder.epoch_seconds), 3)}


def run_header(config: PretrainConfig, n_train: int, processes: int, resuming: bool) -> str:
    """The first line of a run: what trains, on what, for how long, and where its files go."""
    if config.amcl:
        tau = (f"constant tau {config.temperature:g}" if config.temperature_mode == "constant" else
               f"{config.temperature_mode} tau in [{config.tau_min:g}, {config.tau_max:g}]")
        form = f"{config.amcl_form} form, " if config.amcl_form else ""
        what = f"{config.method} + AMCL ({form}{config.heads} heads, {tau}, beta {config.beta:g})"
    else:
        tau = f", tau {config.temperature:g}" if config.temperature is not None else ""
        what = f"{config.method} baseline ({config.heads} head{'s' if config.heads > 1 else ''}{tau})"
    where = f" on {processes} processes" if processes > 1 else ""
    return (f"amcl pretrain: {'resuming ' if resuming else ''}{what} on {config.dataset} ({n_train} training images, "
            f"{config.image_size} px, augs {config.augs}), {config.backbone}, {config.epochs} epochs of batch "
            f"{config.global_batch}{where}, seed {config.seed} -> {config.out}")


def _interruption(stop: StopOnSignal, trainer: L.Trainer, out: Path) -> RunInterrupted:
    """What a run stopped by a signal says: where it stopped and what its checkpoint holds (epochs counted
    from 1, as the progress lines count them)."""
    done, total = trainer.current_epoch, trainer.max_epochs or 0  # the finished epochs: each one's end wrote last.ckpt
    if total and done >= total:
        kept = (f"{out / 'last.ckpt'} holds all {done} epochs; the resumed run only writes the final files")
        where = f"after its last epoch ({done}/{total}, step {trainer.global_step})"
    else:
        kept = (f"{out / 'last.ckpt'} holds its {done} finished epoch{'s' if done > 1 else ''}, and the resumed run "
                f"repeats epoch {done + 1} from its start" if done else
                "no epoch had finished, so no checkpoint was written and the resumed run starts again")
        where = f"in epoch {done + 1}/{total} at step {trainer.global_step}"
    # a process of a multi-process run that was not signalled itself stops on rank 0's broadcast flag
    number = stop.signal_number if stop.signal_number is not None else signal.SIGTERM
    return RunInterrupted(number, f"{where} ({kept})", f"`amcl pretrain --resume {out}`",
                          report=trainer.is_global_zero)


#: What a collective says when another process of the run has gone (gloo and NCCL).
_PEER_GONE = ("connection reset by peer", "connection closed by peer", "broken pipe", "connection refused",
              "timed out", "timeout", "nccl", "gloo")


def _lost_peer(exc: RuntimeError) -> bool:
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, getattr(dist, "DistError", ())) or any(part in text for part in _PEER_GONE)


def _peer_lost(exc: RuntimeError, trainer: L.Trainer, out: Path) -> AmclError:
    """The one line a process of a multi-process run says when another process stopped (killed, out of
    memory) and a collective operation failed: which process it is, what the checkpoint holds, how to resume."""
    done = trainer.current_epoch
    kept = (f"{out / 'last.ckpt'} holds its {done} finished epoch{'s' if done != 1 else ''}" if done else
            "no epoch had finished, so the resumed run starts again")
    reason = " ".join(str(exc).split())
    reason = reason[reason.find("]") + 1:].strip() if reason.startswith("[") else reason  # gloo's source line
    return AmclError(f"process {trainer.global_rank} of this {trainer.world_size}-process run lost another process in "
                     f"epoch {done + 1} at step {trainer.global_step} ({reason[:120]}); that process stopped (killed "
                     f"or out of memory: see its output). {kept}; continue with `amcl pretrain --resume {out}` and the "
                     "same --devices")


def _check_batch_memory(config: PretrainConfig) -> None:
    """On the CPU, refuse an image size whose batches (two float32 views per image, and the kNN monitor's
    1024 images) would not fit in half of this machine's memory: the allocator would kill the run."""
    import torch

    if config.accelerator not in ("cpu", "auto") or (config.accelerator == "auto" and torch.cuda.is_available()):
        return
    images = max(2 * config.batch_size, EVAL_BATCH)
    needed, memory = images * 3 * config.image_size ** 2 * 4, machine_memory()
    if needed > memory // 2:
        raise AmclError(f"--image-size {config.image_size}: a batch of {images} images at {config.image_size} px "
                        f"takes {needed / 1e9:.1f} GB as float32, more than half of this machine's "
                        f"{memory / 1e9:.1f} GB of memory; use a smaller --image-size (or --batch-size)")


def _resume_state(config: PretrainConfig, out: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """For ``--resume``: the summary of a run in ``out`` that already finished (None if it did not) and the
    checkpoint to continue from (None if there is none), after checking that they are this run's: its
    ``config.yaml`` whole (:func:`amcl.runs.read_resumed_config`) and equal to ``config``, and the checkpoint's
    own config equal to both (a checkpoint of another method, seed or size is refused, naming the option)."""
    saved_path, checkpoint_path = out / "config.yaml", out / "last.ckpt"
    checkpoint = read_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
    if not saved_path.is_file():
        if checkpoint is not None:
            raise AmclError(f"{out} has a checkpoint but no config.yaml; it was not written by amcl pretrain")
        return None, None
    trained = upgrade_config(checkpoint["hyper_parameters"]["config"]) if checkpoint is not None else None
    may_change = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE_CHANGES if k != "out")
    differences = config_differences(read_resumed_config(saved_path, trained), config)
    if differences:
        raise AmclError(f"cannot resume {out} with other settings ({'; '.join(differences[:3])}); resume with the "
                        f"run's own settings (only {may_change} may change)")
    if trained is not None:
        differences = config_differences(trained, config, "in last.ckpt", "in config.yaml", recorded=False)
        if differences:
            raise AmclError(f"cannot resume {out}: its last.ckpt was trained with other settings than its "
                            f"config.yaml says ({'; '.join(differences[:3])}), so it belongs to another run or the "
                            "file was edited; restore config.yaml, or start the run again with --overwrite")
    return finished_metrics(out), checkpoint


def _check_checkpoint_fits(model: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Refuse a checkpoint whose tensors are not this model's (names and shapes), in one line."""
    saved, expected = checkpoint["state_dict"], model.state_dict()
    problems = [f"{name} is missing" for name in expected if name not in saved]
    problems += [f"{name} is not in this model" for name in saved if name not in expected]
    problems += [f"{name} has shape {list(saved[name].shape)}, the model {list(tensor.shape)}"
                 for name, tensor in expected.items() if name in saved and saved[name].shape != tensor.shape]
    if problems:
        raise AmclError(f"cannot resume from {checkpoint['path']}: it does not fit this run's model ({problems[0]}"
                        f"{f', and {len(problems) - 1} more' if len(problems) > 1 else ''}); it was written by another "
                        "method or model size: resume the run it belongs to, or start again with --overwrite")


def _check_model_memory(config: PretrainConfig, num_classes: int) -> None:
    """Refuse a model whose parameters, gradients and optimiser state (and MoCo's queues) would not fit in half
    of this machine's memory (or of the GPU's), before allocating any of it: a --heads or head width too
    large would otherwise end in an allocator error, or take other processes down with it."""
    import torch

    model = build_model(config, num_classes, None, device="meta")  # shapes only: nothing is allocated
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    needed = 3 * parameters + buffers  # weights, gradients, momentum (AdamW's second moment is about one more)
    cuda = config.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    memory = torch.cuda.get_device_properties(0).total_memory if cuda else machine_memory()
    if needed > memory // 2:
        sizes = f"--heads {config.heads}, --proj-hidden {config.proj_hidden}, --proj-dim {config.proj_dim}"
        where = "this GPU's" if cuda else "this machine's"
        raise AmclError(f"the model needs about {needed / 1e9:.1f} GB for its {parameters // 4 / 1e6:.0f} million "
                        f"parameters, their gradients and optimiser state ({sizes}), more than half of {where} "
                        f"{memory / 1e9:.1f} GB of memory; use fewer --heads or narrower heads")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def series_folder(out: Path, seed: int) -> Path:
    """A series' run of ``seed``: ``seed-<seed>/`` (as ``amcl compare`` names it), or ``run-<seed>/`` in a
    series an earlier version started, so that it resumes where it is."""
    legacy = out / f"run-{seed}"
    return legacy if legacy.is_dir() and not (out / f"seed-{seed}").exists() else out / f"seed-{seed}"


def pretrain(config: PretrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run ``config.runs`` seeds (seed, seed + 1, ...); with several, also write ``summary.json``.

    ``resume`` continues each seed's run from its checkpoint, skips finished ones and starts the
    missing ones (see :func:`pretrain_once`). Without it, ``config.out`` must be new or empty; with
    ``overwrite`` it may hold an amcl run or series, which is replaced once its lock is held
    (:func:`amcl.runs.claim_folder`). A folder with anything else in it is never written into or deleted.
    """
    config = config.resolved()
    chosen_loggers(config)  # a --logger whose package is missing: said before anything is read or written
    if not resume and rank_zero_only.rank == 0:  # the other processes of a multi-process run find rank 0's files
        refuse_unsafe_out(config.out)
        claim_folder(config.out, overwrite)  # refused early, before the data is read; cleared under the lock
    if config.runs == 1:
        return pretrain_once(config, resume, overwrite=overwrite)
    out = Path(config.out)
    created = [p for p in (out, out / "config.yaml", out / MARKER) if not p.exists()]
    results: list[dict[str, Any]] = []
    try:
        with locked_folder(out):  # one series per folder at a time
            if not resume:
                claim_folder(out, overwrite, clear=True)
            write_config(out, config)  # first, so a killed series can be resumed
            write_marker(out, "series", config)
            for seed in range(config.seed, config.seed + config.runs):
                run = replace(config, seed=seed, runs=1, out=str(series_folder(out, seed)))
                try:
                    results.append(pretrain_once(run, resume))
                except RunInterrupted as stopped:  # the series continues as a whole
                    raise stopped.continued_by(f"`amcl pretrain --resume {out}`") from None
    except AmclError:
        if not results:  # the series could not even start (bad data): leave no trace of it
            for path in reversed(created):
                path.unlink(missing_ok=True) if path.is_file() else _remove_if_empty(path)
        raise
    summary: dict[str, Any] = {"runs": config.runs, "seeds": [config.seed + r for r in range(config.runs)]}
    summary.update(summarize_runs(results))
    write_json(out / "summary.json", summary)
    return summary
