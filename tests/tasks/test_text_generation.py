"""Generative tasks on a causal LM: answer-token loss, greedy decoding with per-row adapters, exact match."""

import pytest
import torch

from peft_mcdi.evaluation.metrics import exact_match, load_metric
from peft_mcdi.tasks.text_generation import SharedGenerativeLoRAModel, WordFormLoRATask
from peft_mcdi.tasks.text_lora import build_peft_model
from peft_mcdi.tasks.wordforms import WordFormTask
from peft_mcdi.zoo.recorder import RecorderConfig, train_task, train_task_group


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model, tokenizer = build_peft_model(tiny_llama_dir, r=2, target_modules=["q_proj", "v_proj"])
    return SharedGenerativeLoRAModel(model, tokenizer)


PAIRS = [("cat", "[cats]"), ("box", "[boxes]"), ("city", "[cities]"), ("hippopotamus", "[hippopotamuses]")]


def plural_task(shared) -> WordFormLoRATask:
    spec = WordFormTask("test-plural-brackets", "plural", "brackets", "Write the plural, in brackets.", [], PAIRS,
                        [], PAIRS)  # fmt: skip
    return WordFormLoRATask(spec, shared, torch.zeros(384), batch_size=2)


def random_adapters(shared, count: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(count, *v.shape, generator=g) * 0.5 for k, v in shared.theta0.items()}


def test_batch_labels_the_answer_tokens_only(tiny):
    batch = tiny.batch(PAIRS)
    tok = tiny.tokenizer
    for i, (word, answer) in enumerate(PAIRS):
        row = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert tok.decode(row) == f"Word: {word}\nAnswer: {answer}\n"
        labelled = batch["labels"][i][batch["labels"][i] != -100]
        assert tok.decode(labelled) == f" {answer}\n" and torch.equal(labelled, row[-len(labelled) :])
    prompted = tiny.batch(PAIRS[:1], ["Write the plural."])
    assert tok.decode(prompted["input_ids"][0]) == "Write the plural.\nWord: cat\nAnswer: [cats]\n"


def test_loss_is_the_mean_log_likelihood_of_the_answer(tiny):
    """The answer-span logits (``logits_to_keep``) give the loss a full forward pass gives."""
    params = {k: v[0] for k, v in random_adapters(tiny, 1, 0).items()}
    batch = tiny.batch(PAIRS)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = tiny.forward(params, inputs).logits[:, :-1]
        tokens = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none")
        answer = batch["labels"][:, 1:] != -100
        expected = ((tokens * answer).sum(1) / answer.sum(1)).mean()
        torch.testing.assert_close(tiny.loss(params, batch), expected, atol=1e-5, rtol=1e-5)


def test_grouped_loss_is_each_adapters_own_loss(tiny):
    task = plural_task(tiny)
    batches = [tiny.batch(PAIRS[:1]), tiny.batch(PAIRS[1:4]), tiny.batch(PAIRS[2:3])]
    params = {k: v.requires_grad_() for k, v in random_adapters(tiny, 3, 1).items()}
    grouped = WordFormLoRATask.grouped_loss([task] * 3, params, batches)
    alone = torch.stack([task.loss({k: v[g] for k, v in params.items()}, b) for g, b in enumerate(batches)])
    torch.testing.assert_close(grouped, alone, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(grouped[1], list(params.values()))
    assert all(g[[0, 2]].abs().sum() == 0 and g[1].abs().sum() > 0 for g in grads)


def test_side_by_side_recording_retraces_each_tasks_trajectory(tiny):
    """The zoo's grouped recorder (RecorderConfig.tasks_per_pass) through the per-row adapters, against one task at
    a time through functional_call: the same trajectory up to float rounding."""
    first, second = plural_task(tiny), plural_task(tiny)
    second.task_id = "test-plural-brackets-2"  # another seeded batch order
    config = RecorderConfig(num_epochs=2, lr=1e-2, rho=0.0)
    for task, (checkpoints, _) in zip((first, second), train_task_group([first, second], config)):
        alone, _ = train_task(task, config)
        for name, value in alone[2].items():
            torch.testing.assert_close(checkpoints[2][name], value, rtol=1e-4, atol=1e-5)


def test_greedy_decoding_matches_stepwise_argmax_and_per_row_adapters(tiny):
    """The cached decoding writes what re-running the whole prefix writes; θ₀ writes what the base model writes;
    adapters chosen per row write what each writes alone."""
    prompts = tiny.prompt_texts(["cat", "hippopotamus"])
    adapters = random_adapters(tiny, 2, 2)
    first = {k: v[0] for k, v in adapters.items()}
    written = tiny.generate(first, prompts, 5)
    for prompt, text in zip(prompts, written):
        ids = tiny.tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = []
        with torch.no_grad():
            for _ in range(5):
                step = tiny.forward(first, {"input_ids": ids}).logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, step], 1)
                out.append(step)
        expected = tiny.tokenizer.decode(torch.cat(out, 1)[0]).split("\n")[0].strip()
        assert text == expected
    assert tiny.generate(tiny.theta0, prompts, 5) == tiny.generate(None, prompts, 5)
    rows = tiny.generate(adapters, prompts, 5, groups=torch.tensor([1, 0]))
    assert rows == [tiny.generate({k: v[1] for k, v in adapters.items()}, prompts[:1], 5)[0], written[1]]


