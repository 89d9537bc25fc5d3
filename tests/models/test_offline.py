import pytest

from peft_mcdi.models.offline import publish_folder


def written(folder, text):
    folder.mkdir()
    (folder / "config.json").write_text(text)
    return folder


def test_publish_folder_moves_the_finished_folder_into_place(tmp_path):
    target = tmp_path / "models" / "m"
    publish_folder(written(tmp_path / "m.tmp1", "mine"), target)
    assert (target / "config.json").read_text() == "mine"
    assert not (tmp_path / "m.tmp1").exists()


def test_a_second_converter_keeps_the_published_folder_and_drops_its_copy(tmp_path):
    target = tmp_path / "m"
    publish_folder(written(tmp_path / "m.tmp1", "first"), target)
    publish_folder(written(tmp_path / "m.tmp2", "second"), target)
    assert (target / "config.json").read_text() == "first"
    assert not (tmp_path / "m.tmp2").exists()


def test_a_non_empty_target_that_is_not_a_model_is_not_overwritten(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "stray").write_text("x")
    with pytest.raises(OSError):
        publish_folder(written(tmp_path / "m.tmp1", "mine"), target)
    assert (tmp_path / "m.tmp1" / "config.json").is_file()
