"""The LLM benchmark harness end to end on a tiny configuration of the MiniLM setting: in the default suite on a tiny
random BERT with MiniLM's tokenizer (the same code path: a sequence classifier, LoRA on query/value, a 2-way head),
under ``-m slow`` on the real all-MiniLM-L6-v2 as well (about a minute on two cores)."""

import json
import runpy
from pathlib import Path

import pytest
import torch

from peft_mcdi.evaluation.llm import (
    BASES,
    FUNCTIONAL,
    GENERATOR_VARIANTS,
    LLMBenchConfig,
    prefill_stages,
    results_key,
    run_llm_benchmark,
    run_variant,
    steps_to_match,
)
from peft_mcdi.evaluation.llm_report import markdown, plot_accuracy_vs_time, summarize
from peft_mcdi.generator.model import McDiGenerator
from peft_mcdi.models.offline import MINILM_HUB_ID, resolve_pretrained
from peft_mcdi.pipeline import build_tasksets, zoo_folder
from peft_mcdi.tasks.base import _REGISTRY as task_registry
from peft_mcdi.tasks.text_lora import KNOWN_BASES, _wordnet_tasksets
from peft_mcdi.utils import cache_root


pytestmark = pytest.mark.skipif(
    not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base not installed"
)

TINY = {
    "num_train_tasks": 6,
    "num_test_tasks": 2,
    "recorder": {"num_epochs": 2},
    "meta": {"num_outer_steps": 4, "meta_batch_size": 2, "samples_per_task": 2},
    "hypernetwork_steps": 4,
    "functional": {"chain_steps": 3},
    "fewshot_steps": 2,
    "finetune_steps": 6,
    "multitask": {"num_epochs": 0.05},
    "seen_tasks": 2,
    "latency_repeats": 2,
}


TINY_BERT = "tiny-bert"


@pytest.fixture(scope="module", autouse=True)
def tiny_bert(tmp_path_factory):
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer, registered as the benchmark base "tiny-bert" (its
    WordNet task family included) for this module only."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(MINILM_HUB_ID))
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    def tasksets(num_train_tasks: int, num_test_tasks: int, seed: int = 0):  # wordnet-minilm's, on the tiny BERT
        return _wordnet_tasksets(TINY_BERT, num_train_tasks, num_test_tasks, 4, ("query", "value"), seed, 32, 32)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(KNOWN_BASES, TINY_BERT, (str(folder), "SEQ_CLS"))
        patch.setitem(BASES, TINY_BERT, {**BASES["minilm"], "model": TINY_BERT, "taskset": f"wordnet-{TINY_BERT}"})
        patch.setitem(task_registry, f"wordnet-{TINY_BERT}", tasksets)
        yield


@pytest.fixture(scope="module", params=[TINY_BERT, pytest.param("minilm", marks=pytest.mark.slow)])
def config(request):
    return LLMBenchConfig.for_base(request.param, TINY)


@pytest.fixture(scope="module")
def prefilled(config):
    """The seed's stages filled by two one-thread processes (benchmarks/llm.py --workers 2); which caches they left."""
    prefill_stages(config, 0, workers=2)
    zoo, _ = zoo_folder(config.pipeline(0, "mcdi"))
    baselines = cache_root() / "runs" / f"baselines-{zoo.name}"
    return {
        **{v: (Path(config.pipeline(0, v).output_dir) / "results.json").is_file() for v in config.variants},
        "multitask_lora": any(baselines.glob("multitask-*.safetensors")),
        "finetune_curves": len(list((baselines / "finetune").glob("*.json"))) == config.num_test_tasks,
    }


@pytest.fixture(scope="module")
def record(config, prefilled):
    return run_llm_benchmark(config, seed=0)


def test_the_workers_fill_every_stage_before_the_record_reads_them(prefilled, record):
    assert all(prefilled.values()), prefilled
    assert record["meta_train_seconds"]["mcdi"] > 0  # the record reads what the workers trained


