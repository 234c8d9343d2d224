"""lm-eval benchmarks on a trained model, including the project's offline task.

    python eval/lm_eval_run.py --model runs/dpo/final --tasks alignkit_tiny_qa
    python eval/lm_eval_run.py --model runs/dpo/final --tasks alignkit_tiny_qa,hellaswag --limit 100  # hub needed

--model: an HF folder, hub id, PEFT adapter folder or .gguf file. Tasks in eval/lm_eval_tasks/ are always found;
--include-path adds another folder of task YAMLs. Results go to stdout and to --output-dir (JSON + markdown).
"""

import argparse
import sys

from alignkit.errors import AlignkitError
from alignkit.judge.benchmarks import results_table, run_lm_eval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF folder, hub id, PEFT adapter folder or .gguf file.")
    parser.add_argument("--tasks", required=True, help="Comma-separated lm-eval task names, e.g. alignkit_tiny_qa.")
    parser.add_argument("--include-path", help="Extra folder of lm-eval task YAMLs.")
    parser.add_argument("--limit", type=float, help="At most this many documents per task (a fraction if < 1).")
    parser.add_argument("--num-fewshot", type=int, help="Few-shot examples (default: the task's own).")
    parser.add_argument("--batch-size", type=int, default=8, help="Batch size for log-likelihood requests.")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--output-dir", default="outputs/lm_eval", help="Where lm_eval_results.json/.md go.")
    args = parser.parse_args(argv)
    limit = args.limit if args.limit is None or args.limit < 1 else int(args.limit)
    try:
        summary = run_lm_eval(
            args.model,
            [t.strip() for t in args.tasks.split(",") if t.strip()],
            include_path=args.include_path,
            limit=limit,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
            device=args.device,
            output_dir=args.output_dir,
        )
    except AlignkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(results_table(summary))
    print(f"written to {args.output_dir}/lm_eval_results.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
