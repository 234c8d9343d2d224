#!/usr/bin/env bash
# Builds the training image and smoke-runs it the way a user would, then checks what the README promises:
#   1. the base image is pulled; only where no registry answers is a stand-in assembled (debootstrap Debian bookworm
#      with Python 3.11, imported under the FROM name) so the Dockerfile builds unchanged;
#   2. the image builds (time and size are printed);
#   3. the entrypoint trains a short recipe offline (--network none) as the image's own user, with host folders at
#      /outputs and /cache: report.md and the stage adapters must land in /outputs owned by uid 1000;
#   4. a second run into a new output folder reuses /cache: no second GGUF conversion, cache folder untouched;
#   5. no .git, credential file or secret-looking value is in any layer; HF_HOME and ALIGNKIT_CACHE are in /cache;
#   6. preemption: a run stopped by `stop` mid-training exits 75 with preempted.json, and the same run again resumes
#      and finishes (PREEMPT_ARGS: its recipe overrides).
# Run by hand, not by CI: the image is several GB and the build downloads CUDA PyTorch.
#   bash bench/docker_smoke.sh              # docker when a docker engine answers, podman otherwise
# The figures (build and run seconds, image size) go to bench/results/docker_smoke/result.json (bench/_results.py).
# Knobs (environment): ENGINE, IMAGE, SMOKE_DIR (host folders, logs, stand-in), SMOKE_CONTEXT (build context, default
# the repository), SMOKE_ARGS (recipe overrides), PODMAN_OPTS (podman's global options), DEBIAN_MIRROR, PYTHON (the
# interpreter that writes the figures; standard library only, default python3).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CONTEXT=${SMOKE_CONTEXT:-$REPO}
IMAGE=${IMAGE:-alignkit:smoke}
SMOKE_DIR=${SMOKE_DIR:-/var/tmp/alignkit-docker-smoke}
# 2 + 2 optimizer steps: both stages, the adapters and report.md. The squeezing monitor is off: its probes (greedy
# decoding and scoring at each stage's start and end) took most of the run even with 4 prompts per split on the shared
# 2-core machine, and they test alignkit, not the image. SMOKE_ARGS="--sft_max_steps 2 ..." puts them back.
SMOKE_ARGS=${SMOKE_ARGS:---sft_max_steps 2 --preference_max_steps 2 --probe_enabled false}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CONTAINER_UID=1000 # the Dockerfile's USER
mkdir -p "$SMOKE_DIR"
SMOKE_DIR=$(cd "$SMOKE_DIR" && pwd)

say() { printf '\n== %s\n' "$*"; }
die() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

# --- engine: docker only when its daemon answers (a docker CLI alone is not an engine)
if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
  else
    die "neither a docker engine (docker info) nor podman is available"
  fi
fi
ENGINE_OPTS=()
if [ "$ENGINE" = podman ]; then
  # What was found on the project's machines: vfs copies every layer and fills the disk, crun refuses the
  # machine's cgroup layout, and the default ulimits cannot be set. A store of its own keeps the runs reproducible from
  # a clean state (`umount /var/tmp/podman-store/overlay; rm -rf /var/tmp/podman-store`) and away from the repository.
  if [ -n "${PODMAN_OPTS:-}" ]; then
    read -r -a ENGINE_OPTS <<<"$PODMAN_OPTS"
  else
    ENGINE_OPTS=(--root /var/tmp/podman-store --runroot /var/tmp/podman-run --storage-driver overlay)
    if command -v runc >/dev/null 2>&1; then ENGINE_OPTS+=(--runtime runc); fi
  fi
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n' \
      >"$SMOKE_DIR/containers.conf"
    export CONTAINERS_CONF="$SMOKE_DIR/containers.conf"
  fi
fi
engine() { "$ENGINE" "${ENGINE_OPTS[@]}" "$@"; }
say "engine: $ENGINE $(engine --version 2>/dev/null | head -1)"

# --- 1. base image(s): pull; where that fails, an image already here, else the stand-in
qualify() { # podman stores unqualified names under localhost/, but FROM python:... resolves to docker.io
  case "$1" in
  */*/* | localhost/*) echo "$1" ;;
  */*) case "${1%%/*}" in *.* | *:*) echo "$1" ;; *) echo "docker.io/$1" ;; esac ;;
  *) echo "docker.io/library/$1" ;;
  esac
}

