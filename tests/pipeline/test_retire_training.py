"""`tupac run` after a config change: the old model folder moves aside; an interrupted training resumes."""

from __future__ import annotations

from tupac.pipeline import TRAINING_KEY_FILE, retire_stale_training


def test_changed_key_moves_the_old_model_and_same_key_keeps_it(tmp_path):
    models = tmp_path / "MODELS"
    tumor = models / "tumor"
    assert retire_stale_training(tumor, "key-a") is None  # nothing there yet
    (tumor / "checkpoint-0003.safetensors").write_bytes(b"weights of config a")

    # Same key: an interrupted training of the same config; its checkpoints stay for the trainer to resume.
    assert retire_stale_training(tumor, "key-a") is None
    assert (tumor / "checkpoint-0003.safetensors").read_bytes() == b"weights of config a"

    # Another key: the whole folder moves to MODELS/superseded/<time>/tumor, byte for byte; tumor/ starts empty.
    moved = retire_stale_training(tumor, "key-b")
    assert moved is not None and moved.parent.parent == models / "superseded" and moved.name == "tumor"
    assert (moved / "checkpoint-0003.safetensors").read_bytes() == b"weights of config a"
    assert (moved / TRAINING_KEY_FILE).read_text().strip() == "key-a"
    assert sorted(p.name for p in tumor.iterdir()) == [TRAINING_KEY_FILE]
    assert (tumor / TRAINING_KEY_FILE).read_text().strip() == "key-b"


def test_a_folder_from_outside_the_pipeline_is_kept_aside_not_resumed(tmp_path):
    mitosis = tmp_path / "MODELS" / "mitosis"
    mitosis.mkdir(parents=True)
    (mitosis / "card.json").write_text("{}")  # trained by hand: no pipeline key
    moved = retire_stale_training(mitosis, "key")
    assert moved is not None and (moved / "card.json").read_text() == "{}"
    assert not (mitosis / "card.json").exists()
