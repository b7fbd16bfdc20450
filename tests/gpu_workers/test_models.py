"""The scoring models through the worker's API: the committed demo models, real open_clip
architectures by name, s3:// checkpoints through a moto server, LAION head layouts."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import boto3
import numpy as np
import open_clip
import pytest
import torch
from moto.server import ThreadedMotoServer
from PIL import Image
from torch import nn

from gpu_workers import models as M
from gpu_workers.demo_models import synthetic as S
from gpu_workers.models import ModelSpec, load_models, similarity

HELD_OUT_SEED = 987_654  # training used seeds 0 and 1000: these scenes were never seen


pytestmark = pytest.mark.usefixtures("offline")  # conftest: no hub, an empty model cache, one torch thread


@pytest.fixture(scope="module")
def demo():
    return load_models(ModelSpec(multilingual_text_model="demo"))


def held_out(n: int, seed: int = HELD_OUT_SEED, **variants) -> tuple[list[S.SceneSpec], list]:
    rng = random.Random(seed)
    specs = [S.random_spec(rng, **variants) for _ in range(n)]
    return specs, [S.render(s) for s in specs]


def caption_scores(models: M.Models, language: str, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    specs, images = held_out(n, seed=HELD_OUT_SEED + len(language) + ord(language[0]))
    rng = random.Random(5)
    img = models.embed_images(models.preprocess(images))
    matching = [S.caption(s, language) for s in specs]
    mismatched = [S.caption(S.mismatched_spec(s, rng), language) for s in specs]
    languages = [language] * n
    return (
        similarity(img, models.embed_texts(matching, languages)),
        similarity(img, models.embed_texts(mismatched, languages)),
    )


def test_demo_models_return_unit_float32_embeddings_and_ids(demo):
    _, images = held_out(5)
    batch = demo.preprocess(images)
    assert batch.shape == (5, 3, demo.image_size, demo.image_size)
    img = demo.embed_images(batch)
    txt = demo.embed_texts(["one red circle on the left"] * 5, ["en"] * 5)
    for emb in (img, txt):
        assert emb.dtype == np.float32 and emb.shape == (5, demo.embed_dim)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert demo.clip_id.startswith("altlake-tiny@demo-")
    assert demo.nsfw_id and demo.watermark_id and demo.multilingual_text_id and demo.aesthetic_id
    assert len({demo.clip_id, demo.nsfw_id, demo.watermark_id, demo.multilingual_text_id, demo.aesthetic_id}) == 5
    assert demo.aesthetic_id.startswith("laion-aesthetic-linear-contrast-proxy@demo-")
    assert set(demo.thresholds) == {"en", "other"}


def test_demo_clip_separates_matching_from_mismatched_captions_on_held_out_scenes(demo):
    matching, mismatched = caption_scores(demo, "en")
    threshold = demo.thresholds["en"]
    assert (matching > threshold).mean() >= 0.95
    assert (mismatched <= threshold).mean() >= 0.95


@pytest.mark.parametrize("language", ["de", "fr", "es"])
def test_multilingual_encoder_separates_non_english_captions(demo, language):
    matching, mismatched = caption_scores(demo, language, n=160)
    threshold = demo.thresholds["other"]
    assert (matching > threshold).mean() >= 0.95
    assert (mismatched <= threshold).mean() >= 0.95


def test_texts_are_grouped_by_language_and_returned_in_input_order(demo):
    english_only = load_models(ModelSpec(nsfw_head=None, watermark_head=None))
    texts = ["two blue squares at the top", "zwei blaue Quadrate oben", "one red circle on the left", "un cercle rouge à gauche"]
    languages = ["en", "de", "en", "fr"]
    mixed = demo.embed_texts(texts, languages)
    for i, (text, language) in enumerate(zip(texts, languages)):
        np.testing.assert_allclose(mixed[i], demo.embed_texts([text], [language])[0], atol=1e-5)
    # English goes through the CLIP text tower either way; other languages through the second encoder.
    np.testing.assert_allclose(mixed[[0, 2]], english_only.embed_texts([texts[0], texts[2]], ["en", "en"]), atol=1e-5)
    assert not np.allclose(mixed[1], english_only.embed_texts([texts[1]], ["de"])[0], atol=1e-3)
    assert demo.text_model_for("de") == demo.multilingual_text_id != demo.text_model_for("en") == demo.clip_id
    assert english_only.text_model_for("de") == english_only.clip_id
    assert english_only.thresholds["other"] == english_only.thresholds["en"] != demo.thresholds["other"]
    with pytest.raises(ValueError, match="2 texts but 1 languages"):
        demo.embed_texts(["a", "b"], ["en"])


def test_nsfw_proxy_head_separates_marked_images(demo):
    _, clean = held_out(100)
    _, marked = held_out(100, seed=HELD_OUT_SEED + 1, unsafe_proxy=True)
    p_clean = demo.punsafe(demo.embed_images(demo.preprocess(clean)))
    p_marked = demo.punsafe(demo.embed_images(demo.preprocess(marked)))
    assert p_clean.shape == (100,) and p_clean.dtype == np.float32
    accuracy = ((p_marked > 0.5).sum() + (p_clean <= 0.5).sum()) / 200
    assert accuracy >= 0.9


def test_watermark_head_separates_watermarked_images(demo):
    _, clean = held_out(100, seed=HELD_OUT_SEED + 2)
    _, marked = held_out(100, seed=HELD_OUT_SEED + 3, watermark=True)
    p_clean, p_marked = demo.pwatermark(clean), demo.pwatermark(marked)
    assert p_marked.shape == (100,)
    accuracy = ((p_marked > 0.5).sum() + (p_clean <= 0.5).sum()) / 200
    assert accuracy >= 0.9


def test_an_images_scores_do_not_depend_on_its_batch_mates(demo):
    """Batches fill in download order, which differs between runs: each photo's embedding and
    watermark probability must be the same bits at every position of the batch, or a re-run of a
    batch writes different scores."""
    import itertools

    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB").resize((256, 256)) for name in ("astronaut", "chelsea", "coffee", "rocket")]
    seen: dict[tuple[str, int], set[bytes]] = {}
    for order in itertools.permutations(range(len(photos))):
        batch = [photos[i] for i in order]
        embeddings, watermark = demo.embed_images(demo.preprocess(batch)), demo.pwatermark(batch)
        for position, i in enumerate(order):
            seen.setdefault(("embedding", i), set()).add(embeddings[position].tobytes())
            seen.setdefault(("pwatermark", i), set()).add(watermark[position].tobytes())
    assert {key: len(values) for key, values in seen.items() if len(values) > 1} == {}


@pytest.mark.parametrize("transform", ["open_clip ViT-B-32", "LAION watermark"])
def test_host_transform_gives_the_transforms_own_bits_on_real_photos(transform):
    """The worker's CPU path normalises in numpy; the model must see exactly what the eval transform gives."""
    from skimage import data

    if transform == "LAION watermark":
        reference = M.watermark_transform(256)
    else:
        reference = open_clip.create_model_and_transforms("ViT-B-32")[2]
    fast = M.HostTransform(reference)
    photos = [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "camera", "coffee")]
    photos += [photos[0].resize((256, 256)), photos[1].convert("RGBA"), photos[3].resize((300, 200))]
    for photo in photos:
        expected, got = reference(photo), fast(photo)
        assert got.dtype == expected.dtype == torch.float32 and got.shape == expected.shape and torch.equal(got, expected)


