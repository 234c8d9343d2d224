"""The paper's comparison in one command: (A) chosen-only SFT → DPO, (B) extended SFT → DPO, (C) extended SFT →
on-policy DPO, each a run of recipes/extended_dpo.py on the same data, probes and number of preference updates.

    python recipes/squeezing_study.py --config recipes/study_configs/squeezing_study.yaml
    python recipes/squeezing_study.py --config recipes/study_configs/squeezing_study.yaml --arms '[A, B]' \
        --run_win_rates false --study_dir outputs/study_ab

Writes `<study_dir>/study.md`, a self-contained `study.html` and the figures; each arm's run is in
`<study_dir>/<arm>/` (see alignkit/study.py). A rerun skips what is finished, as the recipe does.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.study import parse_study_config, run_study


def recipe_main():
    """The extended-DPO recipe's `main`, imported from its file next to this one."""
    spec = importlib.util.spec_from_file_location("extended_dpo", Path(__file__).with_name("extended_dpo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def main(argv: list[str] | None = None) -> Path:
    study = parse_study_config(sys.argv[1:] if argv is None else argv)
    return run_study(study, recipe_main())


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("alignkit").setLevel(logging.INFO)  # stage progress and probe headlines; libraries stay quiet
    try:
        main()
    except AlignkitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
