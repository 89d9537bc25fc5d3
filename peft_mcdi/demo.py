"""``mcdi demo``: a web page where a task description becomes an adapter, and its answers sit beside the base model's.

:class:`TextDemo` does the work and knows nothing of the page: load the model a generator names
(:class:`~peft_mcdi.auto.AutoMcDiModel`), generate the adapter for a description, answer the inputs with it and with
the base model told the task, time the encoder and the generator, and list the training tasks whose descriptions are
closest to the new one (how far the request is from what the generator has seen). :func:`build_app` lays it out
with Gradio (the ``demo`` extra).

The base model "told the task" is the benchmark's ``prompted_base`` row: for a sequence classifier whose head the
generator writes (MiniLM), the cosine rule — an input is a member when its embedding is closer to the description's
than the median input's, so it splits whatever inputs it is given in two; for a causal LM, the description before
the input in the generator's template.

:class:`VisionDemo` is the vision tab: labelled images in (a file's class is its name up to the first ``_``), a head
generated for them by a head generator that carries its backbone (:meth:`McDiHeadModel.from_generator`), and each
new image's class from that head beside the nearest-centroid rule on the same features, the rule the generated
heads are measured against.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from peft_mcdi.auto import AutoMcDiModel
from peft_mcdi.generator.condition import TextEncoder
from peft_mcdi.shipped import example_episode
from peft_mcdi.tuners.head import McDiHeadModel


DEFAULT_GENERATOR = "peft-mcdi/wordnet-minilm"
DEFAULT_HEAD_GENERATOR = "peft-mcdi/glyphs-conv4"
MAX_INPUTS = 64  # one page of answers; more is a batch job (examples/main_job.py), not a demo
MAX_IMAGES = 200  # support + query images per request


@dataclass
class TextAnswers:
    """One request's results: per input (input, base model told the task, adapted model), the adapt() times and
    the nearest training tasks as (name, cosine similarity of the descriptions)."""

    rows: list[tuple[str, str, str]]
    encoder_ms: float
    generator_ms: float
    nearest: list[tuple[str, float]]


class TextDemo:
    """A generator's model, adapted per request. Requests run one at a time (the page queues them): each rewrites
    the one adapter."""

    def __init__(self, generator: str = DEFAULT_GENERATOR, num_nearest: int = 3, max_new_tokens: int = 8) -> None:
        self.generator_name = generator
        self.model = AutoMcDiModel.from_generator(generator)
        self.generator = self.model.base_model.get_generator()
        meta = self.generator.config.metadata
        self.example = meta.get("example", {"prompt": "", "inputs": []})
        names = meta.get("train_tasks") or []
        count = self.generator.train_conditions.shape[0]
        self.train_names = names if len(names) == count else [f"training task {i}" for i in range(count)]
        self.encoder = TextEncoder(self.model.peft_config["default"].task_encoder)
        self.num_nearest = num_nearest
        self.max_new_tokens = max_new_tokens
        self.classifier = str(self.model.peft_config["default"].task_type) == "SEQ_CLS"
        if self.classifier:
            from peft_mcdi.tasks.text_lora import SharedLoRAModel

            self.rule = SharedLoRAModel(self.model, self.model.tokenizer)
        else:
            tokenizer = self.model.tokenizer
            tokenizer.padding_side = "left"  # generation continues every row from its last token
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token

    @torch.no_grad()
    def answer(self, description: str, inputs: list[str]) -> TextAnswers:
        """Adapt to ``description`` (no gradient step) and answer each input with and without the adapter."""
        inputs = [text.strip() for text in inputs if text.strip()]
        if not inputs:
            raise ValueError("give at least one input to answer (one per line).")
        if len(inputs) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request, got {len(inputs)}.")
        if not description.strip():
            raise ValueError("the task description is empty: describe the task, e.g. 'Does the word name a fish?'")
        start = time.perf_counter()
        condition = self.encoder.encode([description])
        encoder_ms = (time.perf_counter() - start) * 1e3
        info = self.model.adapt(embedding=condition)
        texts = [self.model.input_template.format(input=text) for text in inputs]
        if self.classifier:
            labels = self.model.config.id2label
            adapted = self.model(**self.tokenize(texts)).logits.argmax(-1).tolist()
            members = self.rule.told_the_task(description, inputs)
            base = [labels[int(m)] for m in members.tolist()]
            adapted = [labels[p] for p in adapted]
        else:
            adapted = self.continue_texts(texts)
            with self.model.disable_adapter():
                base = self.continue_texts([f"{description}\n{text}" for text in texts])
        similarity = self.generator.train_conditions @ torch.nn.functional.normalize(condition[0], dim=-1)
        top = similarity.topk(min(self.num_nearest, similarity.shape[0]))
        nearest = [(self.train_names[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]
        return TextAnswers(list(zip(inputs, base, adapted)), encoder_ms, info.generator_ms, nearest)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.model.tokenizer(texts, padding=True, return_tensors="pt")

    def continue_texts(self, texts: list[str]) -> list[str]:
        """Greedy continuations of each text, up to the end of their first line."""
        batch = self.tokenize(texts)
        out = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = self.model.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [text.strip().split("\n")[0] for text in new]


@dataclass
class VisionAnswers:
    """One request's results: per query image, the generated head's class and the nearest-centroid rule's; the
    adapt() times; how far the support set's prototypes are from those the generator was trained on."""

    classes: list[str]
    generated: list[str]
    prototype: list[str]
    backbone_ms: float
    generator_ms: float
    nearest_training_distance: float