def test_host_transform_runs_other_layouts_as_they_are():
    import torchvision.transforms as T

    layout = T.Compose([T.Resize(32), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3), T.Lambda(lambda x: x * 2)])
    photo = Image.new("RGB", (48, 40), (200, 10, 30))
    assert torch.equal(M.HostTransform(layout)(photo), layout(photo))


def test_demo_aesthetic_head_rates_the_generated_quality(demo):
    """The demo head was trained on other seeds: on fresh scenes of random quality (variants mixed in)
    its rating follows synthetic.rating, on LAION-Aesthetics' 1-10 scale."""
    rng = random.Random(HELD_OUT_SEED + 4)
    specs = [S.random_spec(rng, watermark=i % 5 == 0, unsafe_proxy=i % 7 == 0, quality=rng.random()) for i in range(200)]
    predicted = demo.aesthetic(demo.embed_images(demo.preprocess([S.render(s) for s in specs])))
    truth = np.array([S.rating(s) for s in specs])
    assert predicted.shape == (200,) and predicted.dtype == np.float32
    assert np.corrcoef(predicted, truth)[0, 1] >= 0.8
    assert np.sqrt(np.mean((predicted - truth) ** 2)) < 2.0  # rating points: on the scale, not just correlated
    crisp, faded = held_out(60, seed=HELD_OUT_SEED + 5), held_out(60, seed=HELD_OUT_SEED + 6, quality=0.1)
    rate = lambda images: demo.aesthetic(demo.embed_images(demo.preprocess(images)))  # noqa: E731
    assert rate(crisp[1]).mean() - rate(faded[1]).mean() > 4
    assert demo.aesthetic(np.zeros((0, demo.embed_dim), np.float32)).shape == (0,)


