"""Train the project's demo models from generated data: `python -m gpu_workers.demo_models.train`.

No pretrained weights may be downloaded, so the demo and the tests score with small models trained
here, in a few minutes on 2 CPU cores, on scenes drawn by `synthetic.py`:

1. clip         altlake-tiny, a real open_clip CLIP (tiny ViT + text transformer), contrastive loss on
                English captions; its match/mismatch similarity threshold is calibrated on a
                validation set and stored in the checkpoint's metadata.
2. multilingual an open_clip TextTransformer distilled into the CLIP text space from German,
                French and Spanish (and English) captions (the Multilingual-CLIP recipe).
3. nsfw         LAION's NSFW MLP over the CLIP image embeddings, trained on the unsafe-PROXY marker.
4. watermark    LAION's watermark classifier head on a small timm EfficientNet, trained on images
                with and without overlaid semi-transparent watermarks.
5. aesthetic    LAION-AI/aesthetic-predictor's linear head over the CLIP image embeddings, regressing
                a made-up 1-10 rating of scenes faded by a random amount (synthetic.rating).

Every checkpoint is an fp16 state dict with a `metadata` dict (held-out metrics, data seed,
steps), written next to this file unless --out says otherwise. MODEL_CARD.md documents them.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import torch
from torch import nn
from tqdm import tqdm

from gpu_workers import models as M
from gpu_workers.demo_models import synthetic as S

PARTS = ("clip", "multilingual", "nsfw", "watermark", "aesthetic")
WATERMARK_BACKBONE = "test_efficientnet"  # timm's smallest EfficientNet: b3a's family at 1/30 the size
WATERMARK_IMAGE_SIZE = 64
RENDER_SIZE = 64  # what the demo server serves; models resize it like any downloaded image
VARIANT_P = 0.2
MULTILINGUAL_CONTEXT = 40  # share of watermarked / unsafe-proxy scenes in the CLIP's training data


def scenes(seed: int, n: int, watermark_p: float = VARIANT_P, unsafe_p: float = VARIANT_P) -> list[S.SceneSpec]:
    rng = random.Random(seed)
    return [S.random_spec(rng, watermark=rng.random() < watermark_p, unsafe_proxy=rng.random() < unsafe_p) for _ in range(n)]


def pairs(seed: int, n: int, language: str = "en") -> tuple[list[S.SceneSpec], list[str], list[str]]:
    """Held-out-style evaluation data: scenes, their captions and a mismatched caption each."""
    rng = random.Random(seed + 1)
    specs = scenes(seed, n)
    matching = [S.caption(s, language) for s in specs]
    mismatched = [S.caption(replace(S.mismatched_spec(s, rng), unsafe_proxy=s.unsafe_proxy), language) for s in specs]
    return specs, matching, mismatched


def calibrate(matching: np.ndarray, mismatched: np.ndarray) -> tuple[float, float, float]:
    """Threshold maximising the worse of the two accuracies; returns (threshold, acc_match, acc_mismatch)."""
    candidates = np.unique(np.concatenate([matching, mismatched]))
    best = (-1.0, 0.0, 0.0, 0.0)
    for t in candidates:
        acc_match, acc_mismatch = float((matching > t).mean()), float((mismatched <= t).mean())
        score = min(acc_match, acc_mismatch)
        if score > best[0]:
            best = (score, float(t), acc_match, acc_mismatch)
    # Move to the middle of the gap above the chosen score so the threshold is not on a sample.
    t = best[1]
    above = matching[matching > t]
    t = (t + float(above.min())) / 2 if len(above) else t
    return t, float((matching > t).mean()), float((mismatched <= t).mean())


def auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """ROC AUC as the probability that a positive outranks a negative (ties count half)."""
    pos, neg = scores_pos[:, None], scores_neg[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def _images(specs: list[S.SceneSpec], transform) -> torch.Tensor:
    return torch.stack([transform(S.render(s, RENDER_SIZE)) for s in specs])


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless shuffled epochs of index batches (smaller batches when the data set is smaller)."""
    batch_size = min(batch_size, n)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i : i + batch_size]