class VisionDemo:
    """A head generator's model (:meth:`McDiHeadModel.from_generator`), adapted per request to labelled images."""

    def __init__(self, generator: str = DEFAULT_HEAD_GENERATOR) -> None:
        self.generator_name = generator
        self.model = McDiHeadModel.from_generator(generator)
        self.image_size = self.model.backbone.config.image_size

    def load(self, paths: list[str | Path]) -> torch.Tensor:
        """Image files → uint8 (n, 3, S, S) at the backbone's input size (the extractor reads RGB or gray alike)."""
        from PIL import Image

        size = (self.image_size, self.image_size)
        arrays = [np.asarray(Image.open(p).convert("RGB").resize(size, Image.BILINEAR)) for p in paths]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def classify(self, support: list[str | Path], queries: list[str | Path]) -> VisionAnswers:
        """Generate a head for the labelled ``support`` files (class = file name up to the first '_') and classify
        the ``queries`` with it and with the nearest-centroid rule."""
        names = [Path(p).name.split("_")[0] for p in support]
        classes = list(dict.fromkeys(names))
        if len(classes) < 2:
            raise ValueError(
                f"the support images name {len(classes)} class(es) {classes}: give at least two, each file named "
                "'<class>_<anything>.png'."
            )
        if not queries:
            raise ValueError("give at least one image to classify.")
        if len(support) + len(queries) > MAX_IMAGES:
            raise ValueError(f"at most {MAX_IMAGES} images per request, got {len(support) + len(queries)}.")
        labels = torch.tensor([classes.index(n) for n in names])
        info = self.model.adapt(self.load(support), labels, class_names=classes)
        features = F.normalize(self.model.features(self.load(queries)), dim=-1)
        generated = self.model.heads[info.adapter_name](features).argmax(-1)
        centroids = self.model.generator.last_condition[0]  # the support set's prototypes, as adapt() computed them
        rule = torch.cdist(features, centroids).argmin(-1)
        return VisionAnswers(classes, [classes[i] for i in generated.tolist()], [classes[i] for i in rule.tolist()],
                             info.backbone_ms, info.generator_ms, info.nearest_training_distance)  # fmt: skip

    def example_files(self, folder: str | Path, index: int = 0) -> tuple[list[Path], list[Path], list[str]]:
        """The generator's shipped held-out episode ``index`` as PNG files in ``folder``: support files named by class
        (letters), query files, and the queries' true classes."""
        from PIL import Image

        support_images, support_labels, query_images, query_labels = example_episode(self.generator_name, index)
        folder = Path(folder)
        letters = [chr(ord("a") + int(c)) for c in range(int(support_labels.max()) + 1)]

        def write(images: torch.Tensor, stem) -> list[Path]:
            paths = [folder / f"{stem(i)}.png" for i in range(len(images))]
            for path, image in zip(paths, images):
                Image.fromarray(image.numpy()).save(path)
            return paths

        support = write(support_images, lambda i: f"{letters[support_labels[i]]}_{i}")
        queries = write(query_images, lambda i: f"query_{i:02d}")
        return support, queries, [letters[int(c)] for c in query_labels]