def test_heads_are_optional():
    models = load_models(ModelSpec(nsfw_head=None, watermark_head=None, aesthetic_head=None))
    _, images = held_out(2)
    emb = models.embed_images(models.preprocess(images))
    assert models.punsafe(emb) is None and models.aesthetic(emb) is None
    assert models.pwatermark(images) is None
    assert models.nsfw_id is None and models.watermark_id is None and models.aesthetic_id is None


def test_open_clip_architecture_by_name_without_network():
    models = load_models(ModelSpec(clip_model="ViT-B-32", nsfw_head=None, watermark_head=None, aesthetic_head=None))
    assert (models.image_size, models.embed_dim, models.clip_id) == (224, 512, "ViT-B-32@random-init")
    _, images = held_out(2)
    emb = models.embed_images(models.preprocess(images))
    assert emb.shape == (2, 512)
    assert similarity(emb, models.embed_texts(["a photo", "eine Katze"], ["en", "de"])).shape == (2,)


def test_uncached_pretrained_tag_is_a_clear_error(tmp_path):
    spec = ModelSpec(clip_model="ViT-B-32", pretrained="laion2b_s34b_b79k", nsfw_head=None, watermark_head=None, cache_dir=str(tmp_path / "models"))
    with pytest.raises(FileNotFoundError, match="never downloads") as error:
        load_models(spec)
    assert str(tmp_path / "models") in str(error.value) and "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(error.value)
    with pytest.raises(ValueError, match="no pretrained tag 'nope'"):
        load_models(replace(spec, pretrained="nope"))


def test_bad_model_choices_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_models(ModelSpec(clip_model="ViT-Nope"))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_models(ModelSpec(checkpoint=str(tmp_path / "missing.pt")))
    # The demo NSFW head reads altlake-tiny's 64-dim embeddings, not ViT-B-32's 512.
    with pytest.raises(ValueError, match="expects 64-dim CLIP embeddings"):
        load_models(ModelSpec(clip_model="ViT-B-32", watermark_head=None))


@pytest.fixture
def s3(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ALTLAKE_S3_ENDPOINT", endpoint)  # the endpoint comes from Settings, as in production
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="weights")
    yield client
    server.stop()


def test_checkpoint_loads_from_s3_and_refreshes_when_the_object_changes(s3, tmp_path):
    local = M.DEMO_FILES["clip"]
    s3.upload_file(str(local), "weights", "clip/tiny.pt")
    spec = ModelSpec(checkpoint="s3://weights/clip/tiny.pt", nsfw_head=None, watermark_head=None)
    from_s3 = load_models(spec)
    from_file = load_models(ModelSpec(checkpoint=str(local), nsfw_head=None, watermark_head=None))
    _, images = held_out(4)
    batch = from_file.preprocess(images)
    np.testing.assert_allclose(from_s3.embed_images(batch), from_file.embed_images(batch), atol=1e-6)
    assert from_s3.clip_id == from_file.clip_id and from_s3.clip_id.startswith("altlake-tiny@sha256:")
    assert from_s3.thresholds == from_file.thresholds  # the calibration travels inside the file

    # New weights under the same key: the cached copy is stale and must not be used.
    other = tmp_path / "other.pt"
    checkpoint = torch.load(local, weights_only=True)
    checkpoint["state_dict"] = {k: v * 0.5 if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, other)
    s3.upload_file(str(other), "weights", "clip/tiny.pt")
    refreshed = load_models(spec)
    assert refreshed.clip_id != from_s3.clip_id
    assert not np.allclose(refreshed.embed_images(batch), from_s3.embed_images(batch), atol=1e-3)


