#!/usr/bin/env bash
# Gathers what an air-gapped Linux x86_64 node needs to install structmt without internet:
#   make wheelhouse PY=3.12            (or: scripts/make_wheelhouse.sh 3.12 wheelhouse)
# then copy the checkout with its wheelhouse/ to the node and run
#   scripts/install_offline.sh wheelhouse [--venv DIR]
# The wheelhouse holds wheels of every runtime dependency for CPython PY on manylinux x86_64
# (glibc >= 2.17; the pins of constraints.txt), the fairseq fork's sdist and its build
# requirements, and structmt's own sdist. Not torch: the node keeps its own (CUDA) torch,
# and with it the Triton that torch was built with. WITH_TRITON=1 adds constraints.txt's
# Triton wheel, for a node whose torch came without one.
# Needs internet, this checkout's .venv (make install: its torch, numpy and cython read the
# fairseq sdist's metadata) and a Python PY interpreter (python3.12 on PATH, a pyenv version, or
# DOWNLOAD_PYTHON=/path/to/python3.12): pip evaluates dependency markers such as
# `tomli; python_version < "3.11"` with the interpreter it runs on, whatever --python-version says.
# Environment: DOWNLOAD_PYTHON, WITH_TRITON, CONSTRAINTS (default constraints.txt; CONSTRAINTS=
# resolves the newest releases for PY instead, as PY=3.10 needs: some pins of constraints.txt,
# numpy 2.4 and scipy 1.17, have no 3.10 wheels), LEAVE_OUT (project names, space-separated, whose
# wheels are removed at the end: packages the node's environment already has, e.g. to fit a size
# limit; install_offline.sh then keeps the node's own copies, and fails naming any that is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

