"""Using a trained model: predict, export, features (one small fine-tune shared by the module)."""
import json
import os

import numpy as np
import pytest

from tests.conftest import write_video


@pytest.fixture(scope="module")
def trained_run(synthetic_set, tmp_path_factory):
    """A finished ViViT fine-tune (fp32, pinned) on the synthetic set, 2 loader workers."""
    from finetune.__main__ import main
    from tests.finetune.conftest import write_ft_recipe
    path, run_dir = write_ft_recipe(
        tmp_path_factory.mktemp("use"), synthetic_set,
        data={"num_workers": 2, "test_clips": 2, "test_crops": 2},
        model={"norm_layout": "pooled"},       # one norm, after pooling: exportable to HF
        log={"every": 4})
    assert main(["--config", path, "--init", "none"]) == 0
    return run_dir


def test_predict_on_the_test_split_equals_the_runs_test_accuracy(trained_run, synthetic_set,
                                                                 tmp_path, capsys):
    from finetune.predict import main
    out = tmp_path / "preds.jsonl"
    assert main([trained_run, os.path.join(synthetic_set, "test"), "--out", str(out),
                 "--top-k", "2"]) == 0
    report = json.load(open(os.path.join(trained_run, "report.json")))
    metrics = json.load(open(tmp_path / "preds.metrics.json"))
    assert metrics["samples"] == report["test"]["samples"]
    assert metrics["top1"] == report["test"]["top1"] and metrics["top5"] == report["test"]["top5"]
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == report["test"]["samples"]
    assert all(len(r["top_k"]) == 2 and r["label"] in report["classes"] for r in rows)
    assert all(r["top_k"][0]["score"] >= r["top_k"][1]["score"] for r in rows)
    printed = capsys.readouterr().out
    assert f"top-1 {report['test']['top1']:.4f}" in printed
    # --limit: the first samples only, each with its key and label, as the same probabilities
    assert main([trained_run, os.path.join(synthetic_set, "test"), "--limit", "3", "--top-k",
                 "4", "--out",
                 str(tmp_path / "three.jsonl")]) == 0
    three = [json.loads(line) for line in open(tmp_path / "three.jsonl")]
    assert len(three) == 3 and all(r["label"] and "#" in r["input"] for r in three)
    assert all(abs(sum(t["score"] for t in r["top_k"]) - 1) < 1e-6 for r in three)  # 4 classes


