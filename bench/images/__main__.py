"""`python -m bench.images`: JPEG decode, resize and encode libraries side by side, CPU ms per image.

The worker's biggest CPU cost is turning a downloaded JPEG into the stored 256 px one. This runs the
same job (border resize onto a white square, JPEG q95 out) with each candidate on the same JPEGs as
bench.download, one process per candidate, single-threaded, and reports CPU milliseconds per image
by stage (best of --repeats) and the quality of the result: PSNR against a full-size decode resized
with Lanczos, over the picture (not the white border), on the first images.

Candidates: Pillow (draft decode + BOX), Pillow-SIMD (same code, its own venv: it replaces Pillow),
OpenCV as img2dataset uses it (full decode + INTER_AREA), OpenCV at a reduced decode scale,
simplejpeg + Pillow (altlake's path before), pyvips (libvips' thumbnail, its own venv), PyTurboJPEG
(a second libjpeg-turbo binding, over Debian's libturbojpeg, fetched with `apt-get download`) and
altlake's own functions (simplejpeg at a SIMD scale + OpenCV). A candidate that cannot be installed on this
machine is reported with the reason. Results: a table on stdout and bench/out/images.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from altlake.config import Settings
from bench.download.dataset import make_images
from bench.images.methods import QUALITY_IMAGES, geometry
from bench.venvs import peer_venv

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OWN_VENV = ("altlake", "pillow", "simplejpeg+pillow", "opencv", "opencv-reduced")
PEER_VENVS = {  # method -> (venv name, requirements)
    "pillow-simd": ("pillow-simd", ["pillow-simd", "numpy"]),
    "pyvips": ("pyvips", ["pyvips", "pyvips-binary", "numpy"]),
    # PyTurboJPEG 2 needs libjpeg-turbo 3; Debian 12 ships 2.1.5
    "pyturbojpeg": ("pyturbojpeg-1", ["PyTurboJPEG<2", "numpy", "opencv-python-headless"]),
}
TURBOJPEG_DEB = "libturbojpeg0"  # Debian's libjpeg-turbo TurboJPEG library, for PyTurboJPEG
METHODS = (*OWN_VENV, *PEER_VENVS)


def python_for(method: str) -> str:
    """The interpreter whose environment holds `method`'s library (a peer venv is made once)."""
    if method in OWN_VENV:
        return sys.executable
    name, requirements = PEER_VENVS[method]
    if method == "pillow-simd" and "avx2" in Path("/proc/cpuinfo").read_text(errors="ignore"):
        os.environ.setdefault("CC", "cc -mavx2")  # Pillow-SIMD's own advice; its build reads CC
    if method == "pyturbojpeg":
        os.environ.setdefault("BENCH_TURBOJPEG_LIB", str(turbojpeg_library()))
    return str(peer_venv(name, requirements) / "bin" / "python")


def turbojpeg_library() -> Path:
    """libturbojpeg.so for PyTurboJPEG (which ships none): Debian's package, fetched with apt-get
    download and unpacked under the cache once (no root, nothing installed system-wide)."""
    folder = Path(Settings.from_env().cache_dir) / "bench-data" / TURBOJPEG_DEB
    found = sorted(folder.glob("usr/lib/*/libturbojpeg.so.*"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="altlake-deb-") as download:
            subprocess.run(["apt-get", "download", TURBOJPEG_DEB], cwd=download, check=True, capture_output=True)
            (deb,) = Path(download).glob("*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True)
        found = sorted(folder.glob("usr/lib/*/libturbojpeg.so.*"))
    if not found:
        raise OSError(f"{TURBOJPEG_DEB} holds no libturbojpeg.so")
    return found[-1]


def reference(bodies: list[bytes], size: int) -> list[np.ndarray]:
    """The picture each method should give: a full-size decode, Lanczos down to the border geometry."""
    pictures = []
    for body in bodies:
        full = Image.fromarray(simplejpeg.decode_jpeg(body, "RGB"))
        new_width, new_height, _, _ = geometry(full.width, full.height, size)
        pictures.append(np.asarray(full.resize((new_width, new_height), Image.Resampling.LANCZOS)))
    return pictures


def psnr(canvases: np.ndarray, pictures: list[np.ndarray], size: int) -> float:
    """Mean PSNR (dB) over the pictures, the white border left out."""
    values = []
    for canvas, picture in zip(canvases, pictures):
        height, width = picture.shape[:2]
        left, top = (size - width) // 2, (size - height) // 2
        error = np.mean((canvas[top : top + height, left : left + width].astype(np.float64) - picture) ** 2)
        values.append(10 * np.log10(255**2 / max(error, 1e-12)))
    return float(np.mean(values))


def run_method(method: str, folder: Path, size: int, repeats: int, work: Path, pictures: list[np.ndarray]) -> dict:
    try:
        python = python_for(method)
    except (subprocess.CalledProcessError, OSError) as error:
        return {"method": method, "error": f"not installed here: {error}"}
    pixels = work / f"{method}.npy"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [python, str(HERE / "methods.py"), method, str(folder), str(size), str(repeats), str(pixels)]
    print(f"==> {method}", file=sys.stderr)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["psnr_db"] = psnr(np.load(pixels), pictures, size)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="how many JPEGs (bench.download's set)")
    parser.add_argument("--source-size", type=int, default=1024, help="long side of the JPEGs (px)")
    parser.add_argument("--size", type=int, default=256, help="stored size (border mode)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per method; the fastest counts")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "images.json"))
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")

    folder = Path(Settings.from_env().cache_dir) / "bench-data" / f"download-{args.images}-{args.source_size}"
    make_images(folder, args.images, args.source_size)
    bodies = [path.read_bytes() for path in sorted(folder.glob("*.jpg"))[:QUALITY_IMAGES]]
    pictures = reference(bodies, args.size)
    with tempfile.TemporaryDirectory(prefix="altlake-bench-images-") as work:
        results = [run_method(m, folder, args.size, args.repeats, Path(work), pictures) for m in methods]

    report = {
        "benchmark": "JPEG -> border resize -> JPEG q95, one thread, CPU ms per image (best pass)",
        "images": args.images, "source_size": args.source_size, "size": args.size, "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))

    print(f"\n{args.images} JPEGs of ~{args.source_size}px -> border {args.size}px, q95; CPU ms per image, best of {args.repeats}")
    print(f"{'method':<20} {'decode':>7} {'resize':>7} {'encode':>7} {'total':>7} {'PSNR dB':>8}")
    for result in results:
        if "error" in result:
            print(f"{result['method']:<20} {result['error']}")
            continue
        ms = result["ms_per_image"]
        print(f"{result['method']:<20} {ms['decode']:>7.3f} {ms['resize']:>7.3f} {ms['encode']:>7.3f} {ms['total']:>7.3f} {result['psnr_db']:>8.2f}")
    print(f"(written to {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