(( $# <= 2 )) || { echo "error: takes PY and the wheelhouse folder, got $# arguments (quote a folder with spaces)" >&2; exit 2; }
PY_VERSION=${1:-3.12}
FINAL=${2:-wheelhouse}
VPY=${VPY:-.venv/bin/python}
PIP=("$VPY" -m pip)
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
FAIRSEQ=${FAIRSEQ:-fairseq-fixed==0.12.3.1}
WITH_TRITON=${WITH_TRITON:-0}
LEAVE_OUT=${LEAVE_OUT:-}

[[ $PY_VERSION =~ ^3\.[0-9]+$ ]] || { echo "error: PY must look like 3.12, not '$PY_VERSION'" >&2; exit 2; }
# a folder that is not an earlier wheelhouse is never replaced (it is replaced whole at the end)
if [[ -e $FINAL && ! -f $FINAL/PYTHON_VERSION && -n "$(ls -A "$FINAL" 2> /dev/null || echo file)" ]]; then
    echo "error: $FINAL exists and is not a wheelhouse (no PYTHON_VERSION in it); give another folder" >&2; exit 2
fi
for name in $LEAVE_OUT; do  # checked before anything is downloaded
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || { echo "error: LEAVE_OUT: '$name' is not a project name" >&2; exit 2; }
done
[[ -x $VPY ]] || { echo "error: no $VPY: run make install first" >&2; exit 1; }
# a Python structmt does not install on is refused here, not on the node after its environment was changed
"$VPY" - "$PY_VERSION" <<'EOF' || exit 2
import re, sys
try:
    from packaging.specifiers import SpecifierSet
except ImportError:  # pip's own copy
    from pip._vendor.packaging.specifiers import SpecifierSet
wanted = re.search(r'^requires-python = "(.+)"$', open("pyproject.toml").read(), re.M).group(1)
if f"{sys.argv[1]}.0" not in SpecifierSet(wanted):
    sys.exit(f"error: PY={sys.argv[1]}: structmt installs on Python {wanted} (pyproject.toml's requires-python)")
EOF

# the interpreter that runs the downloads: a Python PY_VERSION with pip >= 22.2 (for --report)
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2> /dev/null; }
DPY=${DOWNLOAD_PYTHON:-}
if [[ -z $DPY ]]; then
    candidates=("python$PY_VERSION" "$VPY")
    if command -v pyenv > /dev/null; then
        for c in $(ls -d "$(pyenv root)/versions/$PY_VERSION".*/bin/python 2> /dev/null | sort -V -r); do candidates+=("$c"); done
    fi
    for c in "${candidates[@]}"; do
        if [[ $(version_of "$c") == "$PY_VERSION" ]]; then DPY=$c; break; fi
    done
fi
[[ -n $DPY && $(version_of "$DPY") == "$PY_VERSION" ]] || {
    echo "error: no Python $PY_VERSION found to resolve dependencies for it (pip evaluates markers such as" >&2
    echo "  python_version < \"3.11\" with the Python it runs on): put python$PY_VERSION on PATH, or" >&2
    echo "  pass DOWNLOAD_PYTHON=/path/to/python$PY_VERSION" >&2
    exit 1
}
DPIP=("$DPY" -m pip)
"$DPY" - <<'EOF' || { echo "error: $DPY needs pip >= 22.2: $DPY -m pip install --upgrade pip" >&2; exit 1; }
import sys
from importlib.metadata import version
sys.exit(0 if tuple(int(x) for x in version("pip").split(".")[:2]) >= (22, 2) else 1)
EOF
echo "wheelhouse: resolving with $DPY (pip $("${DPIP[@]}" --version | cut -d' ' -f2))"
ABI=cp${PY_VERSION/./}
# manylinux tags that pip does not derive from each other: glibc 2.17 (CentOS 7 / manylinux2014,
# which also admits manylinux2010 and manylinux1 wheels) up to 2.28 (the glibc of torch's own wheels)
PLATFORMS=(--platform manylinux2014_x86_64)
for n in $(seq 28 -1 17); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
# built in a temporary folder beside it, which replaces the wheelhouse only when complete
OUT="$(dirname "$FINAL")/.$(basename "$FINAL").tmp.$$"
trap 'rm -rf "$OUT"' EXIT
rm -rf "$OUT" && mkdir -p "$OUT"
# fairseq-fixed 0.12.3.1 (installed --no-deps) asks for exactly these; pyproject.toml allows ranges
printf 'hydra-core==1.3.2\nomegaconf==2.3.0\n' > "$OUT/fairseq-pins.txt"
CONSTRAINT_ARGS=(-c "$OUT/fairseq-pins.txt")
[[ -n $CONSTRAINTS ]] && CONSTRAINT_ARGS+=(-c "$CONSTRAINTS")

# structmt's runtime dependencies, from pyproject.toml, without torch (the node's own) and
# Triton (comes with the node's torch), plus the build requirements of fairseq and structmt
# and the test extra (small; lets the node run the test suite)
"$VPY" - "$WITH_TRITON" > "$OUT/requirements.txt" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
skip = {"torch"} if sys.argv[1] == "1" else {"torch", "triton"}
reqs = [r for r in project["dependencies"] if re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() not in skip]
reqs += project["optional-dependencies"]["test"]
# setuptools: what every torch in the range accepts (2.6 to 2.10 ask for any, 2.11 and 2.12 for <82, 2.13 and later for >=77.0.3)
reqs += ["setuptools>=77.0.3,<82", "wheel", "cython", "numpy"]
print("\n".join(reqs))
EOF
echo "wheelhouse: $(wc -l < "$OUT/requirements.txt") requirements for CPython $PY_VERSION, manylinux x86_64"

TARGET=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp --abi "$ABI" --abi abi3 --abi none
        "${PLATFORMS[@]}")
# dependencies published only as sdists (so far antlr4-python3-runtime, which omegaconf needs) are
# pure Python: find them by resolving the same requirements for this machine, build them here
# into py3-none-any wheels, and let the download below take them from the wheelhouse
"${DPIP[@]}" install -q --dry-run --ignore-installed "${CONSTRAINT_ARGS[@]}" --report "$OUT/resolve.json" \
    -r "$OUT/requirements.txt" 2> "$OUT/download.log" || { cat "$OUT/download.log" >&2; exit 1; }
