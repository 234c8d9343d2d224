"""Win rate of a candidate against a baseline, judged by an LLM in both orders, with report.md and report.html.

    python eval/win_rate.py --candidate runs/dpo/final --baseline runs/sft/final --judge local --output-dir DIR
    python eval/win_rate.py --candidate a.jsonl --baseline b.jsonl \
        --judge-base-url https://api.openai.com/v1 --judge-model gpt-4o --judge-api-key-env OPENAI_API_KEY

Exit status: 0 done, 2 bad input (message names file/line/field), 3 incomplete (budget spent or requests kept
failing; rerun to finish from the cache), 130 interrupted. `--help` lists every option.
"""

import sys

from alignkit.judge.cli import main

if __name__ == "__main__":
    sys.exit(main())