def build_app(demo: TextDemo, vision: VisionDemo | None = None):
    """The page: a description and inputs in, the two models' answers, the latency and the nearest training tasks
    out. Element ids (``description``, ``inputs``, ``submit``, ``answers``, ``latency``, ``nearest``) are stable for
    tests and scripts."""
    import gradio as gr

    def respond(description: str, inputs: str):
        try:
            result = demo.answer(description, inputs.splitlines())
        except ValueError as err:
            raise gr.Error(str(err)) from err
        latency = (
            f"adapt(): encoder {result.encoder_ms:.1f} ms + generator {result.generator_ms:.1f} ms, no gradient step"
        )
        nearest = [[name, f"{similarity:.3f}"] for name, similarity in result.nearest]
        return [list(row) for row in result.rows], latency, nearest

    with gr.Blocks(title="peft_mcdi: adapters generated, not trained") as app:
        gr.Markdown(
            f"## Adapters generated, not trained\n`{demo.generator_name}` writes LoRA weights for "
            f"`{demo.model.peft_config['default'].base_model_name_or_path}` from a task description, with no gradient "
            "step. Describe a task, give inputs one per line, and compare the adapted model with the base model told "
            "the task."
        )
        with gr.Tab("Text"):
            with gr.Row():
                description = gr.Textbox(
                    label="Task description", value=demo.example.get("prompt", ""), lines=3, elem_id="description"
                )
                inputs = gr.Textbox(
                    label="Inputs, one per line",
                    value="\n".join(demo.example.get("inputs", [])),
                    lines=6,
                    elem_id="inputs",
                )
            submit = gr.Button("Generate the adapter and answer", variant="primary", elem_id="submit")
            answers = gr.Dataframe(
                headers=["input", "base model told the task", "generated adapter"],
                label="Answers",
                interactive=False,
                elem_id="answers",
            )
            latency = gr.Markdown(elem_id="latency")
            nearest = gr.Dataframe(
                headers=["nearest training task", "similarity of the descriptions"],
                label="Closest tasks the generator was trained on",
                interactive=False,
                elem_id="nearest",
            )
        submit.click(respond, [description, inputs], [answers, latency, nearest])
        if vision is not None:
            vision_tab(vision)
    return app


def vision_tab(vision: VisionDemo) -> None:
    """Labelled images and new ones in; per new image the generated head's class beside the nearest-centroid rule's.
    Element ids: ``support``, ``queries``, ``example``, ``classify``, ``classes``, ``vision-latency``."""
    import gradio as gr

    folder = Path(tempfile.mkdtemp(prefix="mcdi-demo-"))
    truth: dict[str, str] = {}

    def load_example():
        support, queries, classes = vision.example_files(folder)
        truth.clear()
        truth.update({p.name: c for p, c in zip(queries, classes)})
        return [str(p) for p in support], [str(p) for p in queries]

    def respond(support, queries):
        try:
            result = vision.classify(support or [], queries or [])
        except ValueError as err:
            raise gr.Error(str(err)) from err
        rows = [[Path(q).name, g, p, truth.get(Path(q).name, "")]
                for q, g, p in zip(queries, result.generated, result.prototype)]  # fmt: skip
        latency = (
            f"adapt(): backbone {result.backbone_ms:.1f} ms + generator {result.generator_ms:.1f} ms for "
            f"{len(result.classes)} classes, no gradient step; distance to the nearest training prototype "
            f"{result.nearest_training_distance:.3f}"
        )
        return rows, latency

    with gr.Tab("Vision"):
        gr.Markdown(
            f"`{vision.generator_name}` writes a linear classifier head for its backbone from a few labelled images. "
            "Name each labelled file `<class>_<anything>.png`, add images to classify, or load a held-out example "
            "episode shipped with the generator."
        )
        with gr.Row():
            support = gr.File(label="Labelled images", file_count="multiple", file_types=["image"], elem_id="support")
            queries = gr.File(label="Images to classify", file_count="multiple", file_types=["image"],
                              elem_id="queries")  # fmt: skip
        with gr.Row():
            example = gr.Button("Load an example episode", elem_id="example")
            classify = gr.Button("Generate the head and classify", variant="primary", elem_id="classify")
        classes = gr.Dataframe(
            headers=["image", "generated head", "nearest-centroid rule", "true class (example)"],
            label="Classes",
            interactive=False,
            elem_id="classes",
        )
        latency = gr.Markdown(elem_id="vision-latency")
        example.click(load_example, [], [support, queries])
        classify.click(respond, [support, queries], [classes, latency])