make_standin() {
  local name=$1 rootfs="$SMOKE_DIR/standin-rootfs" tarball="$SMOKE_DIR/standin-bookworm.tar"
  [ "$(id -u)" -eq 0 ] || die "no registry answers and the stand-in base needs root (debootstrap)"
  command -v debootstrap >/dev/null 2>&1 || die "no registry answers and debootstrap is not installed"
  if [ ! -s "$tarball" ]; then
    say "assembling a stand-in for $name with debootstrap (bookworm, Python 3.11)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" "$DEBIAN_MIRROR" >"$SMOKE_DIR/debootstrap.log" 2>&1 ||
      die "debootstrap failed, see $SMOKE_DIR/debootstrap.log"
    # The official image's pip installs system-wide and is called python/pip; Debian's marks the system
    # "externally managed" and only ships python3/pip3.
    rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
    ln -sf python3 "$rootfs/usr/bin/python"
    ln -sf pip3 "$rootfs/usr/bin/pip"
    # pip inside the build must trust what the host trusts (these machines reach PyPI through their own CA bundle).
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/host-ca-bundle.crt"
    printf '[global]\ncert = /etc/ssl/certs/host-ca-bundle.crt\n' >"$rootfs/etc/pip.conf"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball" .
    rm -rf "$rootfs"
  fi
  engine import --change 'CMD ["python3"]' --change 'LABEL alignkit.standin=debootstrap-bookworm' \
    "$tarball" "$(qualify "$name")" >"$SMOKE_DIR/import.log" 2>&1 || die "import failed, see $SMOKE_DIR/import.log"
}

STANDIN=no
BUILD_FLAGS=()
mapfile -t BASES < <(awk 'toupper($1) == "FROM" { print $2 }' "$CONTEXT/Dockerfile" | sort -u)
for base in "${BASES[@]}"; do
  case "$base" in '$'*) continue ;; esac # a build argument, not an image
  grep -qiE "^FROM .* AS $base\$" "$CONTEXT/Dockerfile" && continue
  if engine pull "$base" >"$SMOKE_DIR/pull.log" 2>&1; then
    say "base $base pulled"
  elif engine image inspect "$(qualify "$base")" >/dev/null 2>&1; then
    say "base $base cannot be pulled; using the local image"
  else
    make_standin "$base"
    say "base $base cannot be pulled; built the stand-in"
  fi
  if engine image inspect --format '{{index .Config.Labels "alignkit.standin"}}' "$(qualify "$base")" 2>/dev/null |
    grep -q debootstrap; then
    STANDIN=yes
  fi
done
if [ "$ENGINE" = podman ]; then
  # The base is local now, so nothing is pulled. --network host: the build's pip reaches PyPI exactly as the host
  # does (the setup found working; the default build network was not tried).
  BUILD_FLAGS=(--pull=never --network host)
fi

# --- 2. build
say "building $IMAGE from $CONTEXT (stand-in base: $STANDIN)"
t0=$(date +%s)
engine build "${BUILD_FLAGS[@]}" -t "$IMAGE" -f "$CONTEXT/Dockerfile" "$CONTEXT" >"$SMOKE_DIR/build.log" 2>&1 ||
  die "build failed, see $SMOKE_DIR/build.log"