def test_predict_on_files_folders_and_lists_skips_what_it_cannot_read(trained_run, tmp_path,
                                                                      capsys):
    from finetune.predict import main
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    write_video(str(clips / "a.mp4"), n=30, h=32, w=32, seed=1)
    write_video(str(clips / "sub" / "b.mp4"), n=30, h=32, w=32, seed=2)
    (clips / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text("clips/a.mp4 left-fast\nclips/sub/b.mp4\n")
    out = tmp_path / "p.csv"
    rc = main([trained_run, str(clips), str(tmp_path / "list.txt"), str(tmp_path / "empty"),
               str(tmp_path / "missing.mp4"), "--out", str(out)])
    assert rc == 0
    cap = capsys.readouterr()
    skipped = [line for line in cap.err.splitlines() if "skipped" in line]
    assert len(skipped) == 3, cap.err
    assert any("broken.mp4" in s and "cannot open as video" in s for s in skipped)
    assert any("empty: a folder with no video" in s for s in skipped)
    assert any("missing.mp4: not found" in s for s in skipped)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("input,label,top1,score1") and len(lines) == 1 + 4
    assert "Traceback" not in cap.err
    # the same file gives the same probabilities whichever way it was named
    by_name = {}
    for row in lines[1:]:
        cells = row.split(",")
        by_name.setdefault(os.path.basename(cells[0]), set()).add(tuple(cells[2:]))
    assert all(len(v) == 1 for v in by_name.values())
    # nothing usable at all: exit 1, each input named
    assert main([trained_run, str(tmp_path / "empty")]) == 1


def test_bad_models_are_one_line(trained_run, tmp_path, capsys):
    from finetune.predict import main
    clip = write_video(str(tmp_path / "a.mp4"), n=30, h=32, w=32)
    assert main([str(tmp_path / "nope"), clip]) == 2
    assert "model" in capsys.readouterr().err.strip().splitlines()[-1]
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    assert main([str(unfinished), clip]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has not finished (no report.json)" in err[0]


def test_an_export_alone_predicts_what_the_run_predicts(trained_run, synthetic_set, tmp_path):
    """finetune.export writes weights + model.json; predict then needs only that folder (the
    run folder moved away) and gives the same probabilities."""
    import shutil
    from finetune.export import main as export
    from finetune.predict import predict
    out = tmp_path / "model"
    assert export([trained_run, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["model.json", "model.safetensors"]
    meta = json.load(open(out / "model.json"))
    assert meta["family"] == "vivit" and meta["kind"] == "video"
    assert meta["data"]["num_frames"] == 8 and meta["data"]["size"] == 32
    assert meta["data"]["stride"] == 2 and meta["source"]["checkpoint"]
    test = os.path.join(synthetic_set, "test")
    from_run = predict(trained_run, [test], progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    from_export = predict(str(moved), [test], progress=False)
    assert from_export["rows"] == from_run["rows"]
    assert from_export["metrics"] == from_run["metrics"]


def test_export_refuses_a_folder_that_is_not_a_finished_run(tmp_path, capsys):
    from finetune.export import main as export
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert export([str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"finetune.export: error: {tmp_path / 'run'} is a fine-tuning run that has not "
                   f"finished (no report.json): run its command again to finish it, then use "
                   f"the folder"]


def test_features_are_the_probes_and_a_set_resumes_from_its_parts(synthetic_set, ft_recipe,
                                                                   tmp_path, monkeypatch):
    """finetune.features on a prepared split with --config gives exactly the features
    finetune.probe fits on; the parts of an interrupted command are taken, not recomputed."""
    import torch
    import data.stream
    from data.manifest import load_shard_set
    from finetune.features import main, shard_set_features
    from finetune.init import probe_model
    from finetune.probe import extract
    from finetune.train import config_from_cli
    recipe, _ = ft_recipe
    test = os.path.join(synthetic_set, "test")
    out = tmp_path / "f" / "test.npy"
    assert main(["none", test, "--config", recipe, "--out", str(out)]) == 0
    got = np.load(out)
    cfg = config_from_cli(recipe, "none", [])
    model, _ = probe_model(cfg, 4)
    want, labels = extract(model, cfg.data, "test", torch.device("cpu"))
    assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))
    index = (tmp_path / "f" / "test.csv").read_text().splitlines()
    assert index[0] == "row,input,label" and len(index) == 1 + len(labels)
    assert not (tmp_path / "f" / "test.npy.parts").exists()
    # resumable: chunks already in the parts folder are read back, not computed again
    parts = tmp_path / "parts"
    parts.mkdir()
    ss = load_shard_set(test)
    first = shard_set_features(model, cfg.data, ss, "cpu", str(parts))
    monkeypatch.setattr(data.stream, "EvalStream", None)          # nothing may stream now
    again = shard_set_features(model, cfg.data, ss, "cpu", str(parts))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_features_of_a_trained_model_on_loose_files(trained_run, tmp_path):
    from finetune.features import features
    clip = write_video(str(tmp_path / "a.mp4"), n=30, h=32, w=32, seed=5)
    res = features(trained_run, [clip, clip], str(tmp_path / "x.safetensors"))
    from safetensors.numpy import load_file
    f = load_file(str(tmp_path / "x.safetensors"))["features"]
    assert res["shape"] == [2, f.shape[1]] and np.array_equal(f[0], f[1])


def test_volume_inputs_and_their_one_line_errors(tmp_path):
    """MedMNIST-layout inputs: FILE.npz:SPLIT gives its volumes with labels; an npz without the
    named split, or without a split named, and a volume of another channel count each give one
    reason naming the input and the fix."""
    from finetune.predict import Item, _check_volume, gather
    from tests.conftest import make_medmnist_npz
    make_medmnist_npz(str(tmp_path / "scans.npz"), n=(3, 2, 4), classes=2)
    np.save(tmp_path / "one.npy", np.zeros((8, 16, 16), np.uint8))
    np.save(tmp_path / "stack.npy", np.zeros((5, 8, 16, 16), np.uint8))
    np.save(tmp_path / "flat.npy", np.zeros((16, 16), np.uint8))
    units, failures = gather([f"{tmp_path}/scans.npz:test", f"{tmp_path}/scans.npz:extra",
                              f"{tmp_path}/scans.npz", str(tmp_path / "one.npy"),
                              str(tmp_path / "stack.npy"), str(tmp_path / "flat.npy")],
                             ["a", "b"], in_chans=1)
    assert [u.label is not None for u in units[:4]] == [True] * 4
    assert len(units) == 4 + 1 + 5 and all(isinstance(u, Item) for u in units)
    reasons = {f.name.rsplit("/", 1)[-1]: f.reason for f in failures}
    assert "has no split 'extra' (no extra_images); it holds test, train, val" in \
        reasons["scans.npz:extra"]
    assert "name the split to predict, e.g." in reasons["scans.npz"]
    assert "a volume of shape (16, 16)" in reasons["flat.npy"]
    with pytest.raises(ValueError, match=r"the model takes \(D, H, W, 3\) volumes with 3"):
        _check_volume(units[0], np.zeros((8, 16, 16), np.uint8), 3)


HF_457 = r"""
import json, sys
import transformers
from transformers import pipeline
assert transformers.__version__.startswith("4.57"), transformers.__version__
model, files = sys.argv[1], sys.argv[2:]
clf = pipeline("video-classification", model=model)
print(json.dumps([clf(f, top_k=1, num_frames=8, frame_sampling_rate=2)[0] for f in files]))
"""


def test_the_hf_export_gives_our_top1_in_transformers_pipelines(trained_run, synthetic_set,
                                                                tmp_path):
    """--hf writes VideoMAEForVideoClassification with mean pooling, id2label and a processor:
    transformers' video-classification pipeline (5.x here, 4.57 in a subprocess) gives our
    top-1 on at least 95% of the test clips (16-frame files, so the pipelines' sampling is our
    centre clip at stride 2; scored by us with one view)."""
    import shutil
    import subprocess
    import sys
    from data.decode import decode_frames, encode_video
    from finetune.export import main as export
    from finetune.predict import first_samples, predict
    from tests.pretrain.conftest import subprocess_env
    hf = tmp_path / "hf"
    assert export([trained_run, "--out", str(tmp_path / "model"), "--hf", str(hf)]) == 0
    config = json.load(open(hf / "config.json"))
    report = json.load(open(os.path.join(trained_run, "report.json")))
    assert config["use_mean_pooling"] and list(config["id2label"].values()) == report["classes"]
    assert (hf / "preprocessor_config.json").is_file()
    files = []
    for item in first_samples(os.path.join(synthetic_set, "test"), 9) + \
            first_samples(os.path.join(synthetic_set, "val"), 10):
        frames = decode_frames(item.load())[:16]
        frames[15] = frames[14]        # 4.57 takes frame 15 where we take 14: make them one
        path = tmp_path / "clips" / f"{len(files)}.mp4"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode_video(list(frames), fps=25, crf=0))
        files.append(str(path))
    one_view = tmp_path / "one_view"
    shutil.copytree(tmp_path / "model", one_view)
    meta = json.load(open(one_view / "model.json"))
    meta["data"].update(test_clips=1, test_crops=1)
    (one_view / "model.json").write_text(json.dumps(meta))
    ours = predict(str(one_view), files, top_k=1, progress=False)["rows"]
    ours = {r["input"]: r["top_k"][0] for r in ours}
    from transformers import pipeline
    import torch
    clf = pipeline("video-classification", model=str(hf))
    # 5.x decodes a path only with torchcodec (which needs a system FFmpeg, not here): the
    # pipeline takes the decoded frames as a (T, C, H, W) tensor instead
    new = [clf(torch.from_numpy(decode_frames(open(f, "rb").read())).permute(0, 3, 1, 2),
               top_k=1)[0] for f in files]
    agree = np.mean([n["label"] == ours[f]["label"] for f, n in zip(files, new)])
    print(f"transformers {__import__('transformers').__version__}: top-1 agreement {agree:.3f} "
          f"over {len(files)} clips")
    assert agree >= 0.95, (agree, new, ours)
    assert max(abs(n["score"] - ours[f]["score"]) for f, n in zip(files, new)
               if n["label"] == ours[f]["label"]) < 0.01
    old_site = os.path.join(os.environ.get("VIRTUAL_ENV", sys.prefix), "extra",
                            "transformers-4.57")
    if not os.path.isdir(old_site):
        pytest.skip("transformers 4.57 is not installed beside the pinned one (launch/setup.sh)")
    r = subprocess.run([sys.executable, "-c", HF_457, str(hf), *files], capture_output=True,
                       text=True, timeout=300, env=subprocess_env(PYTHONPATH=old_site))
    assert r.returncode == 0, r.stderr[-3000:]
    old = json.loads(r.stdout.strip().splitlines()[-1])
    agree = np.mean([o["label"] == ours[f]["label"] for f, o in zip(files, old)])
    print(f"transformers 4.57: top-1 agreement {agree:.3f} over {len(files)} clips")
    assert agree >= 0.95, (agree, old, ours)


def test_hf_export_of_a_model_it_cannot_hold_is_refused_naming_why(trained_run, tmp_path,
                                                                   capsys):
    from finetune.export import main as export
    meta_dir = tmp_path / "m"
    assert export([trained_run, "--out", str(meta_dir)]) == 0
    meta = json.load(open(meta_dir / "model.json"))
    meta["model"]["norm_layout"] = "tokens"
    (meta_dir / "model.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert export([str(meta_dir), "--out", str(tmp_path / "m2"), "--hf", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.norm_layout='tokens' (needs 'pooled')" in err[0]
    assert not (tmp_path / "h").exists() and not (tmp_path / "m2").exists()


def test_features_of_the_token_grid(trained_run, synthetic_set, tmp_path):
    """--tokens: the token grid per input, (N, tokens, D), whose mean over tokens is the pooled
    feature (ViViT's mean pooling)."""
    from finetune.features import main
    test = os.path.join(synthetic_set, "test")
    assert main([trained_run, test, "--out", str(tmp_path / "p.npy")]) == 0
    assert main([trained_run, test, "--tokens", "--out", str(tmp_path / "t.npy")]) == 0
    pooled, grid = np.load(tmp_path / "p.npy"), np.load(tmp_path / "t.npy")
    assert grid.shape == (pooled.shape[0], 4 * 4 * 4, pooled.shape[1])    # 8/2 x 32/8 x 32/8
    assert np.allclose(grid.mean(1), pooled, atol=1e-5)


def _fill(folder):
    """Fill the tmpfs at ``folder`` up to its last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_outputs_on_a_full_disk_end_in_one_line_and_leave_nothing_half_written(
        trained_run, synthetic_set, tmp_path, capsys):
    """predict --out, finetune.export and finetune.features on a full disk (a real tmpfs):
    each ends in one line naming the file and the fix, exit 2, with no .tmp file, no empty
    model folder and no parts left; predict's table was printed before."""
    from finetune.export import main as export
    from finetune.features import main as features
    from finetune.predict import main as predict
    from tests.conftest import tmpfs
    test = os.path.join(synthetic_set, "test")
    with tmpfs(tmp_path / "full", "size=256k") as full:
        _fill(full)
        capsys.readouterr()
        assert predict([trained_run, test, "--limit", "4", "--out", str(full / "p.jsonl")]) == 2
        out, err = capsys.readouterr()
        assert "input" in out                                   # the table was shown
        err = err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("finetune.predict: error: could not write ")
        assert "No space left on device" in err[0] and "free some space" in err[0]
        assert export([trained_run, "--out", str(full / "model")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("finetune.export: error: could not write")
        assert features([trained_run, test, "--out", str(full / "f.npy")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("finetune.features: error: could not write")
        assert sorted(os.listdir(full)) == ["filler"], os.listdir(full)


def test_outputs_go_into_folders_that_do_not_exist_yet(trained_run, synthetic_set, tmp_path):
    from finetune.predict import main as predict
    test = os.path.join(synthetic_set, "test")
    out = tmp_path / "new" / "deeper" / "p.csv"
    assert predict([trained_run, test, "--limit", "2", "--out", str(out)]) == 0
    assert out.read_text().startswith("input,label,top1")


def test_features_resumed_after_the_model_was_re_exported_in_place_use_the_new_model(
        trained_run, synthetic_set, tmp_path, monkeypatch):
    """The parts of an interrupted finetune.features are keyed on what they were computed
    from (the model's weights, the inputs' manifests), not on paths: re-exporting another
    model into the same folder makes the rerun compute everything with the new model."""
    import finetune.features as feats
    from finetune.export import main as export
    from safetensors.torch import load_file, save_file
    model = tmp_path / "model"
    assert export([trained_run, "--out", str(model)]) == 0
    test = os.path.join(synthetic_set, "test")
    out = tmp_path / "f.npy"

    def crash(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(feats, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        feats.features(str(model), [test], str(out))
    assert os.listdir(str(out) + ".parts")              # the old model's parts are there
    monkeypatch.undo()
    weights = load_file(str(model / "model.safetensors"))
    name = next(k for k in weights if k.startswith("blocks.") and k.endswith("weight"))
    weights[name] = weights[name] * 1.5                   # another model, same folder
    save_file(weights, str(model / "model.safetensors"))
    feats.features(str(model), [test], str(out))
    fresh = tmp_path / "fresh.npy"
    feats.features(str(model), [test], str(fresh))
    assert np.array_equal(np.load(out), np.load(fresh))


@pytest.mark.parametrize("damage", ["empty", "huge_header", "cut"])
def test_a_damaged_model_file_is_one_line_in_predict_and_features(trained_run, synthetic_set,
                                                                  tmp_path, capsys, damage):
    import shutil
    import struct
    from finetune.export import main as export
    from finetune.features import main as features
    from finetune.predict import main as predict
    model = tmp_path / "model"
    assert export([trained_run, "--out", str(model)]) == 0
    weights = model / "model.safetensors"
    body = weights.read_bytes()
    weights.write_bytes({"empty": b"", "huge_header": struct.pack("<Q", 1 << 60) + b"{}",
                         "cut": body[:len(body) // 2]}[damage])
    test = os.path.join(synthetic_set, "test")
    capsys.readouterr()
    for prog, run in (("predict", lambda: predict([str(model), test, "--limit", "2"])),
                      ("features", lambda: features([str(model), test, "--out",
                                                     str(tmp_path / "f.npy")]))):
        assert run() == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"finetune.{prog}: error: {weights} is not a readable "
                                 f"safetensors file") and "export the run again" in err[0]
    shutil.rmtree(model)


def test_predict_and_features_say_how_far_they_are_when_not_on_a_terminal(
        trained_run, synthetic_set, tmp_path, capsys, monkeypatch):
    """Off a terminal (nohup, SLURM), predict and features print a progress line every 30 s
    (here every update) with the count, the rate and the time left."""
    import data.progress
    from finetune.features import main as features
    from finetune.predict import main as predict
    monkeypatch.setattr(data.progress, "PROGRESS_EVERY_S", 0.0)
    test = os.path.join(synthetic_set, "test")
    clip = write_video(str(tmp_path / "a.mp4"), n=30, h=32, w=32, seed=3)
    capsys.readouterr()
    assert predict([trained_run, test, clip]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("predict: ")]
    import re
    assert lines and all(re.fullmatch(r"predict: \d+/\d+ inputs, [\d.]+ inputs/s, about \d+ "
                                      r"min left", x) for x in lines), lines
    assert lines[-1].split()[1].split("/")[0] == lines[-1].split()[1].split("/")[1]
    assert features([trained_run, test, "--out", str(tmp_path / "f.npy")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("features: ")]
    assert lines and lines[-1].split()[1].split("/")[0] == lines[-1].split()[1].split("/")[1]


def test_visualize_given_a_fine_tuning_run_says_so(trained_run, capsys):
    from pretrain.visualize import main
    assert main([trained_run, "whatever.mp4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a fine-tuning run: it has no decoder" in err[0], err


def _readme_python_blocks() -> list[str]:
    """The Python blocks of README.md and docs/ (a user's page of snippets, in order)."""
    import glob
    import re
    import textwrap
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    text = "".join(open(p).read() for p in [os.path.join(root, "README.md")] + sorted(
        glob.glob(os.path.join(root, "docs", "**", "*.md"), recursive=True)))
    return [textwrap.dedent(b) for b in
            re.findall(r"^ *```python\n(.*?)^ *```", text, flags=re.S | re.M)]


def test_every_python_block_of_the_readme_runs_as_written(trained_run, tmp_path, capsys,
                                                         monkeypatch):
    """The README's Python blocks, run as a user pastes them: only the placeholder paths
    (hf_folder, hf_dir, clip.mp4) point at real files (a pre-training HF export, a fine-tuned
    one, a 64-frame clip)."""
    from finetune.export import main as export
    from pretrain.export import export_hf
    from pretrain.model import ModelConfig, VideoMAE
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2
    model_cfg = json.load(open(os.path.join(trained_run, "report.json")))["model"]
    pre = ModelConfig(preset="vit_tiny", img_size=model_cfg["img_size"],
                      patch_size=model_cfg["patch_size"], num_frames=model_cfg["num_frames"],
                      tubelet_size=model_cfg["tubelet_size"])
    export_hf(VideoMAE(pre).state_dict(), pre, str(tmp_path / "hf_folder"))
    assert export([trained_run, "--out", str(tmp_path / "model"), "--hf",
                   str(tmp_path / "hf_dir")]) == 0
    write_video(str(tmp_path / "clip.mp4"), n=80, h=48, w=64, seed=4)
    monkeypatch.chdir(tmp_path)
    import sys
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", ".."))
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert "score" in capsys.readouterr().out              # the pipeline's answer was printed
    assert sys.modules.get("data.decode") is not None
