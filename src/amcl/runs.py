"""The run folder: the one place that writes and reads what a run leaves on disk.

A pre-training run's ``--out`` folder holds ``config.yaml`` (every option, resolved), ``metrics.json``
and ``metrics.csv`` (per epoch), ``run.json`` (clock times and versions), ``last.ckpt`` and
``curves.png``; ``amcl eval``, ``analyze`` and ``export`` add their files beside them. Here live:

* :func:`write_config`: the folder and its ``config.yaml`` (files are written through :mod:`amcl.files`);
* :func:`read_config`: a saved ``config.yaml`` as option values, with the keys older versions did not
  write filled in as those versions behaved;
* :func:`config_differences`: whether a saved run has the settings of a config (one rule for
  ``--resume`` and ``amcl compare``; :data:`RESUMABLE_CHANGES` may differ);
* :func:`finished_metrics`, :func:`read_checkpoint`: a finished run and its checkpoint, checked;
* :func:`run_record` and :func:`summarize_runs`: ``run.json`` and the summary over seeds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from amcl.config import PretrainConfig, config_options, load_yaml, option_names
from amcl.errors import AmclError
from amcl.files import write_atomic
from amcl.policies import parse_policy
from amcl.specs import canonical_form

__all__ = [
    "MARKER", "RESUMABLE_CHANGES", "claim_folder", "config_differences", "finished_metrics", "folder_entries",
    "held_run", "locked_folder", "read_checkpoint", "read_config", "read_marker", "read_resumed_config",
    "refuse_unsafe_out", "run_record", "summarize_runs", "write_config", "write_marker",
]

#: Options that may differ between a saved run and the config that continues or reuses it: they change
#: how the run goes, not what it computes.
RESUMABLE_CHANGES = ("out", "progress", "workers", "cache_images", "on_nonfinite", "logger", "save_every")


def write_config(folder: str | os.PathLike[str], config: PretrainConfig | None = None) -> None:
    """Create a run folder (``--out``) and, given a ``config``, write its ``config.yaml`` (atomically);
    a folder that cannot be written is an :class:`AmclError` naming ``--out``."""
    target = Path(folder)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AmclError(f"cannot write outputs to --out {folder}: {exc.strerror or exc}; choose a writable "
                        "folder") from None
    if config is not None:
        write_atomic(target / "config.yaml", config.to_yaml())


#: The lock file of a folder a run (or a compare grid) is writing to.
LOCK_FILE = ".amcl.lock"


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if needed) while the block runs, so that two runs never
    write into one ``--out``. A second process is refused with an :class:`AmclError` naming the holder.
    The lock is the kernel's (``flock``): it dies with its process, so a run killed with SIGKILL leaves a
    lock file that blocks nothing, and ``--resume`` takes it over. A folder the lock created and nothing
    filled is removed again; a folder whose lock file cannot be made or removed (read-only, immutable) is
    one line, never a traceback."""
    import fcntl
    import socket
    import sys

    target = Path(folder)
    created = not target.exists()
    write_config(target)
    path = target / LOCK_FILE
    try:
        handle = open(path, "a+")
    except OSError as exc:
        if created:
            _remove_if_empty(target)
        raise AmclError(f"cannot lock {target}: cannot create {LOCK_FILE} there ({exc.strerror or exc}); the folder "
                        "is read-only or not writable: make it writable or choose another --out") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        if isinstance(exc, BlockingIOError):
            raise AmclError(f"{target} is in use by {holder}; wait for it to finish, or choose another --out") \
                from None
        raise AmclError(f"cannot lock {path}: {exc.strerror or exc}; choose an --out on a local disk") from None
    try:
        with contextlib.suppress(OSError):  # who holds it, for the refusal's message; a full disk only loses that
            handle.seek(0)
            handle.truncate()
            handle.write(f"amcl process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)[:200]})\n")
            handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):  # while still held, so no waiting process locks a removed file; an
            path.unlink(missing_ok=True)  # immutable or read-only folder keeps it (it blocks nothing once closed)
        with contextlib.suppress(OSError):  # an unwritten holder line cannot be flushed on a full disk
            handle.close()
        if created:
            _remove_if_empty(target)


# --------------------------------------------------------------------------- which folders are amcl's

#: amcl's mark on a folder it writes into, written when a run, a ``--runs`` series or a compare grid starts there:
#: ``--overwrite`` replaces only folders that carry it (or hold a finished run of a version before it).
MARKER = "amcl-run.json"
#: The kinds of folder a marker names, in words.
MARKER_KINDS = {"run": "run", "series": "--runs series", "grid": "compare grid"}
#: Entries that do not make a folder non-empty: amcl's lock file and what file browsers leave.
_IGNORED_ENTRIES = {LOCK_FILE, ".DS_Store", "Thumbs.db"}


