"""LoRA + head tasks on the real all-MiniLM-L6-v2 encoder (the offline package)."""

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from peft_mcdi import McDiConfig
from peft_mcdi.generator.condition import DEFAULT_TEXT_ENCODER, resolve_text_encoder
from peft_mcdi.tasks.text_lora import ConceptLoRATask, SharedLoRAModel
from peft_mcdi.tasks.wordnet import ConceptTask
from peft_mcdi.zoo.recorder import RecorderConfig, train_task


@pytest.fixture(scope="module")
def shared():
    path = resolve_text_encoder(DEFAULT_TEXT_ENCODER)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(base, McDiConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    return SharedLoRAModel(model, AutoTokenizer.from_pretrained(path))


def fruit_task(shared):
    fruits = ["apple", "pear", "plum", "cherry", "banana", "mango", "grape", "lemon", "peach", "melon", "kiwi", "fig"]
    others = [
        "hammer",
        "river",
        "chair",
        "doctor",
        "cloud",
        "engine",
        "violin",
        "carpet",
        "bridge",
        "pencil",
        "sock",
        "tiger",
    ]
    pairs = [(w, 1) for w in fruits] + [(w, 0) for w in others]
    concept = ConceptTask("test-fruit.n.01", "fruit.n.01", "Does the word name a kind of fruit?", pairs, [], pairs)
    return ConceptLoRATask(concept, shared, torch.zeros(384), batch_size=8)


def test_shared_init_and_names_match_the_generator_codec(shared):
    names = list(shared.model.base_model.lora_parameters())
    assert list(shared.theta0) == names and names[-2:] == ["classifier.weight", "classifier.bias"]
    assert all(shared.theta0[n].abs().sum() == 0 for n in names if "lora_B" in n or "classifier" in n)
    assert all(shared.theta0[n].abs().sum() > 0 for n in names if "lora_A" in n)


def test_recorder_learns_a_real_text_task_without_touching_the_shared_model(shared):
    task = fruit_task(shared)
    own = {k: v.detach().clone() for k, v in shared.model.base_model.lora_parameters().items()}
    # 4 epochs: it fits these words from the second on (accuracy 1.0 at epochs 2-5, test loss 0.013 at 4)
    checkpoints, _ = train_task(task, RecorderConfig(num_epochs=4, lr=1e-2))
    assert task.evaluate(checkpoints[0]) == 0.5  # zero head: both classes tie on every word, 1/2 each
    assert task.evaluate(checkpoints[4]) >= 0.9  # trained on these very words: it must fit them
    both = task.evaluate({k: torch.stack([checkpoints[0][k], checkpoints[4][k]]) for k in checkpoints[0]})
    assert both.tolist() == [task.evaluate(checkpoints[0]).item(), task.evaluate(checkpoints[4]).item()]
    for k, v in shared.model.base_model.lora_parameters().items():
        assert torch.equal(v, own[k])


@pytest.fixture(scope="module")
def causal():
    from peft_mcdi.tasks.text_lora import SharedCausalLoRAModel, build_peft_model

    model, tokenizer = build_peft_model("smollm2", r=2, target_modules=["q_proj", "v_proj"])
    return SharedCausalLoRAModel(model, tokenizer)


def test_smollm2_loads_offline_and_theta0_is_the_base_model(causal):
    # the offline copy is SmolLM2-135M (30 layers, hidden 576), converted once to a plain folder
    assert causal.model.get_base_model().config.num_hidden_layers == 30
    pairs = [("salmon", 1), ("hippopotamus", 0), ("cod", 1)]
    batch = causal.batch(pairs)
    scores = causal.scores(causal.theta0, batch)
    with causal.model.disable_adapter():
        plain = causal.tokenizer(["Word: cod\nAnswer:"], return_tensors="pt")
        expected = causal.model(**plain).logits[0, -1, causal.label_ids]
    # B = 0 adds nothing, and left padding (cod is the shortest) leaves the answer scores unchanged
    torch.testing.assert_close(scores[2], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # minutes on a fresh 2-core machine; the default suite runs the tiny-model version below
def test_recorder_learns_a_text_task_on_the_causal_lm(causal):
    # lr 3e-3: the same trajectory on AVX-512, AVX2 and baseline kernels (test loss 3.20 → 0.59, AUC 0.54 → 1.0,
    # accuracy 0.625 while the yes/no threshold is still moving). At 1e-2 the loss spikes to 6.6 in epoch 2 and the
    # kernels' rounding then sends the runs apart: accuracy after 3 epochs 0.79, 0.71 or 0.75 depending on the CPU.
    task = fruit_task(causal)
    checkpoints, _ = train_task(task, RecorderConfig(num_epochs=3, lr=3e-3))
    assert task.loss(checkpoints[3], task._test) < task.loss(checkpoints[0], task._test) - 1.0
    assert task.roc_auc(checkpoints[3]) >= 0.9  # trained on these very words: it ranks the fruit first
    assert task.zero_shot_accuracy() > 0.6  # told "fruit" in words (median-calibrated): better than chance


@pytest.fixture(scope="module")
def tiny_causal(tiny_llama_dir):
    """The causal-LM task's code path on a tiny random Llama (tests/conftest.py)."""
    from peft_mcdi.tasks.text_lora import SharedCausalLoRAModel, build_peft_model

    model, tokenizer = build_peft_model(tiny_llama_dir, r=2, target_modules=["q_proj", "v_proj"])
    return SharedCausalLoRAModel(model, tokenizer)


def test_recorder_trains_a_text_task_on_a_tiny_causal_lm(tiny_causal):
    """The causal-LM recorder path of the test above on a random model: the label words' loss falls (10.68 → 10.19
    measured; a random 64-wide model does not learn the category itself), every score is an accuracy."""
    task = fruit_task(tiny_causal)
    checkpoints, _ = train_task(task, RecorderConfig(num_epochs=3, lr=1e-2))
    assert task.loss(checkpoints[3], task._test) < task.loss(checkpoints[0], task._test) - 0.3
    both = task.evaluate({k: torch.stack([checkpoints[0][k], checkpoints[3][k]]) for k in checkpoints[0]})
    assert both.tolist() == [task.evaluate(checkpoints[0]).item(), task.evaluate(checkpoints[3]).item()]
    assert all(0 <= a <= 1 for a in [*both.tolist(), task.zero_shot_accuracy(), task.roc_auc(checkpoints[3])])


def test_the_encoder_told_the_task_separates_fruit(shared):
    assert fruit_task(shared).zero_shot_accuracy() >= 0.9  # description vs word embeddings, median threshold


def test_selection_examples_carry_the_task_loss(causal):
    # what adapt(num_samples=..., examples=...) minimises is the loss the zoo was trained on
    pairs = [("salmon", 1), ("hippopotamus", 0), ("cod", 1)]
    with torch.no_grad():
        via_model = causal.model(**causal.selection_examples(pairs)).loss  # default adapter: B = 0, the base model
        via_task = causal.loss(causal.theta0, causal.batch(pairs))
    torch.testing.assert_close(via_model, via_task, atol=1e-4, rtol=1e-4)


def test_collection_on_a_4bit_base_trains_every_lora_layer():
    """QLoRA-style collection on CPU: an evaluation pass (eval mode, no grad) must not cut the gradient path through
    bitsandbytes' 4-bit layers (it did: only the last layer's LoRA kept learning)."""
    pytest.importorskip("bitsandbytes")
    from peft_mcdi.tasks.text_lora import SharedCausalLoRAModel, build_peft_model

    model, tokenizer = build_peft_model("smollm2", r=2, target_modules=["q_proj", "v_proj"], load_in_4bit=True)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "Linear4bit"
    task = fruit_task(SharedCausalLoRAModel(model, tokenizer))
    task.evaluate(task.init_params())  # what the recorder does between epochs
    checkpoints, _ = train_task(task, RecorderConfig(num_epochs=1, lr=1e-2))
    frozen = [name for name in checkpoints[0] if torch.equal(checkpoints[0][name], checkpoints[1][name])]
    assert not frozen, f"{len(frozen)} LoRA tensors got no gradient, e.g. {frozen[:2]}"
    with pytest.raises(ValueError, match="load_in_4bit"):
        build_peft_model("minilm", r=2, target_modules=["query"], load_in_4bit=True)


def test_prompted_inputs_pair_the_description_with_the_word(shared):
    batch = shared.batch([("apple", 1)], ["Does the word name a kind of fruit?"])
    text = shared.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert text == "does the word name a kind of fruit? apple" and batch["token_type_ids"][0].max() == 1
    assert torch.equal(
        shared.batch([("apple", 1)])["input_ids"][0], shared.tokenizer("apple", return_tensors="pt")["input_ids"][0]
    )


def test_multitask_lora_learns_from_prompted_examples(shared):
    from peft_mcdi.evaluation.baselines.multitask_lora import MultiTaskLoRAConfig, train_multitask_lora

    task = fruit_task(shared)
    params, info = train_multitask_lora([task], MultiTaskLoRAConfig(num_epochs=8, batch_size=8, lr=1e-2))
    assert info["steps"] == 24 and set(params) == set(shared.theta0)
    assert task.prompted_accuracy(shared.theta0) == 0.5 and task.prompted_accuracy(params) >= 0.9
    with pytest.raises(ValueError, match="num_epochs > 0"):
        MultiTaskLoRAConfig(num_epochs=0)
    with pytest.raises(ValueError, match="at least one training task"):
        train_multitask_lora([], MultiTaskLoRAConfig())


def random_adapters(shared, count: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(count, *v.shape, generator=g) * 0.3 for k, v in shared.theta0.items()}


@pytest.mark.parametrize("kind", ["shared", "tiny_causal"])
def test_grouped_loss_is_each_adapters_own_loss(kind, request):
    """Many adapters in one pass (per-row LoRA and head through forward hooks) give each adapter's loss as its own
    forward does, for batches of different lengths, with gradients for every adapter; the model is left as it was."""
    shared = request.getfixturevalue(kind)
    task = fruit_task(shared)
    pairs = task.concept.train
    batches = [shared.batch(pairs[:5]), shared.batch(pairs[7:19]), shared.batch(pairs[-3:])]
    params = {k: v.requires_grad_() for k, v in random_adapters(shared, 3, 0).items()}
    before = shared.scores(shared.theta0, batches[0])
    grouped = type(task).grouped_loss([task] * 3, params, batches)
    alone = torch.stack([task.loss({k: v[g] for k, v in params.items()}, b) for g, b in enumerate(batches)])
    torch.testing.assert_close(grouped, alone, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(grouped[1], list(params.values()))
    assert all(g[[0, 2]].abs().sum() == 0 and g[1].abs().sum() > 0 for g in grads)  # adapter 1's loss: its own
    assert torch.equal(shared.scores(shared.theta0, batches[0]), before)  # no hook left behind, adapters back on
    assert not any(m._forward_hooks for m in shared.model.modules())


def test_examples_in_context_reach_the_prompted_base(shared, tiny_causal, monkeypatch):
    """prompted_base_icl: the encoder's reference moves with labelled examples (still separating fruit); the causal
    LM reads the description, then each example as template + label word, then the test word's template."""
    task = fruit_task(shared)
    assert task.zero_shot_accuracy(shots=3) >= 0.9
    seen = []
    encode = tiny_causal.encode
    monkeypatch.setattr(tiny_causal, "encode", lambda words, descriptions=None: seen.append(descriptions) or encode(
        words, descriptions))  # fmt: skip
    assert 0 <= fruit_task(tiny_causal).zero_shot_accuracy(shots=2) <= 1
    (word, label), (word2, label2) = task.concept.train[:2]
    expected = f"Does the word name a kind of fruit?\nWord: {word}\nAnswer:{(' no', ' yes')[label]}\n"
    prompts = [d for d in seen if d is not None]
    assert prompts[0][0] == expected + f"Word: {word2}\nAnswer:{(' no', ' yes')[label2]}"


def test_generators_record_how_their_tasks_are_fed(shared, tiny_causal):
    """What adapter_metadata adds for AutoMcDiModel: the input template with {input}, and the class names."""
    from peft_mcdi.pipeline import adapter_metadata

    encoder = adapter_metadata(fruit_task(shared))
    assert encoder["input_template"] == "{input}" and encoder["labels"] == ["no", "yes"]
    assert encoder["task_type"] == "SEQ_CLS" and encoder["num_labels"] == 2
    assert tiny_causal.usage_metadata() == {"input_template": "Word: {input}\nAnswer:", "labels": ["no", "yes"]}
    assert tiny_causal.usage_metadata()["input_template"].format(input="pear") == tiny_causal.texts(["pear"])[0]
