"""Loading and sampling a real (tiny) GPT-2 in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fanout.layout import Model
from fanout.params import GenerationParams, ParamError
from worker_api.model import Completion, LanguageModel, ModelLoadError


def params(**changes: object) -> GenerationParams:
    base = {"context": "The nation", "length": 8, "temperature": 1.0, "top_k": 40,
            "top_p": 0.9, "max_time": 600.0}  # no test waits on the clock
    return GenerationParams(**{**base, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> LanguageModel:
    loaded = LanguageModel(Model("tiny", tiny_model_dir), "cpu", "auto")
    loaded.warm_up()
    return loaded


def test_the_gpt2_tokenizer_is_the_real_one(model: LanguageModel) -> None:
    assert model.tokenizer("Hello world").input_ids == [15496, 995]
    assert len(model.tokenizer) == 50257 and model.eos_token_id == 50256


def test_sampling_with_a_seed_is_reproducible(model: LanguageModel) -> None:
    first, again = model.generate(params(seed=3)), model.generate(params(seed=3))
    assert (first.text, first.tokens, first.seed) == (again.text, again.tokens, 3)
    assert model.generate(params(seed=4)).text != first.text


def test_finish_reasons(model: LanguageModel) -> None:
    assert model.generate(params(length=5, seed=1)).finish_reason == "length"
    timed_out = model.generate(params(length=200, max_time=0.02, seed=1))
    assert timed_out.finish_reason == "time" and timed_out.tokens < 200


def test_generation_stops_once_abandoned(model: LanguageModel) -> None:
    asked = []

    def abandoned() -> bool:  # the front hangs up after the third token
        asked.append(1)
        return len(asked) >= 3
    done = model.generate(params(length=40, temperature=0, seed=1), abandoned=abandoned)
    assert done.finish_reason == "abandoned" and done.tokens == 3
    assert model.generate(params(length=40, temperature=0, seed=1),
                          abandoned=lambda: False).tokens == 40


def test_a_stop_sequence_ends_the_text_before_it(model: LanguageModel) -> None:
    full = model.generate(params(length=30, temperature=0))
    stop = full.text[10:12]
    cut = model.generate(params(length=30, temperature=0, stop=(stop, "never-there")))
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.tokens < full.tokens


def test_a_stream_adds_up_to_the_same_completion(model: LanguageModel) -> None:
    whole = model.generate(params(length=30, seed=5))
    *pieces, done = model.stream(params(length=30, seed=5))
    assert isinstance(done, Completion) and all(isinstance(p, str) for p in pieces)
    assert len(pieces) > 1 and "".join(map(str, pieces)) == whole.text == done.text
    stop = whole.text[5:7]
    *pieces, done = model.stream(params(length=30, seed=5, stop=(stop,)))
    assert isinstance(done, Completion)
    assert "".join(map(str, pieces)) == done.text == whole.text[:whole.text.find(stop)]
    with pytest.raises(ParamError, match="window"):  # before any text is sent
        next(model.stream(params(length=model.window)))


def test_the_context_is_cut_from_the_front_to_fit(model: LanguageModel) -> None:
    long = model.generate(params(context="word " * 500, length=56, seed=1))
    assert long.context_tokens == model.window - 56 and long.tokens == 56
    assert model.generate(params(context="word " * 500, max_tokens=10)).context_tokens == 10
    assert model.generate(params(context="")).context_tokens == 1  # <|endoftext|>


def test_a_length_past_the_window_is_a_param_error(model: LanguageModel) -> None:
    with pytest.raises(ParamError, match="window of 256 tokens"):
        model.generate(params(length=model.window))


def test_greedy_decoding_at_temperature_zero(model: LanguageModel) -> None:
    assert model.generate(params(temperature=0, seed=1)).text == (
        model.generate(params(temperature=0, seed=2)).text)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-40])
def test_a_vanishing_temperature_is_greedy_not_an_error(model: LanguageModel,
                                                        temperature: float) -> None:
    # Sampling at these would divide the logits into inf and fail on NaN probabilities.
    assert model.generate(params(temperature=temperature, length=5, seed=3)).text == (
        model.generate(params(temperature=0, length=5, seed=3)).text)


def test_pickle_weights_are_refused_unless_allowed(tiny_model_dir: Path,
                                                   tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()

    with pytest.raises(ModelLoadError, match="only pickle weights"):
        LanguageModel(Model("pickled", folder), "cpu")
    allowed = LanguageModel(Model("pickled", folder, allow_pickle=True), "cpu")
    assert allowed.generate(params(seed=1)).tokens > 0


def test_a_hub_model_missing_from_the_cache_says_how_to_fetch_it() -> None:
    # No download is attempted: the answer comes from the local cache, at once.
    expected = (r"hub model 'nobody/no-such-model' is not in the local cache "
                r".*scripts/fetch_model.py nobody/no-such-model")
    with pytest.raises(ModelLoadError, match=expected):
        LanguageModel(Model("nobody/no-such-model", None), "cpu")


def test_a_hub_model_in_the_cache_loads_from_its_snapshot(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lay the tiny model out as the hub cache does: refs/main -> snapshots/<commit>/.
    from huggingface_hub import constants

    repo = tmp_path / "models--fanout--tiny"
    commit = "0" * 40
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    loaded = LanguageModel(Model("fanout/tiny", None), "cpu")
    assert loaded.generate(params(seed=1)).tokens == 8


@pytest.mark.parametrize(("remove", "missing"), [
    ("config.json", "config.json"),
    ("model.safetensors", "weights"),
    ("vocab.json", "tokenizer"),
])
def test_an_incomplete_folder_names_what_it_lacks(tiny_model_dir: Path, tmp_path: Path,
                                                  remove: str, missing: str) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, folder)
    (folder / remove).unlink()
    with pytest.raises(ModelLoadError, match=f"model folder {folder} lacks {missing}"):
        LanguageModel(Model("partial", folder), "cpu")
