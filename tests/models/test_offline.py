import os
import re
import subprocess
import sys

import pytest

from peft_mcdi.models.offline import (
    MINILM_HUB_ID,
    OFFLINE_COPIES,
    SMOLLM2_HUB_ID,
    OfflineCopy,
    from_pretrained,
    install,
    installed_snapshot,
    publish_folder,
    resolve_pretrained,
)
from peft_mcdi.utils import file_sha256


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


# ------------------------------------------------------------------------------------------ the hub-cache install
def tiny_copy(write=None, hub_id="owner/tiny"):
    """An offline copy that needs no model package: its "package" is pytest (present wherever tests run)."""

    def write_files(package, out):
        (out / "sub").mkdir(parents=True)
        (out / "config.json").write_text('{"model_type": "tiny"}')
        (out / "sub" / "weights.bin").write_bytes(b"\0\1\2")

    return OfflineCopy(hub_id, "pytest", "pytest", write or write_files)


@pytest.fixture
def tiny(monkeypatch):
    copy = tiny_copy()
    monkeypatch.setitem(OFFLINE_COPIES, copy.hub_id, copy)
    return copy


def test_install_writes_the_layout_huggingface_hub_writes(tmp_path, tiny):
    snapshot = install(tiny.hub_id, tmp_path)
    repo = tmp_path / "models--owner--tiny"
    assert snapshot == repo / "snapshots" / tiny.snapshot_id() and re.fullmatch(r"[0-9a-f]{40}", snapshot.name)
    assert (repo / "refs" / "main").read_text() == snapshot.name
    files = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if not p.is_dir())
    assert files == ["config.json", "sub/weights.bin"]
    for name in files:
        link = snapshot / name
        target = os.readlink(link)
        assert link.is_symlink() and not os.path.isabs(target), target  # relative, as huggingface_hub links them
        blob = link.resolve()
        assert blob.parent == (repo / "blobs").resolve() and blob.name == file_sha256(blob)
    assert [p.name for p in repo.iterdir() if p.name.startswith(".")] == []  # no scratch folder left behind
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(tiny.hub_id, "sub/weights.bin", cache_dir=tmp_path)  # huggingface_hub's lookup
    assert cached == str(snapshot / "sub" / "weights.bin")


def test_a_second_install_is_a_no_op(tmp_path, tiny, monkeypatch):
    first = install(tiny.hub_id, tmp_path)
    blob = (first / "config.json").resolve()
    before = blob.stat().st_mtime_ns

    def must_not_write(package, out):
        raise AssertionError("the installed copy was written again")

    monkeypatch.setitem(OFFLINE_COPIES, tiny.hub_id, tiny_copy(must_not_write))
    assert install(tiny.hub_id, tmp_path) == first and blob.stat().st_mtime_ns == before


