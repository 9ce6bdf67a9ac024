#!/usr/bin/env bash
# What the GPU check carries to a GPU machine that has no network (issues 16, 24), made here:
#   bash benchmarks/gpu_carry.sh [DIR]      # default carry/ (git-ignored)
# Downloads exactly the pins of benchmarks/gpu_carry.txt: the wheels the image lacks (Python 3.12,
# manylinux x86-64), the build backend of the editable install (DIR/build/) and DeepSpeed's source
# archive (no wheel exists; the device builds it with DS_BUILD_OPS=0). Downloads go to a fresh
# folder that replaces DIR only when complete and checked (one version of each distribution, every
# pin, under the device tool's 64 MiB together with the working tree): a failed download leaves the
# old DIR as it was. torch and the image's other packages are never carried.
# Environment: PY (a Python with pip; default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-carry}
py=${PY:-python3}
new="$dir.new.$$"
if [[ -d $dir ]] && find "$dir" -mindepth 1 ! -name '*.whl' ! -name '*.tar.gz' ! -path "$dir/build" | grep -q .; then
  echo "gpu_carry: $dir holds files that are not wheels or source archives; give an empty or new folder" >&2
  exit 1
fi
trap 'rm -rf "$new"' EXIT
mkdir -p "$new/build"
mapfile -t wheels < <("$py" benchmarks/_carry.py pins wheels)
mapfile -t build < <("$py" benchmarks/_carry.py pins build)
mapfile -t source < <("$py" benchmarks/_carry.py pins source)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$new" "${wheels[@]}"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$new/build" "${build[@]}"
"$py" -m pip download -q --no-deps --no-binary=:all: -d "$new" "${source[@]}"
"$py" benchmarks/_carry.py check "$new"
rm -rf "$dir"
mv "$new" "$dir"
trap - EXIT
echo "gpu_carry: $dir ready"
