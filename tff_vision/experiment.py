"""One federated experiment end to end: data, partition, federated training, baselines, outputs.

`ExperimentConfig` (config.py) holds every setting. `setup` validates all
input, loads the data and partitions it before anything is written;
`run_setup` then runs the stages in order (outputs.write_start,
federated_stage, baselines, outputs.write_summary) and fills the output
directory:

    flags.json            the config (a rerun must match it to resume)
    partition.csv         client x class counts
    metrics.csv           one row per round; on eval rounds eval_* (test) and val_*
                          (validation) columns (with --aggregator=dp, eval_epsilon:
                          epsilon after that round)
    tb/                   TensorBoard logs
    checkpoints/          federated process state per round, baseline checkpoints,
                          selected/<arm>.npz: the round each arm reports so far
    baselines/<name>.csv  one row per round of that baseline: train and val metrics
    baselines/<name>.json the result of each finished baseline
    summary.json          the results of every arm at the round --select chose, with
                          95% intervals and the last round's metrics beside (written
                          last); "algorithm" holds the settings the algorithm ran
                          with, "privacy" (--aggregator=dp) the (epsilon, delta) guarantee
    personalized.json     --personalize_epochs: each client's fine-tuned model, scored
    curves.png, confusion_matrix.png, per_hospital.png
    .lock                 held by the running process (its PID inside): a second run
                          on the same directory stops with a one-line error

Every file is written atomically, so a killed run leaves no half-written
result, and a rerun with the same output directory resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

from tff_vision import data as data_lib
from tff_vision import devices, dirlock, fileio, memory
from tff_vision import partition as partition_lib
from tff_vision.config import ConfigError, ExperimentConfig


def prepare_output_dir(config: ExperimentConfig) -> pathlib.Path:
    """Creates/checks the output dir; refuses one holding a run with other settings."""
    out = pathlib.Path(config.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"cannot write to --output_dir={out} ({e.strerror or e}); choose a writable directory"
        ) from None
    flags_path = out / "flags.json"
    if flags_path.exists():
        previous = fileio.read_json(flags_path)
        if previous is None:
            raise ConfigError(
                f"{flags_path} is unreadable; use a new --output_dir or delete that file"
            )
        diff = config.differences_from(previous)
        if diff:
            shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diff[:4])
            raise ConfigError(
                f"--output_dir={out} holds a run with other settings ({shown}); "
                "rerun with the same flags to resume, or use a new --output_dir"
            )
    return out


@dataclasses.dataclass
class Setup:
    """Everything validated and loaded, before anything is written.

    `lean_memory`: whether the run keeps its memory low (`tff_vision.memory`).
    """

    config: ExperimentConfig
    dataset: data_lib.ImageDataset
    partition: partition_lib.Partition
    output_dir: pathlib.Path
    lean_memory: bool = False


def setup(config: ExperimentConfig, allow_download: bool = True) -> Setup:
    """Validates the config, loads the data and partitions it. Writes nothing.

    With lean memory, the first TensorFlow tensor of the process is allocated
    here (see `memory.system_tensor_allocator`).

    Raises:
        ConfigError, data.DataError, partition.PartitionError, models.ModelError.
    """
    config.validate()
    lean = memory.is_lean(config.lean_memory, config.model)
    with memory.system_tensor_allocator(lean):
        dataset = data_lib.load(
            config.dataset, config.size, data_dir=config.data_dir, allow_download=allow_download
        )
        partition = partition_lib.make_partition(
            config.partition,
            dataset.train.labels,
            num_clients=config.num_clients,
            num_classes=dataset.num_classes,
            seed=config.seed,
            exclude=config.exclude or None,
        )
        if config.clients_per_round > config.num_clients:
            raise ConfigError(
                f"--clients_per_round={config.clients_per_round} exceeds --num_clients="
                f"{config.num_clients}; use 0 for all clients"
            )
        build_model(config, dataset)  # Building once checks the model against the data.
    return Setup(config, dataset, partition, prepare_output_dir(config), lean)


def build_model(config: ExperimentConfig, dataset: data_lib.ImageDataset):
    """The experiment's Keras model for `dataset`, freshly initialized from --seed.

    Every participant (federated process, evaluation, baselines) starts from
    one of these, so all start from the same weights.

    Raises:
        models.ModelError: If the model does not fit the data.
    """
    return model_builder(config, dataset)()


def model_builder(config: ExperimentConfig, dataset: data_lib.ImageDataset) -> Callable[[], Any]:
    """`build_model` for this config and dataset as a picklable callable that holds no data."""
    # Imported on use: importing this module loads no TF, and `setup` loads it after validation.
    from tff_vision import models  # pylint: disable=g-import-not-at-top

    return functools.partial(
        models.build_model,
        config.model,
        dataset.input_shape,
        dataset.num_classes,
        norm=config.norm,
        stem=config.stem,
        seed=config.seed,
        weight_standardization=config.weight_standardization,
    )


def run_experiment(
    config: ExperimentConfig,
    printer: Callable[[str], None] = print,
    allow_download: bool = True,
) -> dict[str, Any]:
    """Runs (or resumes) the experiment of `config`; returns the summary dict."""
    return run_setup(setup(config, allow_download=allow_download), printer)


def run_setup(s: Setup, printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs an experiment whose input `setup` has validated; returns the summary.

    The output dir's lock (`dirlock`) is held from before the first write to
    after summary.json, so a second run on the same dir stops instead of
    overwriting this one's checkpoints and metrics.

    Raises:
        ConfigError: If another process is running in the output dir.
    """
    try:
        lock = dirlock.DirectoryLock(s.output_dir)
    except dirlock.DirectoryLocked as e:
        raise ConfigError(
            f"--output_dir={s.output_dir} is in use by another run (pid {e.pid}); "
            "wait for it to end (rerunning then resumes it) or use another --output_dir"
        ) from None
    with lock:
        return _run_stages(s, printer)


def _run_stages(s: Setup, printer: Callable[[str], None]) -> dict[str, Any]:
    """Runs the stages in order; returns the summary."""
    # The stages import TF and TFF at their top: imported on use, as `build_model` does.
    from tff_vision import (  # pylint: disable=g-import-not-at-top
        baselines,
        federated_stage,
        outputs,
        personalization,
        selection,
    )

    start = time.monotonic()
    config, dataset, partition, out = s.config, s.dataset, s.partition, s.output_dir
    device, machine = devices.configure(config.op_determinism, config.mixed_precision)
    outputs.write_start(config, dataset, partition, out, machine, printer)
    parts = federated_stage.build_parts(config, dataset, partition, printer)
    build = model_builder(config, dataset)
    held_out = selection.held_out(
        dataset, partition.client_classes, config.seed, config.test_time_flips
    )
    fed = federated_stage.run_federated(
        config, parts, build, held_out, out, printer, lean_memory=s.lean_memory
    )
    jobs = baselines.baseline_jobs(config, dataset, parts.data)
    results = baselines.run_baselines(config, jobs, build, held_out, parts.schedule, out, printer)
    personalized = None
    if config.personalize_epochs:
        personalized = personalization.run(
            config, fed.client_weights, parts.data, build, held_out, out, printer
        )
    return outputs.write_summary(
        config,
        dataset,
        partition,
        out,
        fed=fed,
        algorithm=parts.settings,
        privacy=parts.accounting.report(fed.rounds) if parts.accounting else None,
        baselines=results,
        personalized=personalized,
        device=device,
        started=start,
        printer=printer,
    )
