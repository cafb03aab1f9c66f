"""The notebooks in notebooks/ run end to end, with small parameters, against the library.

Each notebook is read, a cell with small parameters is inserted after its
`parameters` cell (papermill style: the injected values override the defaults)
and every cell runs in a real Jupyter kernel via nbclient. The committed
notebooks are never written: they are checked byte for byte after the run. A
library change that breaks a notebook (a renamed function, a changed summary
key) fails here. Each run also checks that no TFF `worker_binary` survives:
none owned by the still-running kernel after the last cell (`run_experiment`
must shut down the worker it starts), none owned by any of the sweep's cell
processes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import pathlib
import sys

import nbformat
import numpy as np
import psutil
from absl.testing import absltest
from nbclient import NotebookClient

from tff_vision import data as data_lib
from tff_vision import runtime

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_NOTEBOOKS = _ROOT / "notebooks"
_SHARED = _ROOT.parent / "shared" / "medmnist"
_CELL_TIMEOUT_S = 600


def _parameter_names(cell) -> set[str]:
    """Names the `parameters` cell assigns."""
    names = set()
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _outputs_text(cell) -> str:
    """Everything a code cell showed: streams, text and markdown reprs, errors."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            data = output.get("data", {})
            parts.append(data.get("text/markdown", ""))
            parts.append(data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
    return "\n".join(parts)


# Examples per class of each split of the generated OCTMNIST stand-in (4 classes).
_STAND_IN_PER_CLASS = {"train": 80, "val": 15, "test": 25}
_STAND_IN_LABEL = "octmnist (SYNTHETIC stand-in, not OCTMNIST data)"


def _write_octmnist_stand_in(path: pathlib.Path, seed: int = 0) -> dict[str, int]:
    """Writes a small generated `octmnist.npz` with the official keys, dtypes and shapes.

    Classes, channels and split names come from medmnist's INFO for OCTMNIST: grey
    `(N, 28, 28)` uint8 images and `(N, 1)` uint8 labels per split. Class k is a bright
    band at rows 7k..7k+6 over dark noise, so a small CNN can learn it. Returns the split
    sizes.
    """
    info = data_lib.dataset_info("octmnist")
    assert info["n_channels"] == 1 and sorted(info["n_samples"]) == sorted(_STAND_IN_PER_CLASS)
    num_classes = len(info["label"])
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in _STAND_IN_PER_CLASS.items():
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        images = rng.integers(0, 80, (len(labels), 28, 28))
        for k in range(num_classes):
            images[labels == k, 7 * k : 7 * k + 7, :] += 150
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return {split: n * num_classes for split, n in _STAND_IN_PER_CLASS.items()}


class NotebookTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        if not (_SHARED / "retinamnist.npz").exists():
            self.skipTest(f"real MedMNIST file {_SHARED / 'retinamnist.npz'} not present")
        try:
            import IPython  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        except ImportError as e:
            self.fail(
                f"IPython cannot be imported in this environment ({e}); no Jupyter kernel can "
                "start, so the notebooks cannot run"
            )
        self.tmp = pathlib.Path(self.create_tempdir().full_path)
        # Only RetinaMNIST here, so the notebooks take their RetinaMNIST path even where
        # ../shared/medmnist holds more.
        self.data_dir = self.tmp / "data"
        self.data_dir.mkdir()
        (self.data_dir / "retinamnist.npz").symlink_to(_SHARED / "retinamnist.npz")

    def run_notebook(self, name: str, **parameters) -> list:
        """Runs notebooks/`name` with `parameters` injected; returns its code cells, executed."""
        path = _NOTEBOOKS / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        nb = nbformat.read(path, as_version=4)
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        self.assertLen(tagged, 1, msg=f"{name} needs exactly one cell tagged 'parameters'")
        unknown = set(parameters) - _parameter_names(nb.cells[tagged[0]])
        self.assertEmpty(unknown, msg=f"not parameters of {name}")
        injected = nbformat.v4.new_code_cell(
            "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
        )
        injected.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(tagged[0] + 1, injected)

        client = NotebookClient(
            nb,
            timeout=_CELL_TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(_NOTEBOOKS)}},
        )
        with client.setup_kernel():
            kernel_pid = client.km.provisioner.pid
            self.assertEqual(
                psutil.Process(kernel_pid).cmdline()[0],
                sys.executable,
                msg="the python3 kernel must run this environment's interpreter",
            )
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)  # Raises CellExecutionError on any error.
            # The kernel is still alive, so a worker it started and did not stop would still
            # be running (workers die with their parent). Workers are matched by owner pid, not
            # by a global before/after diff, which other processes' workers would disturb.
            self.assertEqual(
                runtime.find_workers(owner_pid=kernel_pid), [], msg="TFF workers left running"
            )
        self.assertEqual(runtime.find_workers(owner_pid=kernel_pid), [])
        self.assertEqual(
            hashlib.sha256(path.read_bytes()).hexdigest(),
            digest,
            msg=f"{path} was modified by the test",
        )
        code = [c for c in nb.cells if c.cell_type == "code"]
        for cell in code:
            self.assertNotIn("Traceback", _outputs_text(cell))
        return code

    def test_octmnist_three_hospitals(self):
        out = self.tmp / "run"
        cells = self.run_notebook(
            "octmnist_three_hospitals.ipynb",
            MODEL="cnn",
            ROUNDS=2,
            OUTPUT_DIR=str(out),
            DATA_DIR=str(self.data_dir),
        )
        text = "\n".join(_outputs_text(c) for c in cells)
        self.assertIn("used dataset: retinamnist", text)
        self.assertIn("**Dataset used: retinamnist**", text)
        self.assertIn('exclude="1;2;3"', text)
        self.assertIn("results on retinamnist, cnn, 2 rounds:", text)
        for row in ("local-only, hospital 0", "local-only, hospital 2", "FedAvg (2 rounds)"):
            self.assertIn(row, text)
        self.assertIn("reference accuracy (OCTMNIST)", text)
        self.assertIn("FedAvg - local-only", text)
        self.assertIn("TFF workers left running by this kernel: 0", text)
        html = "\n".join(
            o.get("data", {}).get("text/html", "") for c in cells for o in c.get("outputs", [])
        )
        self.assertIn("0.771", html)  # The quoted FedAvg reference figure, next to the measured.
        images = [
            o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
        ]
        self.assertLen(images, 3)  # Confusion matrix, partition, curves.
        self.assertTrue((out / "retinamnist" / "summary.json").exists())

    def test_octmnist_branch_on_a_synthetic_stand_in(self):
        """The OCTMNIST path runs, and its synthetic stand-in is never called OCTMNIST.

        The library refuses the generated file (md5); only the notebook's test-only
        SYNTHETIC_STAND_IN parameter accepts it, and then names it synthetic everywhere.
        """
        sizes = _write_octmnist_stand_in(self.data_dir / "octmnist.npz")
        with self.assertRaisesRegex(data_lib.DataError, "md5"):
            data_lib.load("octmnist", 28, str(self.data_dir), allow_download=False)
        out = self.tmp / "run"
        cells = self.run_notebook(
            "octmnist_three_hospitals.ipynb",
            MODEL="cnn",
            ROUNDS=2,
            OUTPUT_DIR=str(out),
            DATA_DIR=str(self.data_dir),
            SYNTHETIC_STAND_IN=True,
        )
        text = "\n".join(_outputs_text(c) for c in cells)
        self.assertIn(f"used dataset: {_STAND_IN_LABEL}", text)
        self.assertIn(f"**Dataset used: {_STAND_IN_LABEL}** (28 px): a small generated", text)
        self.assertIn("its numbers say nothing about OCTMNIST", text)
        for hospital, name in enumerate(
            ("choroidal neovascularization", "diabetic macular edema", "drusen")
        ):
            self.assertIn(f"hospital {hospital} lacks class {hospital} ({name})", text)
        self.assertIn(f"octmnist 28px ({self.data_dir / 'octmnist.npz'})", text)
        self.assertIn(f"{sizes['train']} train / {sizes['test']} test, 4 classes", text)
        self.assertIn(f"results on {_STAND_IN_LABEL}, cnn, 2 rounds:", text)
        # Not the RetinaMNIST fallback, and no result is named plain OCTMNIST.
        self.assertNotIn("retinamnist", text)
        self.assertNotIn("directly comparable", text)
        self.assertNotRegex(text, r"(used|results on|Dataset used:\*?\*?) octmnist(?! \(SYNTH)")
        self.assertIn("TFF workers left running by this kernel: 0", text)
        summary = json.loads((out / "octmnist_synthetic" / "summary.json").read_text())
        self.assertFalse((out / "octmnist").exists())
        self.assertEqual(summary["dataset"]["name"], "octmnist")
        self.assertEqual(summary["dataset"]["train_examples"], sizes["train"])
        self.assertEqual(summary["dataset"]["test_examples"], sizes["test"])
        self.assertEqual(summary["federated"]["rounds"], 2)
        classes = {str(c): [k for k in range(4) if k != c] for c in range(3)}
        self.assertEqual(summary["partition"]["client_classes"], classes)

    def test_noniid_ablation_runs_a_small_sweep(self):
        sweep_dir = self.tmp / "sweep"
        cells = self.run_notebook(
            "noniid_ablation.ipynb",
            SWEEP_DIR=str(sweep_dir),
            RUN_SWEEP_IF_MISSING=True,
            PARTITIONS=["iid", "label_exclusion"],
            ALGORITHMS=["fedavg"],
            MODELS=["cnn"],
            SEEDS=[0],
            RUN_FLAGS={"dataset": "retinamnist", "rounds": 1, "num_clients": 3},
            DATA_DIR=str(self.data_dir),
        )
        text = "\n".join(_outputs_text(c) for c in cells)
        self.assertIn("[cells 2/2]", text)
        self.assertIn("### model: cnn", text)
        self.assertRegex(
            text, r"\| iid \| \d\.\d{3} / \d\.\d{3} \(n=1\) \| only fedavg: nothing to compare \|"
        )
        self.assertIn("| label_exclusion |", text)
        self.assertIn("note: no finished dirichlet: cells; skipped", text)
        images = [
            o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
        ]
        # algorithms.png, accuracy_vs_mb.png; per partition a heat map and per-hospital bars.
        self.assertLen(images, 6)
        self.assertIn("hospital 0 |", text)  # The per-hospital table.
        self.assertTrue((sweep_dir / "report" / "table.md").exists())
        # Every cell ran as its own process: none may have left a worker behind.
        records = json.loads((sweep_dir / "sweep.json").read_text())["cells"]
        self.assertLen(records, 2)
        for record in records:
            self.assertEqual(record["status"], "done", record)
            self.assertEqual(runtime.find_workers(owner_pid=record["pid"]), [], record)

    def test_medmnist_v2_reproduction_with_two_short_seeds(self):
        out = self.tmp / "reproduction"
        cells = self.run_notebook(
            "medmnist_v2_reproduction.ipynb",
            DATASETS=["retinamnist"],
            SEEDS=[0, 1],
            EPOCHS=2,
            MILESTONES=[1],
            BATCH_SIZE=32,
            TRAIN_LIMIT=96,
            DATA_DIR=str(self.data_dir),
            OUTPUT_DIR=str(out),
            FEDERATED={"retinamnist": str(self.tmp / "no_runs")},
        )
        text = "\n".join(_outputs_text(c) for c in cells)
        self.assertIn("retinamnist: 96 train / 120 val / 400 test", text)
        self.assertIn("[retinamnist seed 1] round 2/2", text)
        self.assertIn("| retinamnist | MedMNIST v2 ResNet-18 (28), published | 1 | 0.524 |", text)
        self.assertRegex(
            text,
            r"\| retinamnist \| this protocol, centralized \(reproduction\) \| 2 \| "
            r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \| [+-]\d\.\d{3} \|",
        )
        self.assertIn("retinamnist: 0 federated run(s) found", text)
        self.assertRegex(text, r"retinamnist: reproduction ACC [+-]\d\.\d{3} from the published")
        for seed in (0, 1):
            self.assertTrue((out / "retinamnist" / f"seed_{seed}" / "summary.json").exists())


if __name__ == "__main__":
    absltest.main()
