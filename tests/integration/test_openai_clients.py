"""``/v1/completions`` as the client libraries people point at it call it (issue 17):
OpenAI's own client with the fields beyond a plain completion, LangChain's ``OpenAI`` LLM
and LiteLLM's ``text_completion``, against real tiers. Pool ``small`` of the ``tiers``
fixture runs the tiny model on transformers in float32, so its log-probabilities are
checked against the same model run here."""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import openai
import pytest
import torch
from langchain_openai import OpenAI
from pydantic import SecretStr
from transformers import AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerBase

from tests.integration.loopback import loopback_only
from tests.integration.servers import RunningTiers

pytestmark = [
    pytest.mark.integration,
    # LiteLLM's own types (a TypedDict with ReadOnly items) make pydantic warn as it
    # builds their schema mid-stream; the suite turns warnings into errors.
    pytest.mark.filterwarnings("ignore:Item.*`ReadOnly` qualifier:UserWarning"),
]

POOL = "small"  # the tiers fixture's pool: the tiny model, transformers, float32
PROMPT = "The nation"
OTHER_PROMPTS = ["A quick brown fox", "Hello"]  # greedy ties far apart: no float-noise flips
HELLO_WORLD = [15496, 995]  # GPT-2's tokens of "Hello world": "Hello", " world"
EOS_ID = 50256
COMMA_ID = 11  # ","
# float32 on both sides, the same weights: only the order of the sums differs.
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module", autouse=True)
def on_loopback() -> Iterator[None]:
    """Whatever the libraries do on their own (a price list, a tokenizer download) fails
    here, and fails the module, rather than timing out against the internet."""
    with loopback_only() as attempts:
        yield
    assert not attempts, f"the test process reached beyond loopback: {attempts}"


@pytest.fixture(scope="module")
def client(tiers: RunningTiers) -> openai.OpenAI:
    # No retries: a refused request should show here, not be sent again by the client.
    return openai.OpenAI(base_url=f"{tiers.front_url}/v1", api_key="unused", max_retries=0,
                         timeout=60)


