"""Check the embedded default against METHOD §8's calibration targets, from a finished workbook.

Usage: ``python benchmarks/bench_calibration.py [--out results/workbook]`` after ``make workbook``.
Reads the workbook's studies (the baselines' trained and untrained test metrics with and without
the soft-biometric mask, the last epoch's training ID accuracy, the ground-to-ground diagnostic,
the query counts and the bootstrap interval of the report) and writes
results/benchmarks/calibration.json: the calibration table, every target with its value and
whether it holds, and the workbook's stage times. Exits 1 when a target fails, so the figures
and the verdict cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import write_result  # noqa: E402

from xtfclip_lib import workbook  # noqa: E402
from xtfclip_lib.workbook import calibration, report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/workbook", help="workbook results folder (default: %(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not (out / "studies").is_dir():
        print(f"bench_calibration: skipped, {out / 'studies'} not found (run `make workbook` first)")
        return 0
    summary = report.summarise(report.collect_studies(out, workbook.plan_studies()))
    table = calibration.calibration_table(out)
    checks = calibration.calibration_checks(out, summary)
    stages = json.loads((out / "workbook.json").read_text()).get("stages", {}) if (out / "workbook.json").is_file() else {}
    path = write_result("calibration", {
        "workbook": str(out), "all_ok": bool(checks.ok.all()), "checks": checks.to_dict(orient="records"),
        "table": table.to_dict(orient="records"), "stages_s": stages})
    shown = table.assign(R1=(100 * table.R1).round(1), mAP=(100 * table.mAP).round(1))
    print(shown.to_string(index=False))
    print(checks.assign(value=[f"{100 * v:.1f} %" if unit == "fraction" else f"{v:.0f}"
                               for v, unit in zip(checks.value, checks.unit)]).drop(columns="unit")
          .to_string(index=False))
    print(f"wrote {path}")
    return 0 if checks.ok.all() else 1


if __name__ == "__main__":
    sys.exit(main())