def test_a_failed_write_leaves_no_snapshot_and_the_next_install_completes(tmp_path, tiny, monkeypatch):
    def crash(package, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # interrupted half-way through writing the model

    monkeypatch.setitem(OFFLINE_COPIES, tiny.hub_id, tiny_copy(crash))
    with pytest.raises(KeyboardInterrupt):
        install(tiny.hub_id, tmp_path)
    repo = tmp_path / "models--owner--tiny"
    assert not any((repo / "snapshots").iterdir()) and not (repo / "refs").exists()
    assert [p.name for p in repo.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setitem(OFFLINE_COPIES, tiny.hub_id, tiny)
    assert (install(tiny.hub_id, tmp_path) / "sub" / "weights.bin").read_bytes() == b"\0\1\2"


def test_refs_main_naming_another_complete_snapshot_is_kept(tmp_path, tiny):
    repo = tmp_path / "models--owner--tiny"
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "config.json").write_text("{}")  # e.g. downloaded from the Hub later
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert install(tiny.hub_id, tmp_path).name == tiny.snapshot_id()
    assert (repo / "refs" / "main").read_text() == "a" * 40
    (repo / "refs" / "main").write_text("b" * 40)  # dangling: names no snapshot here
    install(tiny.hub_id, tmp_path)
    assert (repo / "refs" / "main").read_text() == tiny.snapshot_id()


def test_without_the_package_hub_ids_stay_hub_ids(monkeypatch):
    monkeypatch.setitem(OFFLINE_COPIES, "owner/absent", OfflineCopy("owner/absent", "x", "no_such_module_xyz", None))
    assert install("owner/absent") is None
    assert resolve_pretrained("owner/absent") == "owner/absent"
    assert resolve_pretrained("owner/not-an-offline-copy") == "owner/not-an-offline-copy"


# ------------------------------------------------------------------- the copies that scripts/setup.sh installs
def installed(hub_id):
    if installed_snapshot(hub_id) is None:
        pytest.skip(f"the offline copy of {hub_id} is not in the Hugging Face cache: run scripts/setup.sh")


def test_the_library_loads_through_the_cache_and_names_the_hub_id():
    from transformers import AutoTokenizer

    installed(MINILM_HUB_ID)
    assert resolve_pretrained(MINILM_HUB_ID) == str(installed_snapshot(MINILM_HUB_ID))
    assert from_pretrained(AutoTokenizer, MINILM_HUB_ID).name_or_path == MINILM_HUB_ID


TRANSFORMERS_ALONE = """
import sys

import torch
from peft import AutoPeftModelForSequenceClassification
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

minilm, smollm2, export, expected = sys.argv[1:5]
tokenizer = AutoTokenizer.from_pretrained(minilm)
batch = tokenizer(["a kind of fish"], return_tensors="pt")
assert AutoModel.from_pretrained(minilm)(**batch).last_hidden_state.shape[-1] == 384
assert SentenceTransformer(minilm).encode(["a kind of fish"]).shape == (1, 384)
tokenizer = AutoTokenizer.from_pretrained(smollm2)
ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
assert AutoModelForCausalLM.from_pretrained(smollm2)(ids).logits.shape[-1] == len(tokenizer)
model = AutoPeftModelForSequenceClassification.from_pretrained(export).eval()  # its base: the Hub id, offline
expected = load_file(expected)
torch.testing.assert_close(model(**{k: v for k, v in expected.items() if k != "logits"}).logits, expected["logits"])
assert "peft_mcdi" not in sys.modules
print("ok")
"""


def test_transformers_and_peft_alone_load_the_hub_ids_offline_and_adapters_name_them(tmp_path):
    """What a user of an exported adapter does on a machine without the Hub: transformers, sentence-transformers and
    peft, no peft_mcdi, HF_HUB_OFFLINE=1. The adapter is made on the offline MiniLM, and everything written about
    it (config, card, export, generator metadata) names the Hub id, not the folder it was loaded from."""
    import json

    import torch
    from safetensors.torch import save_file

    import peft_mcdi
    from peft_mcdi.tasks.text_lora import build_peft_model

    installed(MINILM_HUB_ID)
    installed(SMOLLM2_HUB_ID)
    model, tokenizer = build_peft_model("minilm", r=2, target_modules=["query", "value"], sampler="ddim",
                                        num_sampling_steps=2)  # fmt: skip
    assert model.peft_config["default"].base_model_name_or_path == MINILM_HUB_ID == tokenizer.name_or_path
    generator = model.create_generator(condition_dim=384)
    assert generator.config.metadata["base_model"] == MINILM_HUB_ID
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    model.adapt(embedding=torch.randn(384))
    model.save_pretrained(tmp_path / "mcdi")
    peft_mcdi.export_lora(model, tmp_path / "lora")
    for folder in ("mcdi", "lora"):
        assert json.loads((tmp_path / folder / "adapter_config.json").read_text())["base_model_name_or_path"] == (
            MINILM_HUB_ID
        )
        card = (tmp_path / folder / "README.md").read_text()
        assert f"base_model: {MINILM_HUB_ID}" in card and "snapshots" not in card and "site-packages" not in card
    batch = dict(tokenizer(["salmon", "hammer"], padding=True, return_tensors="pt"))
    save_file({**batch, "logits": model(**batch).logits.detach()}, tmp_path / "expected.safetensors")
    script = tmp_path / "alone.py"
    script.write_text(TRANSFORMERS_ALONE)
    args = [MINILM_HUB_ID, SMOLLM2_HUB_ID, str(tmp_path / "lora"), str(tmp_path / "expected.safetensors")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "ok"
