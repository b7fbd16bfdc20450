"""Runs inside clip-retrieval's own venv (not ours): embed a folder with `clip_inference`, timed.

The bench passes the checkpoint both tools load and, for the demo model, its open_clip config and
BPE vocabulary; this script registers that architecture with open_clip under the same name our
worker uses, so both tools run the identical model. Writes {"wall_s": ..., "images": ...} to --result (its stdout is chatty).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
import open_clip
from clip_retrieval.clip_inference.main import main as clip_inference


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", required=True, help="webdataset tars as a brace pattern: DIR/{00000..00003}.tar")
    parser.add_argument("--samples-per-shard", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-config", help="an architecture open_clip does not know (the demo model's)")
    parser.add_argument("--bpe", help="that architecture's BPE vocabulary")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    if args.model_config:
        with open(args.model_config) as f:
            config = json.load(f)
        config["text_cfg"]["tokenizer_kwargs"] = {"bpe_path": args.bpe}  # get_tokenizer() reads it from the config
        folder = tempfile.mkdtemp()
        with open(os.path.join(folder, f"{args.model_name}.json"), "w") as f:
            json.dump(config, f)
        open_clip.add_model_config(folder)

    started = time.perf_counter()
    clip_inference(
        input_dataset=args.shards,
        output_folder=args.output,
        input_format="webdataset",  # 2.45.0's "files" reader drops captions: its keys keep the file suffix
        wds_number_file_per_input_file=args.samples_per_shard,
        batch_size=args.batch_size,
        num_prepro_workers=args.workers,
        enable_text=True,
        enable_image=True,
        enable_metadata=False,
        clip_model=f"open_clip:{args.model_name}/{os.path.abspath(args.checkpoint)}",
        use_jit=False,
    )
    wall_s = time.perf_counter() - started
    images = np.load(os.path.join(args.output, "img_emb", "img_emb_0.npy"), mmap_mode="r").shape[0]
    with open(args.result, "w") as f:
        json.dump({"wall_s": wall_s, "images": int(images)}, f)


if __name__ == "__main__":
    main()
