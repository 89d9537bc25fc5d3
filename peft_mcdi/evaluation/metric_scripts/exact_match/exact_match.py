"""Exact match of generated answers, as an ``evaluate`` metric script kept in the package: the Hub's copy cannot be
fetched offline, and ``evaluate.load`` takes a local folder (:func:`peft_mcdi.evaluation.metrics.load_metric`)."""

import datasets
import evaluate


_DESCRIPTION = "Fraction of predictions equal to their reference after stripping surrounding whitespace."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): the expected answers, one per prediction.
    ignore_case (bool): compare lower-cased strings. Default False.
Returns:
    exact_match (float): in [0, 1].
Examples:
    >>> metric = evaluate.load("peft_mcdi/evaluation/metric_scripts/exact_match")
    >>> metric.compute(predictions=["[cats]", " dogs"], references=["[cats]", "dog"])
    {'exact_match': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case=False):
        def norm(text: str) -> str:
            return text.strip().lower() if ignore_case else text.strip()

        if not predictions:
            raise ValueError("exact_match needs at least one prediction.")
        hits = [norm(p) == norm(r) for p, r in zip(predictions, references)]
        return {"exact_match": sum(hits) / len(hits)}