BUILD_S=$(($(date +%s) - t0))
SIZE=$(engine image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${BUILD_S}s; image size $SIZE bytes ($((SIZE / 1000000)) MB)"

# --- 3 and 4. two offline runs as the image's user, sharing /cache
OUT="$SMOKE_DIR/outputs"
CACHE="$SMOKE_DIR/cache"
rm -rf "$OUT" "$CACHE"
mkdir -p "$OUT" "$CACHE"
if [ "$(id -u)" -eq 0 ]; then
  chown "$CONTAINER_UID:$CONTAINER_UID" "$OUT" "$CACHE"
else
  chmod 0777 "$OUT" "$CACHE" # a non-root host user cannot chown to the container's uid
fi
owner_of() { # uid as the container sees it (rootless podman maps uids; unshare shows the container's view)
  if [ "$ENGINE" = podman ] && [ "$(id -u)" -ne 0 ]; then engine unshare stat -c %u "$1"; else stat -c %u "$1"; fi
}

run_recipe() { # name -> seconds in RUN_S; log, container diff and checks
  local name=$1 t0
  read -r -a args <<<"$SMOKE_ARGS"
  engine rm -f "alignkit-smoke-$name" >/dev/null 2>&1 || true
  t0=$(date +%s)
  engine run --name "alignkit-smoke-$name" --network none -v "$OUT:/outputs" -v "$CACHE:/cache" "$IMAGE" \
    "${args[@]}" --output_dir "/outputs/$name" >"$SMOKE_DIR/$name.log" 2>&1 ||
    die "run $name failed, see $SMOKE_DIR/$name.log"
  RUN_S=$(($(date +%s) - t0))
  # What the run wrote outside the volumes stays in the container layer and is lost with it: caches belong in /cache.
  engine diff "alignkit-smoke-$name" >"$SMOKE_DIR/$name.diff" 2>&1 || true
  engine rm "alignkit-smoke-$name" >/dev/null
  [ -s "$OUT/$name/report.md" ] || die "$name: no report.md in $OUT/$name"
  local stage
  for stage in sft preference; do
    [ -s "$OUT/$name/$stage/adapter/adapter_model.safetensors" ] || die "$name: no $stage adapter in $OUT/$name/$stage"
  done
  local wrong
  wrong=$(find "$OUT/$name" "$CACHE" -print0 | while IFS= read -r -d '' f; do
    [ "$(owner_of "$f")" = "$CONTAINER_UID" ] || echo "$f"
  done | head -5)
  [ -z "$wrong" ] || die "$name: not owned by uid $CONTAINER_UID: $wrong"
  if grep -E '^A /(app|root|tmp|home/[^/]+/\.cache)(/|$)' "$SMOKE_DIR/$name.diff"; then
    die "$name: wrote the files above inside the container instead of /cache or /outputs"
  fi
  say "run $name: ${RUN_S}s; report.md, sft and preference adapters in /outputs/$name, owned by uid $CONTAINER_UID"
}

run_recipe run1
RUN1_S=$RUN_S
grep -q 'Converting .* to a Hugging Face folder' "$SMOKE_DIR/run1.log" ||
  die "run1 did not convert the GGUF (was /cache not empty?)"
[ -d "$CACHE/alignkit/gguf" ] || die "run1 left no converted model in /cache/alignkit/gguf"
CACHE_STATE=$(find "$CACHE/alignkit" -printf '%p %T@\n' | sort)
run_recipe run2
RUN2_S=$RUN_S
if grep -q 'Converting .* to a Hugging Face folder' "$SMOKE_DIR/run2.log"; then die "run2 converted the GGUF again"; fi
[ "$CACHE_STATE" = "$(find "$CACHE/alignkit" -printf '%p %T@\n' | sort)" ] ||
  die "run2 changed /cache/alignkit (it should only read the converted model)"
say "run2 reused /cache: no conversion, /cache/alignkit unchanged ($(find "$CACHE/alignkit" -type f | wc -l) files)"

# --- 5. what the image holds
say "inspecting $IMAGE"
ENV_LINES=$(engine image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE")
grep -qx 'HF_HOME=/cache/[^ ]*' <<<"$ENV_LINES" || die "HF_HOME does not point into /cache"
grep -qx 'ALIGNKIT_CACHE=/cache/[^ ]*' <<<"$ENV_LINES" || die "ALIGNKIT_CACHE does not point into /cache"
engine history --no-trunc --format '{{.Size}}  {{.CreatedBy}}' "$IMAGE" >"$SMOKE_DIR/history.txt"
if grep -iE '(token|api_key|secret|password)[a-z_]*=[^ "]' "$SMOKE_DIR/history.txt"; then
  die "a build step sets a secret-looking value (above)"
fi
# Every layer's file list, streamed from `save` (a file deleted in a later layer still ships in an earlier one).
engine save "$IMAGE" | python3 -c '
import re
import sys
import tarfile

bad = re.compile(
    r"(^|/)(\.git|\.ssh|\.env|\.netrc|\.pypirc|\.git-credentials|id_rsa|id_ed25519)(/|$)|huggingface/token$"
)
layers = files = 0
found = []
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as outer:
    for member in outer:
        if not member.isfile() or not (member.name.endswith(".tar") or member.name.startswith("blobs/")):
            continue
        try:
            inner = tarfile.open(fileobj=outer.extractfile(member), mode="r|*")
        except tarfile.TarError:
            continue  # a config or manifest blob, not a layer
        layers += 1
        for entry in inner:
            files += 1
            if bad.search(entry.name):
                found.append(entry.name)
print(f"{layers} layers, {files} entries")
if found:
    sys.exit("in the image: " + ", ".join(found[:20]))
' >"$SMOKE_DIR/layers.txt" 2>&1 || die "$(cat "$SMOKE_DIR/layers.txt")"
say "layers clean: $(cat "$SMOKE_DIR/layers.txt"); HF_HOME and ALIGNKIT_CACHE in /cache"

# --- 6. preemption: `stop` sends SIGTERM to the entrypoint (PID 1, the recipe), which saves a checkpoint of its
# current step and exits 75; the same run again resumes into the same output folder and finishes.
PREEMPT_ARGS=${PREEMPT_ARGS:---sft_max_steps 40 --preference_max_steps 2 --probe_enabled false}
read -r -a pargs <<<"$PREEMPT_ARGS"
name=preempt
engine rm -f "alignkit-smoke-$name" >/dev/null 2>&1 || true
engine run -d --name "alignkit-smoke-$name" --network none -v "$OUT:/outputs" -v "$CACHE:/cache" "$IMAGE" \
  "${pargs[@]}" --output_dir "/outputs/$name" >/dev/null || die "$name: the container did not start"
for _ in $(seq 600); do # until the SFT stage has started training (its trainer logs a progress bar), at most 10 min
  engine logs "alignkit-smoke-$name" 2>&1 | grep -q '[0-9]/40 \[' && break
  [ "$(engine inspect --format '{{.State.Running}}' "alignkit-smoke-$name")" = true ] ||
    die "$name: the run ended before it was stopped, see: $ENGINE logs alignkit-smoke-$name"
  sleep 1
done
t0=$(date +%s)
engine stop -t 60 "alignkit-smoke-$name" >/dev/null
STOP_S=$(($(date +%s) - t0))
engine logs "alignkit-smoke-$name" >"$SMOKE_DIR/$name-stopped.log" 2>&1
STOP_RC=$(engine inspect --format '{{.State.ExitCode}}' "alignkit-smoke-$name")
engine rm "alignkit-smoke-$name" >/dev/null
[ "$STOP_RC" = 75 ] || die "$name: exit code $STOP_RC after stop, not 75; see $SMOKE_DIR/$name-stopped.log"
[ -s "$OUT/$name/preempted.json" ] || die "$name: no preempted.json after stop"
say "stop: exit 75 after ${STOP_S}s; $(tr -d '\n' <"$OUT/$name/preempted.json")"
SMOKE_ARGS=$PREEMPT_ARGS run_recipe "$name" # the same run again: resumes, finishes, and passes run_recipe's checks
[ ! -e "$OUT/$name/preempted.json" ] || die "$name: preempted.json is still there after the rerun"
grep -qE 'resuming from|already complete' "$SMOKE_DIR/$name.log" || die "$name: the rerun did not resume"
say "rerun after stop: resumed and finished in ${RUN_S}s"

cat <<EOF | tee "$SMOKE_DIR/summary.txt"

engine: $ENGINE; stand-in base: $STANDIN
build: ${BUILD_S}s; image size: $SIZE bytes
run1 (cold /cache, GGUF converted): ${RUN1_S}s; run2 (warm /cache): ${RUN2_S}s
stop mid-run: exit 75 after ${STOP_S}s; rerun resumed and finished
logs: $SMOKE_DIR/{build,run1,run2}.log; history: $SMOKE_DIR/history.txt
PASS
EOF
# the figures, committed beside the other benches' (bench/results/docker_smoke/result.json)
FIGURES=$(printf '{"engine": "%s", "stand_in_base": "%s", "build_seconds": %s, "image_size_bytes": %s, ' \
  "$ENGINE" "$STANDIN" "$BUILD_S" "$SIZE")
FIGURES+=$(printf '"run1_cold_cache_seconds": %s, "run2_warm_cache_seconds": %s, "stop_to_exit_seconds": %s, ' \
  "$RUN1_S" "$RUN2_S" "$STOP_S")
FIGURES+=$(printf '"smoke_args": "%s", "preempt_args": "%s", "passed": true}' "$SMOKE_ARGS" "$PREEMPT_ARGS")
PYTHONPATH="$REPO" "${PYTHON:-python3}" "$REPO/bench/_results.py" docker_smoke "$FIGURES" "$@"
