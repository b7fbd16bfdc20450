"""One decoder / resizer / encoder combination, timed per stage on a folder of JPEGs.

Run by bench.images with the python of the environment that holds the library under test (Pillow-SIMD
and pyvips live in their own venvs, as Pillow-SIMD replaces Pillow), so this file imports nothing of
altlake except for the `altlake` method, which runs the worker's own functions. Every method does
the same job as the worker and img2dataset: JPEG bytes in, border-resized to `size` px on a white
square, JPEG q95 bytes out. Prints one JSON object: CPU milliseconds per image by stage (best of
`repeats`), and writes the first images' resized pixels to `pixels_out` (.npy) for the quality check.

    python methods.py METHOD FOLDER SIZE REPEATS PIXELS_OUT
"""

import io
import json
import sys
import time
from pathlib import Path

import numpy as np

QUALITY = 95
QUALITY_IMAGES = 50  # images whose pixels go back for the PSNR column


def geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """img2dataset's border mode: the longest side to `size`; (new width, new height, left, top)."""
    scale = size / max(width, height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    return new_width, new_height, (size - new_width) // 2, (size - new_height) // 2


def on_canvas(pixels: np.ndarray, size: int, left: int, top: int) -> np.ndarray:
    canvas = np.full((size, size, 3), 255, np.uint8)
    canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    return canvas


def pillow(size: int):
    """Pillow (or Pillow-SIMD, same code): draft decode at 1/2, 1/4 or 1/8, BOX resize, paste, save."""
    from PIL import Image

    def decode(body):
        image = Image.open(io.BytesIO(body))
        width, height = image.size
        new_width, new_height, left, top = geometry(width, height, size)
        image.draft("RGB", (new_width, new_height))
        image.load()
        return image.convert("RGB"), (new_width, new_height, left, top)

    def resize(decoded):
        image, (new_width, new_height, left, top) = decoded
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(image.resize((new_width, new_height), Image.Resampling.BOX), (left, top))
        return canvas

    def encode(image):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=QUALITY)
        return buffer.getvalue()

    return decode, resize, encode, np.asarray


def opencv(size: int, reduced: bool):
    """OpenCV: a full decode and area averaging (img2dataset's code), or a decode at 1/2, 1/4, 1/8."""
    import cv2

    cv2.setNumThreads(1)

    def decode(body):
        data = np.frombuffer(body, np.uint8)
        flags = cv2.IMREAD_COLOR
        if reduced:
            import simplejpeg  # header only, to pick the scale

            height, width = simplejpeg.decode_jpeg_header(body)[:2]
            new_width, new_height = geometry(width, height, size)[:2]
            for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
                if width // factor >= new_width and height // factor >= new_height:
                    flags = flag
                    break
        return cv2.imdecode(data, flags)

    def resize(bgr):
        height, width = bgr.shape[:2]
        new_width, new_height, left, top = geometry(width, height, size)
        interpolation = cv2.INTER_AREA if new_width < width else cv2.INTER_LANCZOS4
        return on_canvas(cv2.resize(bgr, (new_width, new_height), interpolation=interpolation), size, left, top)

    def encode(bgr):
        return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()

    return decode, resize, encode, lambda bgr: bgr[:, :, ::-1]


def simplejpeg_pillow(size: int):
    """simplejpeg at any 1/8 scale, then Pillow's BOX: altlake's path before OpenCV."""
    import simplejpeg
    from PIL import Image

    def decode(body):
        height, width = simplejpeg.decode_jpeg_header(body)[:2]
        new_width, new_height, left, top = geometry(width, height, size)
        return Image.fromarray(simplejpeg.decode_jpeg(body, "RGB", min_width=new_width, min_height=new_height)), (new_width, new_height, left, top)

    _, resize, encode, to_rgb = pillow(size)
    return decode, resize, encode, to_rgb