def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule, bar: tqdm) -> None:
    """One optimisation step with its learning-rate schedule, shown on the progress bar."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    bar.update()
    bar.set_postfix(loss=f"{loss.item():.4f}")


def _progress(steps: int, label: str) -> tqdm:
    return tqdm(total=steps, desc=label, file=sys.stderr, leave=False)


def _fp16(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16) if v.is_floating_point() else v for k, v in module.state_dict().items()}


# --- 1. CLIP -----------------------------------------------------------------------------------------


def train_clip(steps: int, seed: int, batch_size: int = 128, n_train: int = 6000) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    model, _, transform = open_clip.create_model_and_transforms(M.DEMO_CLIP_MODEL)
    tokenizer = M.tokenizer_for(M.DEMO_CLIP_MODEL)
    specs = scenes(seed, n_train)
    images = _images(specs, transform)
    captions = [S.caption(s, "en") for s in specs]
    tokens = tokenizer(captions)
    ids = {c: i for i, c in enumerate(sorted(set(captions)))}
    caption_ids = torch.tensor([ids[c] for c in captions])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    batches = _batches(n_train, batch_size, np.random.default_rng(seed))
    with _progress(steps, "clip") as bar:
        for _ in range(steps):
            idx = torch.from_numpy(next(batches))
            img = model.encode_image(images[idx], normalize=True)
            txt = model.encode_text(tokens[idx], normalize=True)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
            # Identical captions in one batch are all positives (a closed caption set repeats).
            same = (caption_ids[idx][:, None] == caption_ids[idx][None, :]).float()
            target = same / same.sum(1, keepdim=True)
            loss = (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.log_softmax(0).T, 1).mean()) / 2
            _step(loss, optimizer, schedule, bar)
    model.eval()
    return model, {"steps": steps, "train_scenes": n_train, "data_seed": seed}


@torch.inference_mode()
def clip_scores(model: nn.Module, tokenize, specs, matching, mismatched, text_encoder=None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each scene image with its matching and with its mismatched caption."""
    transform = open_clip.image_transform(model.visual.image_size, is_train=False)
    img = M.unit_rows(model.encode_image(_images(specs, transform)))
    encode = text_encoder or model.encode_text
    return (
        M.similarity(img, M.unit_rows(encode(tokenize(matching)))),
        M.similarity(img, M.unit_rows(encode(tokenize(mismatched)))),
    )


# --- 2. multilingual text tower ---------------------------------------------------------------------


def all_captions() -> list[tuple[S.SceneSpec, str, str]]:
    """(scene, language, caption) for every caption the generator can write: a closed set."""
    out = []
    for shape, colour, count, position, badge in itertools.product(S.SHAPES, S.COLOURS, S.COUNTS, S.POSITIONS, (False, True)):
        spec = S.SceneSpec(shape, colour, count, position, unsafe_proxy=badge)
        out.extend((spec, language, S.caption(spec, language)) for language in S.LANGUAGES)
    return out


