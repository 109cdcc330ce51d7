"""Build the Ray bundle for a GPU machine that has PyTorch but no Ray and no network.

    python bench/gpu/build_bundle.py                 # Python 3.12 (the GPU image) -> bench/gpu/out/bundle-py312.tar.xz
    python bench/gpu/build_bundle.py --python 3.11   # the same for 3.11, to check the bundle on this machine

The GPU machine's image has torch, numpy, h5py, pyarrow and ~200 other distributions
(``image_packages.txt``) but not Ray, and at most 64 MiB travel with a run. Ray 2.60's wheel
alone is 76 MiB, so the bundle is made here, where PyPI is reachable:

1. pip resolves what ``pip install`` would install for the target Python (``--dry-run --report``):
   Ray with the extras pyproject.toml pins, RETURNN (the tests' oracle) and dm-tree;
2. the distributions the image already has, and the few that nothing we run imports
   (``NEVER_IMPORTED``), are left out; the rest are downloaded as wheels (cached in
   ``bench/out/gpu-wheels``) and unpacked into one site-packages tree;
3. the parts of Ray we never import are cut (``PRUNE``): RLlib, Serve, Ray LLM, the Java jars,
   the tests and the dashboard's web build. The dashboard's Python stays: Ray Train V2 needs the
   dashboard/state API, and the dashboard head refuses to start without ``client/build``, so an
   empty one with a one-line page is left in its place;
4. the tree is packed as one ``tar.xz`` (written atomically) and its size checked against
   ``--max-mib``.

``bench/gpu/run.sh`` unpacks it there and puts it on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WHEEL_CACHE = os.path.join(ROOT, "bench", "out", "gpu-wheels")

# Distributions Ray lists but nothing a returnn-ray run imports: py-spy is a binary the dashboard
# calls for stack dumps on demand; virtualenv (and what only it needs) and smart_open serve pip
# runtime_envs and remote URIs, which returnn-ray does not use.
NEVER_IMPORTED = {"py-spy", "virtualenv", "distlib", "python-discovery", "platformdirs", "smart-open"}

# Paths under site-packages to remove (globs relative to it).
PRUNE = [
    "ray/rllib", "ray/serve", "ray/llm", "ray/jars", "ray/dashboard/client/build",
    "ray/cpp",
]
PRUNE_DIR_NAMES = {"__pycache__", "tests"}

STUB_PAGE = "<!doctype html><title>Ray</title><p>The dashboard's web UI is not in this bundle (bench/gpu/build_bundle.py).</p>\n"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    """Ray as pyproject.toml pins it, and the pinned RETURNN and dm-tree of the test extra."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    ray = [r for r in project["dependencies"] if normalize(r).startswith("ray[")]
    test = [r for r in project["optional-dependencies"]["test"] if normalize(r).startswith(("returnn", "dm-tree"))]
    return ray + test


def image_packages(path: str) -> set[str]:
    with open(path) as f:
        return {normalize(line.strip()) for line in f if line.strip() and not line.startswith("#")}


def pip_platform_args(python: str) -> list[str]:
    abi = "cp" + python.replace(".", "")
    platforms = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64",
                 "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64"]
    args = ["--only-binary", ":all:", "--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
            "--abi", "none"]
    for p in platforms:
        args += ["--platform", p]
    return args


def resolve(python: str, work: str) -> list[tuple[str, str]]:
    """(name, version) of every distribution ``pip install`` would install for ``python``, as pip resolves it."""
    report = os.path.join(work, "report.json")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report", report,
           "--target", os.path.join(work, "unused"), *pip_platform_args(python), *requirements()]
    subprocess.run(cmd, check=True)
    with open(report) as f:
        return [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.load(f)["install"]]


def download(pins: list[tuple[str, str]], python: str) -> list[str]:
    """The wheel files of ``pins`` (exact versions, no dependencies), from the cache or PyPI."""
    dest = os.path.join(WHEEL_CACHE, f"py{python.replace('.', '')}")
    os.makedirs(dest, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", dest, *pip_platform_args(python),
           *(f"{n}=={v}" for n, v in pins)]
    subprocess.run(cmd, check=True)
    wanted = {(normalize(n), v) for n, v in pins}
    wheels = []
    for name in sorted(os.listdir(dest)):
        dist, version = name.split("-")[:2]
        if (normalize(dist), version) in wanted:
            wheels.append(os.path.join(dest, name))
    found = {(normalize(os.path.basename(w).split("-")[0]), os.path.basename(w).split("-")[1]) for w in wheels}
    if found != wanted:
        sys.exit(f"build_bundle: wheels missing for {sorted(wanted - found)}")
    return wheels


def unpack(wheels: list[str], site: str) -> None:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                path = z.extract(info, site)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(path, mode)


def prune(site: str) -> None:
    """Cut what we never import (``PRUNE``, tests, byte code) and leave the dashboard a stub page."""
    for rel in PRUNE:
        shutil.rmtree(os.path.join(site, rel), ignore_errors=True)
    for dirpath, dirnames, _ in os.walk(site):
        for d in [d for d in dirnames if d in PRUNE_DIR_NAMES]:
            shutil.rmtree(os.path.join(dirpath, d))
            dirnames.remove(d)
    build = os.path.join(site, "ray", "dashboard", "client", "build")
    os.makedirs(os.path.join(build, "static"), exist_ok=True)
    with open(os.path.join(build, "index.html"), "w") as f:
        f.write(STUB_PAGE)


def pack(site: str, out: str) -> None:
    """``out`` as a tar.xz of ``site``'s contents, written to a temp name and renamed."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            tar = subprocess.Popen(["tar", "-C", site, "-cf", "-", "."], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-9", "-T0", "-c"], stdin=tar.stdout, stdout=f, check=True)
            if tar.wait() != 0:
                raise subprocess.CalledProcessError(tar.returncode, "tar")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", help="target Python version (the GPU image: 3.12)")
    parser.add_argument("--out", help="default: bench/gpu/out/bundle-pyXY.tar.xz")
    parser.add_argument("--image-packages", default=os.path.join(HERE, "image_packages.txt"),
                        help="distributions the target already has (left out)")
    parser.add_argument("--max-mib", type=float, default=55.0, help="fail when the bundle is larger")
    parser.add_argument("--keep-tree", help="also leave the unpacked site-packages tree here")
    args = parser.parse_args()
    out = args.out or os.path.join(HERE, "out", f"bundle-py{args.python.replace('.', '')}.tar.xz")
    have = image_packages(args.image_packages)
    with tempfile.TemporaryDirectory(prefix="rr-bundle-") as work:
        pins = resolve(args.python, work)
        take = [(n, v) for n, v in pins if normalize(n) not in have and normalize(n) not in NEVER_IMPORTED]
        left = sorted(normalize(n) for n, _ in pins if (n, _) not in take)
        print(f"resolved {len(pins)} distributions; the image has or we never import {len(left)}: {', '.join(left)}")
        print(f"bundling {len(take)}: {', '.join(f'{n}=={v}' for n, v in take)}")
        site = os.path.join(work, "site")
        unpack(download(take, args.python), site)
        prune(site)
        if args.keep_tree:
            shutil.rmtree(args.keep_tree, ignore_errors=True)
            shutil.copytree(site, args.keep_tree, symlinks=True)
        pack(site, out)
    mib = os.path.getsize(out) / 2**20
    print(f"bundle: {out} ({mib:.1f} MiB)")
    if mib > args.max_mib:
        sys.exit(f"build_bundle: {out} is {mib:.1f} MiB, over --max-mib {args.max_mib}")


if __name__ == "__main__":
    main()
