"""Write the per-image test predictions of every committed laptop-study model.

Usage (from the repository root; CIFAR-10 from ``CONVNN_DATA_DIR`` or ``--data-dir``)::

    python scripts/laptop_predictions.py [--data-dir DIR] [--batch-size 100]

For each weights file of the laptop study (``weights/<preset>.pt``, seed 0) and of its
interventions folder (``weights/<preset>-seed<seed>.pt``), the model is built from its preset,
its weights are put in through :func:`convnn.study.trained_model` (the package's one
``load_weights``), and it is evaluated in float32 on the study's test images (the first 100 of
each class: 1,000). The predicted class of every image goes to ``predictions/<weights
stem>.npz`` beside the ``weights/`` folder (:func:`convnn.run_folder.save_predictions`, with the
labels), and ``predictions/README.md`` records the command, commit, date, device and, per
model, the evaluated top-1 against the final test top-1 its run logged, and why they differ
where they do.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from convnn import study
from convnn._io import atomic_write_text, git_commit
from convnn.results import load_run
from convnn.run_folder import (
    read_predictions,
    save_predictions,
    study_predictions_path,
    study_run_folder,
)

#: This checkout's committed results (not those of an installed convnn).
RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"


def _root(seed: int) -> Path:
    """The folder holding the weights of ``seed`` (see :func:`convnn.study.weights_file`)."""
    return RESULTS / (study.STUDY_DIR if seed == study.WEIGHTS_SEED else study.INTERVENTIONS_DIR)


def _models() -> list[tuple[str, int, Path]]:
    """``(preset, seed, weights file)`` of every committed laptop model."""
    found = []
    for name in study.PRESETS:
        for seed in study.SEEDS:
            path = study.weights_file(name, seed, _root(seed))
            if path.is_file():
                found.append((name, seed, path))
    return found


def _logged_top1(name: str, seed: int) -> float:
    """The final test top-1 the run of these weights logged (its folder beside ``weights/``)."""
    return load_run(study_run_folder(_root(seed), name, seed)).records[-1]["test_top1"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 (default: CONVNN_DATA_DIR)")
    parser.add_argument("--batch-size", type=int, default=250,
                        help="evaluation batch (default: that of study.correct_per_image, "
                             "which wrote interventions.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = study.load_data(args.data_dir, download=False)
    rows = []
    for name, seed, weights in _models():
        model = study.trained_model(name, seed, _root(seed))
        predicted, labels = study.predict(model, data, args.batch_size)
        dest = study_predictions_path(_root(seed), name,
                                      None if seed == study.WEIGHTS_SEED else seed)
        save_predictions(dest, predicted, labels)
        found = read_predictions(dest)
        logged = _logged_top1(name, seed)
        # how much float rounding moves the predictions: another batch size, a scaled input
        other_batch = int((study.predict(model, data, 100)[0] != predicted).sum())
        scaled = int((study.predict(model, data, args.batch_size, input_scale=1 + 1e-6)[0] != predicted).sum())
        rows.append((_root(seed), name, seed, found.top1, logged, other_batch, scaled))
        print(f"{name} seed {seed}: {found.top1:.1f} % evaluated, {logged:.1f} % logged; "
              f"{other_batch} and {scaled} predictions change -> {dest}", flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if os.environ.get("PYTHONPATH") == ".":  # this checkout's package, not an installed one
        command = "PYTHONPATH=. " + command
    if os.environ.get("CONVNN_DATA_DIR") and not args.data_dir:
        command = "CONVNN_DATA_DIR=<CIFAR-10 JPEG copy> " + command
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    for folder in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == folder]
        lines = [
            "# Per-image test predictions of the committed weights",
            "",
            ("`<weights stem>.npz`: the predicted class (`predicted`, uint8) and the label "
            "(`labels`) of each of the study's 1,000 test images (the first 100 of each class "
            "of CIFAR-10, JPEG copy), in the test set's order; read them with "
            "`convnn.run_folder.read_predictions`. They make paired tests (McNemar) between "
            "these models possible."),
            "",
            f"- command: `{command}` (from the repository root)",
            f"- commit: `{git_commit()}`",
            f"- date: {date}",
            (f"- device: CPU, float32 (torch {torch.__version__}, Python "
            f"{platform.python_version()})"),
            "",
            (f"Evaluated in batches of {args.batch_size}. The last two columns count the "
             "predictions that change when the same model is evaluated in batches of 100, or "
             "with every input multiplied by 1 + 1e-6."),
            "",
            ("| model | seed | evaluated top-1 (%) | logged final test top-1 (%) "
             "| changed: batches of 100 | changed: input × (1 + 1e-6) |"),
            "|---|---|---|---|---|---|",
            *(f"| `{n}` | {s} | {ev:.1f} | {lg:.1f} | {ob} | {sc} |"
              for _, n, s, ev, lg, ob, sc in mine),
            "",
            ("Where the evaluated and the logged accuracy differ: the logged accuracy is the "
             "float32 model's at the end of training, evaluated in batches of 64; these "
             "weights are stored in float16 (a relative rounding of up to 2^-11). A ConvNN2d "
             "layer's top-k selection is discrete, so differences at the level of float "
             "rounding change which neighbours it selects, and with them some predictions "
             "(the last two columns). Paired tests between these files compare the models "
             "as evaluated here."),
            "",
        ]
        atomic_write_text(folder / "predictions" / "README.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
