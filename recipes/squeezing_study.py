"""The paper's claims tested here: a factorial study of y⁻ (near | far) × SFT (chosen-only | extended), over seeds.

    python recipes/squeezing_study.py --profile quick     # one seed, ~15 min on a 2-core CPU
    python recipes/squeezing_study.py --profile full      # three seeds, <= 100 min
    python recipes/squeezing_study.py --profile full --analyze   # rewrite the report from the raw files alone

Setup → train → save: the settings (alignkit/study/config.py, profiles in recipes/study_configs/), the runs
(alignkit/study/run.py: SFT, then DPO with probes and verified held-out answers, every (seed, arm) to its own files;
a rerun skips what is finished), the analysis and report (alignkit/study/analysis.py, report.py) in
`<study_dir>/study.md`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.study.analysis import analyze
from alignkit.study.config import parse_study_config
from alignkit.study.report import write_report
from alignkit.study.run import run_study


def main(argv: list[str] | None = None) -> Path:
    study = parse_study_config(sys.argv[1:] if argv is None else argv)
    if not study.analyze:
        run_study(study)
    summary = analyze(Path(study.study_dir), n_boot=study.bootstrap)
    report = write_report(Path(study.study_dir), summary)
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        main()
    except AlignkitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