def train_multilingual(clip: nn.Module, steps: int, seed: int, batch_size: int = 128) -> tuple[nn.Module, dict, dict]:
    """Student text tower (initialised from CLIP's) regressing CLIP's English text embedding."""
    torch.manual_seed(seed)
    cfg = open_clip.get_model_config(M.DEMO_CLIP_MODEL)["text_cfg"]
    text_cfg = {k: cfg[k] for k in ("vocab_size", "width", "heads", "layers")}
    # German/French/Spanish captions need more tokens than English ones under the same BPE.
    text_cfg["context_length"] = MULTILINGUAL_CONTEXT
    student = open_clip.transformer.TextTransformer(output_dim=clip.text_projection.shape[1], **text_cfg)
    teacher_weights = {
        "token_embedding.weight": clip.token_embedding.weight,
        "ln_final.weight": clip.ln_final.weight,
        "ln_final.bias": clip.ln_final.bias,
        "text_projection": clip.text_projection,
        **{f"transformer.{k}": v for k, v in clip.transformer.state_dict().items()},
    }
    student.load_state_dict({k: v.detach().clone() for k, v in teacher_weights.items()}, strict=False)
    with torch.no_grad():
        student.positional_embedding[: clip.positional_embedding.shape[0]] = clip.positional_embedding
    tokenizer = M.tokenizer_for(M.DEMO_CLIP_MODEL)
    rows = all_captions()
    tokens = tokenizer([c for _, _, c in rows], context_length=MULTILINGUAL_CONTEXT)
    with torch.inference_mode():
        targets = M.unit_rows(clip.encode_text(tokenizer([S.caption(s, "en") for s, _, _ in rows])))
    targets = torch.from_numpy(targets)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    student.train()
    batches = _batches(len(rows), batch_size, np.random.default_rng(seed))
    with _progress(steps, "multilingual") as bar:
        for _ in range(steps):
            idx = torch.from_numpy(next(batches))
            out = nn.functional.normalize(student(tokens[idx]), dim=-1)
            loss = (1 - (out * targets[idx]).sum(-1)).mean()
            _step(loss, optimizer, schedule, bar)
    student.eval()
    return student, text_cfg, {"steps": steps, "data_seed": seed}


# --- 3. NSFW-architecture head on the unsafe proxy ----------------------------------------------------


