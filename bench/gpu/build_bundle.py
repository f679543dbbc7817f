"""Wheels of what the GPU machine's image lacks, for its Python 3.12, into an ignored folder.

The GPU machine cannot reach a package index; its image (python3 = Python 3.12 with torch,
transformers, numpy, scipy, scikit-image, pillow, rich, ...) lacks the queue stack. This script
takes the project's runtime dependencies from pyproject.toml, follows their requirements through
the metadata of this checkout's .venv (the versions the project is tested with), drops what the
image already has and what a GPU queue run does not need, and downloads each remaining
distribution once, as a cp312 manylinux or pure-Python wheel, with --no-deps.

    .venv/bin/python bench/gpu/build_bundle.py            # -> .gpu-bundle/wheels (about 20 MB)
    .venv/bin/python bench/gpu/build_bundle.py --list     # names and versions only

bench/gpu/run_queue.sh installs the folder with `pip install --no-index --no-deps --target`.
Prints one JSON object (wheels, total MiB).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / ".gpu-bundle" / "wheels"

# The image's packages (device README, KINDS.md, read 2026-11-17). Left out of the bundle.
IMAGE_HAS = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate
tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split()

# Not needed for `run` / `worker` / the benchmarks there: the image's own torch stack, the
# training-checkpoint converter (mmengine pulls opencv-python), Flower, the PostgreSQL driver.
NOT_NEEDED = {"torch", "transformers", "accelerate", "safetensors", "mmengine", "flower", "tornado",
              "psycopg", "psycopg-binary"}

# Shadow the image's copies with the versions the CLI is tested with (typer's API moves).
FORCE = {"typer", "click", "rich"}

# The image is Python 3.12.3 on a glibc of at least 2.39 (Ubuntu 24.04); pip matches tags exactly.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 38, 36, 35, 34, 31, 28, 27, 24, 17)] + [
    "manylinux2014_x86_64", "manylinux1_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_env() -> dict[str, str]:
    env = default_environment()
    env.update(python_version="3.12", python_full_version="3.12.3", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", implementation_name="cpython", platform_python_implementation="CPython")
    return env


def closure(roots: list[str]) -> dict[str, str]:
    """{normalised name: version} of `roots` and everything they require on the target, from the
    installed metadata; stops at what the image has (unless forced) or is not needed."""
    env = {**target_env(), "extra": ""}
    have = {norm(n) for n in IMAGE_HAS}
    out: dict[str, str] = {}
    todo = [norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in out or name in NOT_NEEDED or (name in have and name not in FORCE):
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise SystemExit(f"{name}: required but not installed in {sys.prefix}; run `make` / pip install -e . first")
        out[name] = dist.version
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(norm(req.name))
    return dict(sorted(out.items()))


def project_roots() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [Requirement(d).name for d in deps] + sorted(FORCE)


def download(pins: dict[str, str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(out)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + [f"{n}=={v}" for n, v in pins.items()], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--list", action="store_true", help="print the pins, download nothing")
    args = ap.parse_args()
    pins = closure(project_roots())
    if not args.list:
        download(pins, args.out)
        wheels = sorted(args.out.glob("*.whl"))
        names = [norm(w.name.split("-")[0]) for w in wheels]
        if len(set(names)) != len(names):
            raise SystemExit(f"{args.out}: two wheels of one distribution; delete the folder and run again")
        size = sum(w.stat().st_size for w in wheels) / 2**20
        print(json.dumps({"out": str(args.out), "wheels": [w.name for w in wheels], "total_mib": round(size, 1)}))
    else:
        print(json.dumps(pins))


if __name__ == "__main__":
    main()
