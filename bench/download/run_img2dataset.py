"""One benchmark run of img2dataset, executed by the img2dataset venv's python (imports only it).

Used by bench.download (files output) and bench.clip (webdataset shards for clip_inference).

Kept as a plain script because it runs outside altlake's environment; the __main__ guard is
needed because img2dataset starts its workers with multiprocessing "spawn".
"""

import sys


def main() -> None:
    from img2dataset import download

    url_list, output_folder, threads, image_size, resize_mode = sys.argv[1:6]
    # bench.clip's whole-job rows: webdataset shards of a given size, as clip_inference reads them
    output_format, per_shard = (sys.argv[6], int(sys.argv[7])) if len(sys.argv) > 6 else ("files", 10_000)
    download(
        url_list=url_list,
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_folder=output_folder,
        output_format=output_format,
        number_sample_per_shard=per_shard,
        image_size=int(image_size),
        resize_mode=resize_mode,
        processes_count=1,
        thread_count=int(threads),
        timeout=10,
        retries=0,
        extract_exif=False,  # altlake does not read EXIF either: same work on both sides
        enable_wandb=False,
    )


if __name__ == "__main__":
    main()
