#!/usr/bin/env bash
# Installs structmt on a node without internet, into an environment that already has torch,
# from a wheelhouse made elsewhere with `make wheelhouse PY=3.x` (see docs/install.md):
#
#   scripts/install_offline.sh WHEELHOUSE [--venv DIR] [--python PYTHON] [--sdist] [--tests]
#
#   --python PYTHON  the interpreter of the environment to install into (default: python3 on PATH,
#                    i.e. the activated conda env / venv / module that provides the cluster's torch)
#   --venv DIR       install into the venv DIR instead, creating it from PYTHON with
#                    --system-site-packages (so it sees that torch) when it does not exist
#   --sdist          install structmt from the wheelhouse's sdist instead of this checkout
#                    (editable); the Hydra pipeline (structmt-run) needs the checkout's conf/
#   --tests          also install pytest, pytest-xdist and hypothesis, to run the tests on the node
#
# Nothing is downloaded: every pip call has --no-index --find-links WHEELHOUSE. torch (and the
# Triton that came with it) stay as they are. fairseq-fixed and structmt's C++ kernel are
# compiled here against that torch: fairseq needs a C++ compiler, structmt's kernel is optional.
set -euo pipefail

die() { echo "install_offline: error: $*" >&2; exit 1; }
say() { echo "install_offline: $*"; }

[[ $# -ge 1 && $1 != -* ]] || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
WH=$(cd "$1" 2>/dev/null && pwd) || die "no wheelhouse folder '$1'"
shift
PYTHON=python3 VENV="" FROM_SDIST=0 TESTS=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --venv) VENV=${2:?--venv needs a folder}; shift 2 ;;
        --sdist) FROM_SDIST=1; shift ;;
        --tests) TESTS=1; shift ;;
        *) die "unknown option '$1' (see the top of $0)" ;;
    esac
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
FAIRSEQ=fairseq-fixed==0.12.3.1

