"""Extended SFT → DPO/IPO: the squeezing-aware preference recipe (the script form of `alignkit.recipe`).

    accelerate launch recipes/extended_dpo.py --config recipes/configs/demo.yaml   # the CPU demo: SmolLM2-135M, LoRA
    accelerate launch recipes/extended_dpo.py --config recipes/configs/ipo.yaml --dataset_name my_pairs.jsonl
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml recipes/extended_dpo.py --config ...

The stages (setup → SFT → preference → save → report) read top to bottom in alignkit/recipe.py.
"""

from alignkit.recipe import main, run_recipe

__all__ = ["main", "run_recipe"]

if __name__ == "__main__":
    main()
