"""`cifar-resnet predict`: image files of every kind, dataset images, the --show figures, and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_resnet import TrainConfig, evaluate_checkpoint, fit, load_checkpoint
from cifar_resnet.images import ImageFileError, load_image, load_images, prepare_image
from cifar_resnet.inference import EvalData, Predictor, load_predictor, resolve_split
from cifar_resnet.plots import RIGHT, WRONG
from cifar_resnet.predict import DatasetImages, predict

pytestmark = pytest.mark.usefixtures("one_thread")

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def hex_rgb(colour: str) -> tuple:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


# ------------------------------------------------------------------------------------------------
# files -> 32x32 RGB, no model involved
# ------------------------------------------------------------------------------------------------


def test_every_mode_and_format_becomes_32x32_rgb(tmp_path):
    big = Image.fromarray(PIXELS).resize((256, 256), Image.Resampling.NEAREST)
    files = {
        "rgb.png": big,
        "rgb.jpg": big,
        "rgb.webp": big,
        "gray.png": big.convert("L"),
        "palette.png": big.convert("P"),
        "rgba.png": big.convert("RGBA"),
        "la.png": big.convert("LA"),
        "wide.png": Image.fromarray(
            np.concatenate(
                [np.zeros((256, 128, 3), np.uint8), np.asarray(big), np.zeros((256, 128, 3), np.uint8)], axis=1
            )
        ),
        "cmyk.jpg": big.convert("CMYK"),
    }
    for name, img in files.items():
        img.save(tmp_path / name, **({"lossless": True} if name.endswith(".webp") else {}))
    for name in files:
        out = load_image(tmp_path / name)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8, name
    # an image enlarged 8x comes back exactly (area averaging), lossless formats bit for bit
    for name in ("rgb.png", "rgb.webp", "wide.png", "palette.png"):
        err = np.abs(load_image(tmp_path / name).astype(int) - PIXELS).mean()
        assert err < (3 if name == "palette.png" else 1e-9), (name, err)  # palette: 256-colour quantised
    assert np.abs(load_image(tmp_path / "rgb.jpg").astype(int) - PIXELS).mean() < 3  # JPEG is lossy
    gray = load_image(tmp_path / "gray.png")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # squash keeps the black bars of the wide image; the centre crop drops them
    assert load_image(tmp_path / "wide.png", resize="squash")[:, :4].max() == 0


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (50, 40), (200, 10, 10, 0))
    assert (prepare_image(clear) == 255).all()
    half = Image.new("RGBA", (64, 64), (0, 0, 0, 128))
    assert abs(int(prepare_image(half).mean()) - 127) <= 1
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 0
    assert (prepare_image(pal) == 255).all()


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    img = Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16))
    img.save(tmp_path / "deep.png")
    assert (load_image(tmp_path / "deep.png") == 255).all()
    assert (prepare_image(Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))) == 128).all()


def bad_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    buf = tmp_path / "whole.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf)
    (tmp_path / "truncated.png").write_bytes(buf.read_bytes()[:2000])
    (tmp_path / "folder").mkdir()
    return {
        "notes.txt": "not an image",
        "truncated.png": "truncated",
        "folder": "is a directory",
        "missing.jpg": "no such file",
    }


def test_bad_files_each_give_one_line(tmp_path):
    expected = bad_files(tmp_path)
    for name, message in expected.items():
        with pytest.raises(ImageFileError, match=message) as info:
            load_image(tmp_path / name)
        assert "\n" not in str(info.value) and str(tmp_path / name) in str(info.value)
    images, good, errors = load_images([tmp_path / "whole.png", *(tmp_path / n for n in expected)])
    assert images.shape == (1, 32, 32, 3) and good == [tmp_path / "whole.png"] and len(errors) == 4


# ------------------------------------------------------------------------------------------------
# with the real checkpoint
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def val_split(real_run, real_data):
    return resolve_split(load_checkpoint(real_run / "best.pt"), real_data, "val")[1]


def test_a_file_and_the_same_dataset_image_get_the_same_probabilities(real_run, val_split, tmp_path, cli):
    Image.fromarray(val_split.images[7]).save(tmp_path / "seven.png")
    Image.fromarray(val_split.images[7]).resize((128, 128), Image.Resampling.NEAREST).save(tmp_path / "big.png")
    code, out, err = cli(
        "predict", real_run / "best.pt", tmp_path / "seven.png", tmp_path / "big.png", "--top-k", "5", "--json"
    )
    assert code == 0, err
    from_files = json.loads(out)
    code, out, err = cli("predict", real_run / "best.pt", "--split", "val", "--index", "7", "--json")
    assert code == 0, err
    (from_data,) = json.loads(out)
    assert len(from_files) == 2 and len(from_data["top"]) == 5
    assert from_data["true"] == load_checkpoint(real_run / "best.pt").classes[val_split.labels[7]]
    for r in from_files:
        assert [t["class"] for t in r["top"]] == [t["class"] for t in from_data["top"]]
        assert [t["prob"] for t in r["top"]] == pytest.approx([t["prob"] for t in from_data["top"]], abs=1e-6)
    probs = [t["prob"] for t in from_data["top"]]
    assert probs == sorted(probs, reverse=True)


def test_probabilities_sum_to_one_and_agree_with_evaluate(real_run, val_split):
    predictor = Predictor.from_checkpoint(real_run / "best.pt", device="cpu")
    probs = predictor.probabilities(val_split.images[:300])
    assert probs.shape == (300, 100)
    assert torch.allclose(probs.sum(dim=1), torch.ones(300), atol=1e-5)
    full = predictor.top_k(probs[:1], 100)[0]
    assert sum(p for _, p in full) == pytest.approx(1.0, abs=1e-5)
    results = predictor.predict_split(val_split, range(300))
    right = sum(r["correct"] for r in results)
    assert right == int((probs.argmax(dim=1) == torch.from_numpy(val_split.labels[:300])).sum())


def test_a_batch_with_bad_files_still_predicts_the_good_ones(real_run, val_split, tmp_path, cli):
    expected = bad_files(tmp_path)
    Image.fromarray(val_split.images[0]).save(tmp_path / "good.png")
    Image.fromarray(val_split.images[1]).convert("L").resize((300, 200)).save(tmp_path / "good2.jpg")
    files = [tmp_path / "good.png", *(tmp_path / n for n in expected), tmp_path / "good2.jpg"]
    code, out, err = cli("predict", real_run / "best.pt", *files, "--top-k", "3")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("cifar-resnet: error: ") for line in lines)
    for line, message in zip(lines, expected.values()):
        assert message in line
    assert "Traceback" not in err
    lines = out.strip().splitlines()  # per good file: its path, then top-3 lines "  12.34%  name"
    assert len(lines) == 8 and lines[0] == str(tmp_path / "good.png") and lines[4] == str(tmp_path / "good2.jpg")
    assert all(line.strip().split()[0].endswith("%") for i, line in enumerate(lines) if i % 4)

    code, out, _ = cli("predict", real_run / "best.pt", *files, "--json")
    results = json.loads(out)
    assert code == 2 and [("error" in r) for r in results] == [False, True, True, True, True, False]
    assert len(results[0]["top"]) == 5


def test_show_one_image_and_a_grid(real_run, tmp_path, cli, open_png, count_colour):
    code, out, err = cli("predict", real_run / "best.pt", "--index", "100", "--show", tmp_path / "one.png")
    assert code == 0, err
    assert "index 100" in out and f"wrote {tmp_path / 'one.png'}" in out
    one = open_png(tmp_path / "one.png", (750, 340))
    verdict = WRONG if ", WRONG)" in out.splitlines()[0] else RIGHT
    assert count_colour(one, hex_rgb(verdict), 10) > 200  # the frame, in the colour of the verdict

    code, out, err = cli(
        "predict",
        real_run / "best.pt",
        "--sample",
        "12",
        "--seed",
        "3",
        "--top-k",
        "1",
        "--show",
        tmp_path / "grid.png",
    )
    assert code == 0, err
    grid = open_png(tmp_path / "grid.png", (1240, 395))  # 8 columns x 2 rows
    heads = [line for line in out.splitlines() if line.startswith("index ")]
    assert len(heads) == 12
    red, green = hex_rgb(WRONG), hex_rgb(RIGHT)
    for i, head in enumerate(heads):
        # image i's tile (1.55 x 1.75 inches at 100 dpi, below a 0.45 inch title): a wrong prediction framed
        # and captioned in red, a right one in green, a frame and caption being ~2,400 pixels
        row, col = divmod(i, 8)
        tile = grid[45 + 175 * row : 45 + 175 * (row + 1), 155 * col : 155 * (col + 1)]
        framed, other = (red, green) if head.endswith(", WRONG)") else (green, red)
        assert count_colour(tile, framed, 10) > 1000 and count_colour(tile, other, 10) < 200, (i, head)


def test_files_grid_without_truth(real_run, val_split, tmp_path, cli, open_png, count_colour):
    for i in range(3):
        Image.fromarray(val_split.images[i]).save(tmp_path / f"img{i}.png")
    code, _, err = cli(
        "predict", real_run / "best.pt", *(tmp_path / f"img{i}.png" for i in range(3)), "--show", tmp_path / "files.png"
    )
    assert code == 0, err
    grid = open_png(tmp_path / "files.png")
    # no red or green frames without a true label
    assert count_colour(grid, hex_rgb(WRONG), 10) < 500 and count_colour(grid, hex_rgb(RIGHT), 10) < 500


@pytest.mark.parametrize(
    "args, message",
    [
        (["--index", "2000"], "index 2000 is out of range: the split has 2000 images"),
        (["--index", "-1"], "out of range"),
        (["--sample", "0"], "--sample must be between 1 and 2000"),
        ([], "nothing to predict"),
        (["x.png", "--index", "1"], "not both"),
        (["--index", "1", "--top-k", "0"], "--top-k must be >= 1"),
    ],
)
def test_bad_requests(real_run, cli, assert_one_line_error, args, message):
    code, out, err = cli("predict", real_run / "best.pt", *args)
    assert_one_line_error(code, err, message)
    assert out == ""


def test_checkpoint_without_class_names(real_run, tmp_path, cli, assert_one_line_error):
    # edited by hand, so without a checksum (which the edit would no longer match; such files load unchecked)
    ckpt = {k: v for k, v in load_checkpoint(real_run / "best.pt").to_dict().items() if k != "checksum"}
    torch.save({**ckpt, "classes": []}, tmp_path / "nameless.pt")
    code, _, err = cli("predict", tmp_path / "nameless.pt", "--index", "1")
    assert_one_line_error(code, err, "has no class names")
    torch.save({k: v for k, v in ckpt.items() if k != "classes"}, tmp_path / "lacking.pt")
    code, _, err = cli("predict", tmp_path / "lacking.pt", "--index", "1")
    assert_one_line_error(code, err, "lacks classes")
    code, _, err = cli("predict", tmp_path, "--index", "1")
    assert_one_line_error(code, err, "is a directory")


def test_predictions_are_made_in_the_precision_the_run_trained_in(tmp_path, synthetic, cli):
    data = synthetic(n_train=200, n_val=0)
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=data.train.images, y_train=data.train.labels)
    config = TrainConfig(
        data=str(npz),
        val_split=100,
        model="fast",
        model_kwargs={"widths": [8, 16, 16], "stem_width": 8},
        epochs=1,
        batch_size=50,
        eval_batch_size=50,
        optimizer="sgd",
        lr=0.05,
        grad_clip=0.0,
        device="cpu",
        precision="bf16",
    )
    fit(config, None, tmp_path / "run", log=None, progress=False)
    best = tmp_path / "run" / "best.pt"
    predictor = load_predictor(best, "cpu")  # what `serve` loads
    assert predictor.options.precision == predictor.info["precision"] == "bf16"
    assert not predictor.options.tta and predictor.options.tta_translate == 0  # one pass per image
    assert Predictor.from_checkpoint(best, "cpu", precision="fp32").info["precision"] == "fp32"
    # predict's right answers are evaluate's: the same split, normalisation and precision
    result = predict(predictor, DatasetImages(EvalData(split="val"), index=range(100)), k=1)
    assert {r["precision"] for r in result.results} == {"bf16"} and result.options.precision == "bf16"
    report = evaluate_checkpoint(best, device="cpu", progress=False)
    assert report["precision"] == "bf16" and sum(r["correct"] for r in result.results) == round(report["top1"] * 100)
    for flags, precision in (([], "bf16"), (["--precision", "fp32"], "fp32")):
        code, out, err = cli("predict", best, "--index", "3", "--json", *flags)
        assert code == 0, err
        assert json.loads(out)[0]["precision"] == precision


def test_index_may_be_given_more_than_once():
    from cifar_resnet.cli import get_args_parser

    args = get_args_parser().parse_args(["predict", "best.pt", "--index", "1", "--index", "2", "3"])
    assert args.index == [1, 2, 3]