def test_evaluate_scores_exact_matches(tiny, monkeypatch):
    task = plural_task(tiny)
    answers = ["[cats]", "[boxs]", " [cities] ", "[hippopotamuses]"]
    monkeypatch.setattr(tiny, "generate", lambda params, prompts, budget, groups=None: answers[: len(prompts)])
    assert float(task.evaluate(tiny.theta0)) == 0.75
    stacked = {k: torch.stack([v, v]) for k, v in tiny.theta0.items()}
    assert task.evaluate(stacked).tolist() == [0.75, 0.75]
    with pytest.raises(NotImplementedError, match="ROC AUC is for choice tasks"):
        task.roc_auc(tiny.theta0)


def test_a_group_of_tasks_is_scored_in_one_decode_with_each_rows_adapter(tiny, monkeypatch):
    """evaluate_group: every task's test words in one batch, row i with its own task's adapter, scored per task."""
    plural = plural_task(tiny)
    spec = WordFormTask("test-past-plain", "past", "plain", "Write the past tense.", [], [], [], [("walk", "walked"),
                        ("jump", "jumped")])  # fmt: skip
    past = WordFormLoRATask(spec, tiny, torch.zeros(384), batch_size=2)
    adapters = random_adapters(tiny, 2, 3)
    calls = []

    def generate(params, prompts, budget, groups=None):
        calls.append((params, prompts, groups))
        return ["[cats]", "[boxs]", "[cities]", "[hippopotamuses]", "walked", "jumpt"]

    monkeypatch.setattr(tiny, "generate", generate)
    per_task = [{k: v[j] for k, v in adapters.items()} for j in (0, 1)]
    assert WordFormLoRATask.evaluate_group([plural, past], per_task) == [0.75, 0.5]
    ((params, prompts, groups),) = calls
    assert groups.tolist() == [0, 0, 0, 0, 1, 1] and prompts[4] == "Word: walk\nAnswer:"
    assert all(torch.equal(params[k], adapters[k]) for k in adapters)


def test_prompted_base_reads_description_examples_then_the_word(tiny, monkeypatch):
    seen = []
    monkeypatch.setattr(tiny, "generate", lambda params, prompts, budget, groups=None: seen.append(
        (params, prompts, budget)) or ["x"] * len(prompts))  # fmt: skip
    task = plural_task(tiny)
    assert task.zero_shot_accuracy(shots=2) == 0.0
    params, prompts, budget = seen[0]
    assert params is None and budget == max(len(i) for i in tiny.answer_ids([a for _, a in PAIRS])) + 2
    assert prompts[0] == "Write the plural, in brackets.\nWord: cat\nAnswer: [cats]\nWord: box\nAnswer: [boxes]\n" \
        "Word: cat\nAnswer:"  # fmt: skip
    task.prompted_accuracy(tiny.theta0)
    assert seen[1][1][1] == "Write the plural, in brackets.\nWord: box\nAnswer:"


def test_exact_match_metric_runs_offline_from_the_package():
    assert exact_match(["[cats]", " dogs\n", "Dog"], ["[cats]", "dogs", "dog"]) == pytest.approx(2 / 3)
    assert load_metric("exact_match").compute(predictions=["Dog"], references=["dog"], ignore_case=True) == {
        "exact_match": 1.0
    }
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no metric script 'bleu'.*available: \\['exact_match'\\]"):
        load_metric("bleu")


@pytest.mark.slow  # about a minute: the real SmolLM2, a short training run, two decodings
def test_exported_adapter_writes_the_same_answers_in_plain_peft(tmp_path):
    """A word-form LoRA trained on the real SmolLM2, exported with ``export_lora`` and loaded by peft alone, writes
    the answers our decoding writes (greedy, HF ``generate``)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import peft_mcdi
    from peft_mcdi.models.offline import SMOLLM2_HUB_ID, from_pretrained
    from peft_mcdi.tasks.wordforms import WordFormTaskConfig, build_wordform_tasks
    from peft_mcdi.zoo.recorder import RecorderConfig, train_task

    model, tokenizer = build_peft_model("smollm2", r=8, target_modules=["q_proj", "v_proj"])
    shared = SharedGenerativeLoRAModel(model, tokenizer)
    spec = next(t for t in build_wordform_tasks(WordFormTaskConfig(num_train=32))["test"] if t.format != "plain")
    task = WordFormLoRATask(spec, shared, torch.zeros(384), batch_size=16)
    checkpoints, _ = train_task(task, RecorderConfig(num_epochs=10, lr=5e-3, rho=0.0))
    trained = checkpoints[10]
    with torch.no_grad():
        for name, parameter in model.base_model.lora_parameters().items():
            parameter.copy_(trained[name])
    pairs = spec.test[:12]
    prompts = shared.prompt_texts([w for w, _ in pairs])
    budget = shared.answer_budget([a for _, a in pairs])
    ours = shared.generate(trained, prompts, budget)
    assert sum(o == a for o, (_, a) in zip(ours, pairs)) >= 3  # it learnt something of the task: a real check

    peft_mcdi.export_lora(model, tmp_path / "lora")
    base = from_pretrained(AutoModelForCausalLM, SMOLLM2_HUB_ID, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    enc = tokenizer(prompts, padding=True, return_tensors="pt")  # left padding, as the task model set it
    with torch.no_grad():
        out = plain.generate(**enc, max_new_tokens=budget, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    theirs = [t.split("\n")[0].strip() for t in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :])]
    assert theirs == ours