@pytest.fixture(scope="module")
def llm(tiers: RunningTiers) -> OpenAI:
    """LangChain's completions LLM, greedy, with its own defaults for everything else."""
    return OpenAI(base_url=f"{tiers.front_url}/v1", api_key=SecretStr("unused"), model=POOL,
                  max_tokens=8, temperature=0, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def litellm() -> ModuleType:
    # Imported here, not at the top: its import fetches a price list from GitHub unless
    # told to use the copy it ships.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_OFFLINE_MODE"] = "true"
    return importlib.import_module("litellm")


def greedy(client: openai.OpenAI, prompt: str | list[int], max_tokens: int = 8) -> str:
    """The greedy completion of ``prompt``: what any client must get back at temperature 0."""
    return client.completions.create(model=POOL, prompt=prompt, max_tokens=max_tokens,
                                     temperature=0).choices[0].text


# LangChain's OpenAI LLM: it always sends top_p, frequency_penalty, presence_penalty, n,
# seed and logprobs (the last two as null), one prompt as a list of one, and a batch as
# one request with a list of prompts; a stream has the prompt as a string.

def test_langchain_invoke_is_the_greedy_completion(llm: OpenAI, client: openai.OpenAI) -> None:
    text = llm.invoke(PROMPT)
    assert isinstance(text, str) and text
    assert text == greedy(client, PROMPT)


def test_langchain_stream_pieces_join_to_the_completion(llm: OpenAI,
                                                        client: openai.OpenAI) -> None:
    pieces = list(llm.stream(PROMPT))
    assert pieces and all(isinstance(piece, str) for piece in pieces)
    assert "".join(pieces) == greedy(client, PROMPT)


def test_langchain_batch_answers_each_prompt_in_order(llm: OpenAI,
                                                      client: openai.OpenAI) -> None:
    prompts = [PROMPT, *OTHER_PROMPTS]
    texts = llm.batch([*prompts])  # one request, a list of prompts
    assert len(texts) == len(prompts) and all(isinstance(t, str) and t for t in texts)
    assert texts == [greedy(client, prompt) for prompt in prompts]


# OpenAI's own client, field by field.

def test_logprobs_line_up_with_the_text(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=POOL, prompt=PROMPT, max_tokens=8,
                                       temperature=0, logprobs=1)
    [choice] = answer.choices
    logprobs = choice.logprobs
    assert logprobs is not None
    tokens, token_logprobs = logprobs.tokens, logprobs.token_logprobs
    top, offsets = logprobs.top_logprobs, logprobs.text_offset
    assert tokens and token_logprobs and top and offsets
    assert len(tokens) == len(token_logprobs) == len(top) == len(offsets)
    assert "".join(tokens) == choice.text
    assert answer.usage is not None and answer.usage.completion_tokens == len(tokens)
    # Each offset is where its token starts in the text, wherever the count begins.
    assert [b - a for a, b in itertools.pairwise(offsets)] == \
        [len(token) for token in tokens[:-1]]
    for token, logprob, alternatives in zip(tokens, token_logprobs, top, strict=True):
        assert isinstance(logprob, float) and logprob <= 0
        # logprobs=1: the likeliest token, and the chosen one if that is another.
        assert alternatives is not None and 1 <= len(alternatives) <= 2
        assert all(value <= 0 for value in alternatives.values())
        assert alternatives[token] == pytest.approx(logprob)  # greedy: chosen = likeliest


def test_echo_puts_the_prompt_before_the_completion(client: openai.OpenAI) -> None:
    request = dict(model=POOL, prompt=PROMPT, max_tokens=6, seed=3)
    plain = client.completions.create(**request)  # type: ignore[call-overload]
    echoed = client.completions.create(**request, echo=True)  # type: ignore[call-overload]
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text


def test_echo_with_no_new_tokens_scores_the_prompt(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=POOL, prompt=PROMPT, max_tokens=0, echo=True,
                                       logprobs=0)
    [choice] = answer.choices
    assert choice.text == PROMPT
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert "".join(logprobs.tokens) == PROMPT
    first, *rest = logprobs.token_logprobs
    assert first is None  # nothing comes before the first token to predict it
    assert rest and all(isinstance(value, float) and value <= 0 for value in rest)
    assert answer.usage is not None and answer.usage.completion_tokens == 0


@dataclass
class Reference:
    """The pool's model, run here: what its log-probabilities must be."""

    model: GPT2LMHeadModel
    tokenizer: PreTrainedTokenizerBase

    def greedy_ids(self, prompt: str, new_tokens: int) -> list[int]:
        """The prompt's token ids and ``new_tokens`` greedy ones after them."""
        ids = list(self.tokenizer(prompt)["input_ids"])
        for _ in range(new_tokens):
            ids.append(int(self.logprobs(ids)[-1].argmax()))
        return ids

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        """(len(ids), vocabulary): row i is the distribution of the token after ids[:i+1]."""
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0]
        return torch.log_softmax(logits.double(), dim=-1)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Reference:
    return Reference(GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval(),
                     AutoTokenizer.from_pretrained(tiny_model_dir))


@pytest.mark.parametrize("new_tokens", [0, 5])
def test_logprobs_are_the_models_own(client: openai.OpenAI, reference: Reference,
                                     new_tokens: int) -> None:
    ids = reference.greedy_ids(PROMPT, new_tokens)
    expected = reference.logprobs(ids)
    answer = client.completions.create(model=POOL, prompt=PROMPT, max_tokens=new_tokens,
                                       temperature=0, echo=True, logprobs=1)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs and logprobs.top_logprobs
    assert logprobs.tokens == [reference.tokenizer.decode([i]) for i in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for position in range(1, len(ids)):
        row = expected[position - 1]
        assert logprobs.token_logprobs[position] == pytest.approx(
            row[ids[position]].item(), abs=LOGPROB_TOLERANCE), position
        alternatives = logprobs.top_logprobs[position]
        assert alternatives is not None
        likeliest = reference.tokenizer.decode([int(row.argmax())])
        assert alternatives[likeliest] == pytest.approx(row.max().item(),
                                                        abs=LOGPROB_TOLERANCE), position


def test_a_list_of_prompts_gives_n_choices_each_in_prompt_order(client: openai.OpenAI) -> None:
    first, second = PROMPT, OTHER_PROMPTS[0]
    answer = client.completions.create(model=POOL, prompt=[first, second], n=2,
                                       max_tokens=8, temperature=0)
    # Choice prompt_index * n + i is the i-th of that prompt's n.
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    expected = [greedy(client, first), greedy(client, second)]
    assert expected[0] != expected[1]  # else the order would go unseen
    assert [c.text for c in answer.choices] == [expected[0]] * 2 + [expected[1]] * 2


def test_a_prompt_of_token_ids_is_its_text(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=POOL, prompt=HELLO_WORLD, max_tokens=8,
                                       temperature=0)
    assert answer.choices[0].text == greedy(client, "Hello world")
    assert answer.usage is not None and answer.usage.prompt_tokens == len(HELLO_WORLD)


def test_a_list_of_token_id_prompts_answers_each(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=POOL, prompt=[[i] for i in HELLO_WORLD],
                                       max_tokens=8, temperature=0)
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.text for c in answer.choices] == [greedy(client, "Hello"),
                                                greedy(client, " world")]


