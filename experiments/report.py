"""Tables and plots of a sweep made by `python -m experiments.sweep`.

Example:

  python -m experiments.report --sweep_dir=/tmp/s1 [--metric=test_accuracy]

Reads every finished cell (summary.json + flags.json) of the sweep and writes
into <sweep_dir>/report/: table.csv and table.md (partition x algorithm,
"mean ± std" and 95% t-interval over seeds of final test accuracy and AUC; a
best algorithm per row by --metric only where it beats every other one in a
paired comparison across seeds, else a tie), cells.csv, aggregate.csv,
accuracy_vs_alpha.png, accuracy_vs_k.png, algorithms.png,
partitions/<partition>.png and the per-hospital
tables hospitals.md / hospitals.csv / hospital_verdicts.csv (each method's
model at each hospital, on the hospital's own classes, against local-only and
FedAvg) with hospitals/<model>__<partition>.png. The markdown tables go to
stdout; notes (skipped plots, unfinished cells) to stderr. See
`tff_vision/report.py` for the design. Unfinished cells are left out, so the
report can be made while a sweep still runs.

Exit status: 0 written, 2 bad input (one-line error).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from experiments.cli import fail, parse_flags
from tff_vision import report

flags.DEFINE_string("sweep_dir", None, "Directory of the sweep (as given to experiments.sweep).")
flags.DEFINE_enum(
    "metric",
    "test_accuracy",
    list(report.METRICS),
    "Metric of the paired comparison that names a row's best algorithm, and of the plots.",
)

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    if not FLAGS.sweep_dir:
        fail("--sweep_dir is required; pass the directory given to experiments.sweep")
    sweep_dir = pathlib.Path(FLAGS.sweep_dir).expanduser()
    try:
        result = report.write_report(sweep_dir, FLAGS.metric)
    except report.ReportError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {sweep_dir / report.REPORT_DIR} ({e.strerror or e}); check permissions")
    print(result.markdown, end="", flush=True)
    if result.hospitals_markdown:
        print("\n" + result.hospitals_markdown, end="", flush=True)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(report.describe_files(result.files, sweep_dir), file=sys.stderr, flush=True)


def entry_point() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry_point()