sdist_only=$("$VPY" - "$OUT/resolve.json" <<'EOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    if not item["download_info"]["url"].endswith(".whl"):
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
EOF
)
for req in $sdist_only; do
    echo "wheelhouse: $req is published as an sdist only; building its wheel here"
    "${PIP[@]}" wheel -q --no-deps --no-binary=:all: -w "$OUT/.built" "$req" 2>> "$OUT/download.log" \
        || { cat "$OUT/download.log" >&2; exit 1; }
done
if compgen -G "$OUT/.built/*.whl" > /dev/null; then
    for whl in "$OUT"/.built/*.whl; do
        [[ $whl == *-none-any.whl ]] \
            || { echo "error: $whl is not pure Python; it cannot be built here for another platform" >&2; exit 1; }
    done
    mv "$OUT"/.built/*.whl "$OUT"/
fi
rm -rf "$OUT/.built" "$OUT/resolve.json"
"${DPIP[@]}" download -q "${TARGET[@]}" "${CONSTRAINT_ARGS[@]}" --find-links "$OUT" -d "$OUT" \
    -r "$OUT/requirements.txt" 2> "$OUT/download.log" || { cat "$OUT/download.log" >&2; exit 1; }
rm -f "$OUT/download.log"

# wheels of what the node already has, left out on request (LEAVE_OUT)
for name in $LEAVE_OUT; do
    stem=$(echo "$name" | tr 'A-Z.-' 'a-z__')  # a wheel's file name: normalised name, '-', version
    mapfile -t found < <(find "$OUT" -maxdepth 1 -iname "$stem-*.whl")
    (( ${#found[@]} )) || { echo "error: LEAVE_OUT: no wheel of '$name' to leave out (check the name)" >&2; exit 2; }
    rm -f "${found[@]}"
    for f in "${found[@]}"; do echo "wheelhouse: left out $(basename "$f") (LEAVE_OUT: the node has $name)"; done
done
if [[ -n $LEAVE_OUT ]]; then echo "$LEAVE_OUT" > "$OUT/LEFT_OUT"; fi

# the fairseq fork, as the sdist it is published as (built on the node against the node's torch)
# (--no-build-isolation: pip reads its metadata with the torch, numpy and cython installed here)
"${PIP[@]}" download -q --no-deps --no-binary=:all: --no-build-isolation "${CONSTRAINT_ARGS[@]}" -d "$OUT" "$FAIRSEQ"
# structmt itself, as an sdist: its C++ kernel compiles on the node against the node's torch
had_egg_info=0; [[ -e structmt.egg-info ]] && had_egg_info=1
"$VPY" -c "import sys; from setuptools import build_meta; print('wheelhouse: built', build_meta.build_sdist(sys.argv[1]))" "$OUT" \
    | grep '^wheelhouse:'
[[ $had_egg_info == 1 ]] || rm -rf structmt.egg-info

echo "$PY_VERSION" > "$OUT/PYTHON_VERSION"
# the commit, +dirty where the checkout differs from it (structmt.provenance's rule, which the results use too)
commit=$("$VPY" -c "from structmt.provenance import read_commit; print(read_commit())")
echo "$commit" > "$OUT/STRUCTMT_COMMIT"
if [[ $commit == *+dirty ]]; then
    echo "wheelhouse: note: the checkout differs from commit ${commit%+dirty}: STRUCTMT_COMMIT says $commit"
fi
rm -rf "$FINAL" && mv "$OUT" "$FINAL" && trap - EXIT
echo "wheelhouse: $(ls "$FINAL" | grep -c -e '\.whl$' -e '\.tar\.gz$') files, $(du -sh "$FINAL" | cut -f1), in $FINAL/ for CPython $PY_VERSION"
echo "on the node: scripts/install_offline.sh $FINAL   (see docs/install.md)"