@torch.inference_mode()
def proxy_embeddings(clip: nn.Module, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP image embeddings of scenes, half with the unsafe-proxy badge, and their 0/1 labels."""
    rng = random.Random(seed)
    specs = [S.random_spec(rng, watermark=rng.random() < VARIANT_P, unsafe_proxy=i % 2 == 1) for i in range(n)]
    transform = open_clip.image_transform(clip.visual.image_size, is_train=False)
    emb = torch.from_numpy(M.unit_rows(clip.encode_image(_images(specs, transform))))
    return emb, torch.tensor([float(s.unsafe_proxy) for s in specs])


def train_nsfw(clip: nn.Module, steps: int, seed: int, n_train: int = 3000, batch_size: int = 128) -> tuple[M.NsfwHead, dict]:
    torch.manual_seed(seed)
    emb, labels = proxy_embeddings(clip, seed, n_train)
    head = M.NsfwHead(emb.shape[1])
    # Keras' Normalization layer is adapted to the training data; do the same.
    head.norm.mean.copy_(emb.mean(0))
    head.norm.variance.copy_(emb.var(0) + 1e-6)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    head.train()
    batches = _batches(n_train, batch_size, np.random.default_rng(seed))
    with _progress(steps, "nsfw-proxy") as bar:
        for _ in range(steps):
            idx = torch.from_numpy(next(batches))
            loss = nn.functional.binary_cross_entropy(head(emb[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update()
    head.eval()
    return head, {"steps": steps, "train_images": n_train, "data_seed": seed}


# --- 4. watermark classifier ----------------------------------------------------------------------------


def watermark_data(seed: int, n: int) -> tuple[list, torch.Tensor]:
    """Rendered scenes, every other one watermarked, and the labels in LAION's order (0 = watermark)."""
    rng = random.Random(seed)
    specs = [S.random_spec(rng, watermark=i % 2 == 0, unsafe_proxy=rng.random() < VARIANT_P) for i in range(n)]
    return [S.render(s, RENDER_SIZE) for s in specs], torch.tensor([0 if s.watermark else 1 for s in specs])


def train_watermark(steps: int, seed: int, n_train: int = 3000, batch_size: int = 64) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    model = M.build_watermark_model(WATERMARK_BACKBONE)
    transform = M.watermark_transform(WATERMARK_IMAGE_SIZE)
    images, labels = watermark_data(seed, n_train)
    x = torch.stack([transform(im) for im in images])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    model.train()
    batches = _batches(n_train, batch_size, np.random.default_rng(seed))
    with _progress(steps, "watermark") as bar:
        for _ in range(steps):
            idx = torch.from_numpy(next(batches))
            loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
            _step(loss, optimizer, schedule, bar)
    model.eval()
    return model, {"steps": steps, "train_images": n_train, "data_seed": seed}


@torch.inference_mode()
def watermark_probabilities(model: nn.Module, images: list) -> np.ndarray:
    transform = M.watermark_transform(WATERMARK_IMAGE_SIZE)
    return torch.softmax(model(torch.stack([transform(im) for im in images])), 1)[:, 0].numpy()


# --- 5. aesthetic predictor on the synthetic contrast ------------------------------------------------------


@torch.inference_mode()
def aesthetic_data(clip: nn.Module, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP image embeddings of scenes of uniformly drawn quality (the usual variants mixed in) and their ratings."""
    rng = random.Random(seed)
    specs = [
        S.random_spec(rng, watermark=rng.random() < VARIANT_P, unsafe_proxy=rng.random() < VARIANT_P, quality=rng.random())
        for _ in range(n)
    ]
    transform = open_clip.image_transform(clip.visual.image_size, is_train=False)
    emb = torch.from_numpy(M.unit_rows(clip.encode_image(_images(specs, transform))))
    return emb, torch.tensor([S.rating(s) for s in specs])


def train_aesthetic(clip: nn.Module, steps: int, seed: int, n_train: int = 3000, batch_size: int = 512) -> tuple[nn.Linear, dict]:
    """The linear layout (65 parameters at 64 dims): LAION's MLP has no activations in its linearMSE
    weights, so it is an affine map too, and the small file is the one worth committing."""
    torch.manual_seed(seed)
    emb, ratings = aesthetic_data(clip, seed, n_train)
    head = nn.Linear(emb.shape[1], 1)
    with torch.no_grad():
        head.bias.fill_(float(ratings.mean()))  # start at the mean rating: the steps go to the signal
    # A high rate: the embeddings are unit vectors that differ little, so the weights have far to go.
    optimizer = torch.optim.Adam(head.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=steps, pct_start=0.1)
    batches = _batches(n_train, batch_size, np.random.default_rng(seed))
    with _progress(steps, "aesthetic") as bar:
        for _ in range(steps):
            idx = torch.from_numpy(next(batches))
            loss = nn.functional.mse_loss(head(emb[idx]).squeeze(-1), ratings[idx])
            _step(loss, optimizer, schedule, bar)
    return head.eval(), {"steps": steps, "train_images": n_train, "data_seed": seed}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# --- driver -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_workers.demo_models.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=M.DEMO_DIR, help="where the checkpoints go (default: next to this script)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="train only these parts (the others load from --out)")
    parser.add_argument("--seed", type=int, default=0, help="data and init seed; validation uses seed+1000")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (0.01 for a smoke run)")
    # OpenMP spin-waiting makes 2 threads far slower than 1 on a machine busy with other work.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = {"clip": 1000, "multilingual": 600, "nsfw": 300, "watermark": 300, "aesthetic": 3000}
    steps = {k: max(2, int(v * args.scale)) for k, v in steps.items()}
    sizes = {k: max(64, int(v * args.scale)) for k, v in {"train": 6000, "heads": 3000, "val": 1000}.items()}
    paths = {part: args.out / M.DEMO_FILES[part].name for part in PARTS}
    val_seed = args.seed + 1000
    report: dict[str, dict] = {}

    started = time.perf_counter()
    if "clip" in args.only:
        clip, meta = train_clip(steps["clip"], args.seed, n_train=sizes["train"])
    else:
        clip, _, _ = open_clip.create_model_and_transforms(M.DEMO_CLIP_MODEL, pretrained=str(paths["clip"]))
        clip.eval()
    tokenizer = M.tokenizer_for(M.DEMO_CLIP_MODEL)
    if "clip" in args.only:
        match, mismatch = clip_scores(clip, tokenizer, *pairs(val_seed, sizes["val"]))
        threshold, acc_match, acc_mismatch = calibrate(match, mismatch)
        meta.update(threshold=threshold, val_acc_match=acc_match, val_acc_mismatch=acc_mismatch, val_seed=val_seed)
        torch.save({"state_dict": _fp16(clip), "metadata": meta}, paths["clip"])
        report["clip"] = meta

    if "multilingual" in args.only:
        tower, text_cfg, meta = train_multilingual(clip, steps["multilingual"], args.seed)
        match, mismatch = [], []
        for language in ("de", "fr", "es"):
            long_tokenizer = M.tokenizer_for(M.DEMO_CLIP_MODEL, context_length=MULTILINGUAL_CONTEXT)
            m, mm = clip_scores(clip, long_tokenizer, *pairs(val_seed + len(match), sizes["val"] // 2, language), text_encoder=tower)
            match.append(m)
            mismatch.append(mm)
        threshold, acc_match, acc_mismatch = calibrate(np.concatenate(match), np.concatenate(mismatch))
        meta.update(threshold=threshold, val_acc_match=acc_match, val_acc_mismatch=acc_mismatch, val_seed=val_seed)
        torch.save(
            {
                "name": "altlake-tiny-multilingual",
                "text_cfg": text_cfg,
                "embed_dim": int(clip.text_projection.shape[1]),
                "tokenizer": M.DEMO_CLIP_MODEL,
                "state_dict": _fp16(tower),
                "metadata": meta,
            },
            paths["multilingual"],
        )
        report["multilingual"] = meta

    if "nsfw" in args.only:
        head, meta = train_nsfw(clip, steps["nsfw"], args.seed, n_train=sizes["heads"])
        emb, labels = proxy_embeddings(clip, val_seed, sizes["val"])
        with torch.inference_mode():
            p = head(emb).numpy()
        y = labels.numpy().astype(bool)
        meta.update(val_auc=auc(p[y], p[~y]), val_accuracy=float(((p > 0.5) == y).mean()), val_seed=val_seed)
        torch.save({"state_dict": _fp16(head), "metadata": meta}, paths["nsfw"])
        report["nsfw"] = meta

    if "watermark" in args.only:
        model, meta = train_watermark(steps["watermark"], args.seed, n_train=sizes["heads"])
        images, labels = watermark_data(val_seed, sizes["val"])
        p = watermark_probabilities(model, images)
        y = labels.numpy() == 0
        meta.update(val_auc=auc(p[y], p[~y]), val_accuracy=float(((p > 0.5) == y).mean()), val_seed=val_seed)
        torch.save(
            {"backbone": WATERMARK_BACKBONE, "image_size": WATERMARK_IMAGE_SIZE, "state_dict": _fp16(model), "metadata": meta},
            paths["watermark"],
        )
        report["watermark"] = meta

    if "aesthetic" in args.only:
        head, meta = train_aesthetic(clip, steps["aesthetic"], args.seed, n_train=sizes["heads"])
        emb, ratings = aesthetic_data(clip, val_seed, sizes["val"])
        stored = M.aesthetic_head(_fp16(head))[0]  # measured as committed: fp16 weights
        with torch.inference_mode():
            predicted = stored(emb).squeeze(-1).numpy()
        y = ratings.numpy()
        meta.update(val_pearson=pearson(predicted, y), val_rmse=float(np.sqrt(((predicted - y) ** 2).mean())), val_seed=val_seed)
        torch.save({"state_dict": _fp16(head), "metadata": meta}, paths["aesthetic"])
        report["aesthetic"] = meta

    for part, meta in report.items():
        size_kb = paths[part].stat().st_size / 1024
        print(f"{part:<13} {size_kb:8.0f} KiB  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in meta.items()))
    print(f"trained {', '.join(report)} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