def pyturbojpeg(size: int):
    """PyTurboJPEG (ctypes over the system's libturbojpeg): decode at the same SIMD scale as altlake,
    the same OpenCV resize, its own q95 4:2:0 encode; the library is the one BENCH_TURBOJPEG_LIB names."""
    import os

    import cv2
    from turbojpeg import TJPF_RGB, TJSAMP_420, TurboJPEG

    cv2.setNumThreads(1)
    jpeg = TurboJPEG(os.environ["BENCH_TURBOJPEG_LIB"])

    def decode(body):
        width, height = jpeg.decode_header(body)[:2]
        new_width, new_height, left, top = geometry(width, height, size)
        denominator = next((d for d in (8, 4, 2) if -(-width // d) >= new_width and -(-height // d) >= new_height), 1)
        return jpeg.decode(body, pixel_format=TJPF_RGB, scaling_factor=(1, denominator)), (new_width, new_height, left, top)

    def resize(decoded):
        pixels, (new_width, new_height, left, top) = decoded
        shrink = pixels.shape[1] / new_width
        interpolation = cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR if shrink > 1 else cv2.INTER_LANCZOS4
        return on_canvas(cv2.resize(pixels, (new_width, new_height), interpolation=interpolation), size, left, top)

    def encode(pixels):
        return jpeg.encode(pixels, quality=QUALITY, pixel_format=TJPF_RGB, jpeg_subsample=TJSAMP_420)

    return decode, resize, encode, lambda pixels: pixels


def pyvips(size: int):
    """libvips' thumbnail: shrink-on-load, its own resampling, embed, jpegsave; one thread, as the others."""
    import os

    os.environ.setdefault("VIPS_CONCURRENCY", "1")  # read when libvips starts: before the import
    import pyvips as vips

    vips.cache_set_max(0)

    def decode(body):  # libvips is lazy: copy_memory makes it decode (and shrink) here, once
        return vips.Image.thumbnail_buffer(body, size, height=size).copy_memory()

    def resize(image):
        left, top = (size - image.width) // 2, (size - image.height) // 2
        return image.embed(left, top, size, size, extend="background", background=[255, 255, 255])

    def encode(image):
        return image.jpegsave_buffer(Q=QUALITY)

    def to_rgb(image):
        return np.ndarray(buffer=image.write_to_memory(), dtype=np.uint8, shape=(image.height, image.width, image.bands))

    return decode, resize, encode, to_rgb


def altlake(size: int):
    """The worker's own functions: simplejpeg at a SIMD scale, OpenCV resize and encode."""
    from gpu_workers.images import ImageConfig, decode_plain_jpeg, encode as encode_pixels, read_header, resize as resize_pixels, target_size

    config = ImageConfig(size=size, resize_mode="border", min_bytes=0)

    def decode(body):
        header = read_header(body, config)
        return decode_plain_jpeg(body, header, target_size(header, config)), header

    def resize(decoded):
        pixels, header = decoded
        return resize_pixels(pixels, size, "border", original_size=(header.width, header.height))

    def encode(pixels):
        return encode_pixels(pixels, "jpg", QUALITY)

    return decode, resize, encode, lambda pixels: pixels


METHODS = {
    "altlake": altlake,
    "pillow": pillow,
    "pillow-simd": pillow,
    "simplejpeg+pillow": simplejpeg_pillow,
    "opencv": lambda size: opencv(size, reduced=False),
    "opencv-reduced": lambda size: opencv(size, reduced=True),
    "pyvips": pyvips,
    "pyturbojpeg": pyturbojpeg,
}


def main() -> None:
    method, folder, size, repeats, pixels_out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    bodies = [path.read_bytes() for path in sorted(folder.glob("*.jpg"))]
    decode, resize, encode, to_rgb = METHODS[method](size)
    best = {"decode": float("inf"), "resize": float("inf"), "encode": float("inf")}
    for _ in range(repeats):
        spent = dict.fromkeys(best, 0.0)
        kept = []
        for body in bodies:
            t0 = time.process_time()
            decoded = decode(body)
            t1 = time.process_time()
            resized = resize(decoded)
            t2 = time.process_time()
            encode(resized)
            t3 = time.process_time()
            spent["decode"] += t1 - t0
            spent["resize"] += t2 - t1
            spent["encode"] += t3 - t2
            if len(kept) < QUALITY_IMAGES:
                kept.append(np.ascontiguousarray(to_rgb(resized)))
        best = {stage: min(best[stage], spent[stage]) for stage in best}
    np.save(pixels_out, np.stack(kept))
    ms = {stage: 1000 * seconds / len(bodies) for stage, seconds in best.items()}
    print(json.dumps({"method": method, "images": len(bodies), "ms_per_image": {**ms, "total": sum(ms.values())}}))


if __name__ == "__main__":
    main()