def test_every_method_is_measured_on_the_same_heldout_tasks(record):
    expected = {"mcdi", "mvdi", "single_level", "mcdi_functional", "hypernetwork", "t2l_sft", "prompted_base",
                "prompted_base_icl", "anchor", "mcdi_functional_sibling", "mcdi_functional_prompted", "multitask_lora",
                "nearest_task", "mean_of_zoo", "init", "per_task_reference", "mcdi_functional_fewshot",
                "zero_fewshot"}  # fmt: skip
    assert set(record["per_task"]) == expected
    assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in record["per_task"].values())
    assert record["per_task"]["init"] == [0.5, 0.5]  # an all-zero head ties both classes: 1/2 per test word


def test_the_functional_controls_change_only_the_description_or_the_input(config, record):
    """The controls draw as the pipeline's evaluation draws (its adapters score what the record says), the sibling
    is the most similar other task, and the record's control rows are reproducible."""
    from peft_mcdi.evaluation.llm import functional_controls, sibling_indices

    assert sibling_indices(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])).tolist() == [1, 0, 1]
    tasks = list(build_tasksets(config.pipeline(0, "mcdi")).test)
    folder = Path(config.pipeline(0, "mcdi_functional").output_dir) / "generator"
    own = McDiGenerator.from_pretrained(folder).generate(torch.stack([t.condition for t in tasks]), seed=0)
    scores = [float(t.evaluate({k: v[j] for k, v in own.items()})) for j, t in enumerate(tasks)]
    assert scores == record["per_task"]["mcdi_functional"]
    controls = functional_controls(folder, tasks, config.temperature, config.fewshot_steps, config.recorder.lr)
    assert {k: record["per_task"][k] for k in controls} == controls


def test_the_users_path_writes_the_weights_the_pipeline_evaluated(record):
    # get_peft_model + adapt() with the product's trained generator: the pipeline's adapters, hence the same scores
    assert record["product"] == "mcdi_functional"
    assert record["users_path"]["with_adapter"] == record["per_task"]["mcdi_functional"]
    assert record["users_path"]["adapt_ms_median"]["generator"] > 0
    assert all(0 <= a <= 1 for a in record["roc_auc"]["mcdi_functional"] + record["roc_auc"]["per_task_reference"])


def test_finetuning_curve_retraces_the_zoo_reference_at_its_budget(record):
    ft = record["finetune"]
    budget = ft["budget_steps"]
    assert budget == 4 and ft["steps"] == list(range(7))  # 2 epochs × 2 batches of 32; every step up to 6
    assert ft["at"][str(budget)]["accuracy"] == pytest.approx(sum(record["per_task"]["per_task_reference"]) / 2)
    assert ft["mean_seconds"] == sorted(ft["mean_seconds"]) and ft["mean_seconds"][0] == 0


def test_steps_to_match_is_the_first_step_reaching_the_target(record):
    assert steps_to_match([0, 1, 2], [0.5, 0.7, 0.9], [0.0, 0.1, 0.2], 0.7) == {"steps": 1, "seconds": 0.1}
    assert steps_to_match([0, 1, 2], [0.5, 0.7, 0.9], [0.0, 0.1, 0.2], 0.95) == {"steps": "> 2", "seconds": None}
    ft = record["finetune"]
    for method, match in record["steps_to_match"].items():
        target = sum(record["per_task"][method]) / 2
        if isinstance(match["steps"], int):
            i = ft["steps"].index(match["steps"])
            assert ft["mean_accuracy"][i] >= target - 1e-9 and all(a < target for a in ft["mean_accuracy"][:i])


def test_no_heldout_task_feeds_the_generator(config, record):
    tasksets = build_tasksets(config.pipeline(0, "mcdi"))
    generator = McDiGenerator.from_pretrained(Path(config.pipeline(0, "mcdi").output_dir) / "generator")
    train = torch.stack([t.condition for t in tasksets.train])
    assert torch.allclose(generator.train_conditions, train)
    for task in tasksets.test:
        assert torch.cdist(task.condition[None], train).min() > 1e-3
    assert not {t.concept.synset for t in tasksets.test} & {t.concept.synset for t in tasksets.train}


