"""The web page of `bertkit serve` in a real headless Chromium, driven by selenium: for a classifier, a NER model, a
QA model and a pre-trained model, type into the page, submit, and read what it renders; what it shows must be what
the JSON API answers for the same input. Also: nothing overflows a phone-sized screen (390x844, with a screenshot in
the test's temporary folder), the browser's console has no errors, no request fails (a /favicon.ico 404 included),
and Chinese text is marked as Chinese (`lang`), which picks Chinese glyph forms and a Chinese voice in a screen reader.

The servers are real `bertkit serve` processes, reached only over HTTP. Chromium and its driver come from the Debian
packages `chromium` and `chromium-driver` (.ci/run installs them); without them, or without selenium, the tests skip
and say so.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import bertkit_command

SEED_SENTENCE = "今天天气很[MASK]，我们不得不取消户外运动。"
PHONE = {"width": 390, "height": 844}
START_TIMEOUT_S = 120  # a server process imports torch and loads its model; on a busy 2-core machine this is slow


def _find_chromium() -> tuple[str | None, str | None, str | None]:
    """The Chromium executable and its driver, or why the tests cannot run."""
    binary = next((p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        return None, None, ("Chromium and chromedriver are not installed: apt-get install chromium chromium-driver "
                            "(.ci/run does this as root on Debian)")  # fmt: skip
    if importlib.util.find_spec("selenium") is None:
        return None, None, "selenium is not installed (it is in the test extra: pip install selenium)"
    return binary, driver, None


CHROMIUM, CHROMEDRIVER, NO_BROWSER = _find_chromium()
# Decided at collection, so a machine without the browser skips before the session builds the tiny models.
pytestmark = pytest.mark.skipif(NO_BROWSER is not None, reason=NO_BROWSER or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, logging the console and the network (read by `_problems`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", "--lang=en-US"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver_ = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver_.set_page_load_timeout(60)
    try:
        yield driver_
    finally:
        driver_.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: dict) -> dict:
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def servers(tiny_task_models: dict[str, Path], tmp_path_factory) -> Iterator[dict[str, str]]:
    """`bertkit serve` for each tiny model ("pretrained", "cls", "ner", "qa"), started together: name -> base URL."""
    logs = tmp_path_factory.mktemp("serve_logs")
    procs: dict[str, tuple[subprocess.Popen, str, Path]] = {}
    try:
        for name, model_dir in tiny_task_models.items():
            # Served through a long folder name with nowhere to break a line, as real run folders have: the page
            # shows the model's path, and it must still fit a phone's screen.
            long_name = logs / f"{name}_model_finetuned_on_real_data_with_max_seq_length_256_learning_rate_0.001"
            long_name.symlink_to(model_dir, target_is_directory=True)
            port = _free_port()
            log = logs / f"{name}.log"
            with open(log, "wb") as f:
                proc = subprocess.Popen(bertkit_command("serve", "--model", long_name, "--port", str(port)),
                                        stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
            procs[name] = (proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + START_TIMEOUT_S
        for name, (proc, url, log) in procs.items():
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"bertkit serve for {name} exited ({proc.returncode}): {log.read_text()[-2000:]}")
                try:
                    if _get(url + "/healthz")[0] == 200:
                        break
                except OSError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    pytest.fail(f"bertkit serve for {name} did not answer /healthz in {START_TIMEOUT_S} s")
                time.sleep(0.2)
        yield {name: url for name, (_, url, _) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
        for proc, _, _ in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _problems(browser: Any) -> list[str]:
    """Console errors and failed requests (status >= 400, or no answer) since the last call; reading clears them."""
    found = [f"console: {e['message']}" for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.responseReceived" and params["response"]["status"] >= 400:
            found.append(f"request: {params['response']['status']} {params['response']['url']}")
        elif message["method"] == "Network.loadingFailed" and not params.get("canceled"):
            found.append(f"request failed: {params.get('errorText')}")
    return found


def _open(browser: Any, url: str) -> dict[str, bool]:
    """Loads the page and waits until it has described the model; returns which sections it shows."""
    from selenium.webdriver.support.ui import WebDriverWait

    _problems(browser)  # what an earlier page left in the logs is not this page's
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda b: "loading" not in b.find_element("id", "info").text)
    return {s: browser.find_element("id", s).is_displayed() for s in ("predict", "fill-mask", "embed")}


def _type(browser: Any, element_id: str, text: str) -> None:
    field = browser.find_element("id", element_id)
    field.clear()
    field.send_keys(text)
    assert field.get_attribute("value") == text


def _submit(browser: Any, button_id: str, out_id: str) -> Any:
    """Presses the button and waits for its answer; returns the element the answer is rendered in."""
    from selenium.webdriver.support.ui import WebDriverWait

    out = browser.find_element("id", out_id)
    browser.execute_script("arguments[0].innerHTML = ''", out)  # so an earlier answer is not taken for this one
    browser.find_element("id", button_id).click()
    WebDriverWait(browser, 60).until(lambda b: out.text.strip() and "working" not in out.text)
    assert not out.find_elements("css selector", ".error"), out.text
    return out


def _predict_on_page(browser: Any, url: str, inputs: dict[str, str]) -> tuple[Any, dict]:
    """Types `inputs` into the page's fields and presses Predict: the element showing the answer, and the
    prediction the API returns for the same input."""
    for name, value in inputs.items():
        _type(browser, f"f-{name}", value)
    out = _submit(browser, "predict-go", "predict-out")
    return out, _post(url + "/api/predict", {"inputs": [inputs]})["predictions"][0]


def _assert_clean(browser: Any) -> None:
    assert _chinese_without_lang(browser) == []
    assert _problems(browser) == []


def _marked(browser: Any, out: Any) -> list[list[str]]:
    """The [text, type] of each highlighted entity."""
    script = "return [...arguments[0].querySelectorAll('mark')].map((m) => [m.firstChild.textContent, " \
        "m.querySelector('small').textContent])"  # fmt: skip
    return browser.execute_script(script, out)


def _table(out: Any) -> list[tuple[str, float]]:
    """The (name, probability) rows of the bars the page draws."""
    rows = [[td.text for td in tr.find_elements("tag name", "td")] for tr in out.find_elements("tag name", "tr")]
    return [(row[0], float(row[-1])) for row in rows]


def _chinese_without_lang(browser: Any) -> list[str]:
    """Text with Chinese characters (in text nodes or form fields) whose nearest `lang` is not Chinese."""
    return browser.execute_script("""
        const han = /[\\u3400-\\u9fff]/, bad = [];
        const lang = (el) => (el.closest("[lang]") || {lang: ""}).lang;
        const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        for (let n = walk.nextNode(); n; n = walk.nextNode()) {
          const el = n.parentElement;
          if (el.closest("script, style") || !han.test(n.textContent) || el.offsetParent === null) continue;
          if (!lang(el).startsWith("zh")) bad.push(n.textContent.trim().slice(0, 30));
        }
        for (const el of document.querySelectorAll("input, textarea")) {
          if (han.test(el.value) && el.offsetParent !== null && !lang(el).startsWith("zh")) bad.push(el.id);
        }
        return bad;""")


def _check_similarity(browser: Any, url: str, task: str | None) -> None:
    """The similarity section says what the number is (and, for a task model, what it is not), and shows the cosine
    of the two embeddings the API returns, to the 4 decimals it prints."""
    note = browser.find_element("id", "embed-note").text
    assert "cosine" in note.lower() and (task is None or task in note), note
    a, b = "这家酒店的服务很好。", "酒店的房间很干净。"
    _type(browser, "embed-a", a)
    _type(browser, "embed-b", b)
    out = _submit(browser, "embed-go", "embed-out")
    va, vb = _post(url + "/api/embed", {"texts": [a, b]})["embeddings"]
    cosine = sum(x * y for x, y in zip(va, vb, strict=True)) / (math.hypot(*va) * math.hypot(*vb))
    shown = float(out.find_element("tag name", "b").text)
    assert abs(shown - cosine) <= 5.1e-5  # printed with 4 decimals; the same float64 sums in another order


def test_classifier_page_shows_the_label_and_probabilities_the_api_returns(browser, servers) -> None:
    url = servers["cls"]
    assert _open(browser, url) == {"predict": True, "fill-mask": False, "embed": True}
    labels = _post(url + "/api/predict", {"text": "好"})["predictions"][0]["probabilities"].keys()
    out, expected = _predict_on_page(browser, url, {"text": "房间很干净，早餐也不错，下次还会再来。"})
    assert out.find_element("tag name", "b").text == expected["label"]
    rows = _table(out)
    assert [name for name, _ in rows] == sorted(labels, key=lambda k: -expected["probabilities"][k])
    for name, p in rows:  # printed with 3 decimals
        assert abs(p - expected["probabilities"][name]) <= 5e-4
    assert "only its beginning" not in out.text
    out, expected = _predict_on_page(browser, url, {"text": "房间很干净。" * 100})  # longer than the model reads
    assert expected["truncated"] is True and "only its beginning was used" in out.text, out.text
    _check_similarity(browser, url, "cls")
    _assert_clean(browser)


def test_ner_page_highlights_the_entities_the_api_returns(browser, servers) -> None:
    url = servers["ner"]
    assert _open(browser, url)["predict"]
    text = "叶老桂博士在北京的浙商银行工作。"
    out, prediction = _predict_on_page(browser, url, {"text": text})
    entities = prediction["entities"]
    assert _marked(browser, out) == [[e["text"], e["type"]] for e in entities]
    shown = browser.execute_script(  # the sentence itself, without the type tags: kept whole and in order
        "const p = arguments[0].querySelector('p').cloneNode(true); p.querySelectorAll('small')"
        ".forEach((s) => s.remove()); return p.textContent", out)  # fmt: skip
    assert shown == text
    assert ("no entities found" in out.text) == (not entities)
    # The tiny model may find no entities: the page's own renderer, given spans, highlights each where it stands.
    # Offsets count code points, as the server's do: a character outside the BMP before them must not shift them.
    text, spans = "𠀀叶老桂在北京。", [["叶老桂", "name", 1, 4], ["北京", "address", 5, 7]]
    entities = [{"text": t, "type": k, "start": a, "end": b} for t, k, a, b in spans]
    render = "arguments[0].innerHTML = showPrediction('ner', {text: arguments[1]}, {entities: arguments[2]})"
    browser.execute_script(render, out, text, entities)
    assert _marked(browser, out) == [s[:2] for s in spans]
    _check_similarity(browser, url, "ner")
    _assert_clean(browser)


def test_qa_page_shows_the_answer_span_the_api_returns(browser, servers) -> None:
    url = servers["qa"]
    assert _open(browser, url)["predict"]
    question, context = "叶老桂在哪家银行工作？", "叶老桂博士在浙商银行企业信贷部工作，他从另一个角度解读了五道门槛。"
    out, expected = _predict_on_page(browser, url, {"question": question, "context": context})
    answer = out.find_element("css selector", "b.answer").text
    marks = out.find_elements("css selector", "mark")
    if expected["answer"]:
        assert answer == expected["answer"]
        # the span, highlighted where it stands in the context
        assert [m.text for m in marks] == [expected["answer"]] == [context[expected["start"] : expected["end"]]]
    else:
        assert answer == "(no answer)" and marks == []
    assert out.find_element("css selector", "p.context").text == context
    _assert_clean(browser)


def test_pretrained_page_fills_the_mask_of_the_seed_sentence_as_the_api_does(browser, servers) -> None:
    url = servers["pretrained"]
    assert _open(browser, url) == {"predict": False, "fill-mask": True, "embed": True}
    assert browser.find_element("id", "mask-text").get_attribute("value") == SEED_SENTENCE
    for text in (SEED_SENTENCE, "北京是中国的[MASK]都，也是[MASK]化中心。"):
        _type(browser, "mask-text", text)
        out = _submit(browser, "mask-go", "mask-out")
        masks = _post(url + "/api/fill-mask", {"texts": [text], "top_k": 5})["results"][0]["masks"]
        tables = out.find_elements("tag name", "table")
        assert len(tables) == len(masks) == text.count("[MASK]")
        for table, candidates in zip(tables, masks, strict=True):
            rows = _table(table)
            assert [t for t, _ in rows] == [c["token"] for c in candidates]  # the top 5, best first
            assert all(abs(p - c["score"]) <= 5e-4 for (_, p), c in zip(rows, candidates, strict=True))
        assert "only its beginning" not in out.text
    _type(browser, "mask-text", "今天天气很[MASK]。" + "我们去公园散步吧。" * 80)  # cut after its [MASK]
    assert "only its beginning was used" in _submit(browser, "mask-go", "mask-out").text
    _check_similarity(browser, url, None)
    _assert_clean(browser)
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "a[href]")]
    assert links and all(_get(link)[0] == 200 for link in links), links  # the page links to what is there


def test_page_fits_a_phone_screen(browser, servers, tmp_path: Path) -> None:
    """At 390x844 (a phone) nothing is wider than the screen, for every model, answers shown; a screenshot of each
    stays in the test's temporary folder to look at."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**PHONE, "deviceScaleFactor": 2, "mobile": True})
    widths, problems = {}, {}
    try:
        for name, url in servers.items():
            _open(browser, url)
            if name == "pretrained":
                _submit(browser, "mask-go", "mask-out")
            else:
                _submit(browser, "predict-go", "predict-out")
            _submit(browser, "embed-go", "embed-out")
            widths[name] = browser.execute_script("return [document.scrollingElement.scrollWidth, window.innerWidth]")
            browser.execute_script("window.scrollTo(0, 0)")
            shot = tmp_path / f"page-{name}-390x844.png"
            browser.save_screenshot(str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            problems[name] = _problems(browser)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    # every model's page as wide as the screen, no wider (screenshots: page-MODEL-390x844.png in tmp_path)
    assert widths == {name: [PHONE["width"], PHONE["width"]] for name in servers}, tmp_path
    assert problems == {name: [] for name in servers}


def test_the_api_docs_page_renders_without_internet_access(browser, servers) -> None:
    """/docs (Swagger UI) renders the API's endpoints from the server's own files: the test machine, like many a
    server, cannot reach a CDN, where FastAPI's own page would load its scripts from."""
    from selenium.webdriver.support.ui import WebDriverWait

    _problems(browser)
    browser.get(servers["cls"] + "/docs")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements("css selector", ".opblock")) >= 5)
    paths = {e.text for e in browser.find_elements("css selector", ".opblock-summary-path")}
    assert {"/api/predict", "/api/embed", "/readyz", "/metrics"} <= paths, paths
    assert "/api/fill-mask" not in paths  # what a classifier does not answer is not offered
    assert _problems(browser) == []