def test_laion_nsfw_layouts_load_from_bare_state_dicts(tmp_path):
    """LAION's converted ViT-B/32 and ViT-L/14 heads are bare state dicts with these key names."""
    for dim, hidden in ((512, M.NSFW_HIDDEN_B32), (768, M.NSFW_HIDDEN_L14)):
        head = M.NsfwHead(dim, hidden)
        linears = [f"linear_{i}.{p}" for i in range(1, len(hidden) + 2) for p in ("weight", "bias")]
        assert set(head.state_dict()) == {"norm.mean", "norm.variance", *linears}
        path = tmp_path / f"nsfw_{dim}.pth"
        torch.save(head.state_dict(), path)
        loaded = M.NsfwHead.from_state_dict(torch.load(path, weights_only=True))
        x = torch.randn(3, dim)
        torch.testing.assert_close(loaded(x), head.eval()(x))
    b32 = load_models(ModelSpec(clip_model="ViT-B-32", nsfw_head=str(tmp_path / "nsfw_512.pth"), watermark_head=None, aesthetic_head=None))
    _, images = held_out(3)
    p = b32.punsafe(b32.embed_images(b32.preprocess(images)))
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    assert b32.nsfw_id.startswith("laion-nsfw-mlp@sha256:")


@pytest.fixture(scope="module")
def clip_of_dim(tmp_path_factory):
    """The name of a real open_clip CLIP embedding into `dim` dims (altlake-tiny's towers, random init):
    LAION's heads read ViT-B/32's 512 and ViT-L/14's 768 dims, and this one loads in milliseconds."""
    folder = tmp_path_factory.mktemp("clip-configs")

    def register(dim: int) -> str:
        name = f"altlake-tiny-{dim}"
        if name not in open_clip.list_models():
            config = {**json.loads((M.DEMO_DIR / "altlake-tiny.json").read_text()), "embed_dim": dim}
            (folder / f"{name}.json").write_text(json.dumps(config))
            open_clip.add_model_config(folder / f"{name}.json")
        return name

    return register