def test_rerun_reads_the_cached_record_and_the_report_renders(config, record, tmp_path):
    assert run_llm_benchmark(config, seed=0) == json.loads(json.dumps(record))
    summary = summarize([record])
    text = markdown(summary, "tiny", "python benchmarks/llm.py --quick")
    assert "| base model prompted with the description |" in text and "New descriptions of *seen*" in text
    assert plot_accuracy_vs_time([record], tmp_path / "plot.png").stat().st_size > 1000
    assert set(summary["seen_categories"]) == {"training_descriptions", "new_descriptions", "own_adapter"}
    assert "the zoo's Adam+SAM recipe" in text


def test_the_report_names_the_zoo_optimizer_and_reads_records_from_before_it_was_stored(record):
    sgd = json.loads(json.dumps(record))
    sgd["finetune"]["optimizer"] = "sgd"
    assert "the zoo's SGD+SAM recipe" in markdown(summarize([sgd]), "tiny", "cmd")
    del sgd["finetune"]["optimizer"]
    assert "the zoo's Adam+SAM recipe" in markdown(summarize([sgd]), "tiny", "cmd")


def test_the_targets_are_paired_differences_pooled_over_seeds(record):
    """Each issue-20 target: mean of the per-task differences over every seed's tasks, its interval, met or missed."""
    seeds = []
    for shift in (0.0, 0.1):
        r = json.loads(json.dumps(record))
        r["per_task"]["mcdi_functional"] = [0.7 + shift, 0.8 + shift]
        r["per_task"]["mcdi_functional_sibling"] = [0.6, 0.8]
        seeds.append(r)
    sibling = next(t for t in summarize(seeds)["targets"] if t["other"] == "mcdi_functional_sibling")
    assert sibling["mean"] == pytest.approx(10.0) and sibling["episodes"] == 4  # (10 + 0 + 20 + 10) / 4 points
    assert sibling["low"] < 10.0 < sibling["high"] and sibling["met"] and sibling["margin"] == 5.0
    assert "| `mcdi_functional` ≥ `mcdi_functional_sibling` + 5 | +10.0 |" in markdown(summarize(seeds), "t", "c")
    seeds[1]["per_task"]["mcdi_functional"] = [0.6, 0.7]  # now (10 + 0 + 0 − 10) / 4 = 0
    assert not next(t for t in summarize(seeds)["targets"] if t["other"] == "mcdi_functional_sibling")["met"]


def test_a_corrupt_cached_stage_is_reported(tmp_path):
    from peft_mcdi.evaluation.llm import _cached_json

    path = tmp_path / "stage.json"
    assert _cached_json(path, lambda: {"a": 1}) == {"a": 1} and _cached_json(path, lambda: {"a": 2}) == {"a": 1}
    path.write_text('{"a": ')
    with pytest.raises(ValueError, match="stage.json is corrupt.*delete it to recompute"):
        _cached_json(path, lambda: {"a": 3})


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="base must be one of"):
        LLMBenchConfig.for_base("gpt2")
    with pytest.raises(ValueError, match="variants must be one or more of"):
        LLMBenchConfig(variants=[])
    with pytest.raises(ValueError, match="variants must be one or more of"):
        LLMBenchConfig(variants=["mcdi", "ddpm"])
    assert LLMBenchConfig(variants=["mcdi_functional"]).variants == ["mcdi_functional"]  # no paper run needed
    smol = LLMBenchConfig.for_base("smollm2_wordnet", {"meta": {"num_outer_steps": 7}})
    assert (smol.num_train_tasks, smol.finetune_tasks, smol.meta.num_outer_steps) == (40, 4, 7)
    assert smol.meta.samples_per_task == 8  # nested overrides merge key by key
    assert smol.recorder.num_epochs == 30 and smol.num_train_tasks + smol.num_test_tasks <= 48  # issue 5's sizing
    words = LLMBenchConfig.for_base("smollm2")
    assert (words.num_train_tasks, words.num_test_tasks, words.recorder.rho) == (48, 12, 0.0)  # issue 21's sizing
    assert words.pipeline(0, "mcdi").taskset == "wordforms-smollm2"
    more = LLMBenchConfig.for_base("smollm2_wordnet", {"examples_per_class": 16})
    assert more.pipeline(0, "mcdi").taskset_kwargs["examples_per_class"] == 16
    assert "examples_per_class" not in LLMBenchConfig.for_base("minilm").pipeline(0, "mcdi").taskset_kwargs