def test_a_stream_can_end_with_the_usage(client: openai.OpenAI) -> None:
    request = dict(model=POOL, prompt=PROMPT, max_tokens=6, n=2, seed=5)
    whole = client.completions.create(**request)  # type: ignore[call-overload]
    chunks = list(client.completions.create(  # type: ignore[call-overload]
        **request, stream=True, stream_options={"include_usage": True}))

    *parts, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(chunk.usage is None for chunk in parts)
    usage = last.usage
    assert all(isinstance(count, int) for count in (
        usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))
    assert whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens  # both choices' tokens
    assert usage.prompt_tokens == 2  # "The nation"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    texts = {0: "", 1: ""}
    for chunk in parts:
        for part in chunk.choices:
            texts[part.index] += part.text
    assert texts == {c.index: c.text for c in whole.choices}


def test_neutral_penalties_change_nothing(client: openai.OpenAI) -> None:
    request = dict(model=POOL, prompt=PROMPT, max_tokens=8, seed=9)
    plain = client.completions.create(**request)  # type: ignore[call-overload]
    neutral = client.completions.create(  # type: ignore[call-overload]
        **request, presence_penalty=0, frequency_penalty=0)
    assert neutral.choices[0].text == plain.choices[0].text


def test_best_of_returns_n_choices(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=POOL, prompt=PROMPT, max_tokens=6, best_of=2,
                                       n=1, seed=2)
    [choice] = answer.choices
    assert choice.index == 0 and isinstance(choice.text, str)


def test_a_banned_end_of_text_lets_every_sample_run_its_length(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=POOL, prompt=PROMPT, max_tokens=8, n=2, seed=4,
                                       logit_bias={str(EOS_ID): -100})
    assert [c.finish_reason for c in answer.choices] == ["length", "length"]
    assert answer.usage is not None and answer.usage.completion_tokens == 2 * 8


def test_a_large_bias_forces_its_token(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=POOL, prompt=PROMPT, max_tokens=3,
                                       temperature=0, logit_bias={str(COMMA_ID): 100})
    assert answer.choices[0].text == ",,,"


def test_a_suffix_is_refused_as_fill_in_the_middle(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=POOL, prompt=PROMPT, max_tokens=2, suffix=" end")
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "suffix"
    assert "fill-in-the-middle" in body["message"]  # why, not just "unknown field"


@pytest.mark.parametrize("suffix", ["", None])
def test_an_empty_suffix_is_no_suffix(client: openai.OpenAI, suffix: str | None) -> None:
    answer = client.completions.create(model=POOL, prompt=PROMPT, max_tokens=2,
                                       suffix=suffix)
    assert len(answer.choices) == 1


def test_a_model_can_be_retrieved_by_its_id(client: openai.OpenAI) -> None:
    model = client.models.retrieve(POOL)
    assert model.id == POOL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-pool")


def test_fields_openai_does_not_have_are_ignored(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=POOL, prompt=PROMPT, max_tokens=8,
                                       temperature=0, extra_body={"no_such_field": 1})
    assert answer.choices[0].text == greedy(client, PROMPT)


# LiteLLM: both prefixes reach /v1/completions for a model OpenAI's chat list lacks.

@pytest.mark.parametrize("provider", ["text-completion-openai", "openai"])
def test_litellm_text_completion(litellm: ModuleType, tiers: RunningTiers,
                                 client: openai.OpenAI, provider: str) -> None:
    answer = litellm.text_completion(model=f"{provider}/{POOL}", api_base=f"{tiers.front_url}/v1",
                                     api_key="unused", prompt=PROMPT, max_tokens=8,
                                     temperature=0, num_retries=0)
    assert answer.choices[0].text == greedy(client, PROMPT)


def test_litellm_streams_a_text_completion(litellm: ModuleType, tiers: RunningTiers,
                                           client: openai.OpenAI) -> None:
    chunks = litellm.text_completion(model=f"text-completion-openai/{POOL}",
                                     api_base=f"{tiers.front_url}/v1", api_key="unused",
                                     prompt=PROMPT, max_tokens=8, temperature=0, stream=True,
                                     num_retries=0)
    text = "".join(choice["text"] or "" for chunk in chunks for choice in chunk.choices)
    assert text == greedy(client, PROMPT)