class LaionAestheticMlp(nn.Module):
    """improved-aesthetic-predictor's MLP as its training script defines it (the reluMSE files: with the ReLUs)."""

    def __init__(self, input_size: int, relu: bool = False):
        super().__init__()
        act = (lambda: [nn.ReLU()]) if relu else (lambda: [])  # noqa: E731
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), *act(), nn.Dropout(0.2),
            nn.Linear(1024, 128), *act(), nn.Dropout(0.2),
            nn.Linear(128, 64), *act(), nn.Dropout(0.1),
            nn.Linear(64, 16), *act(),
            nn.Linear(16, 1),
        )  # fmt: skip

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize(
    ("file_name", "dim", "make", "layout"),
    [
        ("sa_0_4_vit_b_32_linear.pth", 512, lambda: nn.Linear(512, 1), "linear"),  # LAION-AI/aesthetic-predictor
        ("sa_0_4_vit_l_14_linear.pth", 768, lambda: nn.Linear(768, 1), "linear"),
        ("sac+logos+ava1-l14-linearMSE.pth", 768, lambda: LaionAestheticMlp(768), "mlp"),  # improved-aesthetic-predictor
        ("ava+logos-l14-reluMSE.pth", 768, lambda: LaionAestheticMlp(768, relu=True), "mlp-relu"),
    ],
)
def test_laion_aesthetic_layouts_load_from_bare_state_dicts(tmp_path, clip_of_dim, file_name, dim, make, layout):
    """LAION's files are bare state dicts of these modules; loaded through load_models, the worker's
    aesthetic() equals the module applied to the L2-normalised image embeddings."""
    torch.manual_seed(dim)
    laion = make().eval()
    path = tmp_path / file_name
    torch.save(laion.state_dict(), path)
    models = load_models(ModelSpec(clip_model=clip_of_dim(dim), nsfw_head=None, watermark_head=None, aesthetic_head=str(path)))
    assert models.aesthetic_id.startswith(f"laion-aesthetic-{layout}@sha256:")
    _, images = held_out(6)
    emb = models.embed_images(models.preprocess(images))
    assert emb.shape == (6, dim)
    got = models.aesthetic(emb)
    with torch.inference_mode():
        expected = laion(torch.from_numpy(emb)).squeeze(-1).numpy()
    assert got.shape == (6,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(got) > 0  # the images differ, so do their ratings


def test_aesthetic_head_of_another_dimension_or_layout_is_a_clear_error(tmp_path):
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(LaionAestheticMlp(768).state_dict(), path)
    with pytest.raises(ValueError, match=r"aesthetic head .*linearMSE.pth expects 768-dim CLIP image embeddings, this CLIP gives 64"):
        load_models(ModelSpec(nsfw_head=None, watermark_head=None, aesthetic_head=str(path)))
    # The default demo head reads altlake-tiny's 64 dims, not ViT-B-32's 512.
    with pytest.raises(ValueError, match="aesthetic head demo expects 64-dim CLIP image embeddings, this CLIP gives 512"):
        load_models(ModelSpec(clip_model="ViT-B-32", nsfw_head=None, watermark_head=None))
    odd = tmp_path / "odd.pth"
    torch.save(nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 1)).state_dict(), odd)  # keys 0.weight, 1.weight: no LAION layout
    with pytest.raises(ValueError, match="not a LAION-Aesthetics predictor state dict"):
        load_models(ModelSpec(nsfw_head=None, watermark_head=None, aesthetic_head=str(odd)))


def test_laion_watermark_model_layout(tmp_path):
    """A bare state dict is LAION's file: efficientnet_b3(a) at 256 px with the replaced classifier."""
    model = M.build_watermark_model()
    layers = list(model.classifier)
    assert [type(layer).__name__ for layer in layers] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[3].out_features, layers[5].out_features) == (1536, 625, 256, 2)
    assert layers[2].p == 0.3
    path = tmp_path / "watermark_model_v1.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    loaded = load_models(ModelSpec(nsfw_head=None, watermark_head=str(path)))
    assert loaded.watermark_id.startswith("laion-watermark-efficientnet_b3@sha256:")
    _, images = held_out(1)
    p = loaded.pwatermark(images)
    assert p.shape == (1,) and 0 <= p[0] <= 1


def test_device_transform_reproduces_the_eval_transforms_on_real_photos():
    """CLIP's (shorter side + center crop, bicubic) and the watermark head's (square, bilinear) eval
    transforms, batched on a torch device, against the PIL transforms they replace."""
    from skimage import data
    from torchvision import transforms as T

    clip_transform = open_clip.image_transform(224, is_train=False)
    for transform, shape in ((clip_transform, (256, 256)), (clip_transform, (256, 300)), (M.watermark_transform(256), (256, 256))):
        step = M.DeviceTransform.of(transform)
        assert step is not None
        for photo in (data.astronaut(), data.chelsea(), data.coffee()):
            image = Image.fromarray(photo).resize(shape[::-1])
            expected = transform(image)
            got = step(torch.from_numpy(np.array(image))[None])[0]
            assert got.shape == expected.shape
            difference = (got - expected).abs()
            assert difference.mean() < 0.01 and difference.max() < 0.1
    assert M.DeviceTransform.of(open_clip.image_transform(224, is_train=True)) is None  # random crops: not reproducible
    assert M.DeviceTransform.of(T.Compose([T.Resize(224), T.ToTensor()])) is None  # no normalisation step