def test_checkpoint_interval_does_not_change_the_cache_keys():
    """A stopped run must resume under another ``checkpoint_every``; any setting that changes results must not."""
    base = LLMBenchConfig.for_base("smollm2")
    other = LLMBenchConfig.for_base("smollm2", {"meta": {"checkpoint_every": 7}})
    longer = LLMBenchConfig.for_base("smollm2", {"meta": {"num_outer_steps": 601}})
    folders = [c.pipeline(0, "mcdi").output_dir for c in (base, other, longer)]
    assert folders[0] == folders[1] != folders[2]
    assert base.pipeline(0, "mcdi").meta.checkpoint_every > 0  # long variants checkpoint by default
    assert results_key([base.to_dict(), 0]) == results_key([other.to_dict(), 0]) != results_key([base.to_dict(), 1])


def test_prediction_type_reaches_every_variant_and_its_default_keeps_the_cache_keys():
    """x̂₀-prediction is a benchmark setting for every variant; at its default ('epsilon') it stays out of the
    configuration dicts, so runs cached before the setting existed keep their keys."""
    sample = LLMBenchConfig.for_base("minilm", {"prediction_type": "sample"})
    explicit = LLMBenchConfig.for_base("minilm", {"prediction_type": "epsilon"})
    default = LLMBenchConfig.for_base("minilm")
    for variant in (v for v in GENERATOR_VARIANTS if not v.endswith(FUNCTIONAL)):
        assert sample.pipeline(0, variant).scheduler.prediction_type == "sample"
        assert "prediction_type" not in default.pipeline(0, variant).to_dict()["scheduler"]
        assert default.pipeline(0, variant).output_dir == explicit.pipeline(0, variant).output_dir
        assert default.pipeline(0, variant).output_dir != sample.pipeline(0, variant).output_dir
    assert "prediction_type" not in default.to_dict()


def test_functional_variants_train_the_same_recipe_with_the_task_loss_term():
    """'mcdi_functional' is Mc-Di's pipeline with λ, its own prediction type and single-level training (Reptile on
    request); its settings leave the paper's variants (and their cached runs) untouched; unknown recipes are named."""
    default = LLMBenchConfig.for_base("minilm")
    other = LLMBenchConfig.for_base("minilm", {"functional": {"weight": 3.0, "prediction_type": "epsilon"}})
    functional, paper = default.pipeline(0, "mcdi_functional"), default.pipeline(0, "mcdi")
    assert functional.meta.functional_weight == default.functional.weight > 0 == paper.meta.functional_weight
    assert functional.scheduler.prediction_type == "sample" and other.pipeline(0, "mcdi").scheduler == paper.scheduler
    assert (functional.meta.algorithm, functional.scheduler.num_segments) == ("single_level", 3)
    reptile = LLMBenchConfig.for_base("minilm", {"functional": {"meta_learning": "reptile"}})
    assert reptile.pipeline(0, "mcdi_functional").meta.algorithm == "reptile"
    assert reptile.pipeline(0, "mcdi").output_dir == paper.output_dir
    assert default.pipeline(0, "single_level_functional").meta.algorithm == "single_level"
    with pytest.raises(ValueError, match="functional.meta_learning"):
        LLMBenchConfig.for_base("minilm", {"functional": {"meta_learning": "maml"}})
    assert other.pipeline(0, "mcdi").output_dir == paper.output_dir != functional.output_dir
    assert other.pipeline(0, "mcdi_functional").output_dir != functional.output_dir
    with pytest.raises(ValueError, match="suffix '_functional'"):
        LLMBenchConfig.for_base("minilm", {"variants": ["mcdi", "tadi_functional"]})


