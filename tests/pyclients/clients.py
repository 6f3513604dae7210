"""The official ollama and openai Python clients against a running SLED.

Run by tests/pyclients_test.go with SLED_URL (the API's base URL) and SLED_MODEL
(the served model id). Every check asserts what the client sees; the first failure
ends the run with a non-zero exit and the traceback.
"""

import os
import sys

import ollama
import openai

URL = os.environ["SLED_URL"]
MODEL = os.environ["SLED_MODEL"]
PROMPT = "Once upon a time"


def check_ollama():
    c = ollama.Client(host=URL)

    # list, show, ps, version
    listed = c.list().models
    assert [m.model for m in listed] == [MODEL], listed
    # The model came from an Ollama store: its digest is the blob's.
    assert listed[0].digest.startswith("sha256:") and listed[0].size > 0, listed
    show = c.show(MODEL)
    assert show.details.format == "gguf", show.details
    assert show.modelinfo, show
    assert [m.model for m in c.ps().models] == [MODEL]

    # generate, raw, not streamed
    r = c.generate(model=MODEL, prompt=PROMPT, raw=True, options={"num_predict": 16, "temperature": 0})
    assert r.done and r.done_reason == "length", r
    assert r.eval_count == 16 and r.prompt_eval_count > 0, r
    assert r.total_duration > 0 and r.eval_duration > 0 and r.load_duration in (None, 0), r
    assert r.response, r
    text = r.response

    # generate, streamed: the pieces make the same text
    parts = list(c.generate(model=MODEL, prompt=PROMPT, raw=True, stream=True, options={"num_predict": 16}))
    assert len(parts) > 2 and parts[-1].done and not parts[0].done, parts
    assert "".join(p.response for p in parts) == text, (parts, text)

    # options: seed and temperature reproduce a sample; stop cuts the text
    a = c.generate(model=MODEL, prompt=PROMPT, raw=True, options={"num_predict": 16, "temperature": 1.0, "seed": 42, "top_p": 0.9})
    b = c.generate(model=MODEL, prompt=PROMPT, raw=True, options={"num_predict": 16, "temperature": 1.0, "seed": 42, "top_p": 0.9})
    assert a.response == b.response, (a.response, b.response)
    stop = text.split()[1]
    s = c.generate(model=MODEL, prompt=PROMPT, raw=True, options={"num_predict": 16, "stop": [stop]})
    assert s.done_reason == "stop" and stop not in s.response and text.startswith(s.response), (stop, s.response)

    # chat, streamed and not
    msgs = [{"role": "user", "content": "Tom and his dog"}]
    one = c.chat(model=MODEL, messages=msgs, options={"num_predict": 12})
    assert one.message.role == "assistant" and one.message.content and one.done, one
    streamed = list(c.chat(model=MODEL, messages=msgs, stream=True, options={"num_predict": 12}))
    assert "".join(p.message.content for p in streamed) == one.message.content, streamed

    # an option SLED would not apply is an error naming it
    try:
        c.generate(model=MODEL, prompt=PROMPT, options={"repeat_penalty": 1.5})
        raise AssertionError("repeat_penalty 1.5 was accepted")
    except ollama.ResponseError as e:
        assert e.status_code == 400 and "repeat_penalty" in e.error, e
    try:
        c.generate(model="no-such-model", prompt=PROMPT)
        raise AssertionError("an unknown model was accepted")
    except ollama.ResponseError as e:
        assert e.status_code == 404, e
    return text


def check_openai():
    c = openai.OpenAI(base_url=URL + "/v1", api_key="unused")
    m = c.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model", m
    assert [x.id for x in c.models.list()] == [MODEL]
    try:
        c.models.retrieve("gpt-4")
        raise AssertionError("models.retrieve of an unknown id succeeded")
    except openai.NotFoundError:
        pass

    # completions with logprobs: one per token, the tokens make the text
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, logprobs=2)
    ch = r.choices[0]
    lp = ch.logprobs
    assert len(lp.tokens) == r.usage.completion_tokens == 16, (lp, r.usage)
    assert "".join(lp.tokens) == ch.text, (lp.tokens, ch.text)
    assert all(v <= 0 for v in lp.token_logprobs), lp.token_logprobs
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs), lp.top_logprobs
    text = ch.text

    # chat with logprobs, and streaming with usage
    msgs = [{"role": "user", "content": "Tom and his dog"}]
    cr = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, logprobs=True, top_logprobs=3)
    content = cr.choices[0].logprobs.content
    assert len(content) == cr.usage.completion_tokens, (content, cr.usage)
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content), content
    assert bytes(b for t in content for b in t.bytes).decode() == cr.choices[0].message.content
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}, logprobs=True))
    streamed = "".join(k.choices[0].delta.content or "" for k in chunks if k.choices)
    assert streamed == cr.choices[0].message.content, (streamed, cr.choices[0].message.content)
    slp = [t for k in chunks if k.choices and k.choices[0].logprobs for t in k.choices[0].logprobs.content]
    assert [t.logprob for t in slp] == [t.logprob for t in content], (slp, content)
    assert chunks[-1].usage.completion_tokens == cr.usage.completion_tokens

    # a parameter SLED would not apply is refused by name
    for kw, param in [({"presence_penalty": 0.5}, "presence_penalty"),
                      ({"response_format": {"type": "json_object"}}, "response_format")]:
        try:
            c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, **kw)
            raise AssertionError(f"{kw} was accepted")
        except openai.BadRequestError as e:
            assert e.body["param"] == param, e.body
    return text


if __name__ == "__main__":
    ollama_text = check_ollama()
    openai_text = check_openai()
    # One model, one text: the same greedy continuation through both APIs.
    assert ollama_text == openai_text, (ollama_text, openai_text)
    print("ok: ollama", ollama.__version__ if hasattr(ollama, "__version__") else "", "openai", openai.__version__)
