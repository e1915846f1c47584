import json

from data.preview import main as preview


def test_preview_prints_one_batch_as_json_and_draws_it(synthetic_set, tmp_path, capsys):
    png = str(tmp_path / "b.png")
    assert preview([synthetic_set, "--num-frames", "8", "--stride", "2", "--size", "32",
                    "--patch", "8", "--batch", "2", "--json", "--png", png]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clip"] == {"shape": [2, 3, 8, 32, 32], "dtype": "torch.uint8"}
    assert out["mask"]["shape"] == [2, 64] and out["mask"]["hidden_per_sample"] == [56, 56]
    assert len(out["labels"]) == 2 and out["num_samples"] == 45
    from PIL import Image
    assert Image.open(png).size == (8 * 32, 2 * 32)


def test_preview_of_a_missing_folder_fails_cleanly(tmp_path, capsys):
    assert preview([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_preview_warns_when_clips_run_past_the_end_of_the_videos(synthetic_set, capsys):
    """The synthetic clips have 24 frames: 8 x stride 2 fits (no word), 16 x stride 4 (the
    defaults, 61 frames) does not and is named, as is what happens to such clips."""
    assert preview([synthetic_set, "--num-frames", "8", "--stride", "2", "--size", "32",
                    "--patch", "8", "--json"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert preview([synthetic_set, "--size", "32", "--patch", "8", "--json"]) == 0
    err = capsys.readouterr().err
    assert ("warning: 45 of the first 45 samples are shorter than one clip (16 frames x "
            "stride 4 = 61 stored frames; the shortest has 24)") in err
    assert "repeat the last frame" in err