def test_chain_finetuning_joins_the_functional_variants_and_t2l_sfts_budget():
    """Fine-tuning through the chain runs for the '*_functional' variants only, at the evaluation temperature, and
    its base-model passes are added to t2l_sft's budget; without it no key changes (cached runs stay valid)."""
    default = LLMBenchConfig.for_base("minilm")
    chained = LLMBenchConfig.for_base("minilm", {"functional": {"chain_steps": 200, "chain_last_steps": 5}})
    unchained = LLMBenchConfig.for_base("minilm", {"functional": {"chain_steps": 0}})
    run = chained.pipeline(1, "mcdi_functional")
    assert (run.chain.steps, run.chain.last_steps, run.chain.seed) == (200, 5, 1)
    assert run.chain.temperature == chained.temperature and run.chain.tasks_per_step == run.meta.meta_batch_size
    assert run.hypernetwork_sft_steps == unchained.pipeline(1, "mcdi_functional").hypernetwork_sft_steps + 200
    assert "chain" not in unchained.pipeline(1, "mcdi_functional").to_dict()
    assert chained.pipeline(1, "mcdi").chain.steps == 0 and "chain" not in default.pipeline(1, "mcdi").to_dict()
    assert chained.pipeline(1, "mcdi").output_dir == default.pipeline(1, "mcdi").output_dir != run.output_dir


def test_another_temperature_reevaluates_the_trained_generator(config, record):
    """The temperature changes the evaluation only: same run folder, no meta-training step taken again, the
    deterministic chain's adapters in the results, and a record of its own."""
    cold = LLMBenchConfig.for_base(config.base, {**TINY, "temperature": 0.0})
    warm_run, cold_run = config.pipeline(0, "mcdi"), cold.pipeline(0, "mcdi")
    assert warm_run.output_dir == cold_run.output_dir and cold_run.temperature == 0.0
    results = run_variant(cold_run, build_tasksets(cold_run), progress=False, log=lambda *a: None)
    assert results["resumed_from_step"] == cold_run.meta.num_outer_steps  # nothing trained again
    assert results["meta_train_seconds"] == pytest.approx(record["meta_train_seconds"]["mcdi"])  # what it cost
    assert results["config"]["temperature"] == 0.0
    again = run_variant(cold_run, build_tasksets(cold_run), progress=False, log=lambda *a: None)
    assert again["heldout_metric"] == results["heldout_metric"]  # read back
    assert results_key([cold.to_dict(), 0]) != results_key([config.to_dict(), 0])


def test_latency_script_retimes_the_trained_generator(config, record, tmp_path, monkeypatch):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "studies" / "llm_latency.py"
    argv = [
        str(script),
        "--base",
        config.base,
        "--repeats",
        "2",
        "--rounds",
        "2",
        "--config",
        json.dumps(TINY),
        "--out-dir",
        str(tmp_path),
    ]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    result = json.loads((tmp_path / f"llm_{config.base}_latency.json").read_text())
    timed = list(result["adapt_ms_median"])  # "<sampler>, <n> thread(s)"
    assert all(any(n.startswith(s) for n in timed) for s in ("ddpm (default, all T steps)", "ddim, 5 steps"))
    assert all(v["generator"] > 0 and v["encoder"] > 0 for v in result["adapt_ms_median"].values())
    assert {k: len(v) for k, v in result["generator_ms_per_round"].items()} == dict.fromkeys(timed, 2)
    assert result["finetune_to_budget"]["steps"] == record["finetune"]["budget_steps"]


def test_latency_script_names_the_missing_generator(tmp_path, monkeypatch):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "studies" / "llm_latency.py"
    monkeypatch.setattr("sys.argv", [str(script), "--base", "minilm", "--config", '{"num_train_tasks": 5}'])
    with pytest.raises(SystemExit, match="no trained generator .* run `python benchmarks/llm.py --base minilm"):
        runpy.run_path(str(script), run_name="__main__")