command -v "$PYTHON" > /dev/null || die "no interpreter '$PYTHON'"
# the wheelhouse was made for one Python version: that of the interpreter installed into (and of the one a new
# --venv is made from, checked before it is made)
want=$(cat "$WH/PYTHON_VERSION" 2>/dev/null) || die "$WH has no PYTHON_VERSION: make it with make wheelhouse PY=3.x"
check_version() {
    have=$("$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    [[ $have == "$want" ]] || die "$WH holds wheels for Python $want, but $1 is Python $have: make wheelhouse PY=$have"
}
if [[ -n $VENV ]]; then
    if [[ ! -x $VENV/bin/python ]]; then
        check_version "$PYTHON"
        "$PYTHON" -c 'import torch' 2> /dev/null \
            || die "$PYTHON cannot import torch, so a venv made from it would not either: pass --python the interpreter of the environment that has the cluster's torch"
        say "creating $VENV from $PYTHON (--system-site-packages: it sees that environment's torch)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
        # a venv made from a venv sees the base Python's packages, not the first venv's: a .pth file adds them
        "$PYTHON" - "$VENV/bin/python" <<'EOF'
import subprocess, sys, sysconfig
if sys.prefix != sys.base_prefix:
    sites = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    target = subprocess.run([sys.argv[1], "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    with open(f"{target}/structmt-parent-env.pth", "w") as f:  # addsitedir: that venv's own .pth files too
        f.write("".join(f"import site; site.addsitedir({s!r})\n" for s in sites))
    print(f"install_offline: {sys.prefix} is itself a venv: {target}/structmt-parent-env.pth adds its packages")
EOF
    fi
    PYTHON=$VENV/bin/python
fi
PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')  # absolute: step 4 runs elsewhere
check_version "$PYTHON"

# torch must already be there, in structmt's range: the "torch>=A.B,<C" requirement of pyproject.toml
torch_range=$(sed -n 's/^ *"torch\(>=[0-9.]*,<[0-9.]*\)",.*$/\1/p' "$REPO/pyproject.toml")
[[ -n $torch_range ]] || die "found no \"torch>=A.B,<C\" requirement in $REPO/pyproject.toml"
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null) \
    || die "$PYTHON cannot import torch: install the cluster's torch first (or pass --python/--venv)"
"$PYTHON" - "$torch_version" "$torch_range" <<'EOF' || die "torch $torch_version is outside structmt's range ($torch_range; a pre-release such as 2.6.0a0 is older than 2.6, as pip counts it)"
import sys
try:
    from packaging.specifiers import SpecifierSet
except ImportError:  # pip's own copy: the rule pip applies to the requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
# as pip compares: "2.6.0+cu124" is in ">=2.6,<3"; a pre-release "2.6.0a0+..." (NGC's) is older than 2.6
sys.exit(0 if SpecifierSet(sys.argv[2]).contains(sys.argv[1], prereleases=True) else 1)
EOF
say "installing into $("$PYTHON" -c 'import sys; print(sys.prefix)') (Python $have, torch $torch_version) from $WH"

# Triton is a dependency on Linux x86_64; CUDA builds of torch bring it
if [[ $(uname -s)-$(uname -m) == Linux-x86_64 ]] && ! "$PYTHON" -c 'import triton' 2> /dev/null \
        && ! compgen -G "$WH/triton-*.whl" > /dev/null; then
    die "this environment has no Triton (a CPU-only torch?) and $WH has none: make wheelhouse WITH_TRITON=1"
fi
# ... as the distribution "triton": ROCm's and nightly torches ship the module under another name, which pip
# does not count as meeting structmt's requirement (step 2 would stop with "No matching distribution")
if [[ $(uname -s)-$(uname -m) == Linux-x86_64 ]]; then
    provider=$("$PYTHON" - <<'EOF'
import importlib.metadata as m, importlib.util
if importlib.util.find_spec("triton") is not None:
    try:
        m.version("triton")
    except m.PackageNotFoundError:
        print(", ".join(m.packages_distributions().get("triton", [])) or "an unnamed package")
EOF
) || die "$PYTHON could not say which package its Triton comes from (above)"
    [[ -z $provider ]] || die "this environment's Triton module comes from $provider, not from the distribution 'triton' that structmt requires on Linux x86_64 (pip cannot see it, and installing 'triton' beside it would overwrite it): see docs/install.md, 'Triton under another name'"
fi

# what the wheelhouse left out (make wheelhouse LEAVE_OUT=...) must already be in this environment
if [[ -f $WH/LEFT_OUT ]]; then
    read -r -a left_out < "$WH/LEFT_OUT"
    for name in "${left_out[@]}"; do
        "$PYTHON" -m pip show -q "$name" > /dev/null 2>&1 \
            || die "$WH was made without $name (LEAVE_OUT), and $PYTHON does not have it: install it, or make the wheelhouse without LEAVE_OUT"
    done
    say "kept this environment's own ${left_out[*]} (left out of $WH)"
fi
PIP=("$PYTHON" -m pip install -q --no-index --find-links "$WH")
# 1. build requirements of structmt and fairseq (kept where the environment already has them). setuptools
# >= 77 reads pyproject.toml's license field; --no-build-isolation below does not check build-system.requires
"${PIP[@]}" "setuptools>=77.0.3" wheel cython numpy
# 2. structmt and every runtime dependency, before fairseq: see step 3
extra=""; [[ $TESTS == 1 ]] && extra="[test]"
if [[ $FROM_SDIST == 1 ]]; then
    sdist=$(ls "$WH"/structmt-*.tar.gz 2> /dev/null | head -1) || true
    [[ -n $sdist ]] || die "$WH has no structmt sdist"
    "${PIP[@]}" --no-build-isolation "$sdist$extra"
else
    "${PIP[@]}" --no-build-isolation -e "$REPO$extra"
fi
# 3. the fairseq fork, compiled against this torch. --no-deps: its metadata asks for torchaudio,
# whose releases pin other torch versions (its real dependencies came with structmt in step 2).
# Last, because once it is there, pip's check after an install that touches its dependencies
# reports the missing torchaudio; a --no-deps install skips that check.
# CUDA_HOME unset: fairseq's setup.py compiles CUDA extensions (unused by translation) whenever it is set, and
# fails where that CUDA's nvcc is missing or of another major version than torch's
env -u CUDA_HOME "${PIP[@]}" --no-deps --no-build-isolation "$FAIRSEQ"
# 4. what was installed (from outside the checkout, so the installed structmt is imported)
cd "$WH" && "$PYTHON" "$REPO/scripts/check_install.py"