def write_marker(folder: str | os.PathLike[str], kind: str, config: PretrainConfig | None = None) -> None:
    """Mark ``folder`` as amcl's (see :data:`MARKER`): who wrote it, what it holds and when it started."""
    from amcl import __version__

    target = Path(folder) / MARKER
    previous = read_marker(target.parent)
    record: dict[str, Any] = {
        "written_by": "amcl", "version": __version__, "kind": kind,
        "started": previous["started"] if previous and previous.get("kind") == kind and "started" in previous
        else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if config is not None:
        record.update(method=config.method, amcl=config.amcl, seed=config.seed)
    write_atomic(target, json.dumps(record, indent=2) + "\n")


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of an amcl folder, or None if ``folder`` has none (or one another tool wrote)."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("written_by") == "amcl" else None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _legacy_kind(folder: Path) -> str | None:
    """The kind of an amcl folder written before markers existed, from what only amcl writes there: a
    ``run.json`` naming amcl's version, a series' ``summary.json``, a compare grid's ``results.json``, or a
    ``last.ckpt`` that reads as an amcl pretrain checkpoint. None if it shows none of them."""
    record = _json_file(folder / "run.json")
    if isinstance(record, dict) and isinstance(record.get("versions"), dict) and "amcl" in record["versions"]:
        return "run"
    summary = _json_file(folder / "summary.json")
    if isinstance(summary, dict) and isinstance(summary.get("seeds"), list) and "runs" in summary:
        return "series"
    results = _json_file(folder / "results.json")
    if isinstance(results, dict) and "cells" in results:
        return "grid"
    if (folder / "last.ckpt").is_file():
        try:
            read_checkpoint(folder / "last.ckpt")
            return "run"
        except AmclError:
            return None
    return None


def folder_entries(folder: str | os.PathLike[str]) -> list[str]:
    """The names in ``folder`` (sorted) that make it non-empty; none for a missing folder."""
    try:
        return sorted(name for name in os.listdir(folder) if name not in _IGNORED_ENTRIES)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def held_run(folder: str | os.PathLike[str]) -> str | None:
    """What amcl ``folder`` holds, in words (``"a finished simclr AMCL run"``), or None if it holds nothing of
    amcl's (no marker, and none of the files only amcl writes: see :func:`_legacy_kind`)."""
    target = Path(folder)
    marker = read_marker(target)
    kind = marker.get("kind") if marker else _legacy_kind(target) if target.is_dir() else None
    if kind not in MARKER_KINDS:
        return None
    if kind == "grid":
        return "an amcl compare grid"
    try:
        saved = load_yaml(target / "config.yaml")
    except AmclError:
        saved = {}
    if kind == "run" and int(saved.get("runs") or 1) > 1:
        kind = "series"
    what = f"{saved['method']} {'AMCL' if saved.get('amcl') else 'baseline'} {MARKER_KINDS[kind]}" \
        if "method" in saved else f"amcl {MARKER_KINDS[kind]}"
    finished = finished_metrics(target) is not None or (target / "summary.json").exists()
    return f"{'a finished' if finished else 'an unfinished'} {what}"


def claim_folder(folder: str | os.PathLike[str], overwrite: bool = False, clear: bool = False) -> None:
    """Check that a new run may write into ``folder``: a missing or empty folder, or with ``overwrite`` one that
    holds an amcl run or series. Anything else is refused with an :class:`AmclError` naming what is there:
    a folder with files that are not amcl's is never written into nor deleted, ``--overwrite`` or not; a
    compare grid is not replaced by a run. With ``clear`` (and ``overwrite``) the run's contents are deleted
    (the caller holds the folder's lock: :func:`locked_folder`), symbolic links removed, not followed."""
    target = Path(folder)
    entries = folder_entries(target) if target.is_dir() else []
    if not entries:
        return
    held = held_run(target)
    if held is None:
        rule = "; --overwrite replaces only amcl runs" if overwrite else ""
        raise AmclError(f"{target} is not empty and is not an amcl run (it holds {_listing(entries)}){rule}; amcl "
                        "writes a new run only into a new or empty folder: choose another --out")
    if held.endswith("compare grid"):
        raise AmclError(f"{target} holds {held}; a pretrain run does not replace it: choose another --out (or "
                        "delete the grid yourself)")
    if not overwrite:
        raise AmclError(f"{target} holds {held}; continue it with `amcl pretrain --resume {target}`, choose a new "
                        "--out, or pass --overwrite to replace it")
    if clear:
        for name in entries:
            path = target / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def refuse_unsafe_out(out: str | os.PathLike[str]) -> None:
    """Refuse an ``--out`` that no run should write into (or, with ``--overwrite``, clear): empty, the current
    folder or one above it, the home folder, a filesystem root, or a git work tree."""
    text = str(out)
    if not text.strip():
        raise AmclError("--out is empty; give a folder for the run's files, e.g. --out runs/my-run")
    target = Path(text).expanduser().resolve()
    cwd = Path.cwd().resolve()
    why = ("is the current folder" if target == cwd else
           "is a folder above the current one" if target in cwd.parents else
           "is the home folder" if target == Path.home().resolve() else
           "is a filesystem root" if target.parent == target else
           "is a git work tree (it holds .git)" if (target / ".git").exists() else None)
    if why:
        raise AmclError(f"--out {text} {why}; a run writes (and --overwrite replaces) its whole folder: give a "
                        "folder of its own, e.g. --out runs/my-run")


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options of a saved ``config.yaml`` (checked and typed by :func:`amcl.config.load_yaml`), with
    what older versions did not record filled in as they behaved (see :func:`upgrade_config`). A file
    without the options of a run (empty: cut off while the run started) is an :class:`AmclError`."""
    values = load_yaml(Path(path))
    if "method" not in values:
        raise AmclError(f"{path} holds no run's settings (it is empty or cut off, e.g. written on a full disk); "
                        f"start the run again with its options and --overwrite")
    return upgrade_config(values)


#: Options a saved config may lack because the version that wrote it did not have them (:func:`upgrade_config`
#: fills them as that version behaved).
UPGRADED_OPTIONS = ("split_seed", "logger", "save_every")


def read_resumed_config(path: str | os.PathLike[str], trained: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``config.yaml`` of a run being resumed, checked to be whole: every option the run's checkpoint
    recorded (``trained``, its config) or, before the first checkpoint, every option of this version, is
    there. A key left out (a file cut off, or edited) is an :class:`AmclError` naming it: a resumed run never
    gets defaults in place of its settings."""
    values = load_yaml(Path(path))
    options = option_names(values.get("method"))  # the shared options and the file's method's own
    expected = [name for name in options if name in trained] if trained is not None else \
        [name for name in options if name not in UPGRADED_OPTIONS]
    missing = [name for name in expected if name not in values]
    if missing:
        more = f" and {len(missing) - 1} more option(s)" if len(missing) > 1 else ""
        raise AmclError(f"{path} lacks --{missing[0].replace('_', '-')}{more} (it is cut off or was edited), so the "
                        "run's settings are unknown; restore the file, or start the run again with --overwrite")
    return upgrade_config(values)


def upgrade_config(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config's values with the keys of later versions added as the writing version behaved:
    before ``split_seed``, ``seed`` drew the data split; before ``global_batch`` was recorded, it was
    ``batch_size`` x the processes ``devices`` named (``auto``, which counted the GPUs of the machine
    that trained: left unset here; see :meth:`amcl.methods.barlow_twins.BarlowTwins.saved_config`)."""
    values = dict(saved)
    values.setdefault("split_seed", values.get("seed", 0))
    values.setdefault("logger", "none")  # before --logger: no experiment loggers (TensorBoard when installed)
    values.setdefault("save_every", 0)  # before --save-every: last.ckpt only
    if values.get("global_batch") is None and str(values.get("devices", "1")).strip() not in ("auto", "-1"):
        known = {k: v for k, v in values.items() if k in config_options()}
        try:
            values["global_batch"] = PretrainConfig(**{**known, "global_batch": None}).with_global_batch().global_batch
        except (TypeError, ValueError):
            pass  # an unreadable devices value: left to the config's own checks
    return values


def _same(name: str, saved: Any, current: Any) -> bool:
    if name == "augs":  # 'default' and 'acde' are one policy
        try:
            return parse_policy(str(saved)) == parse_policy(str(current))
        except ValueError:
            return False
    if name == "amcl_form":  # infonce is hardest_with_positive's earlier name
        saved = canonical_form(saved)
    return saved == current and isinstance(saved, bool) == isinstance(current, bool)  # 1 == 1.0, True != 1


def config_differences(saved: Mapping[str, Any], current: PretrainConfig, saved_in: str = "in the run",
                       current_in: str = "now", recorded: bool = True) -> list[str]:
    """``--option saved-value in the run, current-value now`` for every option (outside
    :data:`RESUMABLE_CHANGES`) in which a saved run's config differs from ``current``. Options the saved
    config does not hold (written by an older version) are taken to match; without ``recorded``, values
    ``amcl pretrain`` records (the global batch) are not compared."""
    now, options = current.as_dict(), set(option_names())
    differing = [name for name in now if name not in RESUMABLE_CHANGES and name in saved
                 and (recorded or name in options) and not _same(name, saved[name], now[name])]
    return [f"{'--' + name.replace('_', '-') if name in options else name} {saved[name]!r} {saved_in}, "
            f"{now[name]!r} {current_in}" for name in differing]


def finished_metrics(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metrics of the run in ``out`` if it ended normally (None if it did not start or was cut off),
    with ``time_s`` from ``run.json``, where clock times live. A run ended normally when its ``metrics.json``
    is marked complete and its ``run.json`` exists: the final files are written in that order, so a run
    killed while writing them is unfinished, and ``--resume`` writes them."""
    folder = Path(out)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("complete") is not True:
        return None
    try:  # run.json is written before metrics.json is marked complete: without it the run did not end
        metrics["time_s"] = json.loads((folder / "run.json").read_text())["time_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return metrics


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict of an ``amcl pretrain`` run (tensors on the CPU), checked to be one of ours.

    Read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects; a folder is
    read as its ``last.ckpt``. A missing, truncated or foreign file raises :class:`AmclError`."""
    import torch

    p = Path(path)
    if p.is_dir():
        if not (p / "last.ckpt").is_file():
            raise AmclError(f"{p} is a folder without last.ckpt; give a checkpoint file or an amcl pretrain --out "
                            "folder")
        p = p / "last.ckpt"
    if not p.is_file():
        raise AmclError(f"checkpoint {p} does not exist; give the last.ckpt an amcl pretrain run wrote")
    try:
        checkpoint = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds on truncated or foreign files
        reason = " ".join(str(err).split())[:160]
        raise AmclError(
            f"cannot read checkpoint {p} ({type(err).__name__}: {reason}); it is truncated or not a checkpoint "
            "written by amcl pretrain"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not (isinstance(hparams, dict) and isinstance(hparams.get("config"), dict) and "state_dict" in checkpoint):
        raise AmclError(f"{p} is a torch file but not an amcl pretrain checkpoint (no config or state_dict)")
    checkpoint["path"] = str(p)
    return checkpoint


def run_record(config: PretrainConfig, started: float, epoch_seconds: list[float], resumed: bool) -> dict[str, Any]:
    """``run.json``: when and where the run ran, with which versions, and how long each epoch took."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in ("amcl", "torch", "lightning", "kornia", "numpy", "scikit-learn", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "versions": {"python": platform.python_version(), **versions},
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed": resumed,
        "epoch_seconds": epoch_seconds,
        "time_s": round(sum(epoch_seconds), 3),
        "seed": config.seed,
    }


_SUMMARY_KEYS = ("final_loss", "final_knn_acc", "best_knn_acc", "time_s")
_NOT_SUMMARISED = ("epoch", "step", "time_s", "loss", "knn_acc")


def summarize_runs(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sample standard deviation (0 for one run) and values over runs of every metric: the run
    summaries' ``final_loss``, ``final_knn_acc``, ``best_knn_acc``, ``time_s``, and ``final_<name>`` for
    every other value of the last epoch (e.g. ``final_tau_pos_mean``). Runs lacking a metric are left
    out of its statistics; a non-finite value (a diverged run's loss) makes the std nan."""
    per_run: list[dict[str, float]] = []
    for result in results:
        values = {k: result.get(k) for k in _SUMMARY_KEYS}
        last = result["epochs"][-1] if result.get("epochs") else {}
        values.update({f"final_{k}": v for k, v in last.items() if k not in _NOT_SUMMARISED})
        per_run.append({k: float(v) for k, v in values.items() if isinstance(v, (int, float))})
    summary = {}
    for key in dict.fromkeys(k for run in per_run for k in run):
        numbers = [run[key] for run in per_run if key in run]
        spread = statistics.stdev(numbers) if len(numbers) > 1 and all(map(math.isfinite, numbers)) else math.nan
        summary[key] = {
            "mean": statistics.fmean(numbers),  # nan or inf when a run's value was (a diverged run)
            "std": 0.0 if len(numbers) == 1 else spread,
            "values": numbers,
        }
    return summary
