"""The demo page: what it computes (TextDemo), and the page itself driven in a real headless browser."""

import os
import shutil
import socket
from pathlib import Path

import pytest

from peft_mcdi.demo import MAX_INPUTS, TextDemo, VisionDemo, build_app


ROOT = Path(__file__).resolve().parents[1]
# the README's text and vision tabs; MCDI_WRITE_SCREENSHOT=1 rewrites them
SCREENSHOTS = {
    "demo.png": ROOT / "docs" / "images" / "demo.png",
    "vision.png": ROOT / "docs" / "images" / "demo_vision.png",
}
DESCRIPTION = "Does the word name a kind of fruit?"
WORDS = ["apple", "pear", "hammer", "river"]


@pytest.fixture(scope="module")
def demo():
    return TextDemo()  # the shipped MiniLM generator


def test_answers_come_from_both_models_with_times_and_nearest_tasks(demo):
    result = demo.answer(DESCRIPTION, [*WORDS, "  ", ""])  # blank lines are not inputs
    assert [row[0] for row in result.rows] == WORDS
    assert all(base in {"no", "yes"} and adapted in {"no", "yes"} for _, base, adapted in result.rows)
    assert [base for _, base, _ in result.rows].count("yes") == 2  # the cosine rule splits its inputs at the median
    assert result.encoder_ms > 0 and result.generator_ms > 0
    names = [name for name, _ in result.nearest]
    assert len(names) == 3 and set(names) <= set(demo.train_names) and "fruit.n.01" in names
    similarities = [s for _, s in result.nearest]
    assert similarities == sorted(similarities, reverse=True) and similarities[0] <= 1 + 1e-6
    again = demo.answer(DESCRIPTION, WORDS)  # the same seed: the same adapter and answers
    assert again.rows == result.rows


@pytest.mark.parametrize(
    ("description", "inputs", "match"),
    [
        (DESCRIPTION, ["", " "], "at least one input"),
        (DESCRIPTION, ["w"] * (MAX_INPUTS + 1), f"at most {MAX_INPUTS} inputs"),
        ("  ", WORDS, "the task description is empty"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(demo, description, inputs, match):
    with pytest.raises(ValueError, match=match):
        demo.answer(description, inputs)


@pytest.fixture(scope="module")
def vision():
    return VisionDemo()  # the shipped Conv-4 glyph generator


def test_the_vision_tab_classifies_files_like_the_generators_card(vision, tmp_path):
    support, queries, truth = vision.example_files(tmp_path)
    assert [p.name.split("_")[0] for p in support[::5]] == list("abcde")  # 5 shots per class, named by class
    result = vision.classify(support, queries)
    assert result.classes == list("abcde") and len(result.generated) == len(result.prototype) == len(queries)
    accuracy = sum(g == t for g, t in zip(result.generated, truth)) / len(truth)
    expected = vision.model.generator.generator.config.metadata["example_accuracy"][0]
    assert abs(accuracy - expected) <= 1 / len(truth) + 1e-6  # the card's number, through PNG files
    assert sum(p == t for p, t in zip(result.prototype, truth)) / len(truth) > 0.5  # the rule beside it works too
    assert result.generator_ms > 0 and result.nearest_training_distance >= 0
    with pytest.raises(ValueError, match="name 1 class"):
        vision.classify([p for p in support if p.name.startswith("a_")], queries)
    with pytest.raises(ValueError, match="at least one image to classify"):
        vision.classify(support, [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_the_page_in_a_headless_browser(demo, vision, tmp_path):
    """Type a description and inputs, submit, and read the answers, the latency and the nearest tasks off the page
    (Debian's chromium and chromedriver, installed by scripts/setup.sh)."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = build_app(demo, vision)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        description = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#description textarea"))
        description.clear()
        description.send_keys(DESCRIPTION)
        inputs = driver.find_element(By.CSS_SELECTOR, "#inputs textarea")
        inputs.clear()
        inputs.send_keys("\n".join(WORDS))
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        wait.until(lambda d: "river" in d.find_element(By.CSS_SELECTOR, "#answers").text)
        answers = driver.find_element(By.CSS_SELECTOR, "#answers").text.split()
        expected = demo.answer(DESCRIPTION, WORDS)
        for word, base, adapted in expected.rows:  # each row reads: word, base answer, adapted answer
            at = answers.index(word)
            assert answers[at + 1 : at + 3] == [base, adapted]
        assert "ms + generator" in driver.find_element(By.CSS_SELECTOR, "#latency").text
        assert expected.nearest[0][0] in driver.find_element(By.CSS_SELECTOR, "#nearest").text
        driver.save_screenshot(str(tmp_path / "demo.png"))

        driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Vision')]").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#example").is_displayed())
        driver.find_element(By.CSS_SELECTOR, "#example").click()
        wait.until(lambda d: "query_00" in d.find_element(By.CSS_SELECTOR, "#queries").text)
        driver.find_element(By.CSS_SELECTOR, "#classify").click()
        wait.until(lambda d: "query_00" in d.find_element(By.CSS_SELECTOR, "#classes").text)
        assert "ms + generator" in driver.find_element(By.CSS_SELECTOR, "#vision-latency").text
        results = driver.find_element(By.CSS_SELECTOR, "#vision-latency")
        driver.execute_script("arguments[0].scrollIntoView({block: 'end'})", results)  # past the file lists
        driver.save_screenshot(str(tmp_path / "vision.png"))
        if os.environ.get("MCDI_WRITE_SCREENSHOT") == "1":
            for name, path in SCREENSHOTS.items():
                path.parent.mkdir(exist_ok=True)
                shutil.copyfile(tmp_path / name, path)
    finally:
        driver.quit()
        app.close()
