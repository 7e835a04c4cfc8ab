#!/usr/bin/env bash
# The benchmarks' GPU runs, one after another, for a machine with a CUDA device: the figures the
# CPU box cannot give (BENCHMARKS.md lists each as "still to be run on a GPU").
#
#   bash benchmarks/gpu.sh OUT_DIR [NAME ...]
#
# NAME picks runs (default: all, in this order, the most wanted first):
#   refinemask   RefineMask / Mask R-CNN inference time ratio (the paper: 1.38, goal <= 1.4), then
#                the CPU run's training budget on the GPU
#   upsnet_large UPSNet R50 at 3000 steps on the world rendered at 512 x 640 (things 30-100 px
#                across): the panoptic head against the heuristic merge on things towards the sizes
#                where the semantic head's stride 4 outlines them as finely as a 28 x 28 mask
#                (BENCHMARKS.md, UPSNet)
#   upsnet       the same at the benchmark's 128 x 160, with the outline measurement
#   maskrcnn     our Mask R-CNN against torchvision's, bf16 autocast
#   paste        mask pasting, per-box against chunked
# Each run's whole output goes to OUT_DIR/NAME.log and its JSON line (the last line) to
# OUT_DIR/results.jsonl; a run stops after GPU_RUN_LIMIT seconds (default 540) and the next starts.
# The Python that runs them is $PYTHON (default: python), with lightning_seg importable.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [refinemask upsnet_large upsnet maskrcnn paste]}
shift
mkdir -p "$out"
python=${PYTHON:-python}
limit=${GPU_RUN_LIMIT:-540}
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
order=(refinemask upsnet_large upsnet maskrcnn paste)  # the default: all, the most wanted first
declare -A commands=(
    [refinemask]="benchmarks/refinemask_vs_maskrcnn.py --device cuda"
    [upsnet_large]="benchmarks/upsnet.py --device cuda --steps 3000 --depth 50 --height 512 --width 640 --outline --fusion-ablation"
    [upsnet]="benchmarks/upsnet.py --device cuda --steps 3000 --depth 50 --outline"
    [maskrcnn]="benchmarks/maskrcnn_vs_torchvision.py --device cuda --amp"
    [paste]="benchmarks/mask_paste.py --device cuda"
)
for name in "$@"; do  # a misspelt run stops here, before any GPU time is spent
    if [ -z "$name" ] || [ -z "${commands[$name]+x}" ]; then
        echo "benchmarks/gpu.sh: unknown run '$name' (one of: ${order[*]})" >&2
        exit 2
    fi
done
"$python" -c "import sys, torch
if not torch.cuda.is_available():
    sys.exit('benchmarks/gpu.sh: torch sees no CUDA device; these runs need one')
print('[gpu]', torch.cuda.get_device_name(), 'torch', torch.__version__)" || exit 1

names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${order[@]}")
status=0
for name in "${names[@]}"; do
    command=${commands[$name]}
    echo "[gpu] $name: python $command (at most ${limit} s)"
    start=$SECONDS
    # shellcheck disable=SC2086  # the command is words
    timeout "$limit" "$python" $command > "$out/$name.log" 2>&1
    rc=$?
    echo "[gpu] $name: exit $rc after $((SECONDS - start)) s"
    [ $rc -ne 0 ] && status=1
    last=$(tail -n 1 "$out/$name.log")
    case $last in
        "{"*) echo "{\"run\": \"$name\", \"rc\": $rc, \"result\": $last}" >> "$out/results.jsonl" ;;
        *) echo "{\"run\": \"$name\", \"rc\": $rc, \"result\": null}" >> "$out/results.jsonl"
           tail -n 5 "$out/$name.log" ;;
    esac
done
exit $status
